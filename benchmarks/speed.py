"""Speed: images per second, end to end and raw, for each model and the whole ensemble.

For each arm (every member alone, then the ensemble), on the same N photos, each measurement in a
fresh process timed from outside (interpreter start, imports and model loading included: a user pays
them, and neither side inherits the other's warm TensorFlow); end to end and plain take turns
(`--rounds`, best of each kept), so a noisy machine slows both alike:
  * end_to_end: `group_folder` with the embedding cache off: find, hash, decode, frame, extract,
    index, fuse, group.
  * plain: a plain implementation (PIL decode + resize, batch-32 `model.predict` of each member in
    turn): the yardstick of issue 7.
  * raw_predict: `model.predict(batch_size=32)` on already decoded and framed arrays, models loaded.
  * min_cosine_vs_predict: the engine's vectors against `model.predict` on the same framed arrays
    (first 64 photos): the faster paths must give the same features.
  * first_run: end to end in the same turns, with the members' TensorFlow Lite models not yet
    converted (what the very first `group` on a machine pays: it converts them in parallel helper
    processes, whose peak memory is reported apart; every later one loads them).
Ratios are taken inside one run, so they survive a noisy machine.

    python benchmarks/speed.py --config configs/offline.toml --images 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import config_options, cpu, photos, write_result


def pil_inputs(files: list[Path], size: int):
    """What a plain implementation feeds a model: PIL decode + bilinear resize, (n, size, size, 3) float32."""
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
                     for f in files])


def plain(models: list[str], files: list[Path], weights) -> None:
    """Decode + resize with PIL, batch-32 model.predict per member (the caller times the whole process)."""
    from ensemble_group.extractors import MODELS

    for m in models:
        spec = MODELS[m]
        if spec.builtin:  # the colour member: the same histogram of each PIL-decoded photo
            colour_histograms(pil_photos(files))
            continue
        model = spec.build(weights[m].path)
        model.predict(spec.preprocess(pil_inputs(files, spec.input_size)), batch_size=32, verbose=0)


def pil_photos(files: list[Path]) -> list:
    """The photos decoded by PIL, whole: what the colour member reads."""
    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def colour_histograms(photos: list):
    """A plain implementation's colour member: the engine's own histogram of each decoded photo."""
    from ensemble_group.colour import ColourMember

    return ColourMember().embed(photos)


def twin(spec, path, extractor):
    """`model.predict`'s side of a comparison: the model as built, with the extractor's weights (random too)."""
    model = spec.build(path)
    model.set_weights(extractor.model.get_weights())
    return model


def predicted(spec, model, framed):
    """Unit vectors from a plain batch-32 `model.predict` of framed (n, s, s, 3) 0..255 images."""
    from ensemble_group.pooling import l2_normalise

    return l2_normalise(model.predict(spec.preprocess(framed), batch_size=32, verbose=0))


def same_features(models: list[str], files: list[Path], weights, config) -> float:
    """Lowest per-image cosine between the engine's vectors and plain `model.predict` (of the model as
    built, with the config's pooling) on the same arrays. With precision int8, the int8 members' vectors
    (how far int8 moves them from float32)."""
    import numpy as np

    from ensemble_group.extractors import MODELS, Extractor

    from ensemble_group.images import frame_batch

    from ensemble_group.pooling import pooled
    from ensemble_group.images import load
    from ensemble_group.features import member_calibrations

    images = [load(f) for f in files]
    int8 = member_calibrations(config.replace(models=models))
    lowest = 1.0
    for m in [m for m in models if not MODELS[m].builtin]:  # the colour member runs the same code either way
        spec = MODELS[m]
        framed = frame_batch(images, spec.input_size, config.framing)
        extractor = Extractor(spec, weights[m].path, batch_size=config.batch_size, framing=config.framing,
                              winograd=config.winograd, pooling=config.pooling,
                              calibration=int8[m].photos if int8[m] else None)
        engine = extractor.embed_framed(framed)
        plain_vectors = predicted(spec, pooled(twin(spec, weights[m].path, extractor), config.pooling), framed)
        lowest = min(lowest, float(np.sum(engine * plain_vectors, axis=1).min()))
    return lowest


def raw_predict(models: list[str], files: list[Path], weights) -> float:
    """model.predict on decoded, framed, preprocessed arrays (models loaded first): seconds."""
    from ensemble_group.extractors import MODELS

    loaded, inputs = {}, {}
    decoded = pil_photos(files) if any(MODELS[m].builtin for m in models) else None  # the colour member's input
    models = [m for m in models if not MODELS[m].builtin]
    for m in models:
        spec = MODELS[m]
        loaded[m] = spec.build(weights[m].path)
        inputs[m] = spec.preprocess(pil_inputs(files, spec.input_size))
        loaded[m].predict(inputs[m][:32], batch_size=32, verbose=0)  # warm up: tracing is not inference
    t0 = time.perf_counter()
    for m in models:
        loaded[m].predict(inputs[m], batch_size=32, verbose=0)
    if decoded is not None:  # the colour member reads whole photos, not framed arrays
        colour_histograms(decoded)
    return time.perf_counter() - t0


def measure(kind: str, config_path: str, models: list[str], n: int, random_weights: bool,
            precision: str | None = None) -> dict:
    """One measurement, in this (fresh) process; the parent times the whole process."""
    from ensemble_group.config import load_config
    from ensemble_group.features import resolve_weights
    from ensemble_group.pipeline import group_folder

    config = load_config(config_path).replace(models=models, allow_random_weights=random_weights or None,
                                              precision=precision)
    files = photos(n)
    weights = resolve_weights(config)
    out: dict = {}
    if kind == "end_to_end":
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:
                shutil.copy(f, Path(tmp) / f.name)
            done = group_folder(tmp, config, weights=weights, cache_file=None)
            out["stages_s"], out["runtimes"] = done.timings, done.runtimes  # which engine ran each member
    elif kind == "plain":
        plain(models, files, weights)
    else:
        out["raw_predict_s"] = round(raw_predict(models, files, weights), 2)
        out["min_cosine_vs_predict_64_images"] = round(same_features(models, files[:64], weights, config), 6)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["helpers_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)  # converters
    return out


def run(kind: str, args, models: list[str], env: dict | None = None) -> tuple[float, dict]:
    """(wall seconds of a fresh process doing `kind`: interpreter, imports and model loading included, result)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--config", args.config, "--images", str(args.images),
                          *(["--precision", args.precision] if args.precision else []),
                          *(["--random-weights"] if args.random_weights else []), "--measure", kind,
                          "--one", *models], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def first_run(args, models: list[str]) -> tuple[float, dict]:
    """(Wall seconds, result) of an end-to-end run whose TensorFlow Lite models are not converted yet: the weights
    cache as it is, but its `tflite/` folder left out (every later run finds them converted)."""
    from ensemble_group.weights import cache_dir

    with tempfile.TemporaryDirectory() as tmp:
        if cache_dir().is_dir():
            for entry in cache_dir().iterdir():
                if entry.name != "tflite":
                    (Path(tmp) / entry.name).symlink_to(entry)
        return run("end_to_end", args, models, env={**os.environ, "ENSEMBLE_GROUP_CACHE": tmp})


