"""Annoy index per model: built once, saved, loaded, reproducible."""

import numpy as np

from ensemble_group.pooling import l2_normalise
from ensemble_group.index import ModelIndex, angular_distance


def vectors(n=200, dim=32, seed=0):
    return l2_normalise(np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32))


def test_build_save_load_gives_the_same_neighbours(tmp_path):
    v = vectors()
    built = ModelIndex(32, n_trees=10, seed=7).build(v)
    before = [built.neighbours(i, 5).tolist() for i in range(len(v))]
    built.save(tmp_path / "m.ann")
    assert not list(tmp_path.glob("*.part"))
    loaded = ModelIndex.load(tmp_path / "m.ann", 32)
    assert loaded.size == len(v)
    assert [loaded.neighbours(i, 5).tolist() for i in range(len(v))] == before
    np.testing.assert_allclose(loaded.vectors([3, 4]), v[[3, 4]], atol=1e-6)


def test_same_seed_same_trees(tmp_path):
    v = vectors()
    a = ModelIndex(32, n_trees=5, seed=1).build(v)
    b = ModelIndex(32, n_trees=5, seed=1).build(v)
    a.save(tmp_path / "a.ann")
    b.save(tmp_path / "b.ann")
    assert (tmp_path / "a.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()


def test_neighbours_exclude_the_item_and_match_exact_search():
    v = vectors()
    index = ModelIndex(32, n_trees=50, search_k=10_000).build(v)
    for i in (0, 50, 199):
        got = index.neighbours(i, 5)
        assert i not in got and len(got) == 5
        exact = np.argsort(angular_distance(v[i], v))[1:6]
        assert set(got) == set(exact)


def test_query_distances_are_annoys_angular_distance():
    v = vectors()
    index = ModelIndex(32, n_trees=10).build(v)
    ids, d = index.query(v[10], 3)
    assert ids[0] == 10 and d[0] < 1e-3
    np.testing.assert_allclose(d, angular_distance(v[10], v[ids]), atol=1e-3)  # sqrt amplifies float noise near 0


def test_all_neighbours_in_threads_equal_one_query_at_a_time():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((700, 24)).astype(np.float32)
    index = ModelIndex(24, n_trees=5).build(v / np.linalg.norm(v, axis=1, keepdims=True))
    together = index.all_neighbours(6, workers=3, chunk=100)
    assert together.shape == (700, 6)
    for i in (0, 99, 100, 350, 699):
        assert together[i].tolist() == index.neighbours(i, 6).tolist()
    assert (together != np.arange(700)[:, None]).all()  # never itself
    few = ModelIndex(24).build(v[:3] / np.linalg.norm(v[:3], axis=1, keepdims=True)).all_neighbours(5)
    assert (few[:, 2:] == -1).all() and (few[:, :2] >= 0).all()  # padded when there are fewer items


def test_an_index_built_on_disk_is_the_same_index(tmp_path):
    """Large folders build each index into a file, memory-mapped: the same trees, the same neighbours,
    and `save` copies the file (Annoy's own save does nothing for an index built on disk)."""
    v = vectors()
    in_memory = ModelIndex(32, n_trees=5, seed=1).build(v)
    on_disk = ModelIndex(32, n_trees=5, seed=1).build(v, on_disk=tmp_path / "work.ann")
    assert [on_disk.neighbours(i, 5).tolist() for i in range(20)] == [in_memory.neighbours(i, 5).tolist() for i in range(20)]
    on_disk.drop_pages()  # mapped again, still the same index
    assert on_disk.neighbours(7, 5).tolist() == in_memory.neighbours(7, 5).tolist()
    in_memory.save(tmp_path / "a.ann")
    on_disk.save(tmp_path / "b.ann")
    assert (tmp_path / "a.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()
    assert on_disk.neighbours(3, 5).tolist() == in_memory.neighbours(3, 5).tolist()  # loaded from the saved copy
