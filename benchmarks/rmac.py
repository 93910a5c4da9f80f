"""This round's candidates of issue 4 over 5 product splits: R-MAC pooling and quantile normalisation.

Each is the engine's option (`pooling = "rmac"`, `normalisation = "quantile"`), scored beside the
config with average pooling (the default before R-MAC), with `compare`'s held-out protocol (cutoff
tuned on half the products, scored on the other half), averaged over product splits, on whole sets
and on grocery cut to a few photos per product (the same cut as splits.py). R-MAC needs its own
extraction of each set (cached).

    python benchmarks/rmac.py --sets sample grocery-810 grocery-packages
    python benchmarks/rmac.py --sets grocery-all --per-product 3 4 6 --out rmac-quantile-all.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


from common import ROOT, cpu, sets, write_result
from splits import few_photos

ROWS = ("average pooling", "R-MAC pooling", "quantile normalisation", "R-MAC + quantile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--grocery", type=Path, default=ROOT.parent / "shared" / "datasets" / "grocery")
    parser.add_argument("--sets", nargs="+", default=["sample", "grocery-810", "grocery-packages"])
    parser.add_argument("--per-product", nargs="*", type=int, default=[],
                        help="also each set cut to this many photos per product (splits.py's cut)")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--out", default="rmac-quantile.json")
    args = parser.parse_args()

    from ensemble_group.config import load_config
    from ensemble_group.evaluation.compare import Arm, arm_vectors, mean_rows, split_runs
    from ensemble_group.reporter import Reporter

    config = load_config(args.config).replace(pooling="avg")  # the previous default, what the options change
    arms = [Arm(ROWS[0], config.models), Arm(ROWS[1], config.models, (("pooling", "rmac"),)),
            Arm(ROWS[2], config.models, (("normalisation", "quantile"),)),
            Arm(ROWS[3], config.models, (("pooling", "rmac"), ("normalisation", "quantile")))]
    report = {"config": Path(args.config).name, "splits": args.splits, "sets": {},
              "machine": {"cores": os.cpu_count(), "cpu": cpu()}}
    for name in args.sets:
        folder, labels = sets(args.grocery)[name]
        with_vectors, products, _, _ = arm_vectors(folder, labels, config, arms, Reporter(), hashes=False)
        for per in [0, *args.per_product]:
            label = name if not per else f"{name}, {per} per product"
            cut = [(arm, few_photos(vecs, products, per)[0] if per else vecs) for arm, vecs in with_vectors]
            true = few_photos(with_vectors[0][1], products, per)[1] if per else products
            per_split, _ = split_runs(cut, true, list(range(args.splits)), config)
            rows = {r["arm"]: {k: r[k] for k in ("cutoff", "n_pred_groups", "pairwise_f1", "bcubed_f1",
                                                  "pairwise_f1_per_split") if k in r} for r in mean_rows(per_split)}
            for arm, row in rows.items():
                print(f"{label:32s} {arm:24s} F1 {row['pairwise_f1']:.3f} B3 {row['bcubed_f1']:.3f} "
                      f"{row.get('pairwise_f1_per_split', '')}", flush=True)
            report["sets"][label] = rows
    write_result(args.out, report)


if __name__ == "__main__":
    main()
