"""Fusing the models' distances into one ranking.

Models disagree wildly on distance scales: VGG's post-ReLU average-pooled vectors put almost every
pair at a small angular distance, ResNet's spread them out. A single cutoff only means the same
thing across models after each model's distances are put on a common scale.

Normalisation "robust-z" (the default): for each model, the angular distances of random image pairs
of the folder being grouped (up to 20,000 pairs, fixed seed) give a median and a MAD; a distance d
becomes (d - median) / (1.4826 * MAD), a robust z-score. 0 is a typical unrelated pair, -3 is three
(robust) standard deviations closer than that. In any realistic folder almost all random pairs
show different products, so the median and MAD describe "unrelated" and do not depend on how many
products the folder has. It is invariant to any affine change of a model's distances, which a test shows.
"quantile" is the rank-based alternative: a distance becomes the normal score of its rank among
the same random pairs (a monotone, piecewise-linear map; beyond the 1% and 99% quantiles it goes on
with the slope of the outer 15%), so a model whose distances are skewed is straightened out, and 0
and -2 keep the meaning they have under "robust-z" for a normal spread. But the share of a folder's
pairs that show one product grows as its products get fewer, and ranks follow it: in the 20-photo
sample -2 leaves most photos alone. Measured as an option (benchmarks/README.md): it gains on
grocery-packages and grocery-all, loses on grocery-810 and where products have 3-4 photos.
"none" keeps raw angular distances (the `seed` baseline uses it, like the original).

For each image the candidates are the union of every model's top-k from its Annoy index; each
candidate's distance under every model is computed exactly from the vectors, normalised, and
averaged with per-model weights (equal by default) into the fused distance that ranks them.
With `local_k` > 0 the fused distances are then locally scaled (`local_offsets`); off by default,
it lost on grocery (benchmarks/README.md). With `rerank_k` > 0 (the default, 20) they are then
re-ranked by shared k-reciprocal neighbourhoods (`ensemble_group.rerank`), which pulls the photos of a
product with many views together; `pairs`, `matrix` and the neighbour lists all see that distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble_group.config import NORMALISATIONS
from ensemble_group.index import ModelIndex, angular_distance
from ensemble_group.rerank import Neighbourhoods

MAX_REFERENCE_PAIRS = 20_000
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class Normaliser:
    """Maps one model's raw angular distances onto the common scale: (d - centre) / scale, or
    ("quantile") piecewise-linearly through `knots`, ((distance, score), ...) ascending over 0..2."""

    method: str
    centre: float = 0.0
    scale: float = 1.0
    knots: tuple[tuple[float, float], ...] = ()

    def __call__(self, d: np.ndarray) -> np.ndarray:
        d = np.asarray(d, dtype=np.float64)
        if self.knots:
            x, z = np.asarray(self.knots, dtype=np.float64).T
            return np.interp(d, x, z)
        return (d - self.centre) / self.scale

    def to_dict(self) -> dict:
        out = {"method": self.method, "centre": self.centre, "scale": self.scale}
        return out | ({"knots": [list(k) for k in self.knots]} if self.knots else {})

    @classmethod
    def from_dict(cls, doc: dict) -> "Normaliser":
        return cls(**doc | {"knots": tuple(tuple(k) for k in doc.get("knots", ()))})


_QUANTILE_SCORES = np.linspace(-2.3263, 2.3263, 19)  # normal scores of the 1% ... 99% quantiles
_TAIL = 5  # knots spanned by the slope that carries a tail on (about 15% of the pairs)


def fit_normaliser(vectors: np.ndarray, method: str = "robust-z", *, seed: int = 42) -> Normaliser:
    """Learn a model's normaliser from random pairs of its (n, dim) unit vectors."""
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {method!r}")
    return fit_from_distances(reference_distances(vectors, seed=seed), method)


def fit_from_distances(d: np.ndarray, method: str = "robust-z") -> Normaliser:
    """Learn a normaliser from a model's distances between random (mostly unrelated) pairs."""
    if method == "none":
        return Normaliser("none")
    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2:  # 0 or 1 pair: nothing to learn a spread from
        return Normaliser(method, float(d[0]) if len(d) else 0.0, 1.0)
    centre = float(np.median(d))
    mad = float(np.median(np.abs(d - centre)))
    scale = max(_MAD_TO_SD * mad, 1e-6)
    if method == "quantile":
        return Normaliser(method, centre, scale, _quantile_knots(d, scale))
    return Normaliser(method, centre, scale)


