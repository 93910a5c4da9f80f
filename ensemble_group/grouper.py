"""The fitted grouper: per-model vectors in, groups out, and the one owner of the saved index folder.

In the manner of scikit-learn's estimators and Annoy's index: the parameters (a `Config`, validated
when it was made) are given once; `fit(vectors)` learns the post-processing on the folder, builds one
Annoy index per model, fuses the neighbour lists and groups them, and returns the grouper with
`labels_`; `save(dir)` / `load(dir)` write and read the whole index folder (a manifest with a format
version and a sha256 per file); `query(vectors, k)` ranks the fitted images for an outside photo's
vectors, from memory. Where the vectors come from (a folder, the cache, a cluster) is not its concern.

    grouper = Grouper(load_config("configs/offline.toml")).fit({"vgg16-tv": a, "mobilenet-v2": b})
    grouper.labels_                     # (n,) group label of each row
    grouper.save("out/index", names=[...])
    Grouper.load("out/index").query({"vgg16-tv": q1, "mobilenet-v2": q2}, k=5)   # or a photo's path
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ensemble_group.autocut import resolve_cutoff
from ensemble_group.config import Config
from ensemble_group.corrections import Constraints
from ensemble_group.fusion import FusedNeighbours, Fusion, Normaliser, local_query
from ensemble_group.grouping import group_as
from ensemble_group.index import ModelIndex, angular_distance
from ensemble_group.outputs import RERANK_FILE, atomic_write, file_digest, to_json
from ensemble_group.postprocess import Transform, prepare
from ensemble_group.reporter import Reporter
from ensemble_group.rerank import query_adjustment

INDEX_FORMAT = 1  # manifest.json's "format": the layout of the index folder (a checksum per file since 1)
MANIFEST = "manifest.json"


class IndexDamaged(RuntimeError):
    """A saved index folder is incomplete, altered or from another run; the message says how to rebuild it."""


class Grouper:
    """Groups the rows of per-model vectors into products (see the module docstring).

    Fitted attributes: `labels_` (n,) int group labels; `members_` the sources fused (the keys of
    the vectors given to `fit`: normally the config's models); `names_` the rows' names (or None);
    `transforms_` model -> the post-processing learned on the rows; `indexes_` model -> ModelIndex;
    `fusion_` (the per-model normalisers, and what a query starts from: local scaling's offsets, the
    first-stage lists re-ranking adjusts); `neighbours_` the fused (n, k) neighbour lists (None after
    `load` unless asked for); `constraints_` the reviewer's corrections the groups obey (row pairs,
    `corrections.Constraints`). A saved index's extra keys (what the caller wrote) are in `about_`.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.labels_: np.ndarray | None = None
        self.members_: list[str] = []
        self.names_: list[str] | None = None
        self.transforms_: dict[str, Transform] = {}
        self.indexes_: dict[str, ModelIndex] = {}
        self.fusion_: Fusion | None = None
        self.neighbours_: FusedNeighbours | None = None
        self.constraints_ = Constraints()
        self.about_: dict[str, Any] = {}
        self.timings_: dict[str, float] = {}  # seconds of fit's stages: post-processing + indexing, fusing + grouping

    def fit(self, vectors: dict[str, np.ndarray], names: list[str] | None = None,
            reporter: Reporter | None = None, constraints: Constraints | None = None) -> "Grouper":
        """Learn, index, fuse and group: `vectors` source -> (n, dim) rows of the same n images, one
        entry per member (normally the config's models; any named vectors work, e.g. `compare`'s
        perceptual hashes, but only the config's models can `query` a photo); with whitening, a block reader
        (anything with `shape` and row slices: a memmap, a file) serves too, read a block at a time, so a
        million photos' raw vectors need not be in memory (benchmarks/scale.py); `names` (n,) optional,
        kept for `save`; `constraints` the corrections the groups must obey (`corrections.resolve`).
        Returns self."""
        reporter = reporter or Reporter()
        self._check(vectors, names)
        self.members_ = list(vectors)
        self.constraints_ = constraints or Constraints()
        t0 = time.perf_counter()
        self.transforms_, prepared = prepare_vectors(vectors, self.config)
        self.indexes_ = build_indexes(prepared, self.config, reporter)
        t1 = time.perf_counter()
        with reporter.task("fusing and grouping", 1) as advance:
            self.fusion_ = Fusion.for_config(prepared, self.config)
            self.neighbours_ = self.fusion_.neighbours(self.indexes_, self.config.k)
            for index in self.indexes_.values():
                index.drop_pages()
            self.names_ = list(names) if names is not None else None
            self.labels_ = numbered(group_as(self.config, self.neighbours_, self.fusion_,
                                             constraints=self.constraints_), self.names_)
            advance(1)
        self.timings_ = {"index": round(t1 - t0, 3), "group": round(time.perf_counter() - t1, 3)}
        return self

    def cutoff(self) -> tuple[float, dict[str, Any]]:
        """The cutoff the groups were cut at, and how it was chosen (the config's, or read off the rows)."""
        return resolve_cutoff(self.config.cutoff, self._fitted_neighbours())

    def relabel(self, labels: np.ndarray) -> "Grouper":
        """The same groups under other ids (`group_ids.carry_ids`: a previous run's); saved with the index."""
        labels = np.asarray(labels, dtype=np.int64)
        pairs = np.unique(np.stack([self.labels_, labels]), axis=1) if len(labels) == len(self.labels_) else None
        if pairs is None or len(np.unique(pairs[0])) != pairs.shape[1] or len(np.unique(pairs[1])) != pairs.shape[1]:
            raise ValueError("relabel: the labels must name the same groups, one id each")
        self.labels_ = labels
        return self

    def labels_at(self, cutoff: float) -> np.ndarray:
        """(n,) labels of the same fitted rows cut at another cutoff (a sweep, `evaluate --oracle`)."""
        return numbered(group_as(self.config, self._fitted_neighbours(), self.fusion_, cutoff, self.constraints_),
                        self.names_)

    def query(self, photo: dict[str, np.ndarray] | Path | str, k: int | None = None) -> list[tuple[int, float]]:
        """The k fitted rows nearest one outside photo, nearest first: [(row, fused distance)].

        `photo`: its vectors, model -> (dim,) as the extractors give them, or a photo's path (its
        vectors are extracted here with the config's members, whose weights must be found). It is
        ranked as `fit` ranked the rows: the learned post-processing, local scaling and re-ranking.
        """
        if not self.indexes_:
            raise ValueError("this Grouper is not fitted: call fit(vectors) or Grouper.load(dir) first")
        if isinstance(photo, (str, Path)):
            from ensemble_group.features import embed_photo

            photo = embed_photo(photo, self.config.replace(models=self.members_))
        k = k or self.config.k
        models = self.members_
        queries = {m: self.transforms_.get(m, Transform())(np.asarray(photo[m], np.float32)[None, :])[0]
                   for m in models}
        per_model = max(k, self.config.k)  # re-ranking needs the candidates a fitted row had
        cand = sorted({int(j) for m in models for j in self.indexes_[m].query(queries[m], per_model)[0]})
        raw = {m: angular_distance(self.indexes_[m].vectors(cand), queries[m][None, :]) for m in models}
        fused = self.fusion_.combine(raw)
        fusion = self.fusion_  # it holds local scaling's offsets and the lists re-ranking started from
        if fusion.offset is not None:
            fused = local_query(fused, fusion.offset[cand], fusion.local_centre, self.config.local_k)
        if fusion.first_stage is not None:
            ids, dist = fusion.first_stage.ids.astype(np.int64), fusion.first_stage.dist
            first = np.argsort(fused, kind="stable")[:ids.shape[1]]
            cand, fused = np.asarray(cand)[first], fused[first]
            fused = fused + query_adjustment(ids, dist, cand, fused, self.fusion_.rerank_k, self.fusion_.rerank_weight)
        order = np.argsort(fused, kind="stable")[:k]
        return [(int(cand[t]), float(fused[t])) for t in order]

    def save(self, index_dir: Path | str, about: dict[str, Any] | None = None) -> Path:
        """Write the index folder into `index_dir` (which must exist, empty): one Annoy file and one
        post-processing file per model, the re-ranking lists, and manifest.json (written last) with
        `about` (the caller's own keys, e.g. where the rows came from), the config, the normalisers,
        the format and every file's sha256. Returns the manifest's path."""
        if self.labels_ is None:
            raise ValueError("nothing to save: fit the Grouper first")
        index_dir = Path(index_dir)
        for name, index in self.indexes_.items():
            index.save(index_dir / f"{name}.ann")
            if name in self.transforms_:
                buf = io.BytesIO()
                np.savez(buf, **self.transforms_[name].to_arrays())
                atomic_write(index_dir / f"{name}.transform.npz", buf.getvalue())
        manifest = {**(about or {}), "config": self.config.to_dict(),
                    "normalisers": {m: n.to_dict() for m, n in self.fusion_.normalisers.items()},
                    "index_dims": {m: index.dim for m, index in self.indexes_.items()}}
        if self.names_ is not None:
            manifest["images"] = self.names_
        manifest["group_of"] = [int(x) for x in self.labels_]
        if self.constraints_:
            manifest["constraints"] = self.constraints_.to_json()
        fusion = self.fusion_
        if fusion.offset is not None:  # local scaling: a query's distances need the fitted rows' offsets
            manifest["local_offsets"] = [round(float(x), 6) for x in fusion.offset]
            manifest["local_centre"] = fusion.local_centre
        if fusion.first_stage is not None:  # re-ranking: a query enters the lists it started from
            buf = io.BytesIO()
            np.savez(buf, ids=fusion.first_stage.ids.astype(np.int32), dist=fusion.first_stage.dist)
            atomic_write(index_dir / RERANK_FILE, buf.getvalue())
            manifest["rerank"] = {"k": self.fusion_.rerank_k, "weight": self.fusion_.rerank_weight, "file": RERANK_FILE}
        manifest["format"] = INDEX_FORMAT
        manifest["files"] = {f.name: file_digest(f) for f in sorted(index_dir.iterdir())}
        atomic_write(index_dir / MANIFEST, to_json(manifest))
        return index_dir / MANIFEST

    @classmethod
    def load(cls, index_dir: Path | str, *, neighbours: bool = False, rebuild: str = "",
             required: tuple[str, ...] = ()) -> "Grouper":
        """A grouper as `save` left it, checked as a whole first (IndexDamaged, saying what is wrong,
        what of `required` (the caller's keys) is missing, and `rebuild`, how to make it again). With
        `neighbours`, the fused neighbour lists are rebuilt from the vectors in the Annoy files (what
        `fit` grouped; for regrouping at other cutoffs)."""
        index_dir = Path(index_dir)
        manifest, config = read_manifest(index_dir, rebuild, required)
        grouper = cls(config)
        known = {"config", "normalisers", "index_dims", "images", "group_of", "local_offsets", "local_centre",
                 "rerank", "format", "files", "constraints"}
        grouper.about_ = {key: value for key, value in manifest.items() if key not in known}
        dims = manifest.get("index_dims", {})
        grouper.members_ = list(dims) or list(config.models)  # indexes written before index_dims: the config's
        for m in grouper.members_:
            grouper.indexes_[m] = ModelIndex.load(index_dir / f"{m}.ann", dims.get(m) or _registry_dim(m),
                                                  n_trees=config.n_trees, search_k=config.search_k, seed=config.seed)
            transform = index_dir / f"{m}.transform.npz"
            if transform.is_file():
                grouper.transforms_[m] = Transform.from_arrays(dict(np.load(transform)))
        normalisers = {m: Normaliser.from_dict(manifest["normalisers"][m]) for m in grouper.members_}
        vectors = ({m: index.vectors(range(index.size)) for m, index in grouper.indexes_.items()} if neighbours else {})
        weights = {m: config.model_weights.get(m, 1.0) for m in grouper.members_}  # as Fusion.for_config
        fusion = grouper.fusion_ = Fusion(vectors, normalisers, weights, local_k=config.local_k,
                                          rerank_k=config.rerank_k, rerank_weight=config.rerank_weight)
        if neighbours:
            grouper.neighbours_ = fusion.neighbours(grouper.indexes_, config.k)
        # what queries start from is what was saved (the neighbour lists just rebuilt give the same)
        if "local_offsets" in manifest:
            fusion.offset, fusion.local_centre = np.asarray(manifest["local_offsets"]), manifest["local_centre"]
        if "rerank" in manifest:
            fusion.rerank_k, fusion.rerank_weight = manifest["rerank"]["k"], manifest["rerank"]["weight"]
            with np.load(index_dir / manifest["rerank"]["file"]) as lists:  # each array read once
                fusion.first_stage = FusedNeighbours(lists["ids"].astype(np.int64), lists["dist"])
        grouper.names_ = manifest.get("images")
        grouper.labels_ = np.asarray(manifest["group_of"])
        grouper.constraints_ = Constraints.from_json(manifest.get("constraints", {}))
        return grouper

    def _fitted_neighbours(self) -> FusedNeighbours:
        if self.neighbours_ is None:
            raise ValueError("no neighbour lists: fit the Grouper, or load it with neighbours=True")
        return self.neighbours_

    def _check(self, vectors: dict[str, np.ndarray], names: list[str] | None) -> None:
        if not vectors:
            raise ValueError(f"no vectors: give one (n, dim) array per member, e.g. the config's models "
                             f"{', '.join(self.config.models)}")
        shapes = {m: np.shape(v) for m, v in vectors.items()}
        if any(len(s) != 2 for s in shapes.values()) or len({s[0] for s in shapes.values()}) != 1:
            raise ValueError(f"expected (n, dim) arrays of the same n rows, got {shapes}")
        if names is not None and len(names) != next(iter(shapes.values()))[0]:
            raise ValueError(f"{len(names)} names for {next(iter(shapes.values()))[0]} rows")


