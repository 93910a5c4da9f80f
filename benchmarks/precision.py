"""Reduced precision through TensorFlow Lite: is any of it faster here, and how far do features move?

Issue 7 allows faster paths that change numbers (int8, reduced precision) only as options, each with
its speed-up beside its effect on accuracy. This measures the candidates on the machine it runs on,
per member, against the engine's float32 TFLite path (the same converted forward pass):
  * fp16-weights: weights stored as float16 (`target_spec.supported_types = [tf.float16]`);
  * int8-dynamic: int8 weights, activations quantised on the fly (`Optimize.DEFAULT`, no data);
  * int8-static: int8 weights and activations, calibrated on the first 32 photos (full integer).
    R-MAC's divisions do not survive full-integer quantisation (TFLite stops on a division by zero),
    so this row, and its float reference, use average pooling.
  * int8-option: the engine's `precision = "int8"` (quantise.py): the backbone full int8, calibrated
    on the shipped calibration set, Winograd off, R-MAC in float on its map; against float32 R-MAC.
Each variant runs in slices of `lite.SLICE` images, as the engine does; they take turns (`--rounds`,
best kept) so a noisy machine slows them alike. `min_cosine` / `mean_cosine`: each photo's vector
against the float32 one. Speed-ups depend on the CPU's int8 instructions (`machine.cpu.extensions`:
AVX-512 VNNI or AVX-VNNI speed int8 up; AVX2 alone does not).

    python benchmarks/precision.py --models vgg16-tv efficientnet-lite0 mobilenet-v2
    python benchmarks/precision.py --models resnet50 vgg16 inception_v3 --random-weights
"""

from __future__ import annotations

from pathlib import Path

from common import best_of, per_member_main

VARIANTS = {"float32": "rmac", "fp16-weights": "rmac", "int8-dynamic": "rmac",
            "float32-avg": "avg", "int8-static": "avg"}


def converted(forward, size: int, variant: str, calibration) -> bytes:
    import tensorflow as tf

    concrete = forward.get_concrete_function(tf.TensorSpec((None, size, size, 3), tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], forward)
    if not variant.startswith("float32"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16-weights":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8-static":
        converter.representative_dataset = lambda: ([calibration[i:i + 4]] for i in range(0, len(calibration), 4))
    return converter.convert()


def int8_option(spec, path, save: Path | None = None):
    """The engine's `precision = "int8"` path (quantise.py) as a forward pass of preprocessed photos: the
    backbone full-int8, calibrated on the shipped set, Winograd off, R-MAC in float on its map (its
    flatbuffer written to `save` on the first call, if given)."""
    import tensorflow as tf

    from ensemble_group import lite, quantise
    from ensemble_group.extractors import Extractor, backbone
    from ensemble_group.pooling import pool

    net = backbone(Extractor(spec, path, lite=False, winograd=False).model)
    fn = tf.function(lambda v: net(v, training=False))
    files = quantise.calibration_photos().photos
    batches = lambda: quantise.calibration_batches(files, spec.input_size, spec.preprocess)  # noqa: E731
    maps = lite.LiteForward(lambda: quantise.convert_int8(fn, spec.input_size, batches), save)
    return lambda x: pool(maps(x), "rmac")


def member(name: str, files: list[Path], rounds: int, random_weights: bool) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    from ensemble_group import lite
    from ensemble_group.extractors import MODELS, Extractor
    from ensemble_group.images import frame_batch
    from ensemble_group.pooling import l2_normalise, pooled
    from ensemble_group.images import load
    from ensemble_group.weights import resolve

    spec = MODELS[name]
    path = resolve(name, allow_random=random_weights).path
    x = spec.preprocess(frame_batch([load(f) for f in files], spec.input_size, "squash"))
    built = Extractor(spec, path, lite=False)  # Winograd where it pays, batch norm folded: as the engine
    forwards = {}
    for variant, pooling in VARIANTS.items():
        net = pooled(built.model, pooling)
        fn = tf.function(lambda v, net=net: net(v, training=False))
        forwards[variant] = lite.LiteForward(lambda fn=fn, v=variant: converted(fn, spec.input_size, v, x[:32]))
    forwards["int8-option"] = int8_option(spec, path)
    out = {v: l2_normalise(f(x)) for v, f in forwards.items()}  # converts, and warms every interpreter up
    best = best_of(rounds, {v: (lambda f=f: f(x)) for v, f in forwards.items()})
    rows = []
    for variant, pooling in {**VARIANTS, "int8-option": "rmac"}.items():
        reference = "float32" if pooling == "rmac" else "float32-avg"
        cosine = np.sum(out[variant] * out[reference], axis=1)
        rows.append({"model": name, "weights": "random" if path is None else "real", "variant": variant,
                     "pooling": pooling, "n_images": len(files), "img_per_s": round(len(files) / best[variant], 2),
                     "vs_float32": round(best[reference] / best[variant], 2),
                     "min_cosine": round(float(cosine.min()), 5), "mean_cosine": round(float(cosine.mean()), 5)})
    return rows


if __name__ == "__main__":
    per_member_main(__doc__, member, "precision", images=64)
