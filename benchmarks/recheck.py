"""A targeted regional re-check of lone images: does it attach them to the right group? (issue 4)

`details.py` showed that a close-up scores clearly higher against *regions* of its product's other
photos, taken at twice the resolution, than against whole images. This measures the targeted use of
that, without changing the engine: group a labelled folder with the given config and cutoff; for
every image left alone, take its nearest fused neighbours (the candidates), and for every member
compare the lone image's own vector with average-pooled windows of each candidate's last map at
`--scale` x the member's input size (aspect kept). A member votes for the group of its best-scoring
candidate; the margin is that group's best score minus the best of any other group. Reported per
lone image: whether all members agree, the smallest margin over members, and whether the group
they agree on is mostly the image's own product (labels are used only to score).

    python benchmarks/recheck.py                                  # sample, cutoff -2.0
    python benchmarks/recheck.py --set grocery-810 --cutoff -3.6   # stricter: more lone images
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import numpy as np

from common import ROOT, cpu, sets, write_result
from details import any_size_trunk, conv_map, windows

from ensemble_group.extractors import MODELS  # noqa: E402

from ensemble_group.pooling import l2_normalise

WINDOW_FRACTIONS = (0.3, 0.45, 0.6)  # window side as a share of the map's long side, half-overlapping


def regional_vectors(trunk, name: str, path: Path, scale: float) -> np.ndarray:
    """(r, c) unit vectors: the whole map and its windows, the photo at `scale` x the input size."""
    fmap = conv_map(trunk, name, path, MODELS[name].input_size * scale, multiple=32)
    sides = [max(1, round(f * max(fmap.shape[:2]))) for f in WINDOW_FRACTIONS]
    return l2_normalise(np.array([fmap.mean(axis=(0, 1)), *windows(fmap, sides)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--grocery", type=Path, default=ROOT.parent / "shared" / "datasets" / "grocery")
    parser.add_argument("--set", default="sample")
    parser.add_argument("--cutoff", type=float, default=-2.0)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--scale", type=float, default=2.0, help="candidates' long side, x the member's input size")
    args = parser.parse_args()

    from ensemble_group.config import load_config
    from ensemble_group.evaluation.compare import Arm, Subset, labelled_features, neighbours_for
    from ensemble_group.grouping import group_as
    from ensemble_group.reporter import Reporter

    config = load_config(args.config)
    folder, labels = sets(args.grocery)[args.set]
    vectors, products, rels, _ = labelled_features(folder, labels, config, Reporter(), hashes=False)
    fusion, neigh, cfg = neighbours_for(Subset(vectors, products), Arm("ensemble", config.models), config)
    label = group_as(cfg, neigh, fusion, args.cutoff)
    lone = np.flatnonzero(np.bincount(label)[label] == 1)
    cands = {int(i): [int(j) for j in neigh.ids[i, :args.candidates] if j >= 0] for i in lone}
    needed = sorted({j for c in cands.values() for j in c})
    print(f"{args.set}: {len(label)} images, {label.max() + 1} groups, {len(lone)} alone; "
          f"{len(needed)} candidate photos to re-read at {args.scale:g}x", flush=True)
    region = {}
    for m in config.models:
        trunk = any_size_trunk(m)
        region[m] = {j: regional_vectors(trunk, m, folder / rels[j], args.scale) for j in needed}

    def majority(g: int) -> str:
        return Counter(products[label == g]).most_common(1)[0][0]

    rows = []
    for i, cand in cands.items():
        votes = {}
        for use in ("regions", "whole"):
            per_member = []
            for m in config.models:
                q = vectors[m][i]
                s = [float((region[m][j] @ q).max()) if use == "regions" else float(vectors[m][j] @ q) for j in cand]
                best_of: dict[int, float] = {}
                for j, x in zip(cand, s):
                    best_of[int(label[j])] = max(best_of.get(int(label[j]), -1.0), x)
                ranked = sorted(best_of, key=lambda g: -best_of[g])
                margin = best_of[ranked[0]] - (best_of[ranked[1]] if len(ranked) > 1 else -1.0)
                per_member.append((ranked[0], margin))
            agreed = len({g for g, _ in per_member}) == 1
            target = per_member[0][0]
            votes[use] = {"all_agree": agreed, "min_margin": round(min(x for _, x in per_member), 4),
                          "right": agreed and majority(target) == products[i]}
        rows.append({"image": str(rels[i]), "own_product_among_candidates":
                     bool(any(products[j] == products[i] for j in cand)), **votes})
    summary = {}
    for use in ("regions", "whole"):
        agreed = [r for r in rows if r[use]["all_agree"]]
        summary[use] = {"all_agree": len(agreed), "right": sum(r[use]["right"] for r in agreed),
                        "margins_right": sorted((r[use]["min_margin"] for r in agreed if r[use]["right"]), reverse=True),
                        "margins_wrong": sorted((r[use]["min_margin"] for r in agreed if not r[use]["right"]), reverse=True)}
        print(f"{use}: members agree on {len(agreed)} of {len(rows)} lone images, right on {summary[use]['right']}; "
              f"margins right {summary[use]['margins_right']}, wrong {summary[use]['margins_wrong']}")
    report = {"set": args.set, "config": Path(args.config).name, "cutoff": args.cutoff, "candidates": args.candidates,
              "scale": args.scale, "n_images": len(label), "n_groups": int(label.max() + 1), "n_alone": len(lone),
              "candidate_photos": len(needed), "summary": summary, "lone_images": rows,
              "machine": {"cores": os.cpu_count(), "cpu": cpu()}}
    write_result(f"recheck-{args.set}.json", report)


if __name__ == "__main__":
    main()
