"""Find, hash and decode the input photos: the first stage of the pipeline.

Every file is decoded exactly once into an (H, W, 3) uint8 RGB array; anything
that cannot be read becomes a `Skipped` entry with a short human reason instead
of an exception, so one bad file never stops a run.  Later stages resize the
shared arrays per model with `frame()`.  Nothing here writes to the input folder.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import stat
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from ensemble_group.cpu import cores

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Only these decoders are tried (JPEG covers MPO): Pillow's permissive ones (TGA, PCX, ...) would
# otherwise "decode" random bytes into noise instead of reporting them.
_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
FRAME_MODES = ("squash", "pad", "center-crop")
PAD_TOLERANCE = 20  # max per-channel difference from the border colour that still counts as margin


class ImageError(ValueError):
    """A file that cannot be used as an image; str(error) is the short human reason."""

    def __init__(self, reason: str, rel: str = ""):
        super().__init__(reason)
        self.reason, self.rel = reason, rel


@dataclass(frozen=True)
class ImageFile:
    """One readable image.  `rel` is relative to the input folder with '/' separators;
    names that are not valid UTF-8 keep their bytes as surrogate escapes (os.fsdecode),
    so `os.fsencode(rel)` round-trips to the file; print/serialise via `display_name`."""
    path: Path              # absolute path on disk (symlinks not resolved)
    rel: str
    sha256: str             # hex digest of the file bytes: the embedding cache key
    size: tuple[int, int] | None = None  # (width, height) after EXIF orientation, once decoded
    repaired: str = ""      # what was ignored to read it, as a browser would ("" = nothing)


@dataclass(frozen=True)
class Skipped:
    """A file (or directory) left out of the run, and why."""
    rel: str
    reason: str


def display_name(rel: str) -> str:
    """Printable, JSON-safe form of `rel`: undecodable bytes become \\xNN, control chars escaped."""
    text = os.fsencode(rel).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


_OS_REASONS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.ELOOP: "symlink loop", errno.EISDIR: "is a directory",
               errno.ENOENT: "file not found (deleted or broken symlink)"}


def _os_reason(e: OSError) -> str:
    return _OS_REASONS.get(e.errno, f"cannot read file: {e.strerror or e}")


def scan(folder: Path, *, recursive: bool = True, follow_symlinks: bool = True,
         include_other: bool = False) -> tuple[list[Path], list[Skipped]]:
    """Absolute paths of all image-extension regular files under `folder`, sorted by rel
    path (deterministic), and the Skipped entries found on the way.

    Hidden names ('.' prefix) are ignored silently, files with other extensions too
    unless `include_other` (then reported as Skipped).  Directories are identified by
    (st_dev, st_ino) and never entered twice, so symlink loops terminate (Skipped
    'symlink loop').  Non-regular files (FIFOs, devices) are skipped: opening them could
    block.  With follow_symlinks=False, symlinked images are reported, symlinked dirs
    ignored.  A missing/non-directory `folder` raises OSError: that is a usage error.
    """
    root = Path(os.path.abspath(folder))
    found: list[tuple[str, Path]] = []
    skipped: list[Skipped] = []
    visited: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) of entered dirs -> rel

    def walk(dirpath: str, prefix: str, ancestors: frozenset) -> None:
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(prefix.rstrip("/") or ".", _os_reason(e)))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel, ext = prefix + entry.name, os.path.splitext(entry.name)[1].lower()
            is_image = ext in IMAGE_EXTENSIONS
            try:
                if entry.is_symlink() and not follow_symlinks:
                    if is_image:
                        skipped.append(Skipped(rel, "symlink (not followed)"))
                    continue
                st = entry.stat()
            except OSError as e:
                if is_image or e.errno == errno.ELOOP:
                    why = "broken symlink" if e.errno == errno.ENOENT else _os_reason(e)
                    skipped.append(Skipped(rel, why))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if not recursive:
                    continue
                if key in visited:
                    why = ("symlink loop" if key in ancestors
                           else f"same directory as {visited[key]}")
                    skipped.append(Skipped(rel, why))
                    continue
                visited[key] = rel
                walk(entry.path, rel + "/", ancestors | {key})
            elif not is_image:
                if include_other:
                    skipped.append(Skipped(rel, f"not an image file (extension {ext or 'none'})"))
            elif stat.S_ISREG(st.st_mode):
                found.append((rel, root / rel))
            else:
                skipped.append(Skipped(rel, "not a regular file"))

    st = root.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(folder))
    visited[st.st_dev, st.st_ino] = "."
    walk(str(root), "", frozenset(visited))
    found.sort(key=lambda t: t[0])
    skipped.sort(key=lambda s: s.rel)
    return [path for _, path in found], skipped


def _gray_to_uint8(a: np.ndarray) -> np.ndarray:
    """(H, W) 16/32-bit int or float -> (H, W) uint8, scaled (not clipped) by the smallest
    standard full scale that holds the data (ints: 65535; floats: 1, 255 or 65535); data
    outside that (negative, larger) is min-max stretched."""
    kind = a.dtype.kind
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    # integer modes (I;16*, and I as Pillow opens 16-bit PNG/TIFF) hold 16-bit data
    scales = (1.0, 255.0, 65535.0) if kind == "f" else (65535.0,)
    full = next((s for s in scales if lo >= 0 and hi <= s), None)
    if full is None:
        a, full = a - lo, (hi - lo) or 1.0
    return np.rint(a * (255.0 / full)).astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB; transparency is composited onto white."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        g = _gray_to_uint8(np.asarray(im))
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return np.array(im.convert("RGB"), dtype=np.uint8)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_damaged_chunks(data: bytes) -> tuple[bytes, tuple[str, ...]]:
    """(the PNG without its damaged ancillary chunks, their names): what libpng and browsers do.

    An ancillary chunk (colour profile, text, time...) whose CRC is wrong is dropped with a warning
    by browsers; Pillow refuses the whole file. Only ancillary chunks are checked (no CRC over the
    pixel data: cheap enough for the hashing pass); critical ones (IHDR, PLTE, IDAT, IEND) are left
    as they are, so damaged or truncated pixels stay an error. Not a PNG, or nothing damaged:
    (data, ()).
    """
    if not data.startswith(PNG_SIGNATURE):
        return data, ()
    kept, dropped, pos = [data[:8]], [], 8
    while pos + 12 <= len(data):
        end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        if end > len(data):
            break
        kind = data[pos + 4:pos + 8]
        ancillary = bool(kind[0] & 0x20)  # lower-case first letter (PNG spec, 5.4)
        if ancillary and zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            dropped.append(kind.decode("latin-1"))
        else:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    if not dropped:
        return data, ()
    return b"".join(kept) + data[pos:], tuple(dropped)


def _repair_note(dropped: tuple[str, ...]) -> str:
    return f"ignored damaged PNG chunk{'s' if len(dropped) > 1 else ''} {', '.join(dropped)} (bad CRC), as browsers do"


def _decode(data: bytes) -> np.ndarray:
    """Decode file bytes -> read-only (H, W, 3) uint8 RGB, first frame/page, EXIF-oriented.
    Damaged ancillary PNG chunks are ignored (`png_damaged_chunks`).
    Bomb warnings must already be errors (see `_bombs_are_errors`)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    data, _ = png_damaged_chunks(data)
    fmt = "image"
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as im:
            fmt = im.format or fmt
            im.load()  # full decode now, so truncation is an error here, not later
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block should not lose the photo
                pass
            arr = _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except _BOMBS as e:  # the message is Pillow's only record of the claimed size
        m = re.search(r"\((\d+) pixels\)", str(e))
        limit = Image.MAX_IMAGE_PIXELS
        raise ImageError(f"decompression bomb: {m[1] if m else '?'} pixels > limit {limit}") from None
    except Exception as e:  # every decoder failure of one file is a skip, never a crash
        msg = str(e).strip() or type(e).__name__
        raise ImageError(f"truncated or corrupt {fmt}: {msg[:200]}") from None
    arr.flags.writeable = False  # arrays are shared between byte-identical duplicates
    return arr


