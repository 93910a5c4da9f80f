"""Accuracy: the `compare` A/B table on the bundled sample, the grocery data set and the shops.

    python benchmarks/accuracy.py                          # offline config, sample and grocery
    python benchmarks/accuracy.py --config configs/default.toml --sets sample grocery-810
    python benchmarks/accuracy.py --precision int8 --sets sample grocery-810 grocery-packages shops --splits 5

Each data set's table (Markdown) and full result (JSON) go to benchmarks/results/; the grocery
photos are expected at ../shared/datasets/grocery (beside the checkout) or --grocery DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, chosen_config, config_options, cpu, sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_options(parser)
    parser.add_argument("--grocery", type=Path, default=ROOT.parent / "shared" / "datasets" / "grocery")
    parser.add_argument("--sets", nargs="+", default=["sample", "grocery-810", "grocery-packages", "grocery-all"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", type=int, default=1, help="product splits to average over (seeds SEED, SEED+1, ...)")
    parser.add_argument("--descriptors", action="store_true",
                        help="also the descriptor rows (other poolings, other framing, flip): extracts each set again")
    args = parser.parse_args()

    from ensemble_group.cpu import choose_precision
    from ensemble_group.evaluation.compare import TABLE_COLUMNS, compare, describe_split
    from ensemble_group.evaluation.metrics import format_table
    from ensemble_group.reporter import Reporter

    class Log(Reporter):
        def log(self, message: str) -> None:
            print(message, file=sys.stderr, flush=True)

    config, name_of_config = chosen_config(args)
    RESULTS.mkdir(exist_ok=True)
    for name in args.sets:
        folder, labels = sets(args.grocery)[name]
        if not labels.is_file():
            print(f"skipping {name}: {labels} not found", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        result = compare(folder, labels, config, seed=args.seed, splits=args.splits, reporter=Log(),
                         descriptors=args.descriptors)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["machine"] = {"cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform(),
                             "cpu": cpu(), "precision": choose_precision(config.precision, config.lite)}
        stem = f"accuracy-{name_of_config}-{name}" + (f"-{args.splits}splits" if args.splits > 1 else "")
        (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        table = format_table(result["rows"], TABLE_COLUMNS)
        text = f"## {name} ({Path(args.config).name})\n\n{describe_split(result['split'])}\n\n{table}\n"
        (RESULTS / f"{stem}.md").write_text(text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
