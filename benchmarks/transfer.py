"""Transfer: the default grouping of whole folders nobody labelled, beside the best fixed cutoff for each.

For every folder the engine groups it as `ensemble-group group DIR` would with the config as it is (no
labels touched; `cutoff = "auto"` by default), scores the grouping whole, and puts it beside the
oracle: the best fixed cutoff for that very folder, chosen with its labels (the sweep of `tune` and
`evaluate --oracle`). Beside them, the fixed -2 (the default before "auto") and the other label-free
rules measured as candidates (`RULES`: benchmarks/README.md "Transfer"). Vectors come from the
embedding cache (extracted once per set).

Folders: the sample; grocery drawn at 240 photos (24 products x 10, three draws), labels-810,
labels-packages, all 5,502; grocery's coarse classes with 3+ products (every photo looks alike: the
apples, the milks, the juices...); drawn small folders (6 / 12 / 24 products, 1-5 photos each, so
some products have one photo; seeds 1000-); and shops, whole, per shop, in two halves by shop, and its
five shops of clothing and printed goods as one folder (one studio's look-alikes; both halves):
the candidates' constants were chosen on grocery, the sample and the tuning half (abantecart,
opencart, prestashop16, prestashop17, smartstore, solidus); the check half (grandnode, saleor, spree,
thelia, thirtybees) was not looked at while choosing.

    python benchmarks/transfer.py [--config configs/offline.toml] [--draws 20] [--no-rules] [--out transfer-offline.json]
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np

from common import SHARED, chosen_config, config_options, cpu, write_result

SHOPS_TUNE = ("abantecart", "opencart", "prestashop16", "prestashop17", "smartstore", "solidus")
# the shops whose demo catalogue is clothing and printed goods (one studio's look-alikes: the risk of
# issue 22's fashion catalogues), grouped as one folder: a check, spanning both halves
SHOPS_CLOTHING = ("prestashop16", "prestashop17", "saleor", "solidus", "spree")


def lookalike_rule(fusion, neigh, config, grid) -> float:
    """min(-2, the nearest tenth of the listed pairs that re-ranking pushes apart): cut under the folder's
    look-alikes (pairs whose k-reciprocal neighbourhoods overlap less than the re-ranking's centre)."""
    from ensemble_group.rerank import JACCARD_CENTRE

    if fusion.neighbourhoods is None:
        return -2.0
    ids = fusion.first_stage.ids[:, :20]
    a, col = np.nonzero(ids >= 0)
    b = ids[a, col]
    apart = fusion.neighbourhoods.jaccard(a, b) > JACCARD_CENTRE
    d = fusion.first_stage.dist[a, col][apart] + fusion.neighbourhoods.adjustment(a[apart], b[apart], fusion.rerank_weight)
    return -2.0 if len(d) < 50 else min(-2.0, float(np.quantile(d, 0.1)))


def modularity_rule(fusion, neigh, config, grid) -> float:
    """The cutoff whose grouping has the highest modularity (resolution 4) on the 3-nearest-neighbour
    graph: rank-based, so blind to the scale of the distances."""
    from ensemble_group.grouping import group_as

    n = len(neigh.ids)
    top = neigh.ids[:, :3]
    a, b = np.repeat(np.arange(n), top.shape[1]), top.ravel()
    a, b = a[b >= 0], b[b >= 0]
    key = np.unique(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b))
    a, b = key // n, key % n
    if not len(a):
        return -2.0
    degree = np.bincount(a, minlength=n) + np.bincount(b, minlength=n)

    def q(label):
        inside = label[a] == label[b]
        return (inside.sum() / len(a)) - 4.0 * ((np.bincount(label, weights=degree) / (2 * len(a))) ** 2).sum()

    return float(max(grid, key=lambda c: (q(group_as(config, neigh, fusion, float(c))), -c)))


def scaled(share: float, cap: bool = True):
    """min(-2, share x the median nearest-neighbour distance) (the engine's "auto" was share 0.2 until stop 33;
    it now reads the share off the falloff of the neighbours' distances: autocut.py), or uncapped."""
    def rule(fusion, neigh, config, grid) -> float:
        c = share * float(np.median(neigh.dist[:, 0])) if neigh.dist.shape[1] else -2.0
        return min(-2.0, c) if cap else c
    return rule


RULES = {"fixed -2": lambda fusion, neigh, config, grid: -2.0, "min(-2, 0.2 x nearest) (stops 25-33)": scaled(0.2),
         "min(-2, 0.3 x nearest)": scaled(0.3), "0.4 x nearest": scaled(0.4, cap=False),
         "look-alike quantile": lookalike_rule, "modularity": modularity_rule}


