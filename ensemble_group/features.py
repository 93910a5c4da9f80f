"""Images -> per-model vectors, cached by content hash.

Extraction is the slow part, so it never happens twice for the same bytes: each image's vector is
looked up in the embedding cache under (model, weights id, preprocessing settings, file sha256); only
the misses are decoded, in chunks (memory stays bounded whatever the folder size), passed through
every model that misses them (one decode feeds all members), and written to the cache after each
chunk, so a killed run resumes where it stopped. Byte-identical files are extracted once.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ensemble_group import race
from ensemble_group.cache import CacheError, EmbeddingCache, model_key
from ensemble_group.colour import ColourMember
from ensemble_group.config import Config
from ensemble_group.cpu import choose_precision, cores
from ensemble_group.extractors import MODELS, Extractor
from ensemble_group.images import ImageError, ImageFile, Skipped, decode_many, frame_batch
from ensemble_group.quantise import Calibration, calibration_photos, tensorflow_version
from ensemble_group.race import Race
from ensemble_group.reporter import Reporter
from ensemble_group.weights import WeightsNotFound, WeightsRef, resolve

CHUNK = 128  # about this many images decoded at a time: bounds memory, and the most a kill can lose


@dataclass
class Features:
    """Vectors of the readable images: `images[i]` has row i of every `vectors[model]` (n, dim)."""

    images: list[ImageFile]
    vectors: dict[str, np.ndarray]
    skipped: list[Skipped] = field(default_factory=list)
    extracted: int = 0  # distinct images that went through the models (cache misses)
    cached: int = 0  # distinct images served entirely from the cache
    runtimes: dict[str, str] = field(default_factory=dict)  # model -> what ran it (see Extractor.runtime)


def settings_key(model: str, weights_id: str, framing: str, pooling: str = "avg", flip: bool = False,
                 int8_calibration: str | None = None) -> str:
    extra = {} if pooling == "avg" else {"pooling": pooling}  # the defaults keep the keys of earlier caches
    if flip:
        extra["flip"] = "mean"
    if int8_calibration:  # int8 vectors differ a little, with the calibration set and TFLite's quantiser
        extra["precision"] = f"int8-{int8_calibration}-tf{tensorflow_version()}"
    return model_key(model, weights_id, framing=framing, input_size=MODELS[model].input_size, **extra)


@dataclass(frozen=True)
class ExtractionSettings:
    """How one member's vectors are made, in one object: what changes the vectors (`cache_key`: the
    model, its weights, framing, pooling, flip, the int8 calibration set) and what only changes the
    speed (winograd, lite, batch_size). The cache, the TFLite file names and `compare` all read it."""

    model: str
    weights_id: str | None = None  # None: weights set by hand (tests); nothing is cached for them
    framing: str = "squash"
    pooling: str = "avg"
    flip: bool = False
    int8: Calibration | None = None  # the calibration set when the member runs int8, None for float32
    winograd: bool = True
    lite: bool = True
    batch_size: int = 32

    # the config's keys that change a member's vectors: changing one means extracting again
    CONFIG_KEYS: ClassVar[tuple[str, ...]] = ("framing", "pooling", "flip", "precision", "calibration")

    @classmethod
    def of(cls, config: Config, model: str, weights_id: str | None, int8: Calibration | None = None
           ) -> "ExtractionSettings":
        """The settings of one member of `config` (`int8`: `member_calibrations(config)[model]`). A built-in
        member (the colour histogram) reads whole photos with no model: none of the CNN settings apply."""
        if MODELS[model].builtin:
            return cls(model, weights_id, framing="none", winograd=False, lite=False, batch_size=config.batch_size)
        return cls(model, weights_id, config.framing, config.pooling, config.flip, int8, config.winograd,
                   config.lite, config.batch_size)

    @property
    def int8_calibration(self) -> str | None:
        """The id of the calibration set this member is quantised with (None: float32)."""
        return self.int8.id if self.int8 else None

    def cache_key(self) -> str:
        """The embedding cache's key for this member's vectors (see `settings_key`)."""
        return settings_key(self.model, self.weights_id, self.framing, self.pooling, self.flip, self.int8_calibration)

    def lite_file(self) -> Path | None:
        """Where this member's TFLite flatbuffer is cached (None: TFLite off, or weights with no id)."""
        if not (self.lite and self.weights_id):  # unnamed weights (tests that set their own) are not cached
            return None
        from ensemble_group.lite import cache_file
        from ensemble_group.weights import cache_dir

        return cache_file(cache_dir(), self.model, self.weights_id, self.pooling, self.winograd,
                          int8_calibration=self.int8_calibration)


