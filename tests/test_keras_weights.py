"""The Keras-weights path, with a weights file in Keras's own notop format made by the test.

Keras's ImageNet files cannot be downloaded here, so the test writes a file in exactly their format
(legacy HDF5, as `keras.applications` load it) from a weights=None model, puts it in a temporary
KERAS_HOME and checks that it is found, loaded, and that without it the error is clear and quick.
"""

import json
import time

import h5py
import keras
import numpy as np
import pytest

from ensemble_group.extractors import MODELS, Extractor
from ensemble_group.weights import WeightsNotFound, resolve, verify


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(tmp_path / "cache"))  # the weights digests' memo too
    monkeypatch.delenv("ENSEMBLE_GROUP_WEIGHTS", raising=False)
    monkeypatch.setenv("ENSEMBLE_GROUP_NO_DOWNLOAD", "1")
    return tmp_path / "keras"


def write_notop(path):
    """A VGG16 notop weights file in the legacy HDF5 layout of Keras's published files."""
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    keras.utils.set_random_seed(123)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, model)
    return model


def test_a_notop_file_in_the_keras_cache_is_found_and_loaded(keras_home):
    spec = MODELS["vgg16"]
    reference = write_notop(keras_home / "models" / spec.keras_file)
    ref = resolve("vgg16")
    assert ref.source == "keras-cache" and ref.path == keras_home / "models" / spec.keras_file
    assert ref.id.startswith(f"keras:{spec.keras_file}#md5=")
    extractor = Extractor(spec, ref.path)
    for got, want in zip(extractor.model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    image = np.random.default_rng(0).integers(0, 255, (240, 200, 3), dtype=np.uint8)
    v = extractor.embed([image, image])
    assert v.shape == (2, 512) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[1])
    ok, why = verify("vgg16", ref.path)  # not Keras's published file: verify must say so
    assert not ok and spec.keras_md5 in why


def test_a_given_file_and_the_env_folder_come_before_the_cache(keras_home, tmp_path, monkeypatch):
    spec = MODELS["vgg16"]
    write_notop(keras_home / "models" / spec.keras_file)
    env_dir = tmp_path / "weights"
    write_notop(env_dir / spec.keras_file)
    monkeypatch.setenv("ENSEMBLE_GROUP_WEIGHTS", str(env_dir))
    assert resolve("vgg16").source == "$ENSEMBLE_GROUP_WEIGHTS"
    given = tmp_path / "mine.h5"
    given.write_bytes((env_dir / spec.keras_file).read_bytes())
    assert resolve("vgg16", given).path == given
    with pytest.raises(WeightsNotFound, match="does not exist"):
        resolve("vgg16", tmp_path / "missing.h5")


def test_missing_weights_fail_quickly_with_what_where_and_how(keras_home):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFound) as e:
        resolve("resnet50")
    assert time.perf_counter() - start < 5
    message = str(e.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message  # what
    assert str(keras_home / "models") in message  # where it looked
    assert "--weights resnet50=" in message and "offline.toml" in message  # how to supply it


def test_random_weights_only_when_asked(keras_home):
    with pytest.raises(WeightsNotFound):
        resolve("inception_v3")
    ref = resolve("inception_v3", allow_random=True)
    assert ref.path is None and ref.source == "random"


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "inception_v3"])
def test_every_keras_member_gives_its_dimension_deterministically(name):
    """Architecture, input size and pooling of the designed trio (random weights: only shapes matter)."""
    spec = MODELS[name]
    extractor = Extractor(spec, None, batch_size=4)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (300, 200, 3), dtype=np.uint8) for _ in range(3)]
    a, b = extractor.embed(images), extractor.embed(images[::-1])[::-1]
    assert a.shape == (3, spec.dim) and extractor.model.input_shape[1:3] == (spec.input_size, spec.input_size)
    np.testing.assert_allclose(a, b, atol=1e-5)  # batch position does not change a vector


def test_a_weights_digest_is_remembered_until_the_file_changes(keras_home, tmp_path, monkeypatch):
    from ensemble_group.outputs import file_digest
    from ensemble_group.weights import DIGESTS, remembered_digest

    weights = tmp_path / "w.h5"
    weights.write_bytes(b"first weights" * 1000)
    assert remembered_digest(weights, "md5") == file_digest(weights, "md5")
    memo_file = tmp_path / "cache" / DIGESTS
    key = f"md5:{weights.resolve()}"
    memo = json.loads(memo_file.read_text())
    assert memo[key][2] == file_digest(weights, "md5")
    # the next run reads the digest from the memo, not from the file: a planted one proves it
    memo[key][2] = "planted"
    memo_file.write_text(json.dumps(memo))
    assert remembered_digest(weights, "md5") == "planted"
    # the file changes (new size and time): hashed again
    weights.write_bytes(b"other weights, longer" * 1000)
    assert remembered_digest(weights, "md5") == file_digest(weights, "md5") != "planted"
    assert remembered_digest(weights, "sha256") == file_digest(weights, "sha256")  # one entry per algorithm
    # a file gone is forgotten the next time the memo is written
    gone = tmp_path / "gone.h5"
    gone.write_bytes(b"x")
    remembered_digest(gone, "md5")
    gone.unlink()
    weights.write_bytes(b"third weights")
    remembered_digest(weights, "md5")
    assert sorted(json.loads(memo_file.read_text())) == [key, f"sha256:{weights.resolve()}"]
    # a damaged memo, or a cache that cannot be written: the digest is still right
    memo_file.write_text("{not json")
    assert remembered_digest(weights, "md5") == file_digest(weights, "md5")
    monkeypatch.setenv("ENSEMBLE_GROUP_CACHE", str(weights / "not-a-folder"))
    assert remembered_digest(weights, "md5") == file_digest(weights, "md5")