def one_arm(args, models: list[str]) -> dict:
    """End to end and plain in turns (`--rounds`, best of each kept), then raw predict; each its own
    process, and in the same turns an end-to-end run that converts its TensorFlow Lite models first."""
    e2e = p = first = float("inf")
    for _ in range(args.rounds):
        wall, out = run("end_to_end", args, models)
        if wall < e2e:
            e2e, inside = wall, out
        wall, out = run("plain", args, models)
        if wall < p:
            p, plain_out = wall, out
        wall, out = first_run(args, models)
        if wall < first:
            first, first_out = wall, out
    _, raw = run("raw", args, models)
    n = len(photos(args.images))
    return {"models": models, "n_images": n, "end_to_end_s": round(e2e, 2), "plain_s": round(p, 2),
            "raw_predict_s": raw["raw_predict_s"], "end_to_end_img_per_s": round(n / e2e, 2),
            "plain_img_per_s": round(n / p, 2), "raw_predict_img_per_s": round(n / raw["raw_predict_s"], 2),
            "end_to_end_vs_plain": round(p / e2e, 2), "first_run_s": round(first, 2),
            "first_run_vs_plain": round(p / first, 2), "end_to_end_vs_raw_predict": round(raw["raw_predict_s"] / e2e, 2),
            "min_cosine_vs_predict_64_images": raw["min_cosine_vs_predict_64_images"],
            "stages_s": inside["stages_s"], "runtimes": inside["runtimes"], "peak_rss_mb": inside["peak_rss_mb"],
            "plain_peak_rss_mb": plain_out["peak_rss_mb"], "first_run_peak_rss_mb": first_out["peak_rss_mb"],
            "first_run_helpers_peak_rss_mb": first_out["helpers_peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_options(parser)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--ensemble-only", action="store_true", help="Skip the single-model arms.")
    parser.add_argument("--rounds", type=int, default=2, help="End to end and plain take turns this many times.")
    parser.add_argument("--random-weights", action="store_true",
                        help="Use random weights where none are found (speed does not depend on weight values; "
                             "this is how the default config is timed where Keras's files cannot be downloaded).")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["end_to_end", "plain", "raw"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.measure, args.config, args.one, args.images, args.random_weights, args.precision)))
        return
    from ensemble_group.config import load_config

    members = list(load_config(args.config).models)
    machine = {"cores": os.cpu_count(), "cpu": cpu(), "python": sys.version.split()[0]}
    print(json.dumps(machine), flush=True)
    arms = ([] if args.ensemble_only else [[m] for m in members]) + [members]
    rows = []
    for models in arms:
        rows.append(one_arm(args, models))
        print(json.dumps(rows[-1]), flush=True)
    write_result(f"speed-{Path(args.config).stem}" + (f"-{args.precision}" if args.precision else "") + ".json",
                 {"config": args.config, "precision": args.precision, "random_weights": args.random_weights, "rounds": args.rounds,
                  "machine": machine, "rows": rows})


if __name__ == "__main__":
    main()
