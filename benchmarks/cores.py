"""Cores: images per second of a whole cold `group` against the number of cores it may use.

The same N photos are grouped end to end (`ensemble-group group --no-cache`, members already
converted) in a fresh process pinned to the first 1, 2, 4, ... cores of this machine (CPU affinity,
as `taskset -c 0-(c-1)` sets it; the engine sizes TFLite's threads, decoding and Annoy's queries by
it, `cpu.cores`). Each core count takes its turn in every round (`--rounds`, best kept), so a noisy
machine slows them alike. Prints and writes images/s, the speed-up over one core and the parallel
efficiency (speed-up / cores), for the whole run (Python's and TensorFlow's start-up included, which
more cores do not shorten) and for its features stage alone (decoding and extraction, from run.json).

    python benchmarks/cores.py [--config configs/offline.toml] [--images 200] [--cores 1 2 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import config_options, cpu, photos, write_result


def timed_group(folder: Path, out: Path, config: str, precision: str | None, cores: int) -> tuple[float, float]:
    """(Wall seconds of `ensemble-group group` in a fresh process that may use the first `cores` cores,
    seconds of its features stage: decoding and extraction, the part that can use more cores)."""
    allowed = sorted(os.sched_getaffinity(0))[:cores]
    command = [sys.executable, "-m", "ensemble_group.cli", "group", str(folder), "--config", config, "--no-cache",
               "--out", str(out), "--force", "--quiet", *(["--precision", precision] if precision else [])]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, allowed),
                          check=False)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return wall, json.loads((out / "run.json").read_text())["timings_s"]["features"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_options(parser)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--cores", type=int, nargs="+", help="core counts to pin to (default: 1, 2, 4, ... up to all)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    have = len(os.sched_getaffinity(0))
    counts = args.cores or [c for c in (1, 2, 4, 8, 16, 32, 64) if c < have] + [have]
    if max(counts) > have:
        sys.exit(f"--cores {max(counts)}: this process may use {have} cores")
    machine = {"cores": have, "cpu": cpu(), "python": sys.version.split()[0]}
    print(json.dumps(machine), flush=True)
    subprocess.run([sys.executable, "-m", "ensemble_group.cli", "prepare", "--config", args.config,
                    *(["--precision", args.precision] if args.precision else [])], check=True, capture_output=True)
    best = {c: (float("inf"), float("inf")) for c in counts}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        files = photos(args.images)
        for f in files:
            shutil.copy(f, folder / f.name)
        for _ in range(args.rounds):
            for c in counts:
                best[c] = min(best[c], timed_group(folder, Path(tmp) / f"out{c}", args.config, args.precision, c))
    n, fewest = len(files), counts[0]
    rows = [{"cores": c, "seconds": round(best[c][0], 2), "img_per_s": round(n / best[c][0], 2),
             "speedup_vs_fewest": round(best[fewest][0] / best[c][0], 2),
             "efficiency": round(best[fewest][0] / best[c][0] / (c / fewest), 2),
             "features_s": round(best[c][1], 2), "features_img_per_s": round(n / best[c][1], 2),
             "features_speedup_vs_fewest": round(best[fewest][1] / best[c][1], 2)} for c in counts]
    for row in rows:
        print(json.dumps(row), flush=True)
    name = Path(args.config).stem + (f"-{args.precision}" if args.precision else "")
    write_result(f"cores-{name}-{n}.json", {"machine": machine, "images": n, "config": args.config,
                                            "precision": args.precision, "rows": rows})


if __name__ == "__main__":
    main()
