"""The product path, stage by stage: images -> vectors -> indexes -> fused neighbours -> groups.

Each stage is a function of the one before, importable on its own for notebooks:

    from ensemble_group import load_config, group_folder
    run = group_folder("samples/flipkart", load_config("configs/offline.toml"))
    run.groups()          # [{"id": 0, "images": [...], ...}, ...]

The CLI only parses options and calls these.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ensemble_group import __version__, lite
from ensemble_group.config import Config
from ensemble_group.corrections import Corrections, read_corrections, resolve
from ensemble_group.cpu import choose_precision
from ensemble_group.distributed import RayEngine, is_uri
from ensemble_group.extractors import MODELS
from ensemble_group.features import (Features, convert_ahead, embed_photo, extract, load_extractors, open_cache,
                                     race_ahead, resolve_weights)
from ensemble_group.fusion import FusedNeighbours, Fusion
from ensemble_group.group_ids import carry_ids
from ensemble_group.grouper import Grouper
from ensemble_group.grouping import group_margins
from ensemble_group.images import ImageFile, Skipped, display_name, hash_folder
from ensemble_group.outputs import (GROUPS_CSV, GROUPS_JSON, INDEX_DIR, RUN_JSON, atomic_write,
                                    check_out_dir, groups_csv, staged, to_json)
from ensemble_group.reporter import Reporter
from ensemble_group.weights import WeightsRef


class NothingToGroup(RuntimeError):
    """The folder holds no readable image."""


@dataclass
class Run:
    """Everything one grouping run produced; `groups()` and `to_json()` give the results."""

    folder: Path | str  # str: a URI the Ray backend read
    config: Config
    images: list[ImageFile]
    skipped: list[Skipped]
    weights: dict[str, WeightsRef]
    vectors: dict[str, np.ndarray]
    grouper: Grouper  # fitted on `vectors`: labels, indexes, fused neighbours; it writes the index folder
    timings: dict[str, float] = field(default_factory=dict)
    runtimes: dict[str, str] = field(default_factory=dict)  # model -> what extracted with it (absent: all cached)
    chosen_precision: tuple[str, str] | None = None  # (precision, why), as group_folder decided it
    group_ids: dict[str, Any] | None = None  # where the ids came from, set by `keep_ids`
    corrections: dict[str, Any] | None = None  # the reviewer's corrections applied (corrections.resolve's summary)
    _groups: list[dict[str, Any]] | None = field(default=None, repr=False)

    def keep_ids(self, previous: dict[str, int], source: str) -> None:
        """Give each group that is still there the id it had in a previous run (`group_ids.carry_ids`;
        `previous`: content hash -> id, `source`: where that came from, recorded in groups.json)."""
        labels, counts = carry_ids(self.labels, [im.sha256 for im in self.images], previous)
        self.grouper.relabel(labels)
        self._groups = None
        self.group_ids = {"previous": source, **counts}

    @property
    def labels(self) -> np.ndarray:
        return self.grouper.labels_

    @property
    def neighbours(self) -> FusedNeighbours:
        return self.grouper.neighbours_

    @property
    def fusion(self) -> Fusion:
        return self.grouper.fusion_

    def cutoff(self) -> tuple[float, dict[str, Any]]:
        """The cutoff the groups were cut at, and how it was chosen (the config's, or read off the folder)."""
        return self.grouper.cutoff()

    def precision(self) -> tuple[str, str]:
        """The precision the members ran at ("int8": those where it pays, `ModelSpec.int8`), and why."""
        return self.chosen_precision or choose_precision(self.config.precision, self.config.lite)

    def groups(self) -> list[dict[str, Any]]:
        """Groups sorted by size (largest first), each image with its content hash and its mean fused
        distance to the rest, and each group's `confidence` (grouping.group_margins: how far the cutoff
        would have to move to change it; None when nothing listed is near it) and its `nearest_group`
        (None: none listed). A group's id is its label: 0, 1, ... by size, or a previous run's (`keep_ids`)."""
        if self._groups is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.flatnonzero(np.diff(self.labels[order])) + 1
            margin, nearest = group_margins(self.labels, self.neighbours, self.cutoff()[0])
            out = []
            for members in np.split(order, bounds):
                if len(members) > 1:
                    d = self.fusion.matrix(members)
                    dist = [round(float(x), 4) for x in d.sum(axis=1) / (len(members) - 1)]
                else:
                    dist = [None]
                out.append((int(self.labels[members[0]]), [display_name(self.images[i].rel) for i in members], dist,
                            [self.images[i].sha256 for i in members]))
            out.sort(key=lambda g: (-len(g[1]), g[1][0]))
            self._groups = [{"id": label, "size": len(images), "images": images, "distances": dist,
                             "confidence": _finite(margin[label]),
                             "nearest_group": int(nearest[label]) if nearest[label] >= 0 else None, "sha256": hashes}
                            for label, images, dist, hashes in out]
        return self._groups

    def to_json(self) -> dict[str, Any]:
        """The groups.json document: deterministic for the same images and settings (where the weights
        were found, and timings, go to run.json: they vary between identical runs)."""
        groups, (cut, how), (precision, why) = self.groups(), self.cutoff(), self.precision()
        return {
            "tool": "ensemble-group",
            "version": __version__,
            "input": str(self.folder) if is_uri(self.folder) else str(Path(self.folder).resolve()),
            "n_images": len(self.images),
            "n_groups": len(groups),
            "n_skipped": len(self.skipped),
            "config": self.config.to_dict(),
            "models": [{"name": m, "weights_id": w.id, "dim": MODELS[m].dim, "input_size": MODELS[m].input_size}
                       for m, w in self.weights.items()],
            "normalisers": {m: n.to_dict() for m, n in self.fusion.normalisers.items()},
            "cutoff": {"value": round(cut, 4), **how},
            "precision": {"value": precision, "rule": why},
            "versions": versions(),
            "group_ids": self.group_ids or {"previous": None},
            "corrections": self.corrections or {"files": []},
            "groups": groups,
            "skipped": [{"path": display_name(s.rel), "reason": s.reason} for s in self.skipped],
            "repaired": [{"path": display_name(im.rel), "repair": im.repaired} for im in self.images if im.repaired],
        }


def _finite(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


def versions() -> dict[str, str]:
    """Versions of what decides the numbers (read from package metadata: no TensorFlow import)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("tensorflow-cpu", "tensorflow", "keras", "annoy", "numpy", "scipy", "pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def prepare_members(config: Config, reporter: Reporter = Reporter()) -> dict[str, str]:
    """Find (or fetch) every member's weights and convert the members for TFLite now, in parallel, rather
    than in the first `group` on this machine: model -> what will run it, and from which file."""
    extractors = load_extractors(config, resolve_weights(config, reporter))
    converted = convert_ahead(list(extractors.values()), reporter, at_least=1)
    raced = race_ahead(extractors, reporter)  # float32 members: which engine runs them faster here
    says = {"off": "TensorFlow: lite = false in the config", "unavailable": "TensorFlow: this TensorFlow has no TFLite",
            "uncached": "TFLite, converted on first use (weights with no id: not cached)",
            "convert": "TFLite, converted on first use",  # left: a helper failed (it warned)
            "builtin": "numpy: built in, nothing to prepare"}
    state = {}
    for m, ex in extractors.items():
        status, tflite = ex.lite_status(), "TFLite int8" if ex.settings.int8 else "TFLite"
        if status == "cached":
            state[m] = f"{tflite}, {'converted now' if m in converted else 'already converted'}: {ex.lite_file}"
            if raced.get(m):
                state[m] += f"; {raced[m].describe()}"
        elif status == "failed" and ex.settings.int8:
            state[m] = f"nothing: TFLite cannot run its int8 model; use precision float32 ({lite.failure_file(ex.lite_file)})"
        elif status == "failed":
            state[m] = f"TensorFlow: TFLite cannot run it with this TensorFlow ({lite.failure_file(ex.lite_file)})"
        else:
            state[m] = says[status]
    return state


def default_cache_file() -> Path:
    from ensemble_group.cache import DEFAULT_CACHE_FILE
    from ensemble_group.pypi_weights import default_cache_dir

    return Path(default_cache_dir()) / DEFAULT_CACHE_FILE


def folder_features(folder: Path | str, config: Config, *, reporter: Reporter = Reporter(),
                    weights: dict[str, WeightsRef] | None = None, cache_file: Path | None | str = "default",
                    select: Callable[[ImageFile], bool] | None = None,
                    vectors: Path | str | None = None) -> tuple[Features, dict[str, WeightsRef]]:
    """Hash the folder's images (those `select` keeps) and get every model's vectors, cache first.

    cache_file None = no cache. With `config.uses_ray()` the hashing and the extraction run on a Ray
    cluster (`distributed.RayEngine`), `folder` may be a URI (s3://, gs://, file://) and the vectors are
    also written as Parquet under `vectors` (default: ray-vectors/ beside the default cache).
    """
    if not config.uses_ray() and is_uri(folder):
        raise NotADirectoryError(f"{folder}: an object-store URI is read on the Ray backend only; add --ray")
    if not is_uri(folder) and not Path(folder).is_dir():
        raise NotADirectoryError(f"input folder not found or not a folder: {folder}")
    engine = (RayEngine(folder, reporter, address=config.ray_address, workers=config.ray_workers,
                        vectors=vectors or default_cache_file().parent / "ray-vectors") if config.uses_ray() else None)
    weights = weights or resolve_weights(config, reporter)
    images, skipped = engine.hash_folder() if engine else hash_folder(Path(folder))
    if select:
        images = [im for im in images if select(im)]
    reporter.log(f"found {len(images)} images in {folder}" + (f", {len(skipped)} files skipped" if skipped else ""))
    if not images:
        raise NothingToGroup(f"no readable image in {folder}" + (f" ({len(skipped)} files skipped)" if skipped else ""))
    extractors = load_extractors(config, weights)
    cache_path = default_cache_file() if cache_file == "default" else cache_file
    cache = open_cache(Path(cache_path) if cache_path else None, reporter.log, required=cache_file != "default")
    try:
        feats = extract(images, extractors, cache, reporter,
                        remote=partial(engine.extract, extractors, cache) if engine else None)
    finally:
        if cache:
            cache.close()
    if engine:
        feats.runtimes.update(engine.runtimes)
    feats.skipped = sorted(skipped + feats.skipped, key=lambda s: s.rel)
    if not feats.images:
        raise NothingToGroup(f"no readable image in {folder} ({len(feats.skipped)} files skipped)")
    return feats, weights


def group_folder(folder: Path | str, config: Config, *, reporter: Reporter = Reporter(),
                 weights: dict[str, WeightsRef] | None = None, cache_file: Path | None | str = "default",
                 corrections: Corrections | None = None,
                 vectors: Path | str | None = None) -> Run:
    """Run the whole path on one folder and return the Run (nothing is written).

    The groups obey a reviewer's `corrections` (or the config's `corrections` file, read here), keyed
    by the photos' content hashes (corrections.resolve: what was applied is in groups.json).

    `precision = "auto"` is decided here, once (`cpu.choose_precision`), and the grouper keeps the
    decision in its config: a saved index is then queried at the precision it was built with, on
    any machine. `vectors`: where the Ray backend writes its Parquet vectors (`folder_features`)."""
    t0 = time.perf_counter()
    if corrections is None and config.corrections:
        corrections = read_corrections(config.corrections)
    precision = choose_precision(config.precision, config.lite)
    pinned = config.replace(precision=precision[0])
    feats, weights = folder_features(folder, pinned, reporter=reporter, weights=weights, cache_file=cache_file,
                                     vectors=vectors)
    t1 = time.perf_counter()
    names = [display_name(im.rel) for im in feats.images]
    constraints, applied = None, None
    if corrections is not None:
        constraints, applied = resolve(corrections, [im.sha256 for im in feats.images], names)
    grouper = Grouper(pinned).fit(feats.vectors, names, reporter, constraints)
    t2 = time.perf_counter()
    timings = {"features": round(t1 - t0, 3), **grouper.timings_, "total": round(t2 - t0, 3),
               "extracted": feats.extracted, "from_cache": feats.cached}
    return Run(folder if is_uri(folder) else Path(folder), config, feats.images, feats.skipped, weights, feats.vectors,
               grouper, timings, feats.runtimes, precision,
               corrections=applied)


def write_run(run: Run, out: Path, *, force: bool = False) -> dict[str, Path]:
    """Write groups.json, groups.csv, run.json and the saved indexes into `out`, all together or not at
    all (outputs.staged: a failure while writing leaves the previous results as they were)."""
    out = Path(out)
    check_out_dir(out, Path(str(run.folder)), force)
    doc = run.to_json()
    with staged(out) as stage:
        (stage / INDEX_DIR).mkdir()
        run.grouper.save(stage / INDEX_DIR, about={"input": doc["input"], "models": doc["models"]})
        atomic_write(stage / GROUPS_CSV, groups_csv(doc["groups"]))
        atomic_write(stage / RUN_JSON, to_json({"timings_s": run.timings, "n_images": len(run.images),
                                                "weights": {m: {"path": str(w.path), "source": w.source}
                                                            for m, w in run.weights.items()},
                                                "precision": doc["precision"], "runtimes": run.runtimes}))
        atomic_write(stage / GROUPS_JSON, to_json(doc))
    return {"groups": out / GROUPS_JSON, "csv": out / GROUPS_CSV, "index": out / INDEX_DIR}


def index_folder(path: Path | str) -> tuple[Path, str]:
    """(the index folder, how to rebuild it) for an index folder or the `--out` above it."""
    index_dir = Path(path)
    if (index_dir / INDEX_DIR).is_dir():
        index_dir = index_dir / INDEX_DIR
    return index_dir, f"rebuild it: `ensemble-group group FOLDER --out {index_dir.parent} --force`"


def load_grouper(path: Path | str, *, neighbours: bool = False) -> Grouper:
    """The grouper saved in an index folder (or the `--out` above it), checked as a whole (IndexDamaged)."""
    index_dir, rebuild = index_folder(path)
    return Grouper.load(index_dir, neighbours=neighbours, rebuild=rebuild, required=("images", "models"))


def saved_neighbours(index_dir: Path) -> tuple[Config, Fusion, FusedNeighbours, list[str]]:
    """A saved run's fused neighbour lists, rebuilt from its index folder (the vectors are read back
    from the Annoy files): (its config, fusion, neighbours, image names in index order). What its
    grouping saw, for regrouping it at other cutoffs (`evaluate --oracle`) without any model."""
    grouper = load_grouper(index_dir, neighbours=True)
    return grouper.config, grouper.fusion_, grouper.neighbours_, grouper.names_


@dataclass
class QueryResult:
    image: str
    neighbours: list[dict[str, Any]]


def query_index(image: Path, index_dir: Path, *, k: int | None = None, reporter: Reporter = Reporter()) -> QueryResult:
    """Nearest indexed images (and their groups) for one outside photo, from a saved index folder."""
    grouper = load_grouper(index_dir)
    config = grouper.config
    weights = resolve_weights(config, reporter)
    for m in grouper.about_["models"]:
        if weights[m["name"]].id != m["weights_id"]:
            reporter.log(f"WARNING: {m['name']} weights differ from the ones the index was built with")
    found = grouper.query(embed_photo(image, config, weights), k or config.k)
    return QueryResult(str(image), [{"image": grouper.names_[row], "distance": round(distance, 4),
                                     "group": int(grouper.labels_[row])} for row, distance in found])
