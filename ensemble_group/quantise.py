"""int8 members (`precision = "int8"`): each backbone quantised to full integer, its pooling kept in float.

Why: on a CPU with int8 dot-product instructions (AVX-512 VNNI, AMX-INT8) a full-integer backbone runs
the dense members 5-14x faster than float32 (VGG16 13.6x, ResNet50 5.4x at 2 threads on a Xeon with
AMX: benchmarks/README.md, "int8"). Without them (AVX2 only) it is slower (0.73-0.91x), so float32
stays the default; the vectors move a little (the accuracy rows are in benchmarks/README.md).

How: the net up to its last convolutional map is converted by TFLite with full-integer quantisation
(int8 weights per channel, int8 activations) and float input and output; the pooling head (avg, GeM or
R-MAC, whose divisions do not survive integer arithmetic) runs in float, in numpy, on the dequantised
map. VGG16's Winograd layers are not used: quantised Winograd kernels ruin the features.

The activation ranges are calibrated on a fixed set of photos, never on the folder being grouped, so a
photo's vector does not depend on which other photos it is grouped with (and the embedding cache stays
valid). The set shipped in `calibration/` is 32 photos of fruit and vegetables from the Grocery Store
Dataset (Klasson et al., MIT licence; `calibration/SOURCES.csv`), none of them in the grocery subsets
that the benchmarks score. A folder of the user's own photos can replace it (`calibration` setting);
the set's id goes into the flatbuffer's cache name and the embedding cache key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ensemble_group import quiet_tf

SHIPPED = Path(__file__).resolve().parent / "calibration"
MIN_PHOTOS = 8  # fewer cannot cover the activation ranges of real photos
MAX_PHOTOS = 64  # more only slow the once-per-machine conversion down


class Calibration(NamedTuple):
    """A calibration set: its photos, and its id (a hash of their contents) for cache names and keys."""

    photos: list[Path]
    id: str


def calibration_photos(folder: Path | str | None = None) -> Calibration:
    """The calibration set in `folder` (the shipped set for None or "").

    Raises ValueError if the folder is missing or holds fewer than MIN_PHOTOS readable photos.
    """
    from ensemble_group.images import IMAGE_EXTENSIONS
    from ensemble_group.outputs import file_digest

    folder = Path(folder) if folder else SHIPPED
    if not folder.is_dir():
        raise ValueError(f"calibration folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())[:MAX_PHOTOS]
    if len(files) < MIN_PHOTOS:
        raise ValueError(f"calibration folder {folder}: {len(files)} photos; int8 needs at least {MIN_PHOTOS}")
    digest = hashlib.sha256("".join(sorted(file_digest(p) for p in files)).encode()).hexdigest()[:12]
    return Calibration(files, digest)


def tensorflow_version() -> str:
    """The installed TensorFlow's version, from package metadata (no TensorFlow import: a warm run skips it)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            return version(name)
        except PackageNotFoundError:
            pass
    return "unknown"


def calibration_batches(files: list[Path], size: int, preprocess) -> Iterator[list[np.ndarray]]:
    """The photos squashed to the member's input size and preprocessed, in slices of 4 (a generator, as
    TFLite's converter wants its representative data set); a photo that cannot be decoded is an error."""
    from ensemble_group.images import frame_batch, load

    framed = frame_batch([load(f) for f in files], size, "squash")
    for s in range(0, len(framed), 4):
        yield [preprocess(framed[s:s + 4])]


def convert_int8(backbone, input_size: int, batches) -> bytes:
    """A tf.function of (n, s, s, 3) float32 -> (n, h, w, c) maps as a full-integer TFLite flatbuffer
    with float input and output; `batches()` gives the representative data each time it is called."""
    import warnings

    tf = quiet_tf.tensorflow()

    concrete = backbone.get_concrete_function(tf.TensorSpec((None, input_size, input_size, 3), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], backbone)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = batches
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": the input stays float
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()