def _quantile_knots(d: np.ndarray, scale: float) -> tuple[tuple[float, float], ...]:
    """(distance, normal score) knots: the reference's quantiles, and the ends of the distance range
    (0 and 2) reached by carrying each tail on with the slope of its outer knots."""
    from scipy.special import ndtr  # the standard normal CDF; only here: 0.2 s of every start-up otherwise

    z = _QUANTILE_SCORES
    x = np.quantile(d, ndtr(z))
    x = np.maximum.accumulate(x) + np.arange(len(x)) * 1e-9 * scale  # strictly increasing, even with ties
    low = max((x[_TAIL] - x[0]) / (z[_TAIL] - z[0]), 1e-9)
    high = max((x[-1] - x[-1 - _TAIL]) / (z[-1] - z[-1 - _TAIL]), 1e-9)
    knots = [(float(a), float(b)) for a, b in zip(x, z)]
    if x[0] > 0.0:
        knots.insert(0, (0.0, float(z[0] - x[0] / low)))
    if x[-1] < 2.0:
        knots.append((2.0, float(z[-1] + (2.0 - x[-1]) / high)))
    return tuple(knots)


def reference_distances(vectors: np.ndarray, *, seed: int = 42, max_pairs: int = MAX_REFERENCE_PAIRS) -> np.ndarray:
    """Angular distances of all pairs (small folders) or of `max_pairs` random distinct pairs."""
    n = len(vectors)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, max_pairs)
        j = (i + rng.integers(1, n, max_pairs)) % n  # never equal to i
    return angular_distance(vectors[i], vectors[j])


@dataclass
class FusedNeighbours:
    """Each image's candidates ranked by fused distance.

    ids (n, m) int64 and dist (n, m) float64, nearest first; rows are padded with -1 / +inf.
    """

    ids: np.ndarray
    dist: np.ndarray


