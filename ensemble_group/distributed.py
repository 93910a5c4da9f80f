"""Extraction on a Ray cluster (`group --ray`): the local path's decode, framing and members, spread
over Ray Data, for folders too big for one machine.

The files are listed here (a local folder, or a URI pyarrow reads: s3://, gs://, file://) and hashed
in Ray tasks. Only the images missing from the embedding cache go to the cluster, in one job for all
the members: tasks decode each photo once and frame it as `features.extract` does, and a pool of actors,
each holding every member the job needs (loaded once per actor), embeds the rows each member still
lacks. The vectors stream back to this process, which writes them as Parquet parts
(one dataset per member, keyed by content hash) and into the local cache as they arrive, so a job
killed part-way loses only the batches in flight: the next run merges the parts already written
before it sends anything. Ray is imported only on this path (`pip install -e '.[ray]'`).
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from ensemble_group.cache import EmbeddingCache
from ensemble_group.extractors import MODELS
from ensemble_group.features import ExtractionSettings, LazyExtractor, convert_ahead
from ensemble_group.images import (IMAGE_EXTENSIONS, ImageError, ImageFile, Skipped, _os_reason, decode_bytes, frame,
                                   inspect_bytes, scan)

INSTALL = "install the extra: pip install -e '.[ray]'"
# Ray's CPUs are logical: an actor per CPU taking whole ones would leave the decoding tasks none and the job
# would wait for ever, so each actor (one TFLite thread) takes 3/4 of one, and the tasks the rest
ACTOR_CPUS, TASK_CPUS = 0.75, 0.25


class RayUnavailable(RuntimeError):
    """The Ray backend was asked for and Ray is not installed."""


def require_ray() -> None:
    """Fail at once, before any slow work, when Ray is missing (only the Ray path calls this)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RayUnavailable(f"the Ray backend needs Ray, which is not installed; {INSTALL}") from None


def is_uri(source: str | Path) -> bool:
    return "://" in str(source)


def list_files(source: str | Path) -> tuple[str | None, list[tuple[str, str]], list[Skipped]]:
    """(the file system's URI, None for a local folder; (rel, path) of each image file, sorted by rel;
    files skipped while listing). A local folder is listed by `images.scan`, as the local path lists it;
    a URI through pyarrow (hidden names and other extensions left out, as `scan` does)."""
    if not is_uri(source):
        root = Path(os.path.abspath(source))
        paths, skipped = scan(root)
        return None, [(p.relative_to(root).as_posix(), str(p)) for p in paths], skipped
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(str(source))
    if filesystem.get_file_info(root).type != fs.FileType.Directory:
        raise NotADirectoryError(f"input folder not found or not a folder: {source}")
    files = []
    for info in filesystem.get_file_info(fs.FileSelector(root, recursive=True)):
        rel = info.path[len(root.rstrip("/")):].lstrip("/")
        if (info.type == fs.FileType.File and not any(p.startswith(".") for p in rel.split("/"))
                and os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS):
            files.append((rel, info.path))
    return str(source), sorted(files), []


@lru_cache(maxsize=4)
def _filesystem(uri: str):
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)[0]


def read_bytes(uri: str | None, path: str) -> bytes:
    """A file's bytes (`uri` None: a local path), or ImageError with the reason the local path gives."""
    try:
        if uri is None:
            with open(path, "rb") as f:
                return f.read()
        with _filesystem(uri).open_input_stream(path) as f:
            return f.readall()
    except OSError as e:  # pyarrow's errors are OSErrors too
        raise ImageError(_os_reason(e)) from None


def _hash_batch(batch: dict, uri: str | None) -> dict:
    """Ray task: each file's sha256 and repair note (`images.hash_folder`), or why it cannot be read."""
    sha, repaired, error = [], [], []
    for path in batch["path"]:
        try:
            digest, note = inspect_bytes(read_bytes(uri, str(path)))
            sha.append(digest), repaired.append(note), error.append("")
        except ImageError as e:
            sha.append(""), repaired.append(""), error.append(e.reason)
    return {"rel": batch["rel"], "path": batch["path"], "sha256": np.array(sha, object),
            "repaired": np.array(repaired, object), "error": np.array(error, object)}


