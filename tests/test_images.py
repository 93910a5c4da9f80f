"""Tests for ensemble_group.images: every fixture is a real file written with PIL in tmp_path."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ensemble_group.images import (
    IMAGE_EXTENSIONS, ImageError, ImageFile, Skipped, decode_folder, display_name,
    duplicates_of, frame, load, scan)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def solid(colour, size=(32, 24), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def close(pixel, colour, tol=12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)) <= tol))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny 1-bit grayscale PNG whose IHDR claims width x height (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------- formats

@pytest.mark.parametrize("ext,kw", [(".jpg", {"quality": 95}), (".jpeg", {}), (".png", {}),
                                    (".webp", {"lossless": True}), (".bmp", {}), (".tif", {}),
                                    (".JPG", {})])
def test_plain_formats_decode_to_rgb_uint8(tmp_path, ext, kw):
    path = save(solid((200, 30, 40)), tmp_path / f"x{ext}", **kw)
    arr = load(path, path.name)
    assert arr.shape == (24, 32, 3) and arr.dtype == np.uint8
    assert close(arr[12, 16], (200, 30, 40))
    assert not arr.flags.writeable


def test_extensions_are_lowercase_set():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def test_animated_gif_first_frame(tmp_path):
    frames = [solid(RED), solid(GREEN), solid(BLUE)]
    path = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(path).n_frames == 3
    assert close(load(path, "anim.gif")[5, 5], RED)


def test_animated_webp_first_frame(tmp_path):
    frames = [solid(GREEN), solid(RED)]
    path = save(frames[0], tmp_path / "anim.webp", save_all=True, append_images=frames[1:],
                lossless=True, duration=50)
    assert close(load(path, "anim.webp")[5, 5], GREEN)


def test_multipage_tiff_first_page(tmp_path):
    pages = [solid(BLUE), solid(RED, (10, 10))]
    path = save(pages[0], tmp_path / "pages.tiff", save_all=True, append_images=pages[1:])
    assert Image.open(path).n_frames == 2
    arr = load(path, "pages.tiff")
    assert arr.shape == (24, 32, 3) and close(arr[0, 0], BLUE)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_grayscale_scaled_not_clipped(tmp_path, ext):
    a = np.zeros((4, 6), np.uint16)
    a[:, :2], a[:, 2:4] = 65535, 32768
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    arr = load(save(img, tmp_path / f"g16{ext}"), "g16")
    assert arr.shape == (4, 6, 3)
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert abs(int(arr[0, 2, 0]) - 128) <= 1
    assert tuple(arr[0, 5]) == (0, 0, 0)


def test_32bit_float_tiff_scaled(tmp_path):
    a = np.array([[0.0, 0.5, 1.0]], np.float32)
    arr = load(save(Image.fromarray(a, mode="F"), tmp_path / "f.tif"), "f.tif")
    assert [int(v) for v in arr[0, :, 0]] == [0, 128, 255]


def test_one_bit_and_grayscale_become_rgb(tmp_path):
    one = solid(1, mode="1")
    gray = solid(77, mode="L")
    assert tuple(load(save(one, tmp_path / "one.png"), "")[0, 0]) == WHITE
    assert tuple(load(save(gray, tmp_path / "gray.png"), "")[0, 0]) == (77, 77, 77)


def test_exif_orientation_6_is_applied(tmp_path):
    img = solid(WHITE, (40, 20))
    img.paste(RED, (0, 0, 8, 8))          # red block in the stored top-left corner
    exif = img.getexif()
    exif[0x0112] = 6                       # display rotated 90 degrees clockwise
    path = save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    arr = load(path, "rot.jpg")
    assert arr.shape == (40, 20, 3)        # (H, W): portrait after rotation
    assert close(arr[3, 16], RED, 30)      # top-left lands at top-right
    assert close(arr[36, 3], WHITE, 30)


def test_cmyk_jpeg(tmp_path):
    path = save(solid((0, 255, 255, 0), mode="CMYK"), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    assert close(load(path, "")[10, 10], RED, 20)


def test_palette_png_with_transparency_on_white(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (5, 0, 10, 10))
    path = save(img, tmp_path / "pal.png", transparency=0)
    arr = load(path, "")
    assert tuple(arr[0, 0]) == WHITE and tuple(arr[0, 9]) == RED


def test_rgba_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 5, 10))
    img.paste((255, 0, 0, 128), (5, 0, 10, 5))
    arr = load(save(img, tmp_path / "rgba.png"), "")
    assert tuple(arr[9, 9]) == WHITE and tuple(arr[0, 0]) == BLUE
    assert close(arr[0, 9], (255, 127, 127), 2)   # half-transparent red over white


def test_la_png_on_white(tmp_path):
    img = Image.new("LA", (4, 4), (0, 0))
    assert tuple(load(save(img, tmp_path / "la.png"), "")[0, 0]) == WHITE


# ---------------------------------------------------------------- bad files

def reason(path: Path) -> str:
    with pytest.raises(ImageError) as info:
        load(path, path.name)
    assert info.value.rel == path.name and isinstance(info.value, ValueError)
    return str(info.value)


def test_zero_byte(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert reason(tmp_path / "empty.jpg") == "empty file (0 bytes)"


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    data = io.BytesIO()
    img.save(data, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    assert reason(path).startswith("truncated or corrupt JPEG: ")


def png_with_chunk(path: Path, kind: bytes, data: bytes, *, bad_crc: bool, size=(40, 30)) -> Path:
    """A real red PNG with one extra chunk inserted after IHDR, its CRC right or wrong."""
    buf = io.BytesIO()
    solid(RED, size).save(buf, "PNG")
    png = buf.getvalue()
    crc = zlib.crc32(kind + data) ^ (0xDEADBEEF if bad_crc else 0)
    extra = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    path.write_bytes(png[:33] + extra + png[33:])  # 8 signature + 25 IHDR
    return path


def test_png_with_a_damaged_ancillary_chunk_is_read_and_reported(tmp_path):
    # real shop files carry an iCCP profile with a bad CRC: browsers ignore the chunk, so do we
    path = png_with_chunk(tmp_path / "a.png", b"iCCP", b"profile\0\0" + zlib.compress(b"x" * 50), bad_crc=True)
    with pytest.raises(Exception):
        with Image.open(path) as im:  # what Pillow alone does
            im.load()
    array = load(path)
    assert array.shape == (30, 40, 3) and close(array[0, 0], RED, 0)
    images, _, skipped = decode_folder(tmp_path)
    assert not skipped and "iCCP" in images[0].repaired and "bad CRC" in images[0].repaired


def test_png_repair_touches_nothing_sound(tmp_path):
    good = png_with_chunk(tmp_path / "good.png", b"tEXt", b"k\0v", bad_crc=False)
    images, _, skipped = decode_folder(tmp_path)
    assert not skipped and images[0].repaired == ""
    assert close(load(good)[5, 5], RED, 0)


def test_png_damaged_pixels_stay_an_error(tmp_path):
    # a bad CRC in a critical chunk (IDAT) or truncated pixel data is not repaired: skipped
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    at = png.index(b"IDAT")
    png[at + 20] ^= 0xFF  # pixel bytes changed, CRC now wrong
    (tmp_path / "crc.png").write_bytes(bytes(png))
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    images, _, skipped = decode_folder(tmp_path)
    assert not images and [s.rel for s in skipped] == ["crc.png", "cut.png"]


def test_random_bytes_and_text_are_not_images(tmp_path):
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(1).bytes(5000))
    (tmp_path / "notes.png").write_text("hello, I am not a picture\n")
    assert reason(tmp_path / "noise.jpg") == "not an image (unrecognised format)"
    assert reason(tmp_path / "notes.png") == "not an image (unrecognised format)"


def test_directory_and_missing_and_unreadable(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    assert reason(tmp_path / "dir.jpg") == "is a directory"
    assert reason(tmp_path / "gone.jpg").startswith("file not found")
    locked = save(solid(RED), tmp_path / "locked.png")
    locked.chmod(0)
    try:
        if os.geteuid() == 0:
            pytest.skip("root can read chmod 000 files")
        assert reason(locked) == "permission denied"
    finally:
        locked.chmod(0o644)


@pytest.mark.parametrize("w,h", [(20000, 20000), (10000, 9000)])  # error range, warning range
def test_decompression_bomb_is_skipped_quickly(tmp_path, w, h):
    path = png_header_only(tmp_path / "bomb.png", w, h)
    filters = list(warnings.filters)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = reason(path)
    assert time.perf_counter() - start < 1.0
    assert msg == f"decompression bomb: {w * h} pixels > limit {Image.MAX_IMAGE_PIXELS}"
    assert not [c for c in caught if issubclass(c.category, Image.DecompressionBombWarning)]
    assert warnings.filters == filters     # global state restored
    images, _, skipped = decode_folder(tmp_path)
    assert images == [] and skipped == [Skipped("bomb.png", msg)]
    assert warnings.filters == filters


def test_bad_files_are_skipped_not_raised(tmp_path):
    save(solid(RED), tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("nope")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    images, arrays, skipped = decode_folder(tmp_path)
    assert [i.rel for i in images] == ["good.png"] and len(arrays) == 1
    assert skipped == [Skipped("dangling.jpg", "broken symlink"),
                       Skipped("empty.jpg", "empty file (0 bytes)"),
                       Skipped("text.png", "not an image (unrecognised format)")]


# ---------------------------------------------------------------- scanning

def test_empty_folder(tmp_path):
    assert decode_folder(tmp_path) == ([], [], [])
    assert scan(tmp_path) == ([], [])


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan(tmp_path / "nope")
    with pytest.raises(NotADirectoryError):
        scan(save(solid(RED), tmp_path / "a.png"))


def test_single_image(tmp_path):
    path = save(solid(GREEN, (7, 5)), tmp_path / "one.png")
    images, arrays, skipped = decode_folder(tmp_path)
    assert skipped == [] and len(images) == 1
    im = images[0]
    assert isinstance(im, ImageFile)
    assert im.path == path.absolute() and im.path.is_absolute() and im.rel == "one.png"
    assert im.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert im.size == (7, 5) and arrays[0].shape == (5, 7, 3)


def test_sorted_recursive_hidden_and_other_files(tmp_path):
    for rel in ["b.png", "a/z.jpg", "a/b/c.gif", "A.PNG", ".hidden.png", ".git/x.png", "a/.h/y.png"]:
        save(solid(RED), tmp_path / rel)
    (tmp_path / "labels.csv").write_text("x")
    (tmp_path / "README").write_text("x")
    paths, skipped = scan(tmp_path)
    rels = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert rels == ["A.PNG", "a/b/c.gif", "a/z.jpg", "b.png"] and skipped == []
    assert [p.name for p in scan(tmp_path, recursive=False)[0]] == ["A.PNG", "b.png"]
    _, other = scan(tmp_path, include_other=True)
    assert other == [Skipped("README", "not an image file (extension none)"),
                     Skipped("labels.csv", "not an image file (extension .csv)")]
    assert [i.rel for i in decode_folder(tmp_path)[0]] == rels


def test_symlink_loop_terminates(tmp_path):
    save(solid(RED), tmp_path / "sub" / "a.png")
    (tmp_path / "sub" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "self").symlink_to(".", target_is_directory=True)
    paths, skipped = scan(tmp_path)
    assert [p.name for p in paths] == ["a.png"]
    assert skipped == [Skipped("self", "symlink loop"), Skipped("sub/up", "symlink loop")]


def test_symlinked_image_followed_or_reported(tmp_path):
    src = save(solid(RED), tmp_path / "outside" / "real.png")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link.png").symlink_to(src)
    assert [p.name for p in scan(tmp_path / "in")[0]] == ["link.png"]
    assert scan(tmp_path / "in", follow_symlinks=False) == (
        [], [Skipped("link.png", "symlink (not followed)")])


def test_invalid_utf8_file_name(tmp_path):
    raw = b"caf\xe9 \xff.png"
    data = io.BytesIO()
    solid(BLUE).save(data, "PNG")
    fd = os.open(os.fsencode(str(tmp_path)) + b"/" + raw, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, data.getvalue())
    os.close(fd)
    images, arrays, skipped = decode_folder(tmp_path)
    assert skipped == [] and len(images) == 1
    rel = images[0].rel
    assert os.fsencode(rel) == raw and os.path.exists(os.fsencode(images[0].path))
    assert close(arrays[0][0, 0], BLUE)
    shown = display_name(rel)
    assert shown == "caf\\xe9 \\xff.png"
    json.dumps({"file": shown}, ensure_ascii=False).encode("utf-8")  # must not raise
    assert display_name("plain/ok.png") == "plain/ok.png"
    assert display_name("new\nline.png") == "new\\nline.png"


def test_byte_identical_duplicates_share_one_decode(tmp_path):
    path = save(solid(RED), tmp_path / "a.png")
    (tmp_path / "c.png").write_bytes(path.read_bytes())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(path.read_bytes())
    save(solid(GREEN), tmp_path / "b.png")
    images, arrays, skipped = decode_folder(tmp_path)
    assert [i.rel for i in images] == ["a.png", "b.png", "c.png", "sub/d.png"] and skipped == []
    assert images[0].sha256 == images[2].sha256 == images[3].sha256 != images[1].sha256
    assert arrays[0] is arrays[2] is arrays[3] and arrays[0] is not arrays[1]
    assert duplicates_of(images) == {"a.png": ["c.png", "sub/d.png"]}


def test_deterministic_across_worker_counts(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(12):
        save(Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)), tmp_path / f"{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"xx")
    one, four = decode_folder(tmp_path, max_workers=1), decode_folder(tmp_path, max_workers=4)
    assert one[0] == four[0] and one[2] == four[2]
    assert all(np.array_equal(a, b) for a, b in zip(one[1], four[1]))


def test_input_folder_unchanged(tmp_path):
    save(solid(RED), tmp_path / "a.jpg")
    save(solid(GREEN), tmp_path / "s" / "b.png")
    (tmp_path / "bad.png").write_text("nope")
    (tmp_path / "empty.gif").write_bytes(b"")

    def snapshot():
        out = {}
        for dirpath, dirs, files in os.walk(tmp_path):
            for name in dirs + files:
                p = Path(dirpath) / name
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns, st.st_mode,
                               p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest())
        return out

    before = snapshot()
    decode_folder(tmp_path)
    assert snapshot() == before


# ---------------------------------------------------------------- frame

@pytest.mark.parametrize("mode", ["squash", "pad", "center-crop"])
@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (1, 1), (400, 300)])
def test_frame_shape_and_dtype(mode, shape):
    img = np.random.default_rng(3).integers(0, 256, shape + (3,), dtype=np.uint8)
    out = frame(img, 224, mode)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255


def test_frame_squash_matches_plain_resize():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 20:] = 255
    out = frame(img, 10)
    assert out[5, 1].tolist() == [0, 0, 0] and out[5, 8].tolist() == [255, 255, 255]


def test_frame_pad_keeps_aspect_and_centres_content():
    canvas = np.full((300, 100, 3), 255, np.uint8)   # tall white canvas
    canvas[20:60, 10:50] = RED                       # 40x40 red square
    canvas[240:280, 50:90] = BLUE                    # content bbox: 80 wide, 260 tall
    out = frame(canvas, 130, "pad")
    red = np.argwhere((out[..., 0] > 200) & (out[..., 1] < 60) & (out[..., 2] < 60))
    (top, left), (bottom, right) = red.min(axis=0), red.max(axis=0)
    assert abs((bottom - top) - (right - left)) <= 2  # still square
    assert 16 <= bottom - top + 1 <= 24               # 40 px of a 260-px side at 130 -> 20
    blue = np.argwhere((out[..., 2] > 200) & (out[..., 0] < 60))
    assert right < blue[:, 1].min() and red[:, 0].min() <= 1 and blue[:, 0].max() >= 128
    # horizontally centred: equal white margins left and right
    content = np.argwhere((out < 200).any(axis=2))
    assert abs(content[:, 1].min() - (129 - content[:, 1].max())) <= 2
    assert (out[:, :10] > 250).all()                  # padded with white


def test_frame_pad_uses_border_colour_and_never_trims_to_nothing():
    grey = np.full((50, 80, 3), 90, np.uint8)
    assert np.allclose(frame(grey, 16, "pad"), 90)   # uniform: nothing to trim
    framed = np.full((60, 60, 3), (10, 20, 30), np.uint8)
    framed[20:40, 10:50] = GREEN
    out = frame(framed, 32, "pad")
    assert np.allclose(out[0, 0], (10, 20, 30)) and np.allclose(out[16, 16], GREEN)


def test_frame_center_crop_takes_middle():
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 20:40] = 255
    out = frame(img, 8, "center-crop")
    assert np.allclose(out[:, 1:-1], 255) and (out > 200).all()  # edge columns blend a little


def test_frame_invalid_mode_and_input():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="squash, pad, center-crop"):
        frame(img, 8, "stretch")
    with pytest.raises(ValueError):
        frame(img.astype(np.float32), 8)
    with pytest.raises(ValueError):
        frame(img[..., 0], 8)