def numbered(labels: np.ndarray, names: list[str] | None = None) -> np.ndarray:
    """Labels renumbered 0, 1, ... by group size, largest first; ties by the name of the group's first
    row (by the row itself without names): the group ids of groups.json."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    first = np.full(len(counts), len(labels))
    np.minimum.at(first, inverse, np.arange(len(labels)))
    key = [(-counts[g], names[first[g]] if names is not None else first[g]) for g in range(len(counts))]
    rank = np.empty(len(counts), dtype=np.int64)
    rank[sorted(range(len(counts)), key=key.__getitem__)] = np.arange(len(counts))
    return rank[inverse]


def _registry_dim(model: str) -> int:
    from ensemble_group.extractors import MODELS  # indexes written before index_dims was recorded

    return MODELS[model].dim


def prepare_vectors(vectors: dict[str, np.ndarray], config: Config) -> tuple[dict[str, Transform], dict[str, np.ndarray]]:
    """Per-model corpus-level post-processing (power, whitening, DBA) as configured; identity by default."""
    transforms, out = {}, {}
    for m, v in vectors.items():
        transforms[m], out[m] = prepare(v, power=config.power, whiten_dim=config.whiten_dim,
                                        whiten_shrink=config.whiten_shrink,
                                        whiten_min=config.whiten_min, dba_k=config.dba_k,
                                        dba_alpha=config.dba_alpha, n_trees=config.n_trees, seed=config.seed)
    return transforms, out


ON_DISK_FROM = 100_000  # from this many images each index is built into a file and memory-mapped


def search_k(config: Config, n: int) -> int:
    """Annoy's search_k: the config's, or by default n_trees x (k + 1) up to ON_DISK_FROM images and
    that x n / ON_DISK_FROM beyond: with a fixed search_k a tree search finds fewer of a photo's true
    neighbours as the folder grows (synthetic 100k: 1.8 of a product's other views found at the
    default, 2.6 at 4x), so larger folders search more. At a million (synthetic, 3 members) growing
    with n gave pairwise F1 0.963 in 40 min, growing with sqrt(n) 0.949 in 19 min, a fixed one 0.876;
    100k gives 0.973 (benchmarks/README.md, "Scale")."""
    if config.search_k != -1 or n <= ON_DISK_FROM:
        return config.search_k
    return int(config.n_trees * (config.k + 1) * n / ON_DISK_FROM)


def build_indexes(vectors: dict[str, np.ndarray], config: Config, reporter: Reporter | None = None) -> dict[str, ModelIndex]:
    """One Annoy index per model over its (post-processed) vectors; from ON_DISK_FROM images built on
    disk (a temporary folder that lives as long as the indexes; `save` copies the files out)."""
    reporter = reporter or Reporter()
    indexes = {}
    work = None
    for name, v in vectors.items():
        if len(v) >= ON_DISK_FROM and work is None:
            work = tempfile.TemporaryDirectory(prefix="ensemble-group-index-")
        with reporter.task(f"indexing {name}", 1) as advance:
            indexes[name] = ModelIndex(v.shape[1], n_trees=config.n_trees, search_k=search_k(config, len(v)),
                                       seed=config.seed).build(v, on_disk=Path(work.name) / f"{name}.ann" if work else None)
            indexes[name].workdir = work  # removed when the last index holding it goes
            advance(1)
    return indexes


def read_manifest(index_dir: Path, rebuild: str = "", required: tuple[str, ...] = ()) -> tuple[dict[str, Any], Config]:
    """(the manifest, the fitted config) of an index folder, checked as a whole first: the manifest
    readable and complete (its own keys and the caller's `required` ones), every file it lists there
    and with its checksum (IndexDamaged otherwise)."""
    manifest_path = index_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no saved index in {index_dir} (expected {MANIFEST}); "
                                "build one with `ensemble-group group` or `ensemble-group index`")
    rebuild = rebuild or "rebuild it"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        config = Config(**{**manifest["config"], "models": tuple(manifest["config"]["models"])})
        missing = [key for key in (*required, "group_of", "normalisers") if key not in manifest]
    except (ValueError, KeyError, TypeError) as e:  # not JSON, a key missing, a value of the wrong kind
        raise IndexDamaged(f"{manifest_path} is damaged ({type(e).__name__}: {e}); {rebuild}") from None
    if missing:
        raise IndexDamaged(f"{manifest_path} lacks {', '.join(missing)}; {rebuild}")
    if manifest.get("format", 0) > INDEX_FORMAT:
        raise IndexDamaged(f"{index_dir} was written by a newer ensemble-group (format {manifest['format']}); "
                           "upgrade, or rebuild it with this one")
    for name, digest in manifest.get("files", {}).items():  # indexes written before format 1 carry none
        path = index_dir / name
        if not path.is_file():
            raise IndexDamaged(f"{path} is missing; {rebuild}")
        if file_digest(path) != digest:
            raise IndexDamaged(f"{path} is not the file this index was written with (truncated, altered or "
                               f"from another run); {rebuild}")
    return manifest, config
