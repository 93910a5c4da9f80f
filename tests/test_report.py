"""The HTML report and contact sheets: unit checks on the page, a real headless-Chromium render,
and contact-sheet geometry.  Images are made with PIL in tmp_path; groups.json is written by hand."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from ensemble_group import report
from ensemble_group.report import contact_sheet, contact_sheets, sheet_size, thumbnail, write_report

WEIRD = 'x<b>&"y.png'                 # a real file name with HTML specials
BAD_BYTES = b"bad\xff.png"            # not valid UTF-8: groups.json shows it as \xff
BAD_SHOWN = "bad\\xff.png"

LABELS = {"images/red1.png": "red", "images/red2.png": "red", "images/red3.jpg": "red",
          "images/blue1.png": "blue", "images/blue2.png": "blue", "images/gone.jpg": "blue",
          "images/green1.png": "green", "images/red4.png": "red",
          f"images/{WEIRD}": "odd", f"images/{BAD_SHOWN}": "odd"}
# group 0 mixes red and blue; blue is split over 0 and 1; red over 0 and 4 (a singleton)
GROUPS = [["images/red1.png", "images/red2.png", "images/red3.jpg", "images/blue1.png"],
          ["images/blue2.png", "images/gone.jpg"],
          [f"images/{WEIRD}", f"images/{BAD_SHOWN}"],
          ["images/green1.png"], ["images/red4.png"]]
N_MULTI = 3
N_IMAGES = sum(map(len, GROUPS))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """An input folder with real images (one missing) and a hand-written groups.json; returns its path."""
    inp = tmp_path / "input"
    (inp / "images").mkdir(parents=True)
    colours = {"red1.png": (220, 30, 30), "red2.png": (200, 40, 40), "red4.png": (180, 20, 60),
               "blue1.png": (30, 30, 220), "blue2.png": (40, 60, 200), "green1.png": (30, 200, 60),
               WEIRD: (200, 200, 30)}
    for i, (name, c) in enumerate(colours.items()):
        im = Image.new("RGB", (120 + 10 * i, 90), c)
        im.paste((255, 255, 255), (10, 10, 50, 50))
        im.save(inp / "images" / name)
    Image.new("RGB", (80, 160), (120, 60, 10)).save(inp / "images" / "red3.jpg", quality=90)
    Image.new("RGBA", (64, 64), (10, 150, 150, 128)).save(os.fsencode(inp / "images") + b"/" + BAD_BYTES)
    groups = [{"id": i, "size": len(g), "images": g,
               "distances": [None] if len(g) == 1 else [round(-4.0 + 0.25 * j, 3) for j in range(len(g))]}
              for i, g in enumerate(GROUPS)]
    data = {"tool": "ensemble-group", "version": "0.1.0", "input": str(inp), "n_images": N_IMAGES,
            "n_groups": len(groups), "n_skipped": 1,
            "config": {"models": ["vgg16-tv", "mobilenet-v2"], "cutoff": -3.0, "k": 10, "mode": "average",
                       "normalisation": "robust-z", "n_trees": 20},
            "models": [{"name": "vgg16-tv", "weights_id": "vgg16-abc123", "weights_source": "cache",
                        "dim": 4096, "input_size": 224},
                       {"name": "mobilenet-v2", "weights_id": "mnv2-def456", "weights_source": "cache",
                        "dim": 1280, "input_size": 224}],
            "versions": {"python": "3.11.7", "tensorflow": "2.21.0"},
            "precision": {"value": "int8", "rule": "auto: this CPU has avx512_vnni"},
            "cutoff": {"value": -3.0, "rule": "fixed"},
            "groups": groups,
            "skipped": [{"path": "broken.jpg", "reason": "truncated or corrupt JPEG: <marker> & co"}]}
    out = tmp_path / "out"
    out.mkdir()
    (out / "groups.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return out / "groups.json"


class _Classes(HTMLParser):
    """Count elements per class name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for c in (a.get("class") or "").split():
            self.counts[c] = self.counts.get(c, 0) + 1
        if tag == "body":
            self.body = a


def _classes(page: str) -> _Classes:
    p = _Classes()
    p.feed(page)
    return p


