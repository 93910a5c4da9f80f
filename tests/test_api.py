"""The Python API on its own: Grouper(config).fit(vectors).labels_, save / load, query from memory."""

import json

import numpy as np
import pytest

from ensemble_group import Config, Grouper
from ensemble_group.evaluation.metrics import pairwise_prf
from ensemble_group.grouper import IndexDamaged, numbered

MODELS = ("vgg16-tv", "mobilenet-v2")


def photos(n_products: int = 12, per_product: int = 5, dim: int = 64, seed: int = 0):
    """Two members' vectors of n_products x per_product 'photos' (each product a direction plus noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_products, dim))
    truth = np.repeat(np.arange(n_products), per_product)
    first = centres[truth] + 0.25 * rng.normal(size=(len(truth), dim))
    second = centres[truth] @ rng.normal(size=(dim, dim + 16)) + 2.0 * rng.normal(size=(len(truth), dim + 16))
    return {MODELS[0]: first.astype(np.float32), MODELS[1]: second.astype(np.float32)}, truth


@pytest.fixture(scope="module")
def fitted():
    vectors, truth = photos()
    names = [f"p{i:03d}.jpg" for i in range(len(truth))]
    return Grouper(Config(models=MODELS)).fit(vectors, names), vectors, truth


def test_fit_returns_itself_with_labels_numbered_like_groups_json(fitted):
    grouper, vectors, truth = fitted
    assert grouper.labels_.shape == (60,) and grouper.names_[0] == "p000.jpg" and grouper.members_ == list(MODELS)
    assert pairwise_prf(truth, grouper.labels_)["pairwise_f1"] == 1.0  # well-separated products: all found
    sizes = np.bincount(grouper.labels_)
    assert list(sizes) == sorted(sizes, reverse=True)  # id 0 the largest group, as in groups.json
    value, how = grouper.cutoff()
    assert how["rule"] == "auto" and value <= -2
    assert pairwise_prf(truth, grouper.labels_at(-50.0))["pairwise_recall"] < 1  # a far stricter cut splits


def test_numbered_breaks_ties_by_the_first_rows_name():
    assert numbered(np.array([7, 7, 3, 3, 9])).tolist() == [0, 0, 1, 1, 2]
    assert numbered(np.array([7, 7, 3, 3, 9]), ["b", "c", "a", "d", "e"]).tolist() == [1, 1, 0, 0, 2]


def test_fit_checks_its_input_before_any_work():
    vectors, _ = photos()
    with pytest.raises(ValueError, match="no vectors: give one"):
        Grouper(Config(models=MODELS)).fit({})
    alone = Grouper(Config(models=MODELS)).fit({MODELS[0]: vectors[MODELS[0]]})  # the members are what it is given
    assert alone.members_ == [MODELS[0]] and list(alone.indexes_) == [MODELS[0]]
    with pytest.raises(ValueError, match="same n rows"):
        Grouper(Config(models=MODELS)).fit({MODELS[0]: vectors[MODELS[0]], MODELS[1]: vectors[MODELS[1]][:-1]})
    with pytest.raises(ValueError, match="3 names for 60 rows"):
        Grouper(Config(models=MODELS)).fit(vectors, ["a", "b", "c"])
    with pytest.raises(ValueError, match="not fitted"):
        Grouper().query({m: v[0] for m, v in vectors.items()})


def test_a_photo_queries_to_itself_and_its_product_from_memory(fitted):
    grouper, vectors, truth = fitted
    found = grouper.query({m: v[17] for m, v in vectors.items()}, k=5)
    assert found[0][0] == 17 and [d for _, d in found] == sorted(d for _, d in found)
    assert {truth[row] for row, _ in found[:5]} == {truth[17]}


def test_save_then_load_answers_queries_as_the_fitted_grouper(fitted, tmp_path):
    grouper, vectors, _ = fitted
    manifest = grouper.save(tmp_path, about={"input": "/photos"})
    doc = json.loads(manifest.read_text())
    assert doc["input"] == "/photos" and doc["group_of"] == grouper.labels_.tolist() and doc["format"] == 1
    assert set(doc["files"]) == {f.name for f in tmp_path.iterdir()} - {"manifest.json"}
    loaded = Grouper.load(tmp_path)
    assert loaded.about_ == {"input": "/photos"} and loaded.names_ == grouper.names_
    assert loaded.labels_.tolist() == grouper.labels_.tolist() and loaded.config == grouper.config
    assert loaded.members_ == grouper.members_
    for row in (0, 31, 59):
        query = {m: v[row] for m, v in vectors.items()}
        (rows, dist), (want_rows, want_dist) = zip(*loaded.query(query, k=8)), zip(*grouper.query(query, k=8))
        assert rows == want_rows and dist == pytest.approx(want_dist, abs=1e-5)
    again = Grouper.load(tmp_path, neighbours=True)  # the vectors read back from the Annoy files
    assert (again.neighbours_.ids == grouper.neighbours_.ids).all()
    assert again.labels_at(grouper.cutoff()[0]).tolist() == grouper.labels_.tolist()


def test_a_damaged_index_folder_is_refused_with_how_to_rebuild(fitted, tmp_path):
    grouper, _, _ = fitted
    grouper.save(tmp_path)
    ann = tmp_path / f"{MODELS[0]}.ann"
    ann.write_bytes(ann.read_bytes()[:-8])
    with pytest.raises(IndexDamaged, match="not the file this index was written with.*run fit again"):
        Grouper.load(tmp_path, rebuild="run fit again")
    (tmp_path / "again").mkdir()
    grouper.save(tmp_path / "again")
    with pytest.raises(IndexDamaged, match="lacks models"):  # a key the caller needs (the CLI: weights ids)
        Grouper.load(tmp_path / "again", required=("models",))


def test_larger_folders_search_their_indexes_more():
    from ensemble_group.grouper import ON_DISK_FROM, search_k

    config = Config()
    assert search_k(config, ON_DISK_FROM) == -1  # Annoy's own default (n_trees x k) up to 100k images
    assert search_k(config, 4 * ON_DISK_FROM) == config.n_trees * (config.k + 1) * 4  # then in step with n
    assert search_k(config.replace(search_k=500), 10 * ON_DISK_FROM) == 500  # a configured one is kept
