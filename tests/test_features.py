"""Extraction in whole batches of one fixed shape, padding only the run's last batch, and little of it."""

from pathlib import Path

import numpy as np
import pytest

from ensemble_group.features import even_batch

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "flipkart" / "images"


@pytest.mark.parametrize("n, largest, want", [(200, 32, 29), (64, 32, 32), (65, 32, 22), (20, 32, 20),
                                              (1, 32, 1), (0, 32, 32), (7, 1, 1)])
def test_even_batch_covers_n_in_the_fewest_batches_with_the_least_padding(n, largest, want):
    assert even_batch(n, largest) == want
    if n:
        batches = -(-n // want)
        assert batches == -(-n // largest)  # no more batches than the largest size needs
        assert batches * want - n < batches  # under one padded image per batch


def test_a_run_pads_only_its_last_batch(tmp_path):
    """6 images with batch size 4: two batches of 3 (one shape), not 4 + 4 with 2 padded."""
    pytest.importorskip("tensorflow")
    from ensemble_group.features import LazyExtractor, extract
    from ensemble_group.images import hash_folder
    from ensemble_group.pipeline import Reporter

    for p in sorted(SAMPLE.iterdir())[:6]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    images, _ = hash_folder(tmp_path)
    lazy = LazyExtractor("mobilenet-v2", None, batch_size=4, framing="squash")
    shapes = []
    forward = lazy.extractor._forward
    lazy.extractor._forward = lambda x: shapes.append(x.shape[0]) or forward(x)
    feats = extract(images, {"mobilenet-v2": lazy}, {"mobilenet-v2": "random"}, None, Reporter())
    assert shapes == [3, 3]
    assert feats.vectors["mobilenet-v2"].shape == (6, 1280)
    assert np.allclose(np.linalg.norm(feats.vectors["mobilenet-v2"], axis=1), 1, atol=1e-5)


def test_gem_pooling_is_the_generalized_mean_of_the_last_map_and_has_its_own_cache_key():
    pytest.importorskip("tensorflow")
    import keras

    from ensemble_group.extractors import GEM_P, MODELS, Extractor
    from ensemble_group.features import settings_key

    x = np.random.default_rng(0).uniform(0, 255, size=(3, 224, 224, 3)).astype(np.float32)
    gem = Extractor(MODELS["mobilenet-v2"], None, batch_size=3, pooling="gem")
    avg = Extractor(MODELS["mobilenet-v2"], None, batch_size=3)
    trunk = keras.Model(gem.model.input, gem.model.layers[-2].output)  # the map before pooling
    fmap = np.maximum(trunk(MODELS["mobilenet-v2"].preprocess(x)).numpy(), 1e-6)
    want = (fmap ** GEM_P).mean(axis=(1, 2)) ** (1 / GEM_P)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = gem.embed_framed(x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got * avg.embed_framed(x)).sum(axis=1).max() < 0.9999  # not average pooling in disguise
    assert settings_key("vgg16", "w", "squash") == "vgg16|w|framing=squash|input_size=224"  # old caches stay valid
    assert settings_key("vgg16", "w", "squash", "gem") != settings_key("vgg16", "w", "squash")


def test_flip_adds_the_mirror_images_vector_and_has_its_own_cache_key():
    pytest.importorskip("tensorflow")
    from ensemble_group.extractors import MODELS, Extractor, l2_normalise
    from ensemble_group.features import settings_key

    spec = MODELS["mobilenet-v2"]
    x = np.random.default_rng(1).uniform(0, 255, size=(2, 224, 224, 3)).astype(np.float32)
    flipped = Extractor(spec, None, batch_size=2, flip=True)
    model = flipped.model
    pooled = lambda a: model(spec.preprocess(a)).numpy()  # noqa: E731
    np.testing.assert_allclose(flipped.embed_framed(x), l2_normalise(pooled(x) + pooled(x[:, :, ::-1])), atol=1e-5)
    mirror_symmetric = np.concatenate([x[:, :, :112], x[:, :, :112][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(flipped.embed_framed(mirror_symmetric), l2_normalise(pooled(mirror_symmetric)), atol=1e-5)
    assert settings_key("vgg16", "w", "squash", flip=True) != settings_key("vgg16", "w", "squash")