@contextlib.contextmanager
def _bombs_are_errors() -> Iterator[None]:
    """Turn DecompressionBombWarning into an exception inside the block, restoring the
    filters after.  The warnings filter list is process-global (not thread-safe), so this
    is entered once per public call, in the calling thread, never inside worker threads."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def load(path: Path, rel: str = "") -> np.ndarray:
    """Decode one file -> read-only (H, W, 3) uint8 RGB array, or raise ImageError(reason).
    `rel` is only carried on the error (ImageError.rel) for the caller's report."""
    with _bombs_are_errors():
        try:
            return _read_decode(path)
        except ImageError as e:
            e.rel = rel
            raise


def decode_bytes(data: bytes) -> np.ndarray:
    """A file's bytes decoded as `load` decodes the file (the Ray path reads them itself), or ImageError."""
    with _bombs_are_errors():
        return _decode(data)


def _read(path: Path) -> bytes:
    """A file's bytes, read-only and whole (so I/O and decode errors separate), or ImageError(reason)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageError(_os_reason(e)) from None


def _read_decode(path: Path) -> np.ndarray:
    return _decode(_read(path))


def _inspect(path: Path) -> tuple[str, str]:
    """(sha256 hex digest, repair note) of one file: what hashing a folder learns without decoding."""
    return inspect_bytes(_read(path))


def inspect_bytes(data: bytes) -> tuple[str, str]:
    """(sha256 hex digest, repair note) of a file's bytes (`_inspect`; the Ray path reads them itself)."""
    dropped = png_damaged_chunks(data)[1]
    return hashlib.sha256(data).hexdigest(), _repair_note(dropped) if dropped else ""


def _try(fn, path: Path):
    try:
        return fn(path)
    except ImageError as e:
        return e


