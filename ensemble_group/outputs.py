"""Writing results: groups.json (the contract other tools read), groups.csv, run.json, index/.

A run's outputs change all together or not at all (`staged`): the new set is written into a hidden
folder inside `--out`, beside the old one, and only when every file is complete is it swapped in by
renames (which need no space), groups.json last: its presence marks a complete run. A run that fails
while writing (a full disk, Ctrl-C) leaves the previous results as they were. groups.json holds only
what decides the result (no clock times), so two runs over the same images give byte-identical
files; timings go to run.json.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

GROUPS_JSON, GROUPS_CSV, RUN_JSON, INDEX_DIR = "groups.json", "groups.csv", "run.json", "index"
RERANK_FILE = "rerank-lists.npz"  # inside INDEX_DIR: the first-stage neighbour lists a query re-ranks against
OUTPUTS = (INDEX_DIR, GROUPS_CSV, RUN_JSON, GROUPS_JSON)  # one run's set, in the order it is swapped in
_STAGING = ".staging-"  # prefix of the hidden folder a run is written into before the swap


class OutputExists(FileExistsError):
    """The output folder already holds results and --force was not given."""


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temp file + os.replace: the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_out_dir(out: Path, input_dir: Path, force: bool) -> None:
    """Before any slow work: refuse to write inside the input folder (ValueError), to overwrite earlier
    results without `force` (OutputExists), or a folder that cannot be created or written (ValueError:
    a file in its place, a read-only file system...). Creates the folder if it is missing."""
    out_r, in_r = out.resolve(), input_dir.resolve()
    if out_r == in_r or in_r in out_r.parents:
        raise ValueError(f"the output folder {out} is inside the input folder {input_dir}; "
                         "the input folder is never written to: choose another --out")
    if (out / GROUPS_JSON).exists() and not force:  # a complete earlier run; debris of a broken one is not
        existing = [n for n in OUTPUTS if (out / n).exists()]
        raise OutputExists(f"{out} already holds {', '.join(existing)}; pass --force to replace them "
                           "or choose a fresh --out folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.", suffix=".part")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write to the output folder {out}: {e.strerror or e}; choose another --out") from None


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield a hidden folder inside `out` to write a run's OUTPUTS into; on success swap them in (the
    old ones out, groups.json last), on any failure remove it and leave `out` as it was. Debris of
    runs that were killed before (staging folders, half-written files) is removed first."""
    out.mkdir(parents=True, exist_ok=True)
    for debris in [*out.glob(_STAGING + "*"), *out.glob(".*.part"), *out.glob(f"{INDEX_DIR}/*.part")]:
        if debris.is_dir():
            shutil.rmtree(debris, ignore_errors=True)
        else:
            debris.unlink(missing_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=_STAGING))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    (out / GROUPS_JSON).unlink(missing_ok=True)  # from here until the last rename, no complete run is claimed
    for name in OUTPUTS:
        old, new = out / name, stage / name
        if old.is_dir():
            old.rename(stage / f".old-{name}")  # removed with the staging folder
        if new.exists():
            os.replace(new, old)
        elif old.exists():
            old.unlink()  # not part of this run
    shutil.rmtree(stage, ignore_errors=True)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MB blocks (weights files run to hundreds of MB)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def groups_csv(groups: list[dict[str, Any]]) -> str:
    """One row per image: image, group id, group size, fused distance to the rest of its group."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "group", "group_size", "distance_to_group"])
    for g in groups:
        for image, d in zip(g["images"], g["distances"]):
            w.writerow([image, g["id"], g["size"], "" if d is None else f"{d:.4f}"])
    return buf.getvalue()
