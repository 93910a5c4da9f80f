"""Embedding cache: a cold run, a warm rerun and an incremental run over the same folder.

    python benchmarks/cache.py --images 200      # grocery photos (or the sample), offline config

cold: empty cache, every image extracted; warm: same folder again, nothing extracted; incremental:
10 photos added and 10 renamed, only the 10 new ones extracted. Each run is a real
`ensemble-group group` subprocess (start-up included), as a user would see it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import photos  # noqa: E402


def run(folder: Path, out: Path, cache: Path, config: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "ensemble_group.cli", "group", str(folder), "--out", str(out), "--force",
           "--config", config, "--cache-file", str(cache), "--quiet"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr)
    return time.perf_counter() - t0, p.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    files = photos(args.images + 10)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, cache = tmp / "photos", tmp / "emb.sqlite"
        folder.mkdir()
        for f in files[: args.images]:
            shutil.copy(f, folder / f.name)
        rows["cold"] = run(folder, tmp / "out", cache, args.config)
        rows["warm"] = run(folder, tmp / "out", cache, args.config)
        for f in files[args.images:]:
            shutil.copy(f, folder / f.name)
        for f in sorted(folder.iterdir())[:10]:
            f.rename(folder / f"renamed-{f.name}")
        rows["incremental (+10 new, 10 renamed)"] = run(folder, tmp / "out", cache, args.config)
    doc = {"config": args.config, "n_images": args.images,
           "runs": {k: {"seconds": round(s, 1), "summary": line} for k, (s, line) in rows.items()}}
    for k, v in doc["runs"].items():
        print(f"{k:36s} {v['seconds']:7.1f} s   {v['summary']}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cache.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
