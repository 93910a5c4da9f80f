"""Small folders: `compare`'s protocol on many small folders drawn from a labelled set.

A catalogue team's folder is often a few dozen photos, a few photos per product, and one `compare` of
such a folder is one noisy draw. This script draws many: each draw takes P products at random and
2-5 of each one's photos (`--photos`), splits the products in half, tunes each arm's cutoff on one
half and scores the other (as `compare` does), so every arm gets a mean and a standard error over
the draws. It also groups each whole draw at the config's own cutoff, which is what `group` gives.

The arms: the ensemble as configured, each member alone, the original method (vgg16-tv, seed rule,
average pooling, tuned raw cutoff) and the ensemble with whitening only from 50 images (the engine's
first threshold, before `whiten_min = 10`). Draws use seeds 1000, 1001, ...

    python benchmarks/small.py --sets grocery-all grocery-packages --products 6 12 24 --draws 60
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from common import ROOT, cpu, sets, write_result

BEFORE = "ensemble, whitening only from 50 images (before)"


def draw(true: np.ndarray, products: int, photos: tuple[int, int], seed: int) -> np.ndarray:
    """Indices of one small folder: `products` products, each with photos[0]..photos[1] of its photos."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.unique(true), products, replace=False)
    return np.concatenate([rng.permutation(np.flatnonzero(true == p))[: rng.integers(photos[0], photos[1] + 1)]
                           for p in chosen])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--grocery", type=Path, default=ROOT.parent / "shared" / "datasets" / "grocery")
    parser.add_argument("--sets", nargs="+", default=["grocery-all", "grocery-packages"])
    parser.add_argument("--products", nargs="+", type=int, default=[6, 12, 24], help="products per drawn folder")
    parser.add_argument("--photos", nargs=2, type=int, default=[2, 5], metavar=("MIN", "MAX"),
                        help="photos per product, drawn uniformly (fewer where a product has fewer)")
    parser.add_argument("--draws", type=int, default=60)
    parser.add_argument("--out", default=None, help="results file name (default small-<config>.json)")
    args = parser.parse_args()

    from ensemble_group.config import load_config
    from ensemble_group.evaluation.compare import (Arm, Subset, arm_vectors, default_arms, neighbours_for,
                                                   original_model, split_runs)
    from ensemble_group.evaluation.metrics import pairwise_prf
    from ensemble_group.grouping import group_as
    from ensemble_group.reporter import Reporter

    config = load_config(args.config)
    original = original_model(config)
    wanted = {f"ensemble ({' + '.join(config.models)})", *config.models,
              f"original: {original}, seed rule, tuned cutoff"}
    arms = [a for a in default_arms(config, original) if a.name in wanted]
    arms.append(Arm(BEFORE, config.models, (("whiten_min", 50),)))
    whole = {arms[0].name, BEFORE}  # also grouped whole at the config's cutoff
    report = {"config": Path(args.config).name, "photos_per_product": args.photos, "draws": args.draws,
              "draw_seeds": f"1000-{999 + args.draws}", "sets": {},
              "machine": {"cores": os.cpu_count(), "cpu": cpu()}}
    for name in args.sets:
        folder, labels = sets(args.grocery)[name]
        with_vectors, products, _, _ = arm_vectors(folder, labels, config, arms, Reporter(), hashes=False)
        _, true = np.unique(products, return_inverse=True)
        for p in args.products:
            f1 = {a.name: [] for a in arms}
            at_cutoff = {arm_name: [] for arm_name in whole}
            sizes = []
            for d in range(args.draws):
                idx = draw(true, p, tuple(args.photos), 1000 + d)
                sizes.append(len(idx))
                picked = [(a, {m: v[idx] for m, v in vecs.items()}) for a, vecs in with_vectors]
                per_split, _ = split_runs(picked, true[idx], [d], config)
                for row in per_split[0]:
                    f1[row["arm"]].append(row["pairwise_f1"])
                for a, vecs in (pair for pair in picked if pair[0].name in whole):
                    fusion, neigh, cfg = neighbours_for(Subset(vecs, true[idx]), a, config)
                    at_cutoff[a.name].append(pairwise_prf(true[idx], group_as(cfg, neigh, fusion))["pairwise_f1"])
            label = f"{name}, {p} products"
            rows = {}
            for arm, values in f1.items():
                v = np.array(values)
                rows[arm] = {"held_out_pairwise_f1": round(float(v.mean()), 4),
                             "standard_error": round(float(v.std(ddof=1) / np.sqrt(len(v))), 4)}
                if arm in at_cutoff:
                    rows[arm]["whole_at_config_cutoff"] = round(float(np.mean(at_cutoff[arm])), 4)
                print(f"{label:30s} {arm:52s} {rows[arm]['held_out_pairwise_f1']:.3f} "
                      f"± {rows[arm]['standard_error']:.3f}"
                      + (f"   whole at {config.cutoff:g}: {rows[arm]['whole_at_config_cutoff']:.3f}"
                         if arm in at_cutoff else ""), flush=True)
            report["sets"][label] = {"mean_images": round(float(np.mean(sizes)), 1), "rows": rows}
    write_result(args.out or f"small-{Path(args.config).stem}.json", report)


if __name__ == "__main__":
    main()