# --- unit checks on the HTML -------------------------------------------------------------------

def test_report_is_self_contained_and_complete(run: Path):
    out = write_report(run)
    assert out == run.with_name("report.html")
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"https?://", page)
    assert 'src="/' not in page and "href=\"/" not in page and "<link" not in page
    assert page.count("data:image/jpeg;base64,") == N_IMAGES
    assert page.count('loading="lazy"') == N_IMAGES
    for gid in range(len(GROUPS)):
        assert f'id="g{gid}"' in page
    assert _classes(page).counts["group"] == N_MULTI
    for text in ("vgg16-abc123", "mnv2-def456", "robust-z", "-3.0", "average", "2.21.0", "3.11.7"):
        assert text in page
    # skipped section with its (escaped) reason
    skipped = page.split('id="skipped"', 1)[1]
    assert "broken.jpg" in skipped and "truncated or corrupt JPEG: &lt;marker&gt; &amp; co" in skipped
    # the missing file is a placeholder with a note, not a crash
    assert "file not found" in page and _classes(page).counts["missing"] == 1
    # no leftovers from the atomic write; permissions follow the umask, not mkstemp's 0600
    assert sorted(p.name for p in run.parent.iterdir()) == ["groups.json", "report.html"]
    assert out.stat().st_mode & 0o044


def test_the_groups_come_first_and_the_settings_last_folded(run: Path):
    page = write_report(run).read_text(encoding="utf-8")
    assert page.index('id="groups"') < page.index('id="skipped"') < page.index('<details id="settings">')
    settings = page.split('<details id="settings">', 1)[1]
    assert "precision chosen" in settings and "int8 (auto: this CPU has avx512_vnni)" in settings
    assert "cutoff chosen" in settings and "-3.00 (fixed)" in settings
    assert "robust-z" in settings and "2.21.0" in settings  # config and versions, folded away


def test_report_escapes_file_names(run: Path):
    page = write_report(run).read_text(encoding="utf-8")
    assert '<b>&"' not in page and "<b>" not in page
    assert "x&lt;b&gt;&amp;&quot;y.png" in page
    assert BAD_SHOWN in page                             # the \xff name is shown as text ...
    fig = re.search(r'<figure class="([^"]*)" title="' + re.escape(f"images/{BAD_SHOWN}"), page)
    assert fig and "missing" not in fig[1]               # ... and its file was still found on disk


def test_check_first_lists_the_groups_whose_loosest_photo_is_farthest(run: Path):
    """Not the smallest margin: the group whose loosest photo holds on least comes first, that photo ringed."""
    data = json.loads(run.read_text(encoding="utf-8"))
    for g, confidence, distances in zip(data["groups"], (2.0, 0.1, 0.5), ([-4, -4, -3.5, -3.9], [-4, -3.8], [-6, -1])):
        g["confidence"], g["distances"] = confidence, distances
    run.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert [g["id"] for g in report.check_first(data["groups"])] == [2, 0, 1]   # by margin it was 1, 2, 0
    assert [g["id"] for g in report.check_first(data["groups"], n=1)] == [2]
    assert report.loosest(data["groups"][0]) == 2 and report.loosest(data["groups"][3]) is None
    page = write_report(run).read_text(encoding="utf-8")
    check = page[page.index('id="check"'):page.index('id="groups"')]
    assert [int(i) for i in re.findall(r'id="g(\d+)"', check)] == [2, 0, 1]
    ringed = re.findall(r'<figure class="([^"]*loosest[^"]*)" title="([^"]*)"', page)
    assert [t.split(" — ")[0] for _, t in ringed] == [f"images/{BAD_SHOWN}", "images/red3.jpg", "images/gone.jpg"]


def test_labels_highlight_mixed_and_split(run: Path):
    page = write_report(run, labels=LABELS).read_text(encoding="utf-8")
    c = _classes(page).counts
    assert c["mixed"] == 1 and 'class="group mixed" id="g0"' in page
    assert "mixes 2 products" in page
    assert "product blue split over groups 0, 1" in page
    assert "product red split over groups 0, 4" in page
    assert "product green split" not in page and "product odd split" not in page
    assert "1 mixed group" in page and "2 split products" in page
    assert c["odd"] == 1                                  # the blue image inside the red group
    assert 'class="single split" id="g4"' in page and 'class="single" id="g3"' in page
    assert "products: red ×3, blue ×1" in page


