"""Clustering metrics on two label arrays (true, pred), all from the sparse contingency table.

Everything is O(n + non-zero cells) so 100k images score in well under a second; no pair is
ever enumerated. Labels may be any sortable values; only equality matters.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy.sparse import coo_matrix


def _check(true, pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(true).ravel(), np.asarray(pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"true and pred differ in length: {t.size} vs {p.size}")
    return t, p


def _table(true, pred):
    """(n_ij, a_i per cell, b_j per cell, all true group sizes, all pred group sizes), float64."""
    t, p = _check(true, pred)
    if t.size == 0:
        z = np.zeros(0)
        return z, z, z, z, z
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    ti, pi = ti.ravel(), pi.ravel()
    m = coo_matrix((np.ones(t.size), (ti, pi)), shape=(ti.max() + 1, pi.max() + 1)).tocsr().tocoo()
    a = np.bincount(ti).astype(float)
    b = np.bincount(pi).astype(float)
    return m.data.astype(float), a[m.row], b[m.col], a, b


def contingency(true, pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero cells n_ij with their row sum a_i (true group size) and column sum b_j (pred
    group size), one entry per cell: every metric here is a sum over cells. float64 so pair
    products cannot overflow at n ~ 1e5."""
    return _table(true, pred)[:3]


def _comb2(x: np.ndarray) -> float:
    return float(np.sum(x * (x - 1.0)) / 2.0)


def n_groups(true, pred) -> dict:
    """Distinct groups on each side: the first sanity check (over/under-merging)."""
    t, p = _check(true, pred)
    return {"n_true_groups": int(np.unique(t).size), "n_pred_groups": int(np.unique(p).size)}


def _pair_counts(true, pred) -> tuple[float, float, float, float]:
    """(together in both, together in pred, together in truth, all pairs) over unordered pairs."""
    nij, _, _, a, b = _table(true, pred)
    n = float(nij.sum())
    return _comb2(nij), _comb2(b), _comb2(a), n * (n - 1.0) / 2.0


def adjusted_rand_index(true, pred) -> float:
    """Hubert-Arabie ARI via the pair confusion matrix (same formula as sklearn).

    Degenerate cases where the chance-corrected denominator vanishes (n < 2, both partitions
    all-singletons, or both one cluster) have no disagreeing pair, so they return 1.0.
    """
    tp, pred_pairs, true_pairs, total = _pair_counts(true, pred)
    fp, fn = pred_pairs - tp, true_pairs - tp
    tn = total - tp - fp - fn
    if fp == 0 and fn == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def _entropy(sizes: np.ndarray, n: float) -> float:
    q = sizes / n
    return float(-np.sum(q * np.log(q)))


def normalized_mutual_info(true, pred) -> float:
    """NMI with arithmetic-mean normalisation (sklearn's default).

    As in sklearn: 1.0 when both sides have a single cluster (or n == 0: nothing is split, a
    perfect match); 0.0 when MI is 0 otherwise (e.g. one side a single cluster, the other not).
    """
    t, p = _check(true, pred)
    ut, up = np.unique(t), np.unique(p)
    if ut.size == up.size and ut.size <= 1:
        return 1.0
    nij, a, b, sa, sb = _table(t, p)
    n = float(t.size)
    mi = max(float(np.sum(nij / n * (np.log(nij) + math.log(n) - np.log(a) - np.log(b)))), 0.0)
    if mi == 0.0:
        return 0.0
    return float(mi / ((_entropy(sa, n) + _entropy(sb, n)) / 2.0))


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def pairwise_prf(true, pred) -> dict:
    """Precision/recall/F1 over unordered image pairs placed together.

    Zero denominators are vacuous, not failures: no predicted pair -> precision 1.0 (no false
    merge was claimed); no true pair -> recall 1.0 (nothing to find). F1 is 0.0 when P + R == 0.
    """
    tp, pred_pairs, true_pairs, _ = _pair_counts(true, pred)
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return {"pairwise_precision": p, "pairwise_recall": r, "pairwise_f1": _f1(p, r)}


def bcubed(true, pred) -> dict:
    """Bagga & Baldwin B-cubed: per-item precision |C∩L|/|C|, recall |C∩L|/|L| (item included),
    averaged over items; F1 is the harmonic mean of the two averages. Empty input -> 1.0."""
    nij, a, b = contingency(true, pred)
    n = nij.sum()
    if n == 0:
        return {"bcubed_precision": 1.0, "bcubed_recall": 1.0, "bcubed_f1": 1.0}
    p = float(np.sum(nij * nij / b) / n)
    r = float(np.sum(nij * nij / a) / n)
    return {"bcubed_precision": p, "bcubed_recall": r, "bcubed_f1": _f1(p, r)}


def mean_image_f1(true, pred) -> float:
    """Shopee metric: mean over images of F1(own predicted group, own true group), both including
    the image itself, i.e. 2|C∩L| / (|C| + |L|). Empty input -> 1.0."""
    nij, a, b = contingency(true, pred)
    n = nij.sum()
    return 1.0 if n == 0 else float(np.sum(nij * 2.0 * nij / (a + b)) / n)


def recall_at_k(true, neighbours, ks: Iterable[int] = (1, 5)) -> dict:
    """Retrieval Recall@k: share of queries with >= 1 same-product image in their first k ranked
    neighbours, over queries that have any same-product partner at all (others cannot succeed).

    `neighbours` is (n, m) of indices into `true`, self excluded; -1 pads short rows, and a stray
    self index is treated as a miss. NaN when no query has a partner.
    """
    t = np.asarray(true).ravel()
    nb = np.asarray(neighbours, dtype=np.int64)
    if nb.ndim != 2 or nb.shape[0] != t.size:
        raise ValueError(f"neighbours must be (n, m) with n = {t.size}, got {nb.shape}")
    if nb.size and nb.max() >= t.size:
        raise ValueError(f"neighbour index {int(nb.max())} out of range for n = {t.size}")
    _, inv, counts = np.unique(t, return_inverse=True, return_counts=True)
    eligible = counts[inv.ravel()] > 1
    valid = (nb >= 0) & (nb != np.arange(t.size)[:, None])
    hit = valid & (t[np.where(valid, nb, 0)] == t[:, None]) if nb.size else valid
    out = {}
    for k in ks:
        if not eligible.any():
            out[f"recall_at_{k}"] = float("nan")
        else:
            out[f"recall_at_{k}"] = float(hit[eligible, :k].any(axis=1).mean())
    return out


def score(true, pred, neighbours=None, ks: Iterable[int] = (1, 5)) -> dict:
    """All metrics in one flat dict with stable keys (recall_at_k only when neighbours given)."""
    t, p = _check(true, pred)
    out = {"n_images": int(t.size), **n_groups(t, p), "ari": adjusted_rand_index(t, p),
           "nmi": normalized_mutual_info(t, p), **pairwise_prf(t, p), **bcubed(t, p),
           "mean_image_f1": mean_image_f1(t, p)}
    if neighbours is not None:
        out.update(recall_at_k(t, neighbours, ks))
    return out


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Markdown table (floats to 3 decimals, missing cells blank) for CLI/benchmark reports."""

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{float(v):.3f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
