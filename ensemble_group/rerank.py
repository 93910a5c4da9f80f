"""k-reciprocal re-ranking of the fused neighbour lists (Zhong et al., CVPR 2017), without labels.

A product with many photos forms a clump whose photos share most of their near neighbours, even
when one pair of them is only moderately close (the front and the back of a box). A look-alike of
another product may be close to one photo and still share few neighbours with it. The Jaccard
distance between two images' k-reciprocal neighbourhoods measures that shared evidence; the
re-ranked distance of a pair is

    d + weight * JACCARD_SCALE * (d_J - JACCARD_CENTRE)

so a pair whose neighbourhoods overlap more than JACCARD_CENTRE's share comes closer (identical ones
by 5 x 0.6 = 3 robust-z units at weight 1) and one that overlaps less moves apart (no overlap: by 2).
The centre keeps the cutoff's scale: on grocery, the best cutoffs of the re-ranked and of the plain
fused distance come out alike with it (without it, re-ranked cutoffs sat about 2 units lower, so one
default cutoff could not serve folders re-ranked and folders too small to be). The
steps follow the paper, with its k1 = `rerank_k` (20) and k2 = 6, on uniform rather than
distance-weighted sets (the fused scale has no natural temperature; uniform sets measured better):

1. R(i): i and those of its k1 nearest that have i among their own k1 nearest (k-reciprocal);
2. each j in R(i) adds R_half(j) (k1/2-reciprocal) when at least 2/3 of that set is already in R(i);
3. V_i: the uniform distribution over that set, averaged over i and its k2 - 1 nearest (local
   query expansion);
4. d_J(i, j) = 1 - sum(min(V_i, V_j)) / sum(max(V_i, V_j)).

Everything is sparse: memory grows with n x k1 x k2, never n x n. It needs neighbourhoods much
smaller than the folder: `Fusion` re-ranks only folders of at least MIN_IMAGES_PER_K x k1 images.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

JACCARD_SCALE = 5.0  # the whole Jaccard range spans 5 robust standard deviations (times `weight`)
JACCARD_CENTRE = 0.6  # pairs overlapping more than this come closer, the others move apart
EXPANSION_K = 6  # k2 of the paper: local query expansion over an image and its 5 nearest
MIN_IMAGES_PER_K = 5  # below 5 x k1 images, every neighbourhood covers much of the folder: no signal


class Neighbourhoods:
    """Each image's expanded k-reciprocal neighbourhood as a distribution over the folder (steps 1-3),
    built from (n, m) neighbour lists ranked by fused distance (-1 padded); `jaccard` gives step 4
    for any pairs, so listed pairs, groups and single pairs all see the same re-ranked distance."""

    def __init__(self, ids: np.ndarray, k: int) -> None:
        n = len(ids)
        k = min(k, ids.shape[1])
        sets = _row_normalised(_expanded_sets(ids, k))
        self.v = (_row_normalised(_top(ids, EXPANSION_K - 1, self_too=True)) @ sets).tocsr()
        self.v.sort_indices()
        self.n = n
        self._keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.v.indptr)) * n + self.v.indices

    @classmethod
    def applies(cls, n: int, k: int) -> bool:
        """Re-ranking carries a signal only when neighbourhoods are much smaller than the folder."""
        return k >= 1 and n >= MIN_IMAGES_PER_K * k

    def jaccard(self, a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Jaccard distances d_J(a[t], b[t]) of image pairs, in [0, 1]."""
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        shared = np.zeros(len(a))
        for s in range(0, len(a), chunk):
            shared[s:s + chunk] = self._min_sums(a[s:s + chunk], b[s:s + chunk])
        return 1.0 - shared / (2.0 - shared)  # rows of v sum to 1: sum(max) = 2 - sum(min)

    def adjustment(self, a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
        """What re-ranking adds to the fused distance of pairs (a[t], b[t]), same shape."""
        shape = np.broadcast(a, b).shape
        a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
        return (weight * JACCARD_SCALE * (self.jaccard(a, b) - JACCARD_CENTRE)).reshape(shape)

    def _min_sums(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """sum_c min(v[a_t, c], v[b_t, c]) per pair: row a's entries looked up among row b's (sorted keys)."""
        v = self.v
        start, length = v.indptr[a], np.diff(v.indptr)[a]
        pair = np.repeat(np.arange(len(a)), length)
        entry = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length) + np.repeat(start, length)
        wanted = b[pair].astype(np.int64) * self.n + v.indices[entry]
        pos = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
        hit = self._keys[pos] == wanted
        return np.bincount(pair[hit], weights=np.minimum(v.data[entry[hit]], v.data[pos[hit]]), minlength=len(a))


def query_adjustment(ids: np.ndarray, dist: np.ndarray, q_ids: np.ndarray, q_dist: np.ndarray, k: int,
                     weight: float) -> np.ndarray:
    """What re-ranking adds to an outside image's fused distances q_dist to its candidates q_ids
    (nearest first), as if it were one more image of the folder whose first-stage lists are (n, m)
    ids / dist: it enters the list of every candidate it is nearer to than that list's last entry,
    and its own list is its candidates. The neighbourhoods are then built as for the folder."""
    n, m = ids.shape
    ids, dist = ids.copy(), dist.copy()
    for c, d in zip(q_ids, q_dist):
        at = int(np.searchsorted(dist[c], d, side="right"))
        if at < m:
            ids[c, at + 1:], dist[c, at + 1:] = ids[c, at:-1].copy(), dist[c, at:-1].copy()
            ids[c, at], dist[c, at] = n, d
    own = np.full((1, m), -1, dtype=ids.dtype)
    own[0, :min(m, len(q_ids))] = q_ids[:m]
    hood = Neighbourhoods(np.concatenate([ids, own]), k)
    return hood.adjustment(np.full(len(q_ids), n), np.asarray(q_ids), weight)


def _top(ids: np.ndarray, k: int, *, self_too: bool = False) -> sparse.csr_matrix:
    """(n, n) 0/1 matrix of each image's k nearest (and itself, with self_too)."""
    n = len(ids)
    top = ids[:, :k]
    if self_too:
        top = np.concatenate([np.arange(n)[:, None], top], axis=1)
    rows = np.repeat(np.arange(n), top.shape[1])
    cols = top.ravel()
    keep = cols >= 0
    return sparse.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, n))


