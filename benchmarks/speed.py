"""Speed: images per second, end to end and raw, for each model and the whole ensemble.

For each arm (every member alone, then the ensemble), in one fresh subprocess (so peak memory is its
own), on the same N photos:
  * end_to_end: `group_folder` with the embedding cache off: find, hash, decode, frame, extract,
    index, fuse, group; model loading included (a user pays it).
  * plain: a plain implementation (PIL decode + resize, batch-32 `model.predict` of each member in
    turn), model loading included: the yardstick of issue 7.
  * raw_predict: `model.predict(batch_size=32)` on already decoded and framed arrays, models loaded.
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
GROCERY = ROOT.parent / "shared" / "datasets" / "grocery"


def photos(n: int) -> list[Path]:
    """The first n photos of grocery's labels-810.csv (sorted), else of the bundled sample."""
    labels = GROCERY / "labels-810.csv"
    if labels.is_file():
        rows = sorted(line.split(",")[0] for line in labels.read_text().splitlines()[1:])
        return [GROCERY / r for r in rows[:n]]
    return sorted((ROOT / "samples" / "flipkart" / "images").iterdir())[:n]


def plain(models: list[str], files: list[Path], weights) -> float:
    """Decode + resize with PIL, batch-32 model.predict per member: seconds, model loading included."""
    import numpy as np
    from PIL import Image

    from ensemble_group.extractors import MODELS

    t0 = time.perf_counter()
    for m in models:
        spec = MODELS[m]
        model = spec.build(weights[m].path)
        s = spec.input_size
        x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((s, s), Image.BILINEAR), dtype=np.float32)
                      for f in files])
        model.predict(spec.preprocess(x), batch_size=32, verbose=0)
    return time.perf_counter() - t0


def raw_predict(models: list[str], files: list[Path], weights) -> float:
    """model.predict on decoded, framed, preprocessed arrays (models loaded first): seconds."""
    import numpy as np
    from PIL import Image

    from ensemble_group.extractors import MODELS

    loaded, inputs = {}, {}
    for m in models:
        spec = MODELS[m]
        loaded[m] = spec.build(weights[m].path)
        s = spec.input_size
        inputs[m] = spec.preprocess(np.stack([np.asarray(Image.open(f).convert("RGB").resize((s, s), Image.BILINEAR),
                                                         dtype=np.float32) for f in files]))
        loaded[m].predict(inputs[m][:32], batch_size=32, verbose=0)  # warm up: tracing is not inference
    t0 = time.perf_counter()
    for m in models:
        loaded[m].predict(inputs[m], batch_size=32, verbose=0)
    return time.perf_counter() - t0


def one_arm(config_path: str, models: list[str], n: int) -> dict:
    from ensemble_group.config import load_config
    from ensemble_group.pipeline import group_folder, resolve_weights

    config = load_config(config_path).replace(models=models)
    files = photos(n)
    weights = resolve_weights(config)
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            shutil.copy(f, Path(tmp) / f.name)
        t0 = time.perf_counter()
        run = group_folder(tmp, config, weights=weights, cache_file=None)
        e2e = time.perf_counter() - t0
    p = plain(models, files, weights)
    r = raw_predict(models, files, weights)
    return {"models": models, "n_images": len(files), "end_to_end_s": round(e2e, 2), "plain_s": round(p, 2),
            "raw_predict_s": round(r, 2), "end_to_end_img_per_s": round(len(files) / e2e, 2),
            "plain_img_per_s": round(len(files) / p, 2), "raw_predict_img_per_s": round(len(files) / r, 2),
            "end_to_end_vs_plain": round(p / e2e, 2), "end_to_end_vs_raw_predict": round(r / e2e, 2),
            "stages_s": run.timings, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--ensemble-only", action="store_true", help="Skip the single-model arms.")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_arm(args.config, args.one, args.images)))
        return
    from ensemble_group.config import load_config

    members = list(load_config(args.config).models)
    arms = ([] if args.ensemble_only else [[m] for m in members]) + [members]
    rows = []
    for models in arms:
        out = subprocess.run([sys.executable, __file__, "--config", args.config, "--images", str(args.images),
                              "--one", *models], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    name = Path(args.config).stem
    doc = {"config": args.config, "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}, "rows": rows}
    (RESULTS / f"speed-{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {RESULTS / f'speed-{name}.json'}")


if __name__ == "__main__":
    main()
