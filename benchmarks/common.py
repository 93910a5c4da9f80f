"""What the benchmark scripts share: where things are, the photos they time, the machine they ran on,
how results are written, and the per-member command line. Each script is run as
`python benchmarks/NAME.py`, which puts this folder on the import path."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SHARED = ROOT.parent / "shared" / "datasets"
GROCERY = SHARED / "grocery"


def sets(grocery: Path) -> dict[str, tuple[Path, Path]]:
    return {"sample": (ROOT / "samples" / "flipkart", ROOT / "samples" / "flipkart" / "labels.csv"),
            "grocery-810": (grocery, grocery / "labels-810.csv"),
            "grocery-packages": (grocery, grocery / "labels-packages.csv"),
            "grocery-all": (grocery, grocery / "labels.csv"),
            "shops": (grocery.parent / "shops", grocery.parent / "shops" / "labels.csv")}


def photos(n: int) -> list[Path]:
    """The first n photos of grocery's labels-810.csv (sorted), then of the rest of grocery (sorted),
    else of the bundled sample."""
    labels = GROCERY / "labels-810.csv"
    if labels.is_file():
        rows = _images_of(labels)
        if n > len(rows):
            rows += sorted(set(_images_of(GROCERY / "labels.csv")) - set(rows))
        return [GROCERY / r for r in rows[:n]]
    return sorted((ROOT / "samples" / "flipkart" / "images").iterdir())[:n]


def _images_of(labels: Path) -> list[str]:
    """The image column of a labels file, sorted."""
    return sorted(line.split(",")[0] for line in labels.read_text().splitlines()[1:])


def write_result(name: str, doc: dict) -> Path:
    """benchmarks/results/NAME as indented JSON; says where it went."""
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / name
    target.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {target}")
    return target


def best_of(rounds: int, fns: dict) -> dict[str, float]:
    """Best seconds of each callable over `rounds` turns, all taking turns so noise hits them alike."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def member_options(parser: argparse.ArgumentParser, images: int) -> None:
    """The options of the per-member timings (members.py, options.py, precision.py)."""
    parser.add_argument("--models", nargs="+", default=["vgg16-tv", "efficientnet-lite0", "mobilenet-v2"])
    parser.add_argument("--images", type=int, default=images, help="a multiple of 32 avoids a padded last batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--random-weights", action="store_true")


def per_member_main(description: str, measure, prefix: str, images: int) -> None:
    """The command line of a per-member benchmark (members.py, precision.py): for each of `--models`,
    `measure(name, files, rounds, random_weights)` gives a row or a list of rows, printed as they come
    and written with the machine to results/<prefix>-<models>.json."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    member_options(parser, images)
    args = parser.parse_args()
    files = photos(args.images)
    rows = []
    for name in args.models:
        got = measure(name, files, args.rounds, args.random_weights)
        for row in got if isinstance(got, list) else [got]:
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_result(f"{prefix}-{'-'.join(args.models)}.json",
                 {"machine": {"cores": os.cpu_count(), "cpu": cpu(), "python": sys.version.split()[0]}, "rows": rows})


def cpu() -> dict:
    """The CPU model, the vector extensions that decide the speed of convolutions, and what precision
    "auto" picks on it."""
    from ensemble_group.cpu import choose_precision, cpu_flags

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = cpu_flags(info)
    return {"model": model, "extensions": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
                                                       "avx512_bf16", "amx_tile", "amx_int8") if f in flags],
            "auto_precision": choose_precision("auto", True, info)[0]}


def config_options(parser: argparse.ArgumentParser) -> None:
    """--config and --precision, as every accuracy and speed script takes them."""
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--precision", choices=["auto", "float32", "int8"],
                        help="instead of the config's (int8 against float32 on this machine: run both)")


def chosen_config(args):
    """(the config --config and --precision give, its name for result files: "offline", "offline-int8")."""
    from ensemble_group.config import load_config

    config = load_config(args.config).replace(precision=args.precision)  # None: the config's own
    return config, Path(args.config).stem + (f"-{args.precision}" if args.precision else "")
