"""Fusion: normalisation puts models with different distance scales on one scale; ranking is exact."""

import json

import numpy as np
import pytest

from ensemble_group.pooling import l2_normalise
from ensemble_group.fusion import Fusion, fit_from_distances, fit_normaliser
from ensemble_group.index import ModelIndex, angular_distance


def products(n_products=30, views=4, dim=64, spread=0.35, seed=0):
    """Unit vectors of `n_products` products, `views` noisy views each, and their product labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_products, dim))
    x = np.repeat(centres, views, axis=0) + spread * rng.normal(size=(n_products * views, dim))
    return l2_normalise(x.astype(np.float32)), np.repeat(np.arange(n_products), views)


def squashed(vectors, offset=6.0):
    """The same images as a model whose features share a big common component (like post-ReLU VGG
    features): every angular distance shrinks, so raw cutoffs mean something else."""
    common = np.ones(vectors.shape[1], dtype=np.float32) / np.sqrt(vectors.shape[1])
    return l2_normalise(vectors + offset * common)


def test_robust_z_is_invariant_to_affine_changes_of_a_models_distances():
    d = np.random.default_rng(1).gamma(4.0, 0.1, size=5000)
    a, b = fit_from_distances(d), fit_from_distances(0.2 * d + 0.05)
    probe = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(a(probe), b(0.2 * probe + 0.05), atol=1e-9)


def test_quantile_normalisation_is_rank_based_and_agrees_with_robust_z_on_a_normal_spread():
    rng = np.random.default_rng(2)
    d = np.clip(rng.normal(1.0, 0.08, size=20_000), 0.0, 2.0)
    quantile, robust = fit_from_distances(d, "quantile"), fit_from_distances(d, "robust-z")
    probe = np.linspace(0.6, 1.4, 17)  # -5 ... +5 robust standard deviations
    np.testing.assert_allclose(quantile(probe), robust(probe), atol=0.15)
    # rank-based: any increasing change of a model's distances leaves the scores where they were
    cubed = fit_from_distances(d ** 3, "quantile")
    inside = np.linspace(0.85, 1.15, 7)  # within the 1% ... 99% quantiles
    np.testing.assert_allclose(cubed(inside ** 3), quantile(inside), atol=0.03)
    assert np.all(np.diff(quantile(np.linspace(0.0, 2.0, 201))) > 0)  # monotone over the whole range


def test_quantile_normalisation_straightens_a_skewed_model():
    """A model whose unrelated pairs spread further on the close side: robust-z puts that side's
    2.3% quantile far from -2, quantile normalisation at -2."""
    rng = np.random.default_rng(3)
    d = 1.2 - rng.gamma(2.0, 0.05, size=20_000)  # long tail towards small distances
    q = np.quantile(d, 0.02275)
    assert abs(fit_from_distances(d, "quantile")(q) + 2.0) < 0.05
    assert fit_from_distances(d, "robust-z")(q) < -2.5


def test_a_quantile_normaliser_survives_its_manifest():
    from ensemble_group.fusion import Normaliser

    n = fit_from_distances(np.random.default_rng(4).gamma(4.0, 0.1, size=3000), "quantile")
    again = Normaliser.from_dict(json.loads(json.dumps(n.to_dict())))
    probe = np.linspace(0.0, 2.0, 41)
    np.testing.assert_array_equal(again(probe), n(probe))


def test_one_cutoff_means_the_same_for_models_with_very_different_scales():
    a, labels = products()
    b = squashed(a)
    same = labels[:, None] == labels[None, :]
    iu = np.triu_indices(len(a), 1)
    raw_a = angular_distance(a[iu[0]], a[iu[1]])
    raw_b = angular_distance(b[iu[0]], b[iu[1]])
    same_pairs = same[iu]
    # raw scales differ a lot: B's *unrelated* pairs are closer than A's *same-product* pairs
    assert np.median(raw_b[~same_pairs]) < np.median(raw_a[same_pairs])
    na, nb = fit_normaliser(a), fit_normaliser(b)
    za, zb = na(raw_a), nb(raw_b)
    # after normalisation the two models agree on where same-product and unrelated pairs lie
    for part in (same_pairs, ~same_pairs):
        assert abs(np.median(za[part]) - np.median(zb[part])) < 0.5
    cutoff = -3.0
    assert (za[same_pairs] <= cutoff).mean() > 0.9 and (zb[same_pairs] <= cutoff).mean() > 0.9
    assert (za[~same_pairs] <= cutoff).mean() < 0.01 and (zb[~same_pairs] <= cutoff).mean() < 0.01


def test_unrelated_pairs_centre_on_zero_whatever_the_folder_size():
    small, _ = products(n_products=20)
    large, _ = products(n_products=200)
    assert abs(fit_normaliser(small).centre - fit_normaliser(large).centre) < 0.02


def test_fused_neighbours_are_the_exact_weighted_mean_over_the_union_of_candidates():
    a, labels = products(n_products=10, views=3)
    vectors = {"a": a, "b": squashed(a, 3.0)}
    fusion = Fusion.fit(vectors, weights={"a": 3.0, "b": 1.0})
    indexes = {m: ModelIndex(v.shape[1], n_trees=10).build(v) for m, v in vectors.items()}
    neigh = fusion.neighbours(indexes, k=4)
    assert neigh.ids.shape[0] == len(a) and neigh.ids.shape[1] >= 4
    for i in (0, 7, 29):
        ids = neigh.ids[i][neigh.ids[i] >= 0]
        assert i not in ids and len(set(ids)) == len(ids)  # no self, no duplicates
        expected = 0.75 * fusion.normalisers["a"](angular_distance(a[i], a[ids])) + \
            0.25 * fusion.normalisers["b"](angular_distance(vectors["b"][i], vectors["b"][ids]))
        np.testing.assert_allclose(neigh.dist[i][: len(ids)], expected, rtol=1e-5)  # float32 dot products
        assert np.all(np.diff(neigh.dist[i][: len(ids)]) >= 0)  # ranked
        assert set(np.flatnonzero(labels == labels[i])) - {i} <= set(ids[:4])  # true views come first


def test_matrix_matches_pairs():
    a, _ = products(n_products=5, views=2)
    fusion = Fusion.fit({"a": a})
    members = np.array([0, 3, 5, 9])
    m = fusion.matrix(members)
    assert np.allclose(np.diag(m), 0)
    assert m[1, 3] == pytest.approx(fusion.pairs(np.array([3]), np.array([9]))[0], rel=1e-5)


def test_tiny_folders_do_not_crash():
    one = l2_normalise(np.ones((1, 8), dtype=np.float32))
    assert fit_normaliser(one).scale == 1.0
    two = l2_normalise(np.eye(2, 8, dtype=np.float32))
    fusion = Fusion.fit({"a": two})
    neigh = fusion.neighbours({"a": ModelIndex(8).build(two)}, k=5)
    assert neigh.ids.tolist() == [[1], [0]]


def test_local_scaling_brings_a_sparse_image_nearer_and_keeps_pairs_matrix_and_lists_consistent():
    a, labels = products(n_products=12, views=4, spread=0.25)
    rng = np.random.default_rng(3)
    odd = l2_normalise((a[0] + 1.2 * rng.normal(size=a.shape[1])).astype(np.float32)[None])  # a far view of product 0
    vectors = {"a": np.concatenate([a, odd])}
    index = {"a": ModelIndex(a.shape[1], n_trees=10).build(vectors["a"])}
    plain = Fusion.fit(vectors)
    local = Fusion.fit(vectors, local_k=3)
    p_neigh, l_neigh = plain.neighbours(index, k=6), local.neighbours(index, k=6)
    last = len(a)
    # the odd view lives in a sparse region: its offset is the largest, so its distances shrink most
    assert local.offset.argmax() == last and local.offset[last] > 0
    assert np.median(local.offset) == pytest.approx(0.0, abs=1e-9)
    assert l_neigh.dist[last, 0] < p_neigh.dist[last, 0]
    # every consumer of distances sees the same locally scaled value
    ids = l_neigh.ids[last][l_neigh.ids[last] >= 0]
    np.testing.assert_allclose(local.pairs(np.full(len(ids), last), ids), l_neigh.dist[last, :len(ids)], rtol=1e-5)
    m = local.matrix(np.array([last, *ids[:2]]))
    np.testing.assert_allclose(m[0, 1:], l_neigh.dist[last, :2], rtol=1e-5)
    np.testing.assert_allclose(m, m.T)
    assert plain.offset is None  # off by default: distances are the plain fused ones