def hash_folder(folder: Path, *, max_workers: int | None = None) -> tuple[list[ImageFile], list[Skipped]]:
    """Scan `folder` and hash every candidate file (no decoding): images sorted by rel, and the
    files skipped so far.  Hashing first lets the embedding cache skip decoding entirely.
    `max_workers`: threads (default: the cores this process may use, `cpu.cores`)."""
    paths, skipped = scan(folder)
    root = Path(os.path.abspath(folder))
    with ThreadPoolExecutor(max(1, max_workers or cores())) as pool:
        inspected = list(pool.map(_try, [_inspect] * len(paths), paths))
    images = []
    for path, found in zip(paths, inspected):
        rel = path.relative_to(root).as_posix()
        if isinstance(found, ImageError):
            skipped.append(Skipped(rel, found.reason))
        else:
            images.append(ImageFile(path, rel, found[0], repaired=found[1]))
    skipped.sort(key=lambda s: s.rel)
    return images, skipped


def decode_many(paths: list[Path], *, max_workers: int | None = None) -> list[np.ndarray | ImageError]:
    """Decode files in a thread pool (Pillow releases the GIL; default: one thread per core this
    process may use): one array or ImageError each, in order."""
    with _bombs_are_errors(), ThreadPoolExecutor(max(1, max_workers or cores())) as pool:
        return list(pool.map(_try, [_read_decode] * len(paths), paths))


def decode_folder(folder: Path, *, max_workers: int | None = None
                  ) -> tuple[list[ImageFile], list[np.ndarray], list[Skipped]]:
    """Scan, hash and decode `folder`: (images, arrays, skipped), images sorted by rel and
    arrays[i] the (H, W, 3) uint8 pixels of images[i].  Byte-identical files (same sha256)
    are decoded once and share one read-only array, but each is still returned, because
    every readable image must appear in the final groups (see `duplicates_of`).  Holds every
    decoded image in memory: for large folders the pipeline decodes in chunks instead."""
    found, skipped = hash_folder(folder, max_workers=max_workers)
    first: dict[str, int] = {}  # sha256 -> index of its first file in rel order
    for i, im in enumerate(found):
        first.setdefault(im.sha256, i)
    todo = sorted(first.values())
    decoded = dict(zip(todo, decode_many([found[i].path for i in todo], max_workers=max_workers)))
    images, arrays = [], []
    for im in found:
        result = decoded[first[im.sha256]]
        if isinstance(result, ImageError):
            skipped.append(Skipped(im.rel, result.reason))
        else:
            images.append(ImageFile(im.path, im.rel, im.sha256, (result.shape[1], result.shape[0]), im.repaired))
            arrays.append(result)
    skipped.sort(key=lambda s: s.rel)
    return images, arrays, skipped


def duplicates_of(images: list[ImageFile]) -> dict[str, list[str]]:
    """First rel (in the given order) -> the other rels with the same sha256; only dupes."""
    groups: dict[str, list[str]] = {}
    for im in images:
        groups.setdefault(im.sha256, []).append(im.rel)
    return {g[0]: g[1:] for g in groups.values() if len(g) > 1}


def border_colour(a: np.ndarray) -> np.ndarray:
    """(3,) float: the median colour of the 1-px frame of (H, W, 3) pixels, a catalogue shot's backdrop."""
    return np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)


def _trim_box(im: Image.Image, a: np.ndarray
              ) -> tuple[tuple[int, int, int, int], tuple[int, ...] | None]:
    """Bounding box (left, top, right, bottom) of what differs by > PAD_TOLERANCE from the
    border colour (`border_colour` of `a`, the (H, W, 3) pixels of `im`), and that colour; None
    instead of the colour when the edges are content (nothing trimmed)."""
    colour = tuple(int(c) for c in border_colour(a))
    diff = ImageChops.difference(im, Image.new("RGB", im.size, colour))  # C speed on big photos
    box = diff.point(lambda v: 255 if v > PAD_TOLERANCE else 0).getbbox()
    if box is None:  # uniform image: never trim to nothing
        return (0, 0) + im.size, colour
    return box, (colour if box != (0, 0) + im.size else None)


def frame(image: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """One decoded (H, W, 3) uint8 image -> (size, size, 3) float32 in 0..255 for a model.

    'squash': bilinear resize to size x size, ignoring aspect (like keras load_img(target_size)).
    'pad': trim near-uniform margins (border colour +- PAD_TOLERANCE), pad to a centred square
           with that colour (white if there was no margin), resize: keeps aspect.
    'center-crop': centre square of side min(H, W), resized: shorter side -> size.
    """
    if mode not in FRAME_MODES:
        raise ValueError(f"unknown frame mode {mode!r}; valid modes: {', '.join(FRAME_MODES)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    h, w = image.shape[:2]
    im, box = Image.fromarray(np.ascontiguousarray(image)), None
    if mode == "center-crop":
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    elif mode == "pad":
        (l, t, r, b), colour = _trim_box(im, image)
        side = max(r - l, b - t)
        square = Image.new("RGB", (side, side), colour or (255, 255, 255))
        square.paste(im.crop((l, t, r, b)), ((side - (r - l)) // 2, (side - (b - t)) // 2))
        im = square
    out = im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    return np.asarray(out, dtype=np.float32)


def frame_batch(images: Sequence[np.ndarray], size: int, framing: str) -> np.ndarray:
    """Frame every image for a model's input: (n, size, size, 3) float32 0..255."""
    out = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = frame(image, size, framing)
    return out
