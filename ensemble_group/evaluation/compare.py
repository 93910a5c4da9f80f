"""A/B comparison and cutoff tuning on a labelled folder.

`compare` runs every single member of the ensemble, the ensemble itself and the baselines (the
original method; perceptual hashes; plain connected components) over the same images. It is fair by
construction: the products are split in two with a fixed seed (by product, never by image), each arm's
cutoff is tuned on the first part and every figure is reported on the second, so no arm is scored on
what it was tuned on. Features are computed once per model (and cached) and reused by every arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ensemble_group.config import POOLINGS, Config
from ensemble_group.cpu import choose_precision
from ensemble_group.evaluation.metrics import pairwise_prf, bcubed, score
from ensemble_group.features import ExtractionSettings
from ensemble_group.fusion import FusedNeighbours, Fusion
from ensemble_group.grouper import Grouper
from ensemble_group.grouping import group_as
from ensemble_group.images import ImageError, decode_many

SEED_CUTOFF = 0.60  # the original method's raw angular cutoff
HASH_METHODS = ("ahash", "dhash", "phash")


@dataclass(frozen=True)
class Arm:
    """One row of the A/B table: which vectors, which settings (changes to the config), which cutoff."""

    name: str
    sources: tuple[str, ...]
    changes: tuple[tuple[str, Any], ...] = ()  # config overrides, e.g. (("mode", "seed"),)
    cutoff: float | None = None  # None = tuned on the tuning products

    def config(self, base: Config) -> Config:
        return base.replace(**dict(self.changes))


AVERAGE_POOLING = (("pooling", "avg"),)  # the plain and original rows: average pooling whatever the config's
NO_POSTPROCESSING = (("power", 1.0), ("whiten_dim", 0), ("dba_k", 0))
NO_LONE_RULE = (("alone_margin", 0.0),)
BASELINE = NO_POSTPROCESSING + NO_LONE_RULE + (("local_k", 0), ("rerank_k", 0))  # none of the engine's refinements
LONE_MARGIN = 0.5  # the A/B row of the lone-image rule when the config has it off
LOCAL_K = 10  # the A/B row of local scaling when the config has it off
DBA_K = 5  # the A/B row of database-side augmentation when the config has it off
RERANK_K = 20  # the A/B row of k-reciprocal re-ranking when the config has it off


@dataclass
class Subset:
    """Vectors and true labels of some images, and everything a grouper needs about them."""

    vectors: dict[str, np.ndarray]
    true: np.ndarray


def default_arms(config: Config, original_model: str) -> list[Arm]:
    """The ensemble, each member alone, the ensemble without each member (3+ members: what each one
    earns), the original method, hashes, plain connected components."""
    arms = [Arm("ensemble (" + " + ".join(config.models) + ")", config.models)]
    if len(config.models) > 1:
        arms += [Arm(m, (m,)) for m in config.models]
    if len(config.models) > 2:
        arms += [Arm(f"ensemble without {m}", tuple(x for x in config.models if x != m)) for m in config.models]
    postprocessed = (config.power, config.whiten_dim, config.dba_k) != (1.0, 0, 0)
    if postprocessed:
        arms.append(Arm("ensemble, no post-processing", config.models, NO_POSTPROCESSING))
    if config.alone_margin > 0:
        arms.append(Arm("ensemble, lone images not attached", config.models, NO_LONE_RULE))
    else:
        arms.append(Arm(f"ensemble + lone-image rule (margin {LONE_MARGIN:g})", config.models,
                        (("alone_margin", LONE_MARGIN),)))
    if config.dba_k > 0:
        arms.append(Arm("ensemble, no database-side augmentation", config.models, (("dba_k", 0),)))
    else:
        arms.append(Arm(f"ensemble + database-side augmentation (k {DBA_K})", config.models, (("dba_k", DBA_K),)))
    if config.local_k > 0:
        arms.append(Arm("ensemble, no local scaling", config.models, (("local_k", 0),)))
    else:
        arms.append(Arm(f"ensemble + local scaling (k {LOCAL_K})", config.models, (("local_k", LOCAL_K),)))
    if config.rerank_k > 0 and config.rerank_weight > 0:
        arms.append(Arm("ensemble, no re-ranking", config.models, (("rerank_k", 0),)))
    else:
        arms.append(Arm(f"ensemble + k-reciprocal re-ranking (k {RERANK_K}, weight 1)", config.models,
                        (("rerank_k", RERANK_K), ("rerank_weight", 1.0))))
    if config.normalisation == "robust-z":
        arms.append(Arm("ensemble, quantile normalisation (rank-based)", config.models,
                        (("normalisation", "quantile"),)))
    elif config.normalisation == "quantile":
        arms.append(Arm("ensemble, robust-z normalisation", config.models, (("normalisation", "robust-z"),)))
    if config.mode != "average":
        arms.append(Arm("ensemble, average linkage", config.models, (("mode", "average"),)))
    arms.append(Arm("ensemble, connected components", config.models, (("mode", "components"),)))
    if postprocessed or config.mode != "average":
        arms.append(Arm("ensemble, plain: average pooling, no post-processing, connected components",
                        config.models, AVERAGE_POOLING + BASELINE + (("mode", "components"),)))
    seed_rule = AVERAGE_POOLING + BASELINE + (("mode", "seed"), ("normalisation", "none"), ("k", 5),
                                              ("cutoff", SEED_CUTOFF))
    arms += [Arm(f"original: {original_model}, seed rule, cutoff 0.60", (original_model,), seed_rule, SEED_CUTOFF),
             Arm(f"original: {original_model}, seed rule, tuned cutoff", (original_model,), seed_rule)]
    arms += [Arm(f"{h}, same grouper", (h,), BASELINE) for h in HASH_METHODS]
    return arms


def descriptor_arms(config: Config) -> list[Arm]:
    """The descriptor options and the other precision (int8 or float32), each changed from the config's setting.

    Each needs the folder extracted again with that setting (flip: at twice the cost), so `compare`
    adds these rows only when asked (`descriptors=True`).
    """
    other_framing = "squash" if config.framing == "pad" else "pad"
    arms = [*(Arm(f"ensemble, {p} pooling", config.models, (("pooling", p),)) for p in POOLINGS if p != config.pooling),
            Arm(f"ensemble, {other_framing} framing", config.models, (("framing", other_framing),)),
            Arm("ensemble, no flip" if config.flip else "ensemble + flip (mirror image added)", config.models,
                (("flip", not config.flip),))]
    if choose_precision(config.precision, config.lite)[0] == "int8":
        arms.append(Arm("ensemble, float32", config.models, (("precision", "float32"), ("calibration", ""))))
    elif config.lite:  # int8 runs only through TFLite
        arms.append(Arm("ensemble, int8 (full-integer backbones)", config.models, (("precision", "int8"),)))
    return arms


def extraction_change(arm: Arm, config: Config) -> tuple[tuple[str, Any], ...]:
    """How the arm's vectors are extracted differently from the config's: () when they are the same."""
    return tuple(sorted((k, v) for k, v in arm.changes if k in ExtractionSettings.CONFIG_KEYS and getattr(config, k) != v))


def split_products(products: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (tune, test) over images: half of the distinct products each, fixed seed."""
    names = np.unique(products)
    tune_names = np.random.default_rng(seed).permutation(names)[: len(names) // 2]
    tune = np.isin(products, tune_names)
    return tune, ~tune


def neighbours_for(sub: Subset, arm: Arm, config: Config) -> tuple[Fusion, FusedNeighbours, Config]:
    """Post-process (learned on this subset, no labels), index, fuse: the arm's grouper, fitted on the
    arm's sources (members, or perceptual hashes), as `group` fits it."""
    grouper = Grouper(arm.config(config)).fit({m: sub.vectors[m] for m in arm.sources})
    return grouper.fusion_, grouper.neighbours_, grouper.config


def cutoff_grid(neigh: FusedNeighbours, steps: int = 60) -> np.ndarray:
    """Candidate cutoffs spanning the fused distances actually seen (any normalisation's scale)."""
    d = neigh.dist[np.isfinite(neigh.dist)]
    if not len(d):
        return np.array([0.0])
    return np.unique(np.quantile(d, np.linspace(0.0, 0.6, steps)))


def sweep(true: np.ndarray, fusion: Fusion, neigh: FusedNeighbours, cfg: Config,
          select: np.ndarray | None = None) -> list[dict[str, float]]:
    """Pairwise and B-cubed P/R/F1 of the grouping at each candidate cutoff (see `neighbours_for`);
    with `select`, only those images are scored (true[t] labels image select[t]) though all are grouped."""
    rows = []
    for c in cutoff_grid(neigh):
        pred = group_as(cfg, neigh, fusion, float(c))
        pred = pred if select is None else pred[select]
        rows.append({"cutoff": float(c), **pairwise_prf(true, pred), **bcubed(true, pred)})
    return rows


def best(rows: list[dict[str, float]], key: str = "pairwise_f1") -> dict[str, float]:
    """The row with the highest `key` (ties: the stricter cutoff)."""
    return max(rows, key=lambda r: (r[key], -r["cutoff"]))


def run_arm(arm: Arm, tune: Subset, test: Subset, config: Config) -> dict[str, Any]:
    """Tune the cutoff on `tune` (unless fixed), then score on `test`."""
    cutoff = arm.cutoff if arm.cutoff is not None else best(sweep(tune.true, *neighbours_for(tune, arm, config)))["cutoff"]
    fusion, neigh, cfg = neighbours_for(test, arm, config)
    pred = group_as(cfg, neigh, fusion, cutoff)
    return {"arm": arm.name, "cutoff": round(cutoff, 4), "tuned": arm.cutoff is None,
            **score(test.true, pred, neighbours=neigh.ids[:, :5])}


def hash_features(paths: list[Path], chunk: int = 256) -> dict[str, np.ndarray]:
    """All three perceptual hashes of the images, decoding in chunks to bound memory."""
    from ensemble_group.hashing import hash_vectors

    out: dict[str, list[np.ndarray]] = {h: [] for h in HASH_METHODS}
    for s in range(0, len(paths), chunk):
        arrays = decode_many(paths[s:s + chunk])
        for a in arrays:
            if isinstance(a, ImageError):
                raise a
        for h in HASH_METHODS:
            out[h].append(hash_vectors(arrays, h))
    return {h: np.concatenate(v) for h, v in out.items()}


def labelled_features(folder: Path, labels_csv: Path, config: Config, reporter, cache_file="default", *,
                      hashes: bool = True):
    """Features of the folder's labelled images (and their perceptual hashes, for the baselines):
    (vectors per source, true product names, rel paths, info)."""
    from ensemble_group.evaluation.labels import absolute_path, labels_by_path
    from ensemble_group.pipeline import NothingToGroup, folder_features

    by_abs = labels_by_path(labels_csv)
    key = lambda im: absolute_path(folder, im.rel)  # noqa: E731
    try:
        feats, weights = folder_features(folder, config, reporter=reporter, cache_file=cache_file,
                                         select=lambda im: key(im) in by_abs)
    except NothingToGroup:
        raise ValueError(f"no readable image of {folder} is listed in {labels_csv}") from None
    vectors = dict(feats.vectors)
    if hashes:
        with reporter.task("perceptual hashes", 1) as advance:
            vectors.update(hash_features([im.path for im in feats.images]))
            advance(1)
    products = np.array([by_abs[key(im)] for im in feats.images])
    info = {"n_labelled": len(by_abs), "n_used": len(feats.images), "skipped": [s.__dict__ for s in feats.skipped],
            "weights": {m: w.id for m, w in weights.items()}}
    return vectors, products, [im.rel for im in feats.images], info


def original_model(config: Config) -> str:
    """resnet50 when its weights are available here, else the config's first member."""
    from ensemble_group.weights import WeightsNotFound, resolve

    try:
        resolve("resnet50", download=False)
        return "resnet50"
    except WeightsNotFound:
        return config.models[0]


AUTO_HELD_OUT = 1000  # --splits by default: enough splits to score about this many photos in all
MAX_AUTO_SPLITS = 10


def auto_splits(n_images: int) -> int:
    """How many product splits a folder of n labelled photos gets by default: each holds out about half
    of them, so a large folder needs one and a catalogue of a few dozen photos ten (one split of
    it is a noisy draw: held-out F1 moves by 0.1-0.3 between splits). Splits cost only grouping."""
    return int(min(MAX_AUTO_SPLITS, max(1, np.ceil(2 * AUTO_HELD_OUT / max(n_images, 1)))))


def compare(folder: Path, labels_csv: Path, config: Config, *, seed: int = 0, splits: int | None = None,
            reporter=None, cache_file="default", descriptors: bool = False) -> dict[str, Any]:
    """The A/B table as a dict: rows (one per arm, scored on the test products) and how it was made.

    splits: the number of product splits (seeds seed, seed + 1, ...); each row is the mean over them,
    with every split's pairwise F1 kept (one split of a few dozen products is a noisy measurement).
    None: `auto_splits` of the number of labelled photos read.
    descriptors: also the rows of `descriptor_arms`. An arm whose extraction settings differ from the
    config's (those rows; the plain and original rows when the config pools otherwise than by average)
    reads the folder extracted with its settings.
    """
    from ensemble_group.reporter import Reporter

    if splits is not None and splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    reporter = reporter or Reporter()
    original = original_model(config)
    arms = default_arms(config, original) + (descriptor_arms(config) if descriptors else [])
    arms, products, _, info = arm_vectors(folder, labels_csv, config, arms, reporter, cache_file)
    _, true = np.unique(products, return_inverse=True)
    seeds = list(range(seed, seed + (splits or auto_splits(len(true)))))
    with reporter.task("arms", len(arms) * len(seeds)) as advance:
        per_split, sizes = split_runs(arms, true, seeds, config, advance)
    mean = np.mean(sizes, axis=0)
    return {"folder": str(Path(folder).resolve()), "labels": str(Path(labels_csv).resolve()),
            "split": {"by": "product", "seed": seed, "seeds": seeds, "tune_products": int(round(mean[0])),
                      "test_products": int(round(mean[1])), "tune_images": int(round(mean[2])),
                      "test_images": int(round(mean[3]))},
            "config": config.to_dict(), "info": info, "rows": mean_rows(per_split)}


def arm_vectors(folder: Path, labels_csv: Path, config: Config, arms: list[Arm], reporter, cache_file="default", *,
                hashes: bool = True) -> tuple[list[tuple[Arm, dict[str, np.ndarray]]], np.ndarray, list[str], dict]:
    """Each arm with the vectors it reads: ([(arm, vectors per source)], products, rel paths, info).

    The config's extraction covers the models of every arm that reads it (and the perceptual hashes,
    with `hashes`); an arm whose extraction settings differ (`extraction_change`) reads the folder
    extracted with its settings, each such extraction run once, only for the models it serves.
    """
    changes = [extraction_change(arm, config) for arm in arms]

    def served(change) -> set[str]:  # the models read through this extraction
        return {m for arm, c in zip(arms, changes) if c == change for m in arm.sources if m not in HASH_METHODS}

    models = tuple(dict.fromkeys([*config.models, *sorted(served(()))]))
    vectors, products, rels, info = labelled_features(Path(folder), Path(labels_csv), config.replace(models=models),
                                                      reporter, cache_file, hashes=hashes)
    extractions = {(): vectors}
    for change in dict.fromkeys(c for c in changes if c):
        other, _, other_rels, _ = labelled_features(Path(folder), Path(labels_csv),
                                                    config.replace(models=tuple(sorted(served(change))), **dict(change)),
                                                    reporter, cache_file, hashes=False)
        if list(other_rels) != list(rels):  # a file that one setting read and another could not
            raise ValueError(f"{dict(change)}: the extraction kept other images than the config's")
        extractions[change] = other
    return [(arm, extractions[c]) for arm, c in zip(arms, changes)], products, rels, info


def split_runs(arms: list[tuple[Arm, dict[str, np.ndarray]]], true: np.ndarray, seeds: list[int], config: Config,
               advance=lambda n: None) -> tuple[list[list[dict[str, Any]]], list[tuple[int, int, int, int]]]:
    """Every arm (with the vectors it reads) on each product split: (rows per split, and each split's
    (tune products, test products, tune images, test images))."""
    per_split, sizes = [], []
    for s in seeds:
        tune_mask, test_mask = split_products(true, s)
        sizes.append((len(np.unique(true[tune_mask])), len(np.unique(true[test_mask])),
                      int(tune_mask.sum()), int(test_mask.sum())))
        rows = []
        for arm, vecs in arms:
            rows.append(run_arm(arm, Subset({m: v[tune_mask] for m, v in vecs.items()}, true[tune_mask]),
                                Subset({m: v[test_mask] for m, v in vecs.items()}, true[test_mask]), config))
            advance(1)
        per_split.append(rows)
    return per_split, sizes


def mean_rows(per_split: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per arm: numbers averaged over the splits; with several, each split's pairwise F1 too."""
    if len(per_split) == 1:
        return per_split[0]
    out = []
    for rows in zip(*per_split):
        row = {}
        for key, value in rows[0].items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            row[key] = round(float(np.mean([r[key] for r in rows])), 4) if numeric else value
        row["pairwise_f1_per_split"] = [round(r["pairwise_f1"], 4) for r in rows]
        out.append(row)
    return out


def describe_split(split: dict[str, Any]) -> str:
    """The line above an A/B table: what was held out and how the products were split."""
    seeds = split.get("seeds", [split["seed"]])
    how = (f"split by product, seed {seeds[0]}" if len(seeds) == 1 else
           f"mean over {len(seeds)} splits by product (seeds {seeds[0]}-{seeds[-1]}); image counts are means")
    return (f"Held-out products: {split['test_products']} ({split['test_images']} images); cutoffs tuned on "
            f"{split['tune_products']} other products ({split['tune_images']} images); {how}.")


TABLE_COLUMNS = ["arm", "cutoff", "n_pred_groups", "n_true_groups", "ari", "nmi", "pairwise_precision",
                 "pairwise_recall", "pairwise_f1", "bcubed_f1", "mean_image_f1", "recall_at_1", "recall_at_5"]


def tune(folder: Path, labels_csv: Path, config: Config, *, reporter=None, cache_file="default") -> dict[str, Any]:
    """Sweep the cutoff of the configured grouping over all labelled images: curve, bests, distances."""
    from ensemble_group.reporter import Reporter

    reporter = reporter or Reporter()
    vectors, products, _, info = labelled_features(Path(folder), Path(labels_csv), config, reporter, cache_file,
                                                   hashes=False)
    _, true = np.unique(products, return_inverse=True)
    fusion, neigh, cfg = neighbours_for(Subset(vectors, true), Arm("config", config.models), config)
    rows = sweep(true, fusion, neigh, cfg)
    same, diff = pair_distances(fusion, true, seed=config.seed)
    return {"curve": rows, "best_pairwise_f1": best(rows, "pairwise_f1"), "best_bcubed_f1": best(rows, "bcubed_f1"),
            "same_product_distances": same, "different_product_distances": diff, "info": info,
            "config": config.to_dict()}


def pair_distances(fusion: Fusion, true: np.ndarray, *, seed: int = 0, max_pairs: int = 200_000):
    """Fused distances of all same-product pairs and of (up to max_pairs random) different-product pairs."""
    n = len(true)
    same_i, same_j = [], []
    for lab in np.unique(true):
        members = np.flatnonzero(true == lab)
        i, j = np.triu_indices(len(members), 1)
        same_i.append(members[i])
        same_j.append(members[j])
    si, sj = np.concatenate(same_i), np.concatenate(same_j)
    rng = np.random.default_rng(seed)
    di, dj = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
    keep = true[di] != true[dj]
    return fusion.pairs(si, sj), fusion.pairs(di[keep], dj[keep])


def plot_tuning(result: dict[str, Any], out_png: Path) -> Path:
    """PNG: precision, recall and F1 against the cutoff; histograms of same/different-product distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ensemble_group.outputs import atomic_write

    curve = result["curve"]
    c = [r["cutoff"] for r in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, style in (("pairwise_precision", "--"), ("pairwise_recall", ":"), ("pairwise_f1", "-"), ("bcubed_f1", "-.")):
        a.plot(c, [r[key] for r in curve], style, label=key.replace("_", " "))
    for key, colour in (("best_pairwise_f1", "k"), ("best_bcubed_f1", "grey")):
        a.axvline(result[key]["cutoff"], color=colour, lw=0.8)
    a.set(xlabel="cutoff (fused distance)", ylabel="score", title="grouping quality against the cutoff", ylim=(0, 1.02))
    a.legend(loc="best", fontsize=8)
    same, diff = result["same_product_distances"], result["different_product_distances"]
    bins = np.linspace(min(same.min(), diff.min()), max(same.max(), diff.max()), 60)
    b.hist(diff, bins=bins, alpha=0.6, density=True, label=f"different products ({len(diff)} pairs)")
    b.hist(same, bins=bins, alpha=0.6, density=True, label=f"same product ({len(same)} pairs)")
    b.axvline(result["best_pairwise_f1"]["cutoff"], color="k", lw=0.8, label="best cutoff (pairwise F1)")
    b.set(xlabel="fused distance", ylabel="density", title="fused distances of image pairs")
    b.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(Path(out_png), buf.getvalue())
    return Path(out_png)

