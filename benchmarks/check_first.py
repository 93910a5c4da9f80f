"""Check these first: which groups the report lists first, against the labels.

For every folder of `transfer.py` (grouped as `group` groups it: the config as it is, `cutoff = "auto"`,
no label touched), the groups of 2+ photos are ordered two ways, without labels:

* `loosest`: the report's order now (`report.check_first`): the group whose loosest photo is farthest
  from the rest of its group first (each photo's mean fused distance to the rest, as `groups.json`'s
  `distances`);
* `margin`: the order before: the smallest `confidence` first (`grouping.group_margins`: how far the
  cutoff would have to move to merge the group with its nearest or to split it).

Then the labels say which groups mix products: how many of the first ten do (what a reviewer opening
the page sees), and the AUC of each order for "mixes products" over all the folder's groups of 2+
(0.5: no better than chance). Means per family of folders.

    python benchmarks/check_first.py [--config configs/offline.toml] [--draws 5] [--out check-first-offline.json]
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from common import SHARED, chosen_config, config_options, cpu, write_result


def auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """P(a random positive scores above a random negative), ties counted half; None without both."""
    from scipy.stats import rankdata

    p, n = int(positive.sum()), int((~positive).sum())
    if not p or not n:
        return None
    r = rankdata(score)
    return float((r[positive].sum() - p * (p + 1) / 2) / (p * n))


def groups_as_written(label: np.ndarray, fusion, neigh, cut: float) -> list[dict]:
    """The groups of 2+ as `groups.json` has them (pipeline.Run.groups): images (indices), each one's mean
    fused distance to the rest, the group's confidence margin."""
    from ensemble_group.grouping import group_margins

    margin, _ = group_margins(label, neigh, cut)
    out = []
    for g in range(int(label.max()) + 1):
        members = np.flatnonzero(label == g)
        if len(members) > 1:
            d = fusion.matrix(members)
            out.append({"id": g, "images": members.tolist(), "distances": (d.sum(axis=1) / (len(members) - 1)).tolist(),
                        "confidence": float(margin[g])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_options(parser)
    parser.add_argument("--sets", nargs="+", default=["sample", "grocery", "shops"])
    parser.add_argument("--draws", type=int, default=5, help="drawn small folders per size (6, 12, 24 products)")
    parser.add_argument("--out", default=None, help="results file name (default check-first-<config>.json)")
    args = parser.parse_args()

    import transfer
    from ensemble_group.autocut import resolve_cutoff
    from ensemble_group.evaluation.compare import labelled_features
    from ensemble_group.fusion import Fusion
    from ensemble_group.grouper import build_indexes, prepare_vectors
    from ensemble_group.grouping import group_as
    from ensemble_group.report import CHECK_FIRST, check_first
    from ensemble_group.reporter import Reporter

    config, name_of_config = chosen_config(args)
    paths = {"sample": SHARED / "flipkart-sample", "grocery": SHARED / "grocery", "shops": SHARED / "shops"}
    rows = []
    for name in args.sets:
        labels = paths[name] / "labels.csv"
        columns = {r["image"]: r for r in csv.DictReader(open(labels))}
        vectors, products, rels, _ = labelled_features(paths[name], labels, config, Reporter(), hashes=False)
        for folder, family, idx in transfer.folders(name, products, rels, columns, args.draws):
            _, true = np.unique(products[idx], return_inverse=True)
            _, prepared = prepare_vectors({m: v[idx] for m, v in vectors.items()}, config)
            fusion = Fusion.for_config(prepared, config)
            neigh = fusion.neighbours(build_indexes(prepared, config), config.k)
            cut, _ = resolve_cutoff(config.cutoff, neigh)
            groups = groups_as_written(group_as(config, neigh, fusion, cut), fusion, neigh, cut)
            if not groups:
                continue
            mixes = {g["id"]: len(np.unique(true[g["images"]])) > 1 for g in groups}
            orders = {"loosest": check_first(groups, len(groups)),
                      "margin": sorted(groups, key=lambda g: (g["confidence"], g["id"]))}
            positive = np.array([mixes[g["id"]] for g in groups])
            row = {"folder": folder, "family": family, "images": len(idx), "groups": len(groups),
                   "mixed_share": round(float(positive.mean()), 3)}
            for how, order in orders.items():
                place = {g["id"]: i for i, g in enumerate(order)}
                row[how] = {"mixed_in_first": sum(mixes[g["id"]] for g in order[:CHECK_FIRST]),
                            "first": min(CHECK_FIRST, len(order)),
                            "auc_mixed": auc(-np.array([place[g["id"]] for g in groups], float), positive)}
            rows.append(row)
            print(f"{folder:38s} {len(groups):4d} groups of 2+, {row['mixed_share']:.2f} mixed; first {row['loosest']['first']}"
                  f" mixed: loosest {row['loosest']['mixed_in_first']}, margin {row['margin']['mixed_in_first']}", flush=True)
    summary = summarise(rows)
    print("| folders | n | groups of 2+ (mean) | share mixed | first ten mixed: **loosest** / margin | AUC mixed: **loosest** / margin |")
    print("|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['family']} | {s['n']} | {s['groups']:.0f} | {s['mixed_share']:.2f} | **{s['loosest_first']:.1f}** / "
              f"{s['margin_first']:.1f} of {s['first']:.1f} | **{s['loosest_auc']:.2f}** / {s['margin_auc']:.2f} |")
    write_result(args.out or f"check-first-{name_of_config}.json",
                 {"config": Path(args.config).name, "machine": {"cores": os.cpu_count(), "cpu": cpu()},
                  "summary": summary, "folders": rows})


def summarise(rows: list[dict]) -> list[dict]:
    """Means per family (AUC over the folders that have both mixed and pure groups)."""
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        fam = [r for r in rows if r["family"] == family]
        mean = lambda xs: round(float(np.mean(xs)), 3) if xs else float("nan")  # noqa: E731
        aucs = {how: [r[how]["auc_mixed"] for r in fam if r[how]["auc_mixed"] is not None] for how in ("loosest", "margin")}
        out.append({"family": family, "n": len(fam), "groups": mean([r["groups"] for r in fam]),
                    "mixed_share": mean([r["mixed_share"] for r in fam]), "first": mean([r["loosest"]["first"] for r in fam]),
                    "loosest_first": mean([r["loosest"]["mixed_in_first"] for r in fam]),
                    "margin_first": mean([r["margin"]["mixed_in_first"] for r in fam]),
                    "loosest_auc": mean(aucs["loosest"]), "margin_auc": mean(aucs["margin"])})
    return out


if __name__ == "__main__":
    main()