def _decode_batch(batch: dict, uri: str | None, framings: list[tuple[int, str]], photos: bool) -> dict:
    """Ray task: decode each file once (`images.decode_bytes`) and frame it for every input size and framing
    the members need ("frame<i>": framings[i]), as `features.extract` does; `photos`: keep the whole photo
    too (the colour member). A file that cannot be decoded gets blanks and its reason in "error"."""
    n = len(batch["path"])
    errors = np.empty(n, object)
    frames = [np.zeros((n, size, size, 3), np.float32) for size, _ in framings]
    whole = np.empty(n, object)
    for i, path in enumerate(batch["path"]):
        try:
            photo, errors[i] = decode_bytes(read_bytes(uri, str(path))), ""
        except ImageError as e:
            photo, errors[i] = np.zeros((1, 1, 3), np.uint8), e.reason
        else:
            for f, (size, framing) in enumerate(framings):
                frames[f][i] = frame(photo, size, framing)
        whole[i] = photo
    out = {"sha256": batch["sha256"], "error": errors} | {f"need{m}": batch[f"need{m}"] for m in _needs(batch)}
    out |= {f"frame{f}": a for f, a in enumerate(frames)}
    return out | ({"photo": whole} if photos else {})


def _needs(batch: dict) -> list[int]:
    """The member numbers of a batch's "need<m>" columns (which rows each member still has to embed)."""
    return sorted(int(k[4:]) for k in batch if k.startswith("need"))


class _Members:
    """Ray actor: every member the job needs, each loaded once (the local path's `LazyExtractor`), run on
    the decoded batches; a member embeds only the rows it still needs ("need<m>"), into "vector<m>"."""

    def __init__(self, members: list[tuple[ExtractionSettings, Path | None, int]], threads: int) -> None:
        self.members = []
        for settings, weights_path, framing in members:
            if weights_path is not None and not Path(weights_path).is_file():
                raise FileNotFoundError(f"{settings.model}: weights file {weights_path} is not on this node; run "
                                        "`ensemble-group weights fetch` on every node or share $ENSEMBLE_GROUP_CACHE")
            self.members.append((LazyExtractor(settings, weights_path, threads), MODELS[settings.model], framing))

    def __call__(self, batch: dict) -> dict:
        decoded = np.asarray([e == "" for e in batch["error"]], bool)
        out = {"sha256": batch["sha256"], "error": batch["error"]}
        for m, (member, spec, framing) in enumerate(self.members):
            rows = np.flatnonzero(decoded & np.asarray(batch[f"need{m}"], bool))
            vectors = np.zeros((len(decoded), spec.dim), np.float32)
            if len(rows) and spec.builtin:
                vectors[rows] = member.embed([batch["photo"][i] for i in rows])
            elif len(rows):
                vectors[rows] = member.embed_framed(np.asarray(batch[f"frame{framing}"])[rows])
            out[f"vector{m}"] = vectors
            out[f"runtime{m}"] = np.array([member.runtime or ""] * len(decoded), object)
        return out


