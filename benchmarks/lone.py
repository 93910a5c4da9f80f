"""The lone-image rule: by a group's mean (the engine's) against by the nearest photo (the rule before), several margins.

    python benchmarks/lone.py                    # every case below, offline config (about 25 min here)
    python benchmarks/lone.py --cases sample grocery-810

An image left alone by the grouping may join a group that is clearly nearest to it. The engine
measures "nearest" by the mean fused distance of the image's neighbour-list pairs with each group;
before, it went by each group's nearest photo, margin 1 (kept here as `attach_nearest`, for the
comparison). Each variant regroups the same fused neighbours, so rows differ only by the rule:

1. held-out pairwise F1, cutoff tuned per variant on half the products (compare's protocol), mean
   over split seeds (20 for the sample, 5 otherwise), and the whole set grouped at the config's
   cutoff (pairwise F1, groups);
2. grocery-all cut to 3 / 4 / 6 photos per product (few views, where the rule acts);
3. 60 small folders drawn with 1-5 photos per product, so that products with a single photo exist
   (the rule's risk: attaching a product's only photo to a look-alike); the difference to the
   previous rule per draw, mean and standard error.

Writes results/lone-<config>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import ROOT, cpu, sets, write_result
from small import draw
from splits import few_photos

PREVIOUS = "nearest photo, margin 1 (before)"
CASES = ("sample", "grocery-810", "grocery-packages", "grocery-all:3", "grocery-all:4", "grocery-all:6",
         "draws:grocery-all:12", "draws:grocery-all:24", "draws:grocery-packages:12", "draws:grocery-packages:24")


def attach_nearest(label: np.ndarray, neigh, margin: float) -> np.ndarray:
    """The rule before: join the nearest photo's group when it is nearer than any other group's nearest by `margin`."""
    from ensemble_group.grouping import canonical

    n = len(label)
    out = label.copy()
    for i in np.flatnonzero(np.bincount(label, minlength=n)[label] == 1):
        ids, dist = neigh.ids[i], neigh.dist[i]
        ids, dist = ids[ids >= 0], dist[ids >= 0]
        if not len(ids) or dist[0] >= 0:
            continue
        target = out[ids[0]]
        other = dist[out[ids] != target]
        if not len(other) or other[0] - dist[0] >= margin:
            out[i] = target
    return canonical(out)


def rules(config) -> dict[str, object]:
    """Each variant's grouper: labels(neigh, fusion, cutoff)."""
    from ensemble_group.grouping import group_as

    off = config.replace(alone_margin=0.0)
    out = {"not attached": lambda neigh, fusion, c: group_as(off, neigh, fusion, c),
           PREVIOUS: lambda neigh, fusion, c: attach_nearest(group_as(off, neigh, fusion, c), neigh, 1.0)}
    for m in (0.25, 0.5, 0.75, 1.0):
        cfg = config.replace(alone_margin=m)
        out[f"group mean, margin {m:g}" + (" (default)" if m == 0.5 else "")] = (
            lambda neigh, fusion, c, cfg=cfg: group_as(cfg, neigh, fusion, c))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--grocery", type=Path, default=ROOT.parent / "shared" / "datasets" / "grocery")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--draws", type=int, default=60)
    args = parser.parse_args()

    from ensemble_group.config import load_config
    from ensemble_group.evaluation.compare import (Arm, Subset, cutoff_grid, labelled_features, neighbours_for,
                                                   split_products)
    from ensemble_group.evaluation.metrics import pairwise_prf
    from ensemble_group.reporter import Reporter

    config = load_config(args.config)
    arm = Arm("ensemble", config.models)
    groupers = rules(config)
    f1 = lambda true, pred: pairwise_prf(true, pred)["pairwise_f1"]  # noqa: E731

    def held_out(vectors, true, seed) -> dict[str, float]:
        tune, test = split_products(true, seed)
        a = neighbours_for(Subset({m: v[tune] for m, v in vectors.items()}, true[tune]), arm, config)
        b = neighbours_for(Subset({m: v[test] for m, v in vectors.items()}, true[test]), arm, config)
        out = {}
        for name, labels in groupers.items():
            cutoff = max(cutoff_grid(a[1]), key=lambda c: (f1(true[tune], labels(a[1], a[0], float(c))), -c))
            out[name] = f1(true[test], labels(b[1], b[0], float(cutoff)))
        return out

    def whole(vectors, true) -> dict[str, tuple[float, int]]:
        fusion, neigh, _ = neighbours_for(Subset(vectors, true), arm, config)
        preds = {name: labels(neigh, fusion, config.cutoff) for name, labels in groupers.items()}
        return {name: (f1(true, pred), len(np.unique(pred))) for name, pred in preds.items()}

    loaded = {}
    report = {"config": Path(args.config).name, "machine": {"cpu": cpu()}, "cases": {}}
    for case in args.cases:
        parts = case.split(":")
        set_name = parts[1] if parts[0] == "draws" else parts[0]
        if set_name not in loaded:
            folder, labels = sets(args.grocery)[set_name]
            vectors, products, _, _ = labelled_features(folder, labels, config, Reporter(), hashes=False)
            loaded[set_name] = (vectors, np.unique(products, return_inverse=True)[1])
        vectors, true = loaded[set_name]
        if parts[0] == "draws":
            held, at_cutoff = {n: [] for n in groupers}, {n: [] for n in groupers}
            for d in range(args.draws):
                idx = draw(true, int(parts[2]), (1, 5), 1000 + d)
                sub = {m: v[idx] for m, v in vectors.items()}
                for n, x in held_out(sub, true[idx], d).items():
                    held[n].append(x)
                for n, (x, _) in whole(sub, true[idx]).items():
                    at_cutoff[n].append(x)
            rows = {}
            for n in groupers:
                h, w = np.array(held[n]), np.array(at_cutoff[n])
                dh, dw = h - np.array(held[PREVIOUS]), w - np.array(at_cutoff[PREVIOUS])
                se = lambda x: round(float(x.std(ddof=1) / np.sqrt(len(x))), 4)  # noqa: E731
                rows[n] = {"held_out_pairwise_f1": round(float(h.mean()), 4), "whole_pairwise_f1": round(float(w.mean()), 4),
                           "held_out_minus_before": [round(float(dh.mean()), 4), se(dh)],
                           "whole_minus_before": [round(float(dw.mean()), 4), se(dw)]}
            report["cases"][f"{case} products, 1-5 photos each, {args.draws} draws"] = rows
        else:
            if len(parts) == 2:
                vectors, true = few_photos(vectors, true, int(parts[1]))
            seeds = range(20 if case == "sample" else 5)
            per_seed = [held_out(vectors, true, s) for s in seeds]
            at_cutoff = whole(vectors, true)
            rows = {n: {"held_out_pairwise_f1": round(float(np.mean([r[n] for r in per_seed])), 4),
                        "whole_pairwise_f1": round(at_cutoff[n][0], 4), "whole_groups": at_cutoff[n][1]}
                    for n in groupers}
            report["cases"][f"{case} ({len(true)} photos, {len(seeds)} splits)"] = rows
        for n, r in rows.items():
            print(f"{case:28s} {n:36s} " + "  ".join(f"{k} {v}" for k, v in r.items()), flush=True)
    write_result(f"lone-{Path(args.config).stem}.json", report)


if __name__ == "__main__":
    main()
