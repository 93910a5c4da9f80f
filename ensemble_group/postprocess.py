"""Corpus-level feature post-processing, learned without labels on the folder being grouped.

ImageNet features pooled over a whole photo mix the product with everything around it, and their
dimensions are strongly correlated, so a few "bursty" directions dominate cosine similarity. The
instance-retrieval literature fixes much of that without labels:

* power normalisation (signed square root, `power = 0.5`) damps bursty activations;
* PCA-whitening learned on the folder (`whiten_dim` components) decorrelates the dimensions and
  gives rare directions their say; eigenvalues are shrunk towards their mean (`whiten_shrink`) so
  tiny, noisy components are not blown up. It needs `whiten_min` images (10 by default): on a
  smaller folder its mean is mostly the products themselves. Small folders gain the most from it:
  the folder's mean is what all its photos share (a white backdrop, the studio's light), and taking
  it away leaves what tells the products apart (benchmarks/README.md, small folders);
* database-side augmentation (`dba_k`, alpha-QE weighting): each vector is replaced by the weighted
  mean of itself and its dba_k nearest neighbours, pulling together the photos of one product.

Every step maps (n, d) unit vectors to (n, d') unit vectors; `Transform` keeps what a later query
needs (the whitening), so outside photos can be projected the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble_group.config import Config
from ensemble_group.pooling import l2_normalise

MIN_WHITEN_IMAGES = Config.whiten_min  # 10; the first guess, 50, left folders of 10-49 photos far worse off


@dataclass
class Transform:
    """The learned, query-time part: signed power, then (optional) centring + whitening projection."""

    power: float = 1.0
    mean: np.ndarray | None = None  # (d,)
    projection: np.ndarray | None = None  # (d, d')

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.power != 1.0:
            x = l2_normalise(np.sign(x) * np.abs(x) ** self.power)
        if self.projection is not None:
            x = l2_normalise((x - self.mean) @ self.projection)
        return x.astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"power": np.array(self.power)}
        if self.projection is not None:
            out.update(mean=self.mean, projection=self.projection)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "Transform":
        return cls(float(arrays["power"]), arrays.get("mean"), arrays.get("projection"))


COVARIANCE_FROM = 50_000  # from this many rows whitening is learned from the covariance, in blocks
BLOCK = 16_384  # rows read, transformed and written at a time on the blocked path


def fit_transform(x: np.ndarray, *, power: float = 1.0, whiten_dim: int = 0, whiten_shrink: float = 1.0,
                  whiten_min: int = MIN_WHITEN_IMAGES) -> tuple[Transform, np.ndarray]:
    """Learn power + whitening (folders of at least `whiten_min` images) on the folder's (n, d) unit
    vectors; return it and the transformed vectors, (n, min(whiten_dim, d, n - 1)) when whitened.

    `x` may be anything that gives row blocks as arrays (`x[a:b]`: a np.memmap, a file reader), so a
    million photos' vectors need not be in memory. From COVARIANCE_FROM rows the whitening is learned
    from the covariance, accumulated block by block (the eigenvectors of the covariance are the
    right singular vectors the SVD gives below: the same whitening up to rounding and sign, without
    the SVD's copy of the whole matrix: 130 s and 5 GB of 100k x 2048), and only the whitened
    (n, whiten_dim) float32 rows are kept."""
    t = Transform(power)
    n, d = x.shape
    if not (whiten_dim and n >= max(whiten_min, 2)):
        return t, np.concatenate([t(np.asarray(x[s:s + BLOCK])) for s in range(0, n, BLOCK)]) if n else t(np.asarray(x))
    r = min(whiten_dim, d, n - 1)

    def whiten(mean: np.ndarray, eig: np.ndarray, vectors: np.ndarray) -> None:
        scale = 1.0 / np.sqrt(eig + whiten_shrink * eig.mean())
        t.mean, t.projection = mean.astype(np.float32), (vectors * scale).astype(np.float32)

    if n < COVARIANCE_FROM:
        y = t(np.asarray(x[0:n]))
        mean = y.mean(axis=0)
        _, s, vt = np.linalg.svd(y - mean, full_matrices=False)
        whiten(mean, s[:r] ** 2 / (n - 1), vt[:r].T)
        return t, l2_normalise((y - t.mean) @ t.projection).astype(np.float32)
    total, gram = np.zeros(d), np.zeros((d, d))
    for start in range(0, n, BLOCK):
        y = t(np.asarray(x[start:start + BLOCK]))
        total += y.sum(axis=0, dtype=np.float64)
        gram += y.T @ y  # float32 products, summed per block in float64
    mean = total / n
    values, vecs = np.linalg.eigh((gram - n * np.outer(mean, mean)) / (n - 1))
    top = np.argsort(values)[::-1][:r]
    whiten(mean, np.maximum(values[top], 0.0), vecs[:, top])
    out = np.empty((n, r), np.float32)
    for start in range(0, n, BLOCK):
        out[start:start + BLOCK] = t(np.asarray(x[start:start + BLOCK]))
    return t, out


def augment(x: np.ndarray, neighbours: np.ndarray, alpha: float = 3.0, chunk: int = 1024) -> np.ndarray:
    """Database-side augmentation: x_i <- normalise(x_i + sum_j max(cos_ij, 0)^alpha x_j) over i's
    neighbours ((n, k) int array, -1 padded). Chunked: memory stays O(chunk * k * d)."""
    out = np.empty_like(x)
    for s in range(0, len(x), chunk):
        xi, nbi = x[s:s + chunk], neighbours[s:s + chunk]
        nb = x[np.maximum(nbi, 0)]  # (c, k, d)
        w = np.clip(np.einsum("nd,nkd->nk", xi, nb), 0.0, None) ** alpha * (nbi >= 0)
        out[s:s + chunk] = xi + np.einsum("nk,nkd->nd", w, nb)
    return l2_normalise(out)


def prepare(x: np.ndarray, *, power: float = 1.0, whiten_dim: int = 0, whiten_shrink: float = 1.0,
            whiten_min: int = MIN_WHITEN_IMAGES, dba_k: int = 0, dba_alpha: float = 3.0, n_trees: int = 20,
            seed: int = 42) -> tuple[Transform, np.ndarray]:
    """All configured steps for one model's (n, d) vectors: (query-time transform, database vectors)."""
    from ensemble_group.index import ModelIndex

    t, x = fit_transform(x, power=power, whiten_dim=whiten_dim, whiten_shrink=whiten_shrink, whiten_min=whiten_min)
    if dba_k and len(x) > 1:
        index = ModelIndex(x.shape[1], n_trees=n_trees, seed=seed).build(x)
        k = min(dba_k, len(x) - 1)
        neighbours = np.stack([np.pad(index.neighbours(i, k), (0, k), constant_values=-1)[:k] for i in range(len(x))])
        x = augment(x, neighbours, dba_alpha)
    return t, x
