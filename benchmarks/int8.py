"""Full-integer (int8) members for machines with int8 instructions (AVX-512 VNNI, AMX): how much faster?

`precision.py` measures reduced precision on the machine that converts. A machine without TensorFlow
(the device lent to some sessions: an Intel Xeon with AVX-512 VNNI and AMX-INT8) can still time
TFLite flatbuffers with the LiteRT interpreter (`pip install ai-edge-litert`), so this is split:

    python benchmarks/int8.py export --models vgg16-tv efficientnet-lite0 mobilenet-v2 --out DIR
    python benchmarks/int8.py export --models resnet50 --random-weights --out DIR
    python benchmarks/int8.py time DIR/*.tflite [--threads 2 16] [--out results.json]

`export` writes each member's float32 and int8 flatbuffers (average pooling: R-MAC's divisions do not
survive full-integer quantisation; Winograd off: int8 ruins VGG16's transformed kernels, see
precision.py), int8 calibrated on the first 32 photos of `speed.photos`, and the lowest and mean
cosine of the int8 vectors to the float32 ones on the next 64 photos; also `<model>.int8-option.tflite`,
the engine's `precision = "int8"` backbone (calibrated on the shipped set; its R-MAC in float, see
quantise.py), and its cosine to float R-MAC on those photos. `time` runs each file in slices
of 4 (as the engine does) over 64 random inputs, the files taking turns, best of `--rounds`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import best_of, cpu, photos, write_result


def export(models: list[str], out: Path, random_weights: bool) -> None:
    import numpy as np
    import tensorflow as tf

    from ensemble_group import lite
    from ensemble_group.extractors import MODELS, Extractor
    from ensemble_group.images import frame_batch
    from ensemble_group.pooling import l2_normalise
    from ensemble_group.images import load
    from ensemble_group.weights import resolve
    from precision import converted

    out.mkdir(parents=True, exist_ok=True)
    files, rows = photos(96), []
    for name in models:
        spec = MODELS[name]
        path = resolve(name, allow_random=random_weights).path
        x = spec.preprocess(frame_batch([load(f) for f in files], spec.input_size, "squash"))
        net = Extractor(spec, path, lite=False, winograd=False).model
        fn = tf.function(lambda v, net=net: net(v, training=False))
        vectors = {}
        for variant in ("float32-avg", "int8-static"):
            flat = converted(fn, spec.input_size, variant, x[:32])
            (out / f"{name}.{variant}.tflite").write_bytes(flat)
            vectors[variant] = l2_normalise(lite.LiteForward(lambda flat=flat: flat)(x[32:]))
        cosine = np.sum(vectors["float32-avg"] * vectors["int8-static"], axis=1)
        option = option_cosine(spec, path, x[32:], out / f"{name}.int8-option.tflite")
        rows.append({"model": name, "weights": "random" if path is None else "real",
                     "min_cosine": round(float(cosine.min()), 5), "mean_cosine": round(float(cosine.mean()), 5),
                     "int8_option_min_cosine": round(float(option.min()), 5),
                     "int8_option_mean_cosine": round(float(option.mean()), 5)})
        print(json.dumps(rows[-1]), flush=True)
    (out / "export.json").write_text(json.dumps({"machine": cpu(), "rows": rows}, indent=2) + "\n")


def option_cosine(spec, path, x, save: Path):
    """Per photo, the cosine of the engine's int8 option (`precision.int8_option`: R-MAC in float on the
    int8 backbone's map; its flatbuffer written to `save`) to float R-MAC."""
    import numpy as np

    from ensemble_group.extractors import Extractor

    from ensemble_group.pooling import l2_normalise, pooled
    from precision import int8_option

    exact = np.asarray(pooled(Extractor(spec, path, lite=False, winograd=False).model, "rmac")(x, training=False))
    return np.sum(l2_normalise(exact) * l2_normalise(int8_option(spec, path, save)(x)), axis=1)


def interpreter(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(path), num_threads=threads)


def timings(files: list[Path], threads: list[int], rounds: int) -> list[dict]:
    import numpy as np

    rows = []
    for n in threads:
        runs = {}
        for f in files:
            it = interpreter(f, n)
            size = int(it.get_input_details()[0]["shape"][1])
            it.resize_tensor_input(it.get_input_details()[0]["index"], [4, size, size, 3])
            it.allocate_tensors()
            x = np.random.default_rng(0).uniform(-2, 2, (64, size, size, 3)).astype(np.float32)

            def run(it=it, x=x):
                for s in range(0, len(x), 4):
                    it.set_tensor(it.get_input_details()[0]["index"], x[s:s + 4])
                    it.invoke()
                    it.get_tensor(it.get_output_details()[0]["index"])

            run()  # warm up: XNNPACK packs the weights on the first invoke
            runs[f.name] = run
        best = best_of(rounds, runs)
        for k in runs:
            rows.append({"file": k, "threads": n, "img_per_s": round(64 / best[k], 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write float32 and int8 flatbuffers (needs TensorFlow)")
    ex.add_argument("--models", nargs="+", default=["vgg16-tv", "efficientnet-lite0", "mobilenet-v2"])
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--random-weights", action="store_true")
    tm = sub.add_parser("time", help="time flatbuffers (LiteRT or TensorFlow's interpreter)")
    tm.add_argument("files", nargs="+", type=Path)
    tm.add_argument("--threads", nargs="+", type=int, default=[2, 16])
    tm.add_argument("--rounds", type=int, default=5)
    tm.add_argument("--out", default="int8-time.json", help="a name under results/, or a path")
    args = parser.parse_args()
    if args.command == "export":
        export(args.models, args.out, args.random_weights)
        return
    doc = {"machine": cpu(), "rows": timings(args.files, args.threads, args.rounds)}
    if "/" in args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    else:
        write_result(args.out, doc)


if __name__ == "__main__":
    main()
