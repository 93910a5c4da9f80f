"""TensorFlow Lite inference (XNNPACK) for every member.

TensorFlow's own CPU path runs depthwise convolutions (EfficientNet-Lite0, MobileNetV2) far below
this CPU's speed, and its graph executor adds per-op overhead that a small net feels. The same pooled
forward pass converted to a TFLite flatbuffer and run by TFLite's interpreter, whose default XNNPACK
delegate has hand-written AVX2 kernels, gives the same float32 features (lowest cosine 1.00000) 1.2x
to 3.5x faster (benchmarks/README.md). VGG16's Winograd layers convert too (their 36 products become
batched matrix products that XNNPACK runs faster than XLA does), and no XLA compile is paid per run.

A converted flatbuffer is cached beside the converted weights (one file per model, weights, pooling
and TensorFlow and Keras versions): later runs load it in a tenth of a second, without building the
Keras model or tracing it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ensemble_group import quiet_tf
from ensemble_group.cpu import cores
from ensemble_group.outputs import atomic_write

SLICE = 4  # images per invoke: as fast as 32 on two cores (measured), with an activation arena 8x smaller
# (VGG16 with Winograd peaks at 6.2 GB in batches of 32, 2.5 GB in 4s); a new slice shape costs nothing


def available() -> bool:
    """Whether this TensorFlow still ships TFLite's converter and interpreter (2.16-2.21 do)."""
    tf = quiet_tf.tensorflow()

    return hasattr(tf, "lite") and hasattr(tf.lite, "Interpreter") and hasattr(tf.lite, "TFLiteConverter")


def cache_file(directory: Path, model: str, weights_id: str, pooling: str, winograd: bool = True,
               int8_calibration: str | None = None) -> Path:
    """Where the flatbuffer of one member's pooled forward pass is cached (with or without Winograd), or
    with `int8_calibration` (a calibration set's id) its int8 backbone's (any pooling: it gives the map)."""
    import hashlib

    keras = quiet_tf.keras()
    tf = quiet_tf.tensorflow()

    weights = hashlib.sha256(weights_id.encode()).hexdigest()[:16]  # seeded random weights have an id too
    variant = (f"map-int8-{int8_calibration}-{weights}" if int8_calibration
               else f"{pooling}-{weights}{'' if winograd else '-nowinograd'}")
    name = f"{model}-{variant}-tf{tf.__version__}-keras{keras.__version__}.tflite"
    return Path(directory) / "tflite" / name


def failure_file(path: Path) -> Path:
    """Beside a cache file: the error that TFLite gave when its model first ran, so no later run with the
    same TensorFlow converts it again only to fail (a new TensorFlow has other file names, and retries)."""
    return Path(path).with_name(Path(path).name + ".failed")


def convert(forward, input_size: int) -> bytes:
    """A tf.function of (n, s, s, 3) float32 -> (n, dim) as a float32 TFLite flatbuffer, any batch size."""
    tf = quiet_tf.tensorflow()

    concrete = forward.get_concrete_function(tf.TensorSpec((None, input_size, input_size, 3), tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], forward).convert()


class LiteForward:
    """`forward(x)`: (n, s, s, 3) float32 -> (n, dim) float32, run by TFLite's interpreter in slices of SLICE.

    The flatbuffer is read from `path` if it is there; otherwise `make()` converts it on the first
    call (after any change to the Keras model's weights), and once it has run it is written to `path`
    atomically. A converted model that XNNPACK cannot run raises RuntimeError; it is never cached, and
    the error is kept in `failure_file(path)` instead.
    """

    def __init__(self, make: Callable[[], bytes] | None = None, path: Path | None = None,
                 threads: int | None = None) -> None:
        if make is None and (path is None or not Path(path).is_file()):
            raise ValueError("LiteForward needs a flatbuffer file or a way to make one")
        self._make, self.path, self.threads = make, path, threads or cores()
        self._interpreter, self._unsaved = None, None
        self._shape: tuple[int, ...] | None = None
        if make is None:
            self._load(Path(path).read_bytes())

    def _load(self, content: bytes) -> None:
        tf = quiet_tf.tensorflow()

        with warnings.catch_warnings():  # tf.lite.Interpreter warns that it is moving to LiteRT
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_content=content, num_threads=self.threads)
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]
        self._interpreter, self._shape = interpreter, None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._interpreter is None:
            self._unsaved = self._make()
            self._load(self._unsaved)
        x = np.ascontiguousarray(x, dtype=np.float32)
        fresh = self._unsaved is not None and self.path is not None  # its first run decides what is cached
        try:
            out = np.concatenate([self._invoke(x[s:s + SLICE]) for s in range(0, len(x), SLICE)])
        except RuntimeError as error:
            if fresh:
                atomic_write(failure_file(self.path), f"{error}\n")
            raise
        if fresh:
            atomic_write(Path(self.path), self._unsaved)
        self._unsaved = None
        return out

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self._shape:  # a new batch size: the interpreter plans its buffers again
            self._interpreter.resize_tensor_input(self._input, list(x.shape))
            with quiet_tf.quiet_stderr():  # TFLite's C++ side prints an INFO line as it applies XNNPACK
                self._interpreter.allocate_tensors()
            self._shape = x.shape
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output)  # a copy already: the next slice cannot touch it