class VectorParts:
    """Each member's vectors as Parquet parts under `root` (a folder or a URI), one folder per member and
    settings (`ExtractionSettings.cache_key`, also kept in each part's metadata), rows keyed by sha256."""

    def __init__(self, root: str | Path) -> None:
        from pyarrow import fs

        if is_uri(root):
            self.fs, self.root = fs.FileSystem.from_uri(str(root))
        else:
            self.fs, self.root = fs.LocalFileSystem(), os.path.abspath(root)
        self.where = str(root)

    def folder(self, settings: ExtractionSettings) -> str:
        key = settings.cache_key()
        return f"{self.root.rstrip('/')}/{settings.model}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def write(self, settings: ExtractionSettings, sha: list[str], vectors: np.ndarray, errors: list[str]) -> None:
        """One part, written under a hidden name and renamed: a kill leaves no half part that looks whole."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"sha256": pa.array(sha, pa.string()),
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()),
                                                                      vectors.shape[1]),
                          "error": pa.array(errors, pa.string())}).replace_schema_metadata(
                              {"cache_key": settings.cache_key()})
        folder = self.folder(settings)
        self.fs.create_dir(folder, recursive=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, f"{folder}/.{name}", filesystem=self.fs)
        self.fs.move(f"{folder}/.{name}", f"{folder}/{name}")

    def read(self, settings: ExtractionSettings) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
        """(vectors, {sha256: why it could not be decoded}, parts that cannot be read) of every part."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyarrow import fs

        vectors, bad, broken = {}, {}, []
        key, dim = settings.cache_key(), MODELS[settings.model].dim
        infos = self.fs.get_file_info(fs.FileSelector(self.folder(settings), allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.path):
            if info.type != fs.FileType.File or info.base_name.startswith(".") or not info.path.endswith(".parquet"):
                continue
            try:
                table = pq.read_table(info.path, filesystem=self.fs)
                if (table.schema.metadata or {}).get(b"cache_key", b"").decode() != key:
                    raise ValueError("made with other settings")
                rows = table["vector"].combine_chunks().flatten().to_numpy().reshape(-1, dim).astype(np.float32)
                sha, errors = table["sha256"].to_pylist(), table["error"].to_pylist()
            except (OSError, ValueError, KeyError, pa.ArrowException):
                broken.append(info.path)
                continue
            for h, v, e in zip(sha, rows, errors):
                if e:
                    bad[h] = e
                else:
                    vectors[h] = v
        return vectors, bad, broken


class RayEngine:
    """The Ray path of `pipeline.folder_features`: `hash_folder` lists and hashes the source on the
    cluster, `extract` is `features.extract`'s `remote`. `vectors`: where the Parquet parts go."""

    def __init__(self, source: str | Path, reporter, *, address: str = "", workers: int = 0,
                 vectors: str | Path) -> None:
        require_ray()
        self.source, self.reporter, self.address, self.workers = str(source), reporter, address, workers
        self.parts = VectorParts(vectors)
        self.uri: str | None = None
        self.runtimes: dict[str, str] = {}
        self.sent = 0  # distinct images sent to the cluster for extraction

    def _ray(self):
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # Ray Data's plans and timings: the reporter says enough
        # a job smaller than the pool (a few photos left to extract) is fine; Ray's advice about it is noise
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
        import ray

        if not ray.is_initialized():  # address "": $RAY_ADDRESS, else a `ray start` cluster here, else a new one
            ray.init(address=self.address or None, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False  # the reporter's bar shows progress
        cpus = ray.cluster_resources().get("CPU", 1)
        fit = max(1, int((cpus - TASK_CPUS) / ACTOR_CPUS))  # more actors than fit would wait for ever
        if self.workers > fit:
            self.reporter.log(f"WARNING: {self.workers} workers asked for, {fit} fit on the cluster's {cpus:g} CPUs")
        self.workers = min(self.workers or int(cpus), fit)
        return ray

    def hash_folder(self) -> tuple[list[ImageFile], list[Skipped]]:
        """`images.hash_folder` on the cluster: the readable files, the skipped ones, sorted by rel."""
        self.uri, files, skipped = list_files(self.source)
        if not files:
            return [], skipped
        ray = self._ray()
        ds = ray.data.from_items([{"rel": r, "path": p} for r, p in files],
                                 override_num_blocks=min(len(files), 4 * self.workers))
        images = []
        with self.reporter.task(f"hashing {len(files)} files on Ray", len(files)) as advance:
            for batch in ds.map_batches(_hash_batch, fn_kwargs={"uri": self.uri}, batch_format="numpy",
                                        num_cpus=TASK_CPUS).iter_batches(batch_size=None, batch_format="numpy"):
                for rel, path, sha, note, error in zip(batch["rel"], batch["path"], batch["sha256"],
                                                       batch["repaired"], batch["error"]):
                    if error:
                        skipped.append(Skipped(str(rel), str(error)))
                    else:
                        images.append(ImageFile(Path(str(path)), str(rel), str(sha), repaired=str(note)))
                advance(len(batch["rel"]))
        return sorted(images, key=lambda im: im.rel), sorted(skipped, key=lambda s: s.rel)

    def extract(self, extractors: dict[str, LazyExtractor], cache: EmbeddingCache | None, missing: list[str],
                path_of: dict[str, Path], found: dict[str, dict[str, np.ndarray]], keys: dict[str, str]
                ) -> dict[str, str]:
        """Fill `found` (and the cache) for `missing`: Parquet parts written before first, then the cluster.
        {sha256: reason} of the files that cannot be decoded."""
        wanted, bad, merged = set(missing), {}, 0
        for m, ex in extractors.items():
            if ex.settings.weights_id is None:  # weights set by hand: nothing is kept for them
                continue
            vectors, failed, broken = self.parts.read(ex.settings)
            for part in broken:
                self.reporter.log(f"WARNING: skipping the unreadable Parquet part {part} (a job killed while writing it?)")
            new = {h: v for h, v in vectors.items() if h in wanted and h not in found[m]}
            found[m].update(new)
            bad.update({h: e for h, e in failed.items() if h in wanted})
            if cache and new:
                cache.put_many(keys[m], new)
            merged = max(merged, len(new))
        todo = {m: [h for h in missing if h not in found[m] and h not in bad] for m in extractors}
        self.sent = len(set().union(*todo.values()))
        self.reporter.log(f"extracting features of {self.sent} images on Ray ({len(path_of) - len(missing)} from the "
                          f"cache, {merged} from the Parquet parts in {self.parts.where})")
        if not self.sent:
            return bad
        ray = self._ray()
        members = [m for m in extractors if todo[m]]
        convert_ahead([extractors[m] for m in members], self.reporter, at_least=1)  # once, not per actor
        bad.update(self._members(ray, [extractors[m] for m in members], [set(todo[m]) for m in members],
                                 path_of, [found[m] for m in members], cache, [keys.get(m) for m in members]))
        return bad

    def _members(self, ray, exs: list[LazyExtractor], todo: list[set[str]], path_of: dict[str, Path],
                 found: list[dict[str, np.ndarray]], cache: EmbeddingCache | None, keys: list[str | None]
                 ) -> dict[str, str]:
        """Every member's vectors for its `todo` in one job: decoding tasks (each photo decoded once, framed
        once per input size), then `workers` actors holding all the members; parts and cache per batch."""
        framing_of = [None if MODELS[ex.settings.model].builtin else (MODELS[ex.settings.model].input_size,
                                                                       ex.settings.framing) for ex in exs]
        framings = list(dict.fromkeys(f for f in framing_of if f))  # members of one input size share its frames
        hashes = [h for h in path_of if any(h in t for t in todo)]
        batch = max(ex.settings.batch_size for ex in exs)
        ds = ray.data.from_items([{"sha256": h, "path": str(path_of[h])} | {f"need{m}": h in t for m, t in enumerate(todo)}
                                  for h in hashes], override_num_blocks=-(-len(hashes) // batch))
        ds = ds.map_batches(_decode_batch, fn_kwargs={"uri": self.uri, "framings": framings,
                                                      "photos": None in framing_of},
                            batch_size=batch, batch_format="numpy", num_cpus=TASK_CPUS)
        actors = min(self.workers, -(-len(hashes) // batch))
        members = [(ex.settings, ex.weights_path, framings.index(f) if f else -1) for ex, f in zip(exs, framing_of)]
        ds = ds.map_batches(_Members, fn_constructor_args=(members, 1), batch_size=batch, batch_format="numpy",
                            num_cpus=ACTOR_CPUS, compute=ray.data.ActorPoolStrategy(size=actors))
        bad = {}
        names = ", ".join(ex.settings.model for ex in exs)
        with self.reporter.task(f"extracting {names} on Ray ({actors} actors)", len(hashes)) as advance:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                sha, errors = [str(h) for h in out["sha256"]], [str(e) for e in out["error"]]
                bad.update({h: e for h, e in zip(sha, errors) if e})
                for m, ex in enumerate(exs):
                    rows = [i for i, h in enumerate(sha) if h in todo[m]]
                    if not rows:
                        continue
                    s, vectors = ex.settings, np.asarray(out[f"vector{m}"], np.float32)[rows]
                    part_sha, part_errors = [sha[i] for i in rows], [errors[i] for i in rows]
                    if s.weights_id is not None:
                        self.parts.write(s, part_sha, vectors, part_errors)
                    new = {h: v for h, v, e in zip(part_sha, vectors, part_errors) if not e}
                    found[m].update(new)
                    if cache and new:
                        cache.put_many(keys[m], new)
                    if out[f"runtime{m}"][rows[0]]:
                        self.runtimes[s.model] = str(out[f"runtime{m}"][rows[0]])
                advance(len(sha))
        return bad