class Fusion:
    """Fused distances between images of one run: per-model vectors, normalisers and weights.

    `vectors` may be empty when only `combine` is needed (querying a saved index).
    """

    def __init__(self, vectors: dict[str, np.ndarray], normalisers: dict[str, Normaliser],
                 weights: dict[str, float] | None = None, *, local_k: int = 0, rerank_k: int = 0,
                 rerank_weight: float = 1.0) -> None:
        self.models = list(normalisers)
        self.vectors = vectors
        self.normalisers = normalisers
        w = np.array([(weights or {}).get(m, 1.0) for m in self.models], dtype=np.float64)
        if w.sum() <= 0:
            raise ValueError("model weights must not all be zero")
        self.weights = w / w.sum()
        self.n = len(next(iter(vectors.values()))) if vectors else 0
        self.local_k = local_k
        self.offset: np.ndarray | None = None  # (n,) local scaling, set by `neighbours` when local_k > 0
        self.local_centre = 0.0  # the folder's median density, which the offsets are relative to
        self.rerank_k, self.rerank_weight = rerank_k, rerank_weight
        self.neighbourhoods: Neighbourhoods | None = None  # set by `neighbours` when re-ranking applies
        self.first_stage: FusedNeighbours | None = None  # the lists re-ranking started from (a query needs them)

    @classmethod
    def fit(cls, vectors: dict[str, np.ndarray], method: str = "robust-z",
            weights: dict[str, float] | None = None, *, seed: int = 42, local_k: int = 0, rerank_k: int = 0,
            rerank_weight: float = 1.0) -> "Fusion":
        return cls(vectors, {m: fit_normaliser(v, method, seed=seed) for m, v in vectors.items()}, weights,
                   local_k=local_k, rerank_k=rerank_k, rerank_weight=rerank_weight)

    @classmethod
    def for_config(cls, vectors: dict[str, np.ndarray], config) -> "Fusion":
        """`fit` with a Config's fusion settings, for the models in `vectors`."""
        return cls.fit(vectors, config.normalisation, {m: config.model_weights.get(m, 1.0) for m in vectors},
                       seed=config.seed, local_k=config.local_k, rerank_k=config.rerank_k,
                       rerank_weight=config.rerank_weight)

    def combine(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """Per-model raw distances (same shapes) -> weighted mean of normalised distances."""
        return sum(w * self.normalisers[m](raw[m]) for m, w in zip(self.models, self.weights))

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Fused distance of image pairs (i[t], j[t])."""
        d = self.combine({m: angular_distance(v[i], v[j]) for m, v in self.vectors.items()})
        if self.offset is not None:
            d = d - self.offset[i] - self.offset[j]
        if self.neighbourhoods is not None:
            d = d + self.neighbourhoods.adjustment(i, j, self.rerank_weight)
        return d

    def matrix(self, members: np.ndarray) -> np.ndarray:
        """Dense (m, m) fused distances among a few images (a group or component), zero diagonal."""
        raw = {}
        for m, v in self.vectors.items():
            sub = v[members]
            raw[m] = np.sqrt(np.clip(2.0 - 2.0 * (sub @ sub.T), 0.0, 4.0))
        fused = self.combine(raw)
        if self.offset is not None:
            fused -= self.offset[members][:, None] + self.offset[members][None, :]
        if self.neighbourhoods is not None:  # Jaccard is symmetric: each pair once
            i, j = np.triu_indices(len(members), 1)
            adjust = self.neighbourhoods.adjustment(members[i], members[j], self.rerank_weight)
            fused[i, j] += adjust
            fused[j, i] += adjust
        np.fill_diagonal(fused, 0.0)
        return fused

    def neighbours(self, indexes: dict[str, ModelIndex], k: int, chunk: int = 512) -> FusedNeighbours:
        """For every image: union of each model's top-k, exact fused distances, ranked."""
        k = min(k, self.n - 1)
        if k < 1:
            return FusedNeighbours(np.full((self.n, 0), -1), np.full((self.n, 0), np.inf))
        cand = np.concatenate([indexes[m].all_neighbours(k) for m in self.models], axis=1)
        self.offset, self.neighbourhoods, self.first_stage = None, None, None
        neigh = self._rank(np.arange(self.n), cand, chunk)
        if self.local_k:
            self.offset, self.local_centre = local_offsets(neigh, self.local_k)
            d = neigh.dist - self.offset[:, None] - self.offset[np.maximum(neigh.ids, 0)]
            neigh = _sort(neigh.ids, np.where(neigh.ids >= 0, d, np.inf))
        if self.rerank_weight > 0 and Neighbourhoods.applies(self.n, self.rerank_k):
            self.first_stage = neigh
            self.neighbourhoods = Neighbourhoods(neigh.ids, self.rerank_k)
            rows = np.broadcast_to(np.arange(self.n)[:, None], neigh.ids.shape)
            d = neigh.dist + self.neighbourhoods.adjustment(rows, np.maximum(neigh.ids, 0), self.rerank_weight)
            neigh = _sort(neigh.ids, np.where(neigh.ids >= 0, d, np.inf))
        return neigh

    def _rank(self, rows: np.ndarray, cand: np.ndarray, chunk: int) -> FusedNeighbours:
        """Candidates deduplicated, scored and sorted a chunk of rows at a time (written in place:
        memory stays the lists themselves at a million images)."""
        ids, dist = np.empty_like(cand), np.empty(cand.shape)
        for s in range(0, len(rows), chunk):
            r, c = rows[s:s + chunk], _dedupe(cand[s:s + chunk])
            raw = {m: _rows_distance(v[r], v[np.maximum(c, 0)]) for m, v in self.vectors.items()}
            part = _sort(c, np.where(c >= 0, self.combine(raw), np.inf), trim=False)
            ids[s:s + chunk], dist[s:s + chunk] = part.ids, part.dist
        keep = np.isfinite(dist).any(axis=0)  # drop columns that are padding in every row
        return FusedNeighbours(ids[:, keep], dist[:, keep]) if not keep.all() else FusedNeighbours(ids, dist)


def local_offsets(neigh: FusedNeighbours, k: int) -> tuple[np.ndarray, float]:
    """((n,) offsets, centre): half of each image's density relative to the folder's, (r_i - centre) / 2,
    where r_i is the mean fused distance to its k nearest and centre the median r.

    Subtracting offset_i + offset_j from d(i, j) is local scaling (CSLS, Conneau et al. 2018): a pair
    counts as close relative to how close each image's neighbours usually are, so dense regions (many
    near look-alikes) merge less readily and sparse ones (odd views, few photos) more.
    """
    r = _density(neigh.dist[:, :k])
    centre = float(np.nanmedian(r)) if np.isfinite(r).any() else 0.0
    return np.nan_to_num((r - centre) / 2.0, nan=0.0), centre


def local_query(fused: np.ndarray, offsets: np.ndarray, centre: float, k: int) -> np.ndarray:
    """Locally scaled distances of one outside image to candidates with the given offsets."""
    own = _density(np.sort(fused)[None, :k])[0]
    return fused - offsets - (0.0 if np.isnan(own) else (own - centre) / 2.0)


def _density(d: np.ndarray) -> np.ndarray:
    """(n,) mean of each row's finite distances (NaN for a row with none)."""
    finite = np.isfinite(d)
    r = np.where(finite, d, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)
    return np.where(finite.any(axis=1), r, np.nan)


def _rows_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angular distance of a[i] (n, d) to each b[i, j] (n, m, d), without an (n, m, d) temporary."""
    return np.sqrt(np.clip(2.0 - 2.0 * np.einsum("nd,nmd->nm", a, b), 0.0, 4.0))


def _dedupe(cand: np.ndarray) -> np.ndarray:
    """Replace repeated ids within a row by -1 (a candidate found by several models counts once)."""
    order = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, order, axis=1)
    dup = np.zeros_like(s, dtype=bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    s[dup] = -1
    out = np.empty_like(cand)
    np.put_along_axis(out, order, s, axis=1)
    return out


def _sort(cand: np.ndarray, dist: np.ndarray, trim: bool = True) -> FusedNeighbours:
    order = np.argsort(dist, axis=1, kind="stable")
    ids = np.take_along_axis(cand, order, axis=1)
    d = np.take_along_axis(dist, order, axis=1)
    if trim:
        keep = np.isfinite(d).any(axis=0)  # drop columns that are padding in every row
        ids, d = ids[:, keep], d[:, keep]
    return FusedNeighbours(np.where(np.isfinite(d), ids, -1), d)