def draw(true: np.ndarray, products: int, photos: tuple[int, int], seed: int) -> np.ndarray:
    """Indices of `products` products drawn at random, each with photos[0]..photos[1] of its photos."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.unique(true), products, replace=False)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(true == p))[: rng.integers(photos[0], photos[1] + 1)]
                                   for p in chosen]))


def folders(name: str, products: np.ndarray, rels: list[str], columns: dict[str, dict[str, str]], draws: int):
    """(folder name, group, indices) of every folder drawn from one labelled set."""
    _, true = np.unique(products, return_inverse=True)
    n = len(true)
    if name == "sample":
        yield "sample", "sample", np.arange(n)
        return
    if name == "shops":
        shop = np.array([columns[r]["shop"] for r in rels])
        yield "shops (whole)", "shops", np.arange(n)
        for half, shops in (("tuning half", SHOPS_TUNE), ("check half", sorted(set(shop) - set(SHOPS_TUNE)))):
            yield f"shops, {half}", "shops halves", np.flatnonzero(np.isin(shop, shops))
            for s in shops:
                yield f"shop {s} ({half.split()[0]})", f"single shops, {half}", np.flatnonzero(shop == s)
        yield "shops, clothing and prints", "clothing shops (both halves)", np.flatnonzero(np.isin(shop, SHOPS_CLOTHING))
        return
    in_810 = {r["image"] for r in csv.DictReader(open(SHARED / "grocery" / "labels-810.csv"))}
    in_packages = {r["image"] for r in csv.DictReader(open(SHARED / "grocery" / "labels-packages.csv"))}
    yield "grocery-all", "grocery", np.arange(n)
    yield "grocery-810", "grocery", np.array([i for i, r in enumerate(rels) if r in in_810])
    yield "grocery-packages", "grocery", np.array([i for i, r in enumerate(rels) if r in in_packages])
    for d in range(3):
        yield f"grocery-240 draw {d}", "grocery-240", draw(true, 24, (10, 10), 500 + d)
    coarse = np.array([columns[r]["coarse"] for r in rels])
    for c in sorted(set(coarse)):
        inside = coarse == c
        if len(np.unique(true[inside])) >= 3:
            yield f"grocery coarse {c}", "grocery coarse classes (all alike)", np.flatnonzero(inside)
    for p in (6, 12, 24):
        for d in range(draws):
            yield f"small {p} products draw {d}", f"small folders, {p} products", draw(true, p, (1, 5), 1000 + d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_options(parser)
    parser.add_argument("--sets", nargs="+", default=["sample", "grocery", "shops"])
    parser.add_argument("--draws", type=int, default=20, help="drawn small folders per size (6, 12, 24 products)")
    parser.add_argument("--no-rules", action="store_true", help="only the default and the oracle, not the candidate rules")
    parser.add_argument("--out", default=None, help="results file name (default transfer-<config>.json)")
    args = parser.parse_args()

    from ensemble_group.autocut import resolve_cutoff
    from ensemble_group.evaluation.compare import best, cutoff_grid, labelled_features, sweep
    from ensemble_group.evaluation.metrics import bcubed, n_groups, pairwise_prf
    from ensemble_group.fusion import Fusion
    from ensemble_group.grouping import group_as
    from ensemble_group.grouper import build_indexes, prepare_vectors
    from ensemble_group.reporter import Reporter

    config, name_of_config = chosen_config(args)
    paths = {"sample": SHARED / "flipkart-sample", "grocery": SHARED / "grocery", "shops": SHARED / "shops"}
    rows = []
    for name in args.sets:
        labels = paths[name] / "labels.csv"
        columns = {r["image"]: r for r in csv.DictReader(open(labels))}
        vectors, products, rels, _ = labelled_features(paths[name], labels, config, Reporter(), hashes=False)
        for folder, family, idx in folders(name, products, rels, columns, args.draws):
            t0 = time.perf_counter()
            _, true = np.unique(products[idx], return_inverse=True)
            _, prepared = prepare_vectors({m: v[idx] for m, v in vectors.items()}, config)
            fusion = Fusion.for_config(prepared, config)
            neigh = fusion.neighbours(build_indexes(prepared, config), config.k)
            scored = lambda pred: {**pairwise_prf(true, pred), **bcubed(true, pred), **n_groups(true, pred)}  # noqa: E731
            cut, how = resolve_cutoff(config.cutoff, neigh)  # exactly what `group` does: no label read
            default = {"cutoff": round(cut, 3), **how, **scored(group_as(config, neigh, fusion, cut))}
            rules = {}
            for rule, choose in ({} if args.no_rules else RULES).items():
                c = choose(fusion, neigh, config, cutoff_grid(neigh))  # label-free too
                rules[rule] = {"cutoff": round(c, 3), **scored(group_as(config, neigh, fusion, c))}
            curve = sweep(true, fusion, neigh, config)
            oracle_pw, oracle_b3 = best(curve, "pairwise_f1"), best(curve, "bcubed_f1")
            row = {"folder": folder, "family": family, "images": len(idx), "products": int(true.max() + 1),
                   "default": default, "rules": rules, "oracle_pairwise": oracle_pw, "oracle_bcubed": oracle_b3,
                   "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row)
            print(f"{folder:38s} {len(idx):5d} img  default {cut:.2f}: pw F1 {default['pairwise_f1']:.3f} (oracle "
                  f"{oracle_pw['pairwise_f1']:.3f} at {oracle_pw['cutoff']:.2f})  B3 {default['bcubed_f1']:.3f} (oracle "
                  f"{oracle_b3['bcubed_f1']:.3f} at {oracle_b3['cutoff']:.2f})  "
                  + "  ".join(f"{k} {v['cutoff']:.2f}: {v['pairwise_f1']:.3f}/{v['bcubed_f1']:.3f}" for k, v in rules.items()),
                  flush=True)
    summary = summarise(rows)
    for line in table(summary, list(RULES) if not args.no_rules else []):
        print(line)
    write_result(args.out or f"transfer-{name_of_config}.json",
                 {"config": Path(args.config).name, "cutoff": config.cutoff, "precision": config.precision,
                  "machine": {"cores": os.cpu_count(), "cpu": cpu()}, "summary": summary, "folders": rows})


def summarise(rows: list[dict]) -> list[dict]:
    """Per family of folders: means of the default, each rule and the oracle; the worst default/oracle ratio."""
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        rs = [r for r in rows if r["family"] == family]
        mean = lambda f: round(float(np.mean([f(r) for r in rs])), 3)  # noqa: E731
        ratio = lambda key, oracle: [r["default"][key] / max(r[oracle][key], 1e-9) for r in rs]  # noqa: E731
        out.append({"family": family, "folders": len(rs), "images": mean(lambda r: r["images"]),
                    "default_pairwise_f1": mean(lambda r: r["default"]["pairwise_f1"]),
                    "default_bcubed_f1": mean(lambda r: r["default"]["bcubed_f1"]),
                    "default_pairwise_precision": mean(lambda r: r["default"]["pairwise_precision"]),
                    "default_cutoff": mean(lambda r: r["default"]["cutoff"]),
                    "oracle_pairwise_f1": mean(lambda r: r["oracle_pairwise"]["pairwise_f1"]),
                    "oracle_bcubed_f1": mean(lambda r: r["oracle_bcubed"]["bcubed_f1"]),
                    "oracle_cutoff": mean(lambda r: r["oracle_pairwise"]["cutoff"]),
                    "worst_pairwise_ratio": round(min(ratio("pairwise_f1", "oracle_pairwise")), 3),
                    "worst_bcubed_ratio": round(min(ratio("bcubed_f1", "oracle_bcubed")), 3),
                    "rules": {rule: {"pairwise_f1": mean(lambda r: r["rules"][rule]["pairwise_f1"]),
                                     "bcubed_f1": mean(lambda r: r["rules"][rule]["bcubed_f1"]),
                                     "cutoff": mean(lambda r: r["rules"][rule]["cutoff"])}
                              for rule in rs[0]["rules"]}})
    return out


def table(summary: list[dict], rules: list[str]) -> list[str]:
    """The Markdown table of benchmarks/README.md: pairwise F1 / B-cubed F1 per family of folders."""
    head = ["folders", "n", "default cutoff (mean)", "default (pw / B3)", "oracle (pw / B3)", "oracle cutoff (mean)",
            "default's pw precision", "worst default/oracle (pw, B3)", *rules]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["family"], str(s["folders"]), f"{s['default_cutoff']:.2f}",
                 f"**{s['default_pairwise_f1']:.3f} / {s['default_bcubed_f1']:.3f}**",
                 f"{s['oracle_pairwise_f1']:.3f} / {s['oracle_bcubed_f1']:.3f}", f"{s['oracle_cutoff']:.2f}",
                 f"{s['default_pairwise_precision']:.3f}", f"{s['worst_pairwise_ratio']:.2f}, {s['worst_bcubed_ratio']:.2f}",
                 *(f"{s['rules'][r]['pairwise_f1']:.3f} / {s['rules'][r]['bcubed_f1']:.3f}" for r in rules)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