def test_no_highlights_without_labels(run: Path):
    page = write_report(run).read_text(encoding="utf-8")
    c = _classes(page).counts
    assert "mixed" not in c and "split" not in c and "odd" not in c
    assert "mixes" not in page and "split over" not in page and 'id="labels"' not in page


def test_thumbs_folder_when_not_embedded(run: Path, tmp_path: Path):
    out = write_report(run, tmp_path / "r" / "page.html", embed=False, thumb_size=48)
    page = out.read_text(encoding="utf-8")
    assert "data:image" not in page
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) == N_IMAGES and all(s.startswith("thumbs/") for s in srcs)
    for s in srcs:
        with Image.open(out.parent / s) as im:
            assert im.format == "JPEG" and max(im.size) <= 48


def test_thumbnail_exif_transposed_and_placeholder(tmp_path: Path):
    im = Image.new("RGB", (200, 100), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6                                     # rotate 90°: shown as portrait
    im.save(tmp_path / "rot.jpg", exif=exif)
    t, note = thumbnail(tmp_path / "rot.jpg", 50)
    assert note is None and t.mode == "RGB" and t.size == (25, 50)
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    t, note = thumbnail(tmp_path / "junk.jpg", 50)
    assert t.size == (50, 50) and note.startswith("unreadable")


# --- a real headless browser ---------------------------------------------------------------------

def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set: .ci/run must `apt-get install -y chromium`")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return exe


def _browse(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000",
           *args, page.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.parametrize("embed", [True, False])
def test_report_renders_in_headless_chromium(run: Path, tmp_path: Path, embed: bool):
    page = write_report(run, labels=LABELS, embed=embed)
    dom = _browse(page, tmp_path, "--dump-dom").stdout
    c = _classes(dom)
    assert c.counts.get("group") == N_MULTI
    assert c.counts.get("mixed") == 1
    # the page's own load script counted the decoded thumbnails into <body data-images-*>
    assert c.body.get("data-images-total") == str(N_IMAGES), c.body
    assert c.body.get("data-images-loaded") == str(N_IMAGES), c.body
    shot = tmp_path / "shot.png"
    _browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        colours = im.convert("RGB").getcolors(1 << 24)
    assert len(colours) > 50


# --- contact sheets ----------------------------------------------------------------------------

def _expected(n: int, thumb: int, cols: int, lines: int = 2) -> tuple[int, int]:
    cols = min(cols, n)
    rows = -(-n // cols)
    cell_w = thumb + 2 * report.PAD
    cell_h = thumb + 2 * report.PAD + lines * report.CAPTION_H
    return cols * cell_w, report.HEADER_H + rows * cell_h


def test_contact_sheet(run: Path, tmp_path: Path):
    out = contact_sheet(run, 0, tmp_path / "g0.png", thumb_size=64, columns=3)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == _expected(4, 64, 3) == sheet_size(4, 64, 3)
        assert len(im.convert("RGB").getcolors(1 << 24)) > 20
        # the first thumbnail (red1) is where the grid puts it
        x = y = report.PAD
        assert im.convert("RGB").getpixel((x + 60, report.HEADER_H + y + 45))[0] > 150
    out = contact_sheet(run, 1, tmp_path / "g1.png", thumb_size=50, columns=6, labels=LABELS)
    with Image.open(out) as im:                          # missing image: placeholder, extra label line
        assert im.size == _expected(2, 50, 6, lines=3)
    with pytest.raises(KeyError):
        contact_sheet(run, 99, tmp_path / "nope.png")


def test_contact_sheets_for_all_groups(run: Path, tmp_path: Path):
    paths = contact_sheets(run, tmp_path / "sheets")
    assert [p.name for p in paths] == ["group-0000.png", "group-0001.png", "group-0002.png"]
    assert len(contact_sheets(run, tmp_path / "all", min_size=1)) == len(GROUPS)
    for p in paths:
        with Image.open(p) as im:
            assert len(im.convert("RGB").getcolors(1 << 24)) > 10