def _reciprocal(ids: np.ndarray, k: int) -> sparse.csr_matrix:
    """(n, n) 0/1: j in R(i) when each is in the other's k nearest; i is in its own R(i)."""
    a = _top(ids, k)
    return (a.multiply(a.T) + sparse.identity(len(ids), format="csr")).tocsr()


def _expanded_sets(ids: np.ndarray, k: int) -> sparse.csr_matrix:
    """(n, n) 0/1: R(i) plus each R_half(j), j in R(i), that is at least 2/3 inside R(i)."""
    r = _reciprocal(ids, k)
    half = _reciprocal(ids, max(1, int(round(k / 2))))
    half_size = np.asarray(half.sum(axis=1)).ravel()
    inside = (r @ half.T).multiply(r).tocoo()  # [i, j] = |R(i) & R_half(j)| for j in R(i)
    ok = inside.data > 2.0 / 3.0 * half_size[inside.col]
    adds = sparse.csr_matrix((np.ones(ok.sum()), (inside.row[ok], inside.col[ok])), shape=r.shape)
    out = (r + adds @ half).tocsr()
    out.data[:] = 1.0
    return out


def _row_normalised(x: sparse.csr_matrix) -> sparse.csr_matrix:
    sums = np.asarray(x.sum(axis=1)).ravel()
    return sparse.diags(1.0 / np.maximum(sums, 1e-12)) @ x
