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
    from ensemble_group.features import ExtractionSettings, LazyExtractor, extract
    from ensemble_group.images import hash_folder
    from ensemble_group.reporter import Reporter

    for p in sorted(SAMPLE.iterdir())[:6]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    images, _ = hash_folder(tmp_path)
    lazy = LazyExtractor(ExtractionSettings("mobilenet-v2", batch_size=4), None)
    shapes = []
    forward = lazy.extractor._forward
    lazy.extractor._forward = lambda x: shapes.append(x.shape[0]) or forward(x)
    feats = extract(images, {"mobilenet-v2": lazy}, None, Reporter())
    assert shapes == [3, 3]
    assert feats.vectors["mobilenet-v2"].shape == (6, 1280)
    assert np.allclose(np.linalg.norm(feats.vectors["mobilenet-v2"], axis=1), 1, atol=1e-5)


def test_gem_pooling_is_the_generalized_mean_of_the_last_map_and_has_its_own_cache_key():
    pytest.importorskip("tensorflow")
    import keras

    from ensemble_group.extractors import MODELS, Extractor

    from ensemble_group.pooling import GEM_P
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


def test_rmac_regions_follow_the_papers_sampling():
    from ensemble_group.pooling import rmac_regions

    square = rmac_regions(7, 7)  # whole map, whole map again (level 1), 4 squares of 4, 9 of 3
    assert [r[2] for r in square] == [0, 7] + [4] * 4 + [3] * 9
    assert {(t, left) for t, left, s in square if s == 4} == {(0, 0), (0, 3), (3, 0), (3, 3)}
    assert {(t, left) for t, left, s in square if s == 3} == {(t, left) for t in (0, 2, 4) for left in (0, 2, 4)}
    wide = rmac_regions(7, 10)  # a wider map gets one more column of regions at every level
    assert [r[2] for r in wide].count(7) == 2 and [r[2] for r in wide].count(4) == 6
    for h, w in ((7, 7), (7, 10), (8, 8), (5, 9)):
        assert all(t + s <= h and left + s <= w for t, left, s in rmac_regions(h, w))  # inside the map


def test_rmac_pooling_sums_normalised_regional_maxima_of_the_last_map():
    pytest.importorskip("tensorflow")
    import keras

    from ensemble_group.extractors import MODELS, Extractor

    from ensemble_group.pooling import rmac_regions
    from ensemble_group.features import settings_key

    x = np.random.default_rng(2).uniform(0, 255, size=(3, 224, 224, 3)).astype(np.float32)
    rmac = Extractor(MODELS["mobilenet-v2"], None, batch_size=3, pooling="rmac")
    trunk = keras.Model(rmac.model.input, rmac.model.layers[-2].output)
    fmap = trunk(MODELS["mobilenet-v2"].preprocess(x)).numpy()  # (3, 7, 7, 1280)
    want = np.zeros((3, fmap.shape[-1]))
    for top, left, side in rmac_regions(7, 7):
        box = fmap if side == 0 else fmap[:, top:top + side, left:left + side]
        v = box.max(axis=(1, 2))
        want += v / np.linalg.norm(v, axis=1, keepdims=True)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = rmac.embed_framed(x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain_max = fmap.max(axis=(1, 2)) / np.linalg.norm(fmap.max(axis=(1, 2)), axis=1, keepdims=True)
    assert (got * plain_max).sum(axis=1).max() < 0.9999  # the regions count, not only the global maximum
    assert settings_key("vgg16", "w", "squash", "rmac") != settings_key("vgg16", "w", "squash", "gem")


def test_flip_adds_the_mirror_images_vector_and_has_its_own_cache_key():
    pytest.importorskip("tensorflow")
    from ensemble_group.extractors import MODELS, Extractor
    from ensemble_group.pooling import l2_normalise
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


def test_extraction_settings_key_the_cache_by_what_changes_the_vectors():
    """One object per member: framing, pooling, flip and the int8 calibration change the key (and so the
    vectors cached); winograd, lite and the batch size only change the speed."""
    from ensemble_group.config import Config
    from ensemble_group.features import ExtractionSettings, settings_key
    from ensemble_group.quantise import Calibration

    base = ExtractionSettings("vgg16-tv", "w", pooling="rmac")
    assert base.cache_key() == settings_key("vgg16-tv", "w", "squash", "rmac")
    for same in (dict(winograd=False), dict(lite=False), dict(batch_size=1)):
        assert ExtractionSettings("vgg16-tv", "w", pooling="rmac", **same).cache_key() == base.cache_key()
    keys = {ExtractionSettings(**{"model": "vgg16-tv", "weights_id": "w", "pooling": "rmac", **change}).cache_key()
            for change in (dict(framing="pad"), dict(flip=True), dict(int8=Calibration([], "abc")), dict(pooling="gem"))}
    assert len(keys) == 4 and base.cache_key() not in keys
    config = Config(framing="pad", pooling="gem", flip=True, batch_size=7, lite=False)
    assert ExtractionSettings.of(config, "mobilenet-v2", "w") == ExtractionSettings(
        "mobilenet-v2", "w", "pad", "gem", True, None, True, False, 7)
    assert set(ExtractionSettings.CONFIG_KEYS) >= {"framing", "pooling", "flip", "precision"}
