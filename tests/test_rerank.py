"""k-reciprocal re-ranking: the paper's steps, checked against a plain set-based version; its effect
on same-product and look-alike pairs; one distance for every consumer; small folders left alone."""

import numpy as np
import pytest

from ensemble_group.fusion import Fusion
from ensemble_group.index import ModelIndex
from ensemble_group.rerank import EXPANSION_K, JACCARD_CENTRE, JACCARD_SCALE, Neighbourhoods, query_adjustment
from tests.test_fusion import products


def reference_jaccard(ids: np.ndarray, k: int) -> np.ndarray:
    """The paper's steps with Python sets and dense arrays, for checking the sparse version."""
    n = len(ids)
    top = [set(int(j) for j in row[:k] if j >= 0) for row in ids]
    half_k = max(1, int(round(k / 2)))
    top_half = [set(int(j) for j in row[:half_k] if j >= 0) for row in ids]
    r = [{i} | {j for j in top[i] if i in top[j]} for i in range(n)]
    r_half = [{i} | {j for j in top_half[i] if i in top_half[j]} for i in range(n)]
    expanded = []
    for i in range(n):
        s = set(r[i])
        for j in r[i]:
            if len(r_half[j] & r[i]) > 2 / 3 * len(r_half[j]):
                s |= r_half[j]
        expanded.append(s)
    base = np.zeros((n, n))
    for i, s in enumerate(expanded):
        base[i, list(s)] = 1.0 / len(s)
    v = np.zeros((n, n))
    for i in range(n):
        near = [i] + [int(j) for j in ids[i, :EXPANSION_K - 1] if j >= 0]
        v[i] = base[near].mean(axis=0)
    out = np.ones(ids.shape)
    for i in range(n):
        for c, j in enumerate(ids[i]):
            if j >= 0:
                out[i, c] = 1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum()
    return out


def fused(n_products=30, views=6, spread=0.5, seed=0, **kw):
    a, labels = products(n_products=n_products, views=views, spread=spread, seed=seed)
    vectors = {"a": a}
    fusion = Fusion.fit(vectors, **kw)
    neigh = fusion.neighbours({"a": ModelIndex(a.shape[1], n_trees=10).build(a)}, k=20)
    return fusion, neigh, labels


def test_jaccard_distances_follow_the_papers_steps():
    _, neigh, _ = fused(n_products=20, views=5)
    hood = Neighbourhoods(neigh.ids, 10)
    rows = np.broadcast_to(np.arange(len(neigh.ids))[:, None], neigh.ids.shape)
    valid = neigh.ids >= 0
    got = hood.jaccard(rows[valid], neigh.ids[valid])
    np.testing.assert_allclose(got, reference_jaccard(neigh.ids, 10)[valid], atol=1e-12)
    assert hood.jaccard(np.array([3]), np.array([3]))[0] == pytest.approx(0.0)
    np.testing.assert_allclose(np.asarray(hood.v.sum(axis=1)).ravel(), 1.0)  # distributions


def test_shared_neighbourhoods_pull_views_of_one_product_together_and_push_look_alikes_apart():
    plain, p_neigh, labels = fused()
    reranked, r_neigh, _ = fused(rerank_k=20, rerank_weight=1.0)
    assert plain.neighbourhoods is None and reranked.neighbourhoods is not None
    rows = np.broadcast_to(np.arange(len(labels))[:, None], r_neigh.ids.shape)
    listed = r_neigh.ids >= 0
    i, j = rows[listed], r_neigh.ids[listed]
    change = reranked.pairs(i, j) - plain.pairs(i, j)
    same = labels[i] == labels[j]
    assert change[same].mean() < -1.0 < 0.0 < change[~same].mean()
    assert change.min() >= -JACCARD_SCALE * JACCARD_CENTRE - 1e-9
    assert change.max() <= JACCARD_SCALE * (1 - JACCARD_CENTRE) + 1e-9
    # so the top neighbour is more often a view of the same product
    hits = lambda neigh: (labels[neigh.ids[:, 0]] == labels).mean()  # noqa: E731
    assert hits(r_neigh) >= hits(p_neigh)


def test_lists_pairs_and_matrix_see_the_same_reranked_distance():
    fusion, neigh, _ = fused(rerank_k=20, rerank_weight=0.5)
    for i in (0, 17, 101):
        ids = neigh.ids[i][neigh.ids[i] >= 0]
        np.testing.assert_allclose(fusion.pairs(np.full(len(ids), i), ids), neigh.dist[i, :len(ids)], rtol=1e-5)
        m = fusion.matrix(np.array([i, *ids[:3]]))
        np.testing.assert_allclose(m[0, 1:], neigh.dist[i, :3], rtol=1e-5)
        np.testing.assert_allclose(m, m.T, atol=1e-9)
        assert np.all(np.diff(neigh.dist[i, :len(ids)]) >= 0)  # still ranked


def test_small_folders_and_weight_zero_keep_the_fused_distances():
    plain, p_neigh, _ = fused(n_products=8, views=5)  # 40 images < 5 x 20
    small, s_neigh, _ = fused(n_products=8, views=5, rerank_k=20)
    assert small.neighbourhoods is None
    np.testing.assert_array_equal(s_neigh.ids, p_neigh.ids)
    np.testing.assert_array_equal(s_neigh.dist, p_neigh.dist)
    off, _, _ = fused(rerank_k=20, rerank_weight=0.0)
    assert off.neighbourhoods is None


def test_an_outside_image_is_reranked_as_if_it_were_one_more_image_of_the_folder():
    """Leave one image out, query it against the rest: the same re-ranked distances as in the whole
    folder (one model and exact search, so the first-stage lists of both agree)."""
    a, _ = products(n_products=30, views=5, spread=0.5)
    normalisers = Fusion.fit({"a": a}).normalisers
    exact = lambda v: {"a": ModelIndex(v.shape[1], n_trees=30, search_k=100_000).build(v)}  # noqa: E731
    whole = Fusion({"a": a}, normalisers, rerank_k=10)
    whole.neighbours(exact(a), k=20)
    q = 37
    rest = np.delete(a, q, axis=0)
    folder = Fusion({"a": rest}, normalisers, rerank_k=10)
    folder.neighbours(exact(rest), k=20)
    raw = np.sqrt(np.clip(2 - 2 * rest @ a[q], 0, 4))
    cand = np.argsort(normalisers["a"](raw), kind="stable")[:20]
    q_dist = normalisers["a"](raw[cand])
    got = q_dist + query_adjustment(folder.first_stage.ids, folder.first_stage.dist, cand, q_dist, 10, 1.0)
    in_whole = np.where(cand >= q, cand + 1, cand)  # the same images, numbered as in the whole folder
    np.testing.assert_allclose(got, whole.pairs(np.full(len(cand), q), in_whole), atol=1e-5)  # float32 dot products
