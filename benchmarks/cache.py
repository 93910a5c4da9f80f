"""Embedding cache: a cold run, a warm rerun and an incremental run over the same folder.

    python benchmarks/cache.py --images 200      # grocery photos (or the sample), offline config
    python benchmarks/cache.py --sample          # the bundled 20-photo sample, no incremental run

cold: empty embedding cache, every image extracted (the members' TFLite models already converted:
`prepare` runs first); warm: same folder again, nothing extracted, so no TensorFlow and no model is
loaded; incremental: 10 photos added and 10 renamed, only the 10 new ones extracted. Each run is a
real `ensemble-group group` subprocess (start-up included), as a user would see it; `import` is the
package's own import (`import ensemble_group.cli`, best of 3), the floor of any run.
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

from common import RESULTS, ROOT, cpu, photos


def run(folder: Path, out: Path, cache: Path, config: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "ensemble_group.cli", "group", str(folder), "--out", str(out), "--force",
           "--config", config, "--cache-file", str(cache), "--quiet"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr)
    return time.perf_counter() - t0, p.stdout.strip().splitlines()[-1]


def import_seconds() -> float:
    """Best of 3 fresh interpreters importing the package's command line (no TensorFlow in it)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ensemble_group.cli"], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--sample", action="store_true", help="The bundled sample's 20 photos instead.")
    args = parser.parse_args()
    files = sorted((ROOT / "samples" / "flipkart" / "images").iterdir()) if args.sample else photos(args.images + 10)
    n = len(files) if args.sample else args.images
    subprocess.run([sys.executable, "-m", "ensemble_group.cli", "prepare", "--config", args.config], check=True,
                   capture_output=True)
    rows = {"import": (import_seconds(), "import ensemble_group.cli")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, cache = tmp / "photos", tmp / "emb.sqlite"
        folder.mkdir()
        for f in files[:n]:
            shutil.copy(f, folder / f.name)
        rows["cold"] = run(folder, tmp / "out", cache, args.config)
        rows["warm"] = run(folder, tmp / "out", cache, args.config)
        if not args.sample:
            for f in files[n:]:
                shutil.copy(f, folder / f.name)
            for f in sorted(folder.iterdir())[:10]:
                f.rename(folder / f"renamed-{f.name}")
            rows["incremental (+10 new, 10 renamed)"] = run(folder, tmp / "out", cache, args.config)
    doc = {"config": args.config, "n_images": n, "machine": {"cores": os.cpu_count(), "cpu": cpu()},
           "runs": {k: {"seconds": round(s, 2), "summary": line} for k, (s, line) in rows.items()},
           "cold_vs_warm": round(rows["cold"][0] / rows["warm"][0], 1)}
    print(json.dumps(doc["machine"]))
    for k, v in doc["runs"].items():
        print(f"{k:36s} {v['seconds']:7.2f} s   {v['summary']}")
    print(f"a warm run is {doc['cold_vs_warm']}x faster than a cold one")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("cache-sample.json" if args.sample else "cache.json")).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