def even_batch(n: int, largest: int) -> int:
    """The batch size that covers n images in as few batches as `largest` allows, padding the least.

    Batches have one fixed shape (traced and compiled once), so the last one is padded: 200 images in
    batches of 32 waste 24 images' worth of every model's work; in 7 batches of 29 they waste 3.
    """
    return -(-n // -(-n // largest)) if n > 0 else largest


def extract(images: list[ImageFile], extractors: dict[str, "LazyExtractor"], cache: EmbeddingCache | None,
            reporter, *, remote: Callable[..., dict[str, str]] | None = None) -> Features:
    """Vectors for `images` from the cache or the models; undecodable files move to `skipped`.

    Models are loaded only if some image misses the cache, so a warm rerun skips TensorFlow's start-up.
    `remote(missing, path_of, found, keys)` extracts the misses elsewhere instead (a Ray cluster:
    `distributed.RayExtraction`): it fills `found[model][hash]` (and the cache) and returns {hash: reason}
    of the files it could not decode.
    """
    unique = list(dict.fromkeys(im.sha256 for im in images))
    path_of = {}
    for im in images:
        path_of.setdefault(im.sha256, im.path)
    keys = {m: ex.settings.cache_key() for m, ex in extractors.items()} if cache else {}
    found: dict[str, dict[str, np.ndarray]] = {}
    for m, ex in extractors.items():
        found[m] = cache.get_many(keys[m], unique, MODELS[m].dim) if cache else {}
    missing = [h for h in unique if any(h not in found[m] for m in extractors)]
    if not missing:
        bad: dict[str, str] = {}
    elif remote is not None:
        bad = remote(missing, path_of, found, keys)
    else:
        reporter.log(f"extracting features of {len(missing)} images ({len(unique) - len(missing)} from the cache)")
        bad = _extract_here(missing, path_of, extractors, found, cache, keys, reporter)
    kept = [im for im in images if im.sha256 not in bad]
    skipped = [Skipped(im.rel, bad[im.sha256]) for im in images if im.sha256 in bad]
    dims = {m: MODELS[m].dim for m in extractors}
    vectors = {m: (np.stack([found[m][im.sha256] for im in kept]).astype(np.float32) if kept
                   else np.zeros((0, dims[m]), np.float32)) for m in extractors}
    return Features(kept, vectors, skipped, extracted=len(missing) - len(bad),
                    cached=len(unique) - len(missing),
                    runtimes={m: ex.runtime for m, ex in extractors.items() if ex.runtime})


def _extract_here(missing: list[str], path_of: dict[str, Path], extractors: dict[str, "LazyExtractor"],
                  found: dict[str, dict[str, np.ndarray]], cache: EmbeddingCache | None, keys: dict[str, str],
                  reporter) -> dict[str, str]:
    """`extract`'s misses in this process, chunk by chunk: fills `found` and the cache; {hash: reason} of
    the undecodable files."""
    bad: dict[str, str] = {}
    for m, ex in extractors.items():
        ex.images = sum(h not in found[m] for h in missing)
    convert_ahead([ex for ex in extractors.values() if ex.images], reporter)
    for m, timed in race_ahead(extractors, reporter, images=race.AFTER).items():
        reporter.log(f"{m}: {timed.describe()}")
    largest = max((ex.settings.batch_size for ex in extractors.values()), default=1)
    batch = even_batch(len(missing), largest)
    chunk_size = batch * max(1, CHUNK // largest)  # whole batches: only the run's last batch is padded
    chunks = [missing[s:s + chunk_size] for s in range(0, len(missing), chunk_size)]
    steps = len(missing) * len(extractors)  # progress counts image x model, so it moves every batch
    with reporter.task(f"extracting features ({len(extractors)} models)", steps) as advance, \
            ThreadPoolExecutor(1) as ahead:
        # decode the next chunk while the models work on this one
        pending = ahead.submit(decode_many, [path_of[h] for h in chunks[0]]) if chunks else None
        for i, chunk in enumerate(chunks):
            decoded = pending.result()
            if i + 1 < len(chunks):
                pending = ahead.submit(decode_many, [path_of[h] for h in chunks[i + 1]])
            ok = [(h, a) for h, a in zip(chunk, decoded) if not isinstance(a, ImageError)]
            bad.update({h: a.reason for h, a in zip(chunk, decoded) if isinstance(a, ImageError)})
            framed: dict[tuple[int, str], np.ndarray] = {}  # one framing per input size, shared by members
            for m, ex in extractors.items():
                todo = [t for t, (h, _) in enumerate(ok) if h not in found[m]]
                advance(len(chunk) - len(todo))
                if not todo:
                    continue
                if MODELS[m].builtin:  # the colour member reads the photos themselves
                    rows = ex.embed([ok[t][1] for t in todo], progress=advance)
                else:
                    key = (MODELS[m].input_size, ex.settings.framing)
                    if key not in framed:
                        framed[key] = frame_batch([a for _, a in ok], *key)
                    rows = ex.embed_framed(framed[key][todo], progress=advance, batch_size=batch)
                new = dict(zip((ok[t][0] for t in todo), rows))
                found[m].update(new)
                if cache:
                    cache.put_many(keys[m], new)  # committed per chunk: a kill loses at most one chunk
    return bad


class LazyExtractor:
    """An Extractor built on first use: loading a model costs seconds, and a cache hit needs none.

    `settings.int8` set (a calibration set, `quantise.calibration_photos`): it runs int8 (see `quantise`).
    `threads`: TFLite's threads (default: every core; a Ray actor, the cores it was given).
    """

    def __init__(self, settings: ExtractionSettings, weights_path: Path | None, threads: int | None = None) -> None:
        self.settings, self.weights_path, self.threads = settings, weights_path, threads
        self._extractor: Extractor | ColourMember | None = None
        self.images: int | None = None  # how many images this run embeds with it (set by `extract`); None: unknown
        self._race: Race | None = None  # this machine's race of its two engines, once read or measured

    @property
    def lite_file(self) -> Path | None:
        return self.settings.lite_file()

    def lite_status(self) -> str:
        """What loading this member does about TFLite: "off" (lite = false), "unavailable" (no TFLite in
        this TensorFlow), "uncached" (weights with no id: converted, never cached), "failed" (TFLite
        could not run it: TensorFlow runs it), "cached", "convert" (seconds, once per machine), or
        "builtin" (no model at all: the colour member)."""
        from ensemble_group import lite

        if MODELS[self.settings.model].builtin:
            return "builtin"
        path = self.lite_file
        if not self.settings.lite:
            return "off"
        if not lite.available():
            return "unavailable"
        if path is None:
            return "uncached"
        return "failed" if lite.failure_file(path).is_file() else "cached" if path.is_file() else "convert"

    def needs_conversion(self) -> bool:
        """Whether loading this member would first convert it for TFLite and cache it."""
        return self._extractor is None and self.lite_status() == "convert"

    @property
    def extractor(self) -> Extractor | ColourMember:
        if self._extractor is None and MODELS[self.settings.model].builtin:
            self._extractor = ColourMember()
        elif self._extractor is None:
            self._extractor = self._build(tensorflow=self._tensorflow_faster())
        return self._extractor

    def _build(self, *, tensorflow: bool = False) -> Extractor:
        """The member as the settings say, or on TensorFlow's own kernels (oneDNN's direct convolutions:
        no Winograd, no XLA, no TFLite) where this machine's race found that faster."""
        s = self.settings
        return Extractor(MODELS[s.model], self.weights_path, batch_size=s.batch_size, framing=s.framing,
                         winograd=s.winograd and not tensorflow, pooling=s.pooling, flip=s.flip,
                         lite=s.lite and not tensorflow, lite_file=None if tensorflow else self.lite_file,
                         calibration=s.int8.photos if s.int8 else None, threads=self.threads)

    def _both_engines(self) -> bool:
        """Whether TFLite and TensorFlow can both run it: float32, TFLite on, its file cached or to convert."""
        return not self.settings.int8 and self.lite_status() in ("cached", "convert")

    def _remembered(self) -> Race | None:
        if self._race is None:
            self._race = race.remembered(self.lite_file, self._lite_threads())
        return self._race

    def _tensorflow_faster(self) -> bool:
        """Whether this machine's remembered race found TensorFlow faster for a run of `images` images
        (a run of fewer than `race.AFTER`, or of an unknown size, keeps TFLite)."""
        if (self.images or 0) < race.AFTER or not self._both_engines():
            return False
        found = self._remembered()
        return found is not None and found.faster(self.images) == "tensorflow"

    def needs_race(self) -> bool:
        """Whether both engines can run this member and they were never timed against each other here."""
        return self._both_engines() and self._remembered() is None

    def race(self) -> Race | None:
        """Time TFLite against TensorFlow on this machine now (converting the member first if need be) and
        remember it; the winner for `images` images stays loaded. None where only one engine can run it."""
        if not self._both_engines():
            return None
        if self.needs_conversion():  # converts and caches the flatbuffer, or records that TFLite cannot run it
            _run_once(self)
            if self.lite_status() != "cached":
                return None
        self._race, loaded = race.run({"tflite": self._build, "tensorflow": lambda: self._build(tensorflow=True)},
                                      MODELS[self.settings.model].input_size, self._lite_threads())
        race.remember(self.lite_file, self._race)
        self._extractor = loaded[self._race.faster(self.images or 10**9)]
        return self._race

    def _lite_threads(self) -> int:
        return self.threads or cores()

    @property
    def runtime(self) -> str | None:
        """What runs the model ("tflite", "tflite-int8", "tensorflow+xla", "tensorflow"), or None if it
        was not needed."""
        return self._extractor.runtime if self._extractor is not None else None

    def embed(self, images: list[np.ndarray], progress=None) -> np.ndarray:
        return self.extractor.embed(images, progress)

    def embed_framed(self, framed: np.ndarray, progress=None, batch_size: int | None = None) -> np.ndarray:
        return self.extractor.embed_framed(framed, progress, batch_size)


def convert_ahead(extractors: list[LazyExtractor], reporter, *, at_least: int = 2) -> list[str]:
    """Convert, in parallel processes, the members whose TFLite flatbuffer is not cached yet, if there
    are `at_least` of them: the names of those converted.

    A conversion is mostly one thread's work (freezing the graph, then MLIR passes): on two cores two
    take little longer than one (a machine's first `group` of the default trio on 200 photos: about
    8 s faster, benchmarks/README.md). Each helper loads the member exactly as this
    process would and runs it once, so it caches what runs here, or records that TFLite cannot run it.
    A helper that fails leaves its member to convert here, on first use, as without this step.
    Helpers are fresh interpreters (not multiprocessing's), so a user's script is never re-run in them.
    """
    todo = [ex for ex in extractors if ex.needs_conversion()]
    if len(todo) < max(1, at_least):
        return []
    done = []
    with reporter.task(f"converting {len(todo)} models for TFLite (once per machine)", len(todo)) as advance:
        if len(todo) == 1 or cores() < 2:  # no parallelism to gain: no helper's start-up to pay
            for ex in todo:
                _run_once(ex)
                done.append(ex.settings.model)
                advance(1)
            return done
        with ThreadPoolExecutor(min(len(todo), cores())) as pool:
            futures = {pool.submit(_run_in_helper, ex): ex.settings.model for ex in todo}
            for future in as_completed(futures):
                failure = future.result()
                if failure is None:
                    done.append(futures[future])
                else:  # a helper killed for memory, say
                    reporter.log(f"WARNING: converting {futures[future]} in a helper process failed ({failure}); "
                                 "it converts in this process instead")
                advance(1)
    return done


def race_ahead(extractors: dict[str, LazyExtractor], reporter, *, images: int = 0) -> dict[str, Race]:
    """Race TFLite against TensorFlow now for each member never raced on this machine (of those that
    embed at least `images` images in this run): model -> its race (`LazyExtractor.race`)."""
    raced = {}
    for m, ex in extractors.items():
        if (ex.images or 0) >= images and ex.needs_race():
            with reporter.task(f"timing {m} on TFLite and on TensorFlow (once per machine)", 1):
                found = ex.race()
            if found:
                raced[m] = found
    return raced


def _run_in_helper(member: LazyExtractor) -> str | None:
    """`_run_once(member)` in a new Python process: None, or why it failed."""
    import pickle
    import subprocess
    import sys

    here = str(Path(__file__).resolve().parent.parent)  # found last: this package even if not installed
    code = (f"import pickle, sys; sys.path.append({here!r}); from ensemble_group.features import _run_once; "
            "_run_once(pickle.load(sys.stdin.buffer))")
    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(member), capture_output=True)
    if done.returncode == 0:
        return None
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


def _run_once(member: LazyExtractor) -> None:
    """Load `member` (converting it if need be) and run one image through it: what a helper does."""
    size = MODELS[member.settings.model].input_size
    member.embed_framed(np.zeros((1, size, size, 3), np.float32), batch_size=1)


def open_cache(path: Path | None, log, *, required: bool = False) -> EmbeddingCache | None:
    """The embedding cache at `path` (None = caching off). A cache only saves time: one that cannot be
    opened (a file in the way, a read-only file system) is a warning and the run goes on without it,
    unless it is `required` (the user named it): then CacheError, saying what to do."""
    if not path:
        return None
    try:
        return EmbeddingCache(path, log=log)
    except (CacheError, OSError) as e:
        if required:
            raise CacheError(f"cannot use the cache file {path}: {e}; choose another --cache-file or "
                             "pass --no-cache") from None
        log(f"WARNING: the embedding cache {path} cannot be used ({e}); running without it")
        return None


def resolve_weights(config: Config, reporter: Reporter = Reporter()) -> dict[str, WeightsRef]:
    """Find every model's weights before any image is read, so a missing file fails in seconds."""
    found, missing = {}, []
    with reporter.task("finding weights", len(config.models)) as advance:
        for m in config.models:
            try:
                found[m] = resolve(m, config.weights_files.get(m), allow_random=config.allow_random_weights,
                                   log=reporter.log)
            except WeightsNotFound as e:
                missing.append(str(e))
            advance(1)
    if missing:
        raise WeightsNotFound("\n\n".join(missing))
    return found


def member_calibrations(config: Config) -> dict[str, Calibration | None]:
    """The calibration set each member is quantised with, None for float32: when the precision is int8
    (set, or chosen by "auto" on this CPU: `cpu.choose_precision`), the members where int8 pays
    (`ModelSpec.int8`). The photos are read once; a missing or too small calibration folder fails here
    (ValueError), before any model work."""
    int8 = choose_precision(config.precision, config.lite)[0] == "int8"
    calibration = calibration_photos(config.calibration) if int8 else None
    return {m: calibration if MODELS[m].int8 else None for m in config.models}


def load_extractors(config: Config, weights: dict[str, WeightsRef]) -> dict[str, LazyExtractor]:
    """One extractor per member, each loaded on first use (int8 ones with `member_calibrations`)."""
    int8 = member_calibrations(config)
    return {m: LazyExtractor(ExtractionSettings.of(config, m, weights[m].id, int8[m]), weights[m].path)
            for m in config.models}


def embed_photo(image: Path | str, config: Config, weights: dict[str, WeightsRef] | None = None) -> dict[str, np.ndarray]:
    """One photo's vector from each of the config's members: model -> (dim,), as `extract` would give it
    (no cache: one photo). A photo that cannot be read raises ImageError."""
    from ensemble_group import lite
    from ensemble_group.images import load

    array = load(Path(image), Path(image).name)
    # a batch of one; Winograd only through TFLite (the file `group` converted), never an XLA compile
    one = config.replace(batch_size=1, winograd=config.winograd and config.lite and lite.available())
    return {m: ex.embed([array])[0] for m, ex in load_extractors(one, weights or resolve_weights(config)).items()}
