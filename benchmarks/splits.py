"""Re-ranking measured three ways, beyond compare's one split: several product splits, products
with few photos, and fixed cutoffs (what `group` users get without tuning).

    python benchmarks/splits.py                                   # offline config, every set found
    python benchmarks/splits.py --sets grocery-810 --seeds 0 1 2 --per-product 3 6

1. For each data set and each split seed, compare's held-out protocol (cutoff tuned on half the
   products, scored on the other half) for the config and for each variant; mean over seeds.
2. The same on grocery with only N photos per product (catalogues often have 3-5 views; grocery
   has about 68), drawn with a fixed seed.
3. Whole sets (no split) grouped at fixed cutoffs, with and without re-ranking.

Features come from the cache (as in `accuracy.py`). Writes results/splits-<config>.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import RESULTS, ROOT, sets

VARIANTS = {"config": (), "no re-ranking": (("rerank_k", 0),), "re-ranking weight 0.6": (("rerank_weight", 0.6),),
            "re-ranking weight 2": (("rerank_weight", 2.0),), "lone images not attached": (("alone_margin", 0.0),)}
FIXED_CUTOFFS = (-1.0, -2.0, -3.0, -4.0, -4.5, -5.0, -6.0)


def held_out(vectors, true, config, seeds) -> dict[str, dict[str, float]]:
    """Mean (and per-seed) held-out pairwise and B-cubed F1 of every variant."""
    from ensemble_group.evaluation.compare import Arm, split_runs

    arms = [(Arm(name, config.models, changes), vectors) for name, changes in VARIANTS.items()]
    per_split, _ = split_runs(arms, true, list(seeds), config)
    out = {}
    for i, name in enumerate(VARIANTS):
        r = {key: [round(rows[i][key], 4) for rows in per_split] for key in ("pairwise_f1", "bcubed_f1", "cutoff")}
        out[name] = {"mean_pairwise_f1": round(float(np.mean(r["pairwise_f1"])), 3),
                     "mean_bcubed_f1": round(float(np.mean(r["bcubed_f1"])), 3), **r}
    return out


def fixed(vectors, true, config) -> dict[str, list[float]]:
    """Pairwise F1 of the whole set grouped at each of FIXED_CUTOFFS, with and without re-ranking."""
    from ensemble_group.evaluation.compare import Arm, Subset, neighbours_for
    from ensemble_group.evaluation.metrics import pairwise_prf
    from ensemble_group.grouping import group_as

    out = {}
    for name in ("config", "no re-ranking"):
        fusion, neigh, cfg = neighbours_for(Subset(vectors, true), Arm(name, config.models, VARIANTS[name]), config)
        out[name] = [round(pairwise_prf(true, group_as(cfg, neigh, fusion, c))["pairwise_f1"], 3) for c in FIXED_CUTOFFS]
    return out


def few_photos(vectors, true, per_product: int, seed: int = 7):
    """The same set with at most `per_product` photos of each product, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(true == p))[:per_product] for p in np.unique(true)]))
    return {m: v[keep] for m, v in vectors.items()}, true[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--grocery", type=Path, default=ROOT.parent / "shared" / "datasets" / "grocery")
    parser.add_argument("--sets", nargs="+", default=["sample", "grocery-810", "grocery-packages", "grocery-all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--per-product", type=int, nargs="+", default=[3, 4, 6],
                        help="photos per product for the few-photo rows (drawn from grocery-all)")
    parser.add_argument("--few-only", action="store_true",
                        help="only the few-photo rows (writes splits-<config>-few.*)")
    args = parser.parse_args()

    from ensemble_group.config import load_config
    from ensemble_group.evaluation.compare import labelled_features
    from ensemble_group.reporter import Reporter

    config = load_config(args.config)
    available = {n: p for n, p in sets(args.grocery).items() if n in args.sets and p[1].is_file()}
    cases = {}
    for name, (folder, labels) in available.items():
        vectors, products, _, _ = labelled_features(folder, labels, config, Reporter(), hashes=False)
        true = np.unique(products, return_inverse=True)[1]
        if not args.few_only:
            cases[name] = (vectors, true)
        if name == "grocery-all":
            for k in args.per_product:
                cases[f"grocery-all, {k} per product"] = few_photos(vectors, true, k)
    result = {"config": config.to_dict(), "seeds": args.seeds, "fixed_cutoffs": list(FIXED_CUTOFFS), "sets": {}}
    lines = [f"## Re-ranking over {len(args.seeds)} product splits ({Path(args.config).name})\n",
             "Mean held-out pairwise F1 (B-cubed F1) over split seeds " + ", ".join(map(str, args.seeds)) + ".\n",
             "| set | images | " + " | ".join(VARIANTS) + " |", "|---|---|" + "---|" * len(VARIANTS)]
    for name, (vectors, true) in cases.items():
        rows = held_out(vectors, true, config, args.seeds)
        result["sets"][name] = {"n_images": len(true), "held_out": rows, "fixed_cutoff_pairwise_f1": fixed(vectors, true, config)}
        lines.append(f"| {name} | {len(true)} | " + " | ".join(f"{r['mean_pairwise_f1']:.3f} ({r['mean_bcubed_f1']:.3f})"
                                                              for r in rows.values()) + " |")
        print(lines[-1], flush=True)
    lines += ["", "Whole sets at fixed cutoffs (pairwise F1), with / without re-ranking:\n",
              "| set | " + " | ".join(f"{c:g}" for c in FIXED_CUTOFFS) + " |", "|---|" + "---|" * len(FIXED_CUTOFFS)]
    for name, r in result["sets"].items():
        f = r["fixed_cutoff_pairwise_f1"]
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(f["config"], f["no re-ranking"])) + " |")
    text = "\n".join(lines) + "\n"
    stem = f"splits-{Path(args.config).stem}" + ("-few" if args.few_only else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
