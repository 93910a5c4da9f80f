"""See the groups: a self-contained HTML report and per-group contact sheets from groups.json.

The HTML page needs no server and no network: thumbnails are embedded as base64 JPEG data URIs
(or written to a `thumbs/` folder beside it: the default for large folders), the CSS and scripts are
inline. A reviewer corrects the groups in the page (assets/review.js: "looks right", "not this
product", "same product as"), the decisions are kept in the browser and exported as
corrections.json, which the next `group --corrections` obeys (corrections.py). With `labels` (image
path relative to the input folder -> product) the page also flags groups that mix products and
products split over several groups.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .outputs import atomic_write

PAD, CAPTION_H, HEADER_H = 8, 14, 24   # contact-sheet geometry (pixels)
CHECK_FIRST = 10  # the groups likeliest to mix products, shown first under "Check these first"
EMBED_UP_TO = 2000  # larger folders get their thumbnails as files beside the page: it opens fast
REVIEW_JS = (Path(__file__).parent / "assets" / "review.js").read_text(encoding="utf-8")
KEYS = ("j / k: next / previous group · h / l: previous / next photo · y: looks right (again: undo it) · "
        "x: not this product · m: move the photo to group # · s: same product as group # · u: undo · "
        "e: export corrections.json · ?: these keys. Click a photo or a group to select it.")
GREY = (200, 200, 200)

CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 margin:0;padding:16px 24px;color:#222;background:#f6f6f4}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid #ddd}
summary h2{display:inline-block;border:0;cursor:pointer}
h3{font-size:14px;margin:0 0 6px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
a{color:#0a58ca;text-decoration:none}code{font-size:12px;color:#555;word-break:break-all}
.meta,.n{color:#666}.toc{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 12px}
.toc .links a{display:inline-block;margin:2px 6px 2px 0;font-size:12px}
table{border-collapse:collapse;background:#fff;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
.settings{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.group{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 10px;margin:0 0 12px}
.group.mixed{border:2px solid #d33}
.row,.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;font-size:11px;background:#fff;position:relative}
figure img{display:block;background:#eee;object-fit:contain}
.odd img{outline:3px solid #d33;outline-offset:-3px}
.loosest{box-shadow:0 0 0 3px #e8a200}
figcaption{display:flex;justify-content:space-between;gap:4px}
figcaption .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.d{color:#666;font-variant-numeric:tabular-nums}
.single{border:1px solid #ddd;border-radius:4px;padding:3px}.single.split{border:2px solid #e8890c}
.missing figcaption,.note{color:#b00}
.badge{font-size:11px;font-weight:600;border-radius:10px;padding:1px 8px;color:#fff}
.badge.mix{background:#d33}.badge.split{background:#e8890c}
.products{font-size:12px;color:#444;margin:0 0 6px}
.group,.single{content-visibility:auto;contain-intrinsic-size:auto 220px}
.review{position:sticky;top:0;z-index:5;background:#fff;border:1px solid #ccc;border-radius:6px;padding:6px 10px;
 margin:8px 0;display:flex;gap:6px;align-items:center;flex-wrap:wrap;box-shadow:0 1px 4px rgba(0,0,0,.08)}
.review details{flex-basis:100%;font-size:12px;color:#555}.review .status{color:#0a58ca;font-size:12px}
.review .askbox{display:none}.review.asking .askbox{display:inline}.review .ask{margin-right:4px}
button{font:12px system-ui,sans-serif;border:1px solid #bbb;background:#f4f4f4;border-radius:4px;padding:2px 7px;cursor:pointer}
button.primary{background:#0a58ca;color:#fff;border-color:#0a58ca}
figure .x{position:absolute;top:2px;right:2px;display:none;padding:0 5px;background:rgba(255,255,255,.9)}
figure:hover .x,figure.sel .x{display:block}
.group.focus,.single.focus{outline:2px solid #0a58ca;outline-offset:2px}figure.sel{outline:3px solid #0a58ca}
.group.ok{border:2px solid #2a8a2a}.group.ok h3::after{content:"looks right";color:#2a8a2a;font-size:12px}
.badge.same{background:#6a4ad0}.badge.done{background:#2a8a2a}.from{color:#6a4ad0;font-weight:600}figure.moved img{opacity:.85}
.outrow{margin-top:6px;padding-top:4px;border-top:1px dashed #d33}.outrow::before{content:attr(data-label);
 flex-basis:100%;font-size:11px;color:#b00}.slot{display:none}
"""
SCRIPT = """<script>(function(){function count(){var n=0,t=document.images.length;
for(var i=0;i<t;i++){var m=document.images[i];if(m.complete&&m.naturalWidth>0)n++}
document.body.setAttribute('data-images-loaded',n);document.body.setAttribute('data-images-total',t)}
window.addEventListener('load',count);document.addEventListener('load',count,true)})();</script>"""


def esc(text: Any) -> str:
    """HTML-escape anything, turning lone surrogates (undecodable file names) into \\udcNN text."""
    return html.escape(str(text).encode("utf-8", "backslashreplace").decode("utf-8"), quote=True)


def _norm(rel: str) -> str:
    return PurePosixPath(rel.replace("\\", "/")).as_posix() if "\\x" not in rel else rel


def _disk_path(root: Path, rel: str) -> Path:
    """The file for `rel`; names shown as \\xNN (undecodable bytes) are turned back into bytes."""
    p = root / rel
    if not p.exists() and "\\x" in rel:
        raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), rel.encode())
        p = root / os.fsdecode(raw)
    return p


def thumbnail(path: Path, size: int) -> tuple[Image.Image, str | None]:
    """An RGB thumbnail (aspect kept, EXIF-transposed) or a grey placeholder and the reason."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGB", im.size, "white")
                bg.paste(im, mask=im.getchannel("A"))
                im = bg
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return im, None
    except FileNotFoundError:
        note = "file not found"
    except Exception as e:  # anything unreadable becomes a placeholder, never a crash
        note = f"unreadable: {type(e).__name__}: {e}"[:200]
    ph = Image.new("RGB", (size, size), GREY)
    ImageDraw.Draw(ph).text((6, size // 2 - 6), note.split(":")[0], fill=(90, 90, 90))
    return ph, note


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80, optimize=True)
    return buf.getvalue()


def _short(name: str, n: int = 20) -> str:
    return name if len(name) <= n else name[: n - 11] + "…" + name[-10:]


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _chosen(key: str, d: dict[str, Any]) -> str:
    """The run's cutoff or precision and how it was chosen, for the settings table."""
    if key != "cutoff" or not isinstance(d.get("value"), (int, float)):
        return f'{d.get("value")} ({d.get("rule")})'
    from ensemble_group.autocut import describe  # it imports the fusion (Annoy): not at this module's import

    return f'{d["value"]:.2f} ({describe(d)})'


def _fmt(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _dist(d: float | None) -> str:
    return "–" if d is None else f"{d:.2f}"


def label_check(groups: list[dict], labels: dict[str, str]) -> tuple[dict[int, Counter], dict[str, list[int]]]:
    """Per group id the Counter of its products; products found in 2+ groups -> their group ids."""
    labels = {_norm(k): v for k, v in labels.items()}
    per_group, where = {}, defaultdict(list)
    for g in groups:
        c = Counter(labels[_norm(r)] for r in g["images"] if _norm(r) in labels)
        per_group[g["id"]] = c
        for p in c:
            where[p].append(g["id"])
    return per_group, {p: ids for p, ids in where.items() if len(ids) > 1}


def loosest(group: dict) -> int | None:
    """The index of the group's loosest photo: the largest of its `distances` (each photo's mean fused
    distance to the rest of its group); None for a single photo."""
    d = [(x, i) for i, x in enumerate(group.get("distances") or []) if x is not None]
    return max(d)[1] if len(group["images"]) > 1 and d else None


def check_first(groups, n: int = CHECK_FIRST) -> list[dict]:
    """The n groups of 2+ photos to check first: those whose loosest photo is farthest from the rest of
    its group. A photo that holds on to its group least is the sign of a group that mixes products;
    measured on labelled folders, the ten groups this lists mix products far more often than the ten
    with the smallest `confidence` margin (benchmarks/README.md, "Check these first")."""
    ranked = [(-g["distances"][i], g["id"], g) for g in groups if (i := loosest(g)) is not None]
    return [g for *_, g in sorted(ranked, key=lambda t: t[:2])[:n]]


def write_report(groups_json: Path, out_html: Path | None = None, *, labels: dict[str, str] | None = None,
                 thumb_size: int = 160, embed: bool | None = None, log: Callable[[str], None] = lambda s: None) -> Path:
    """Write one self-contained HTML page for a groups.json; returns its path. `embed`: thumbnails
    inside the page (None: up to EMBED_UP_TO photos, else as files in thumbs/ beside it)."""
    groups_json = Path(groups_json)
    data = json.loads(groups_json.read_text(encoding="utf-8"))
    if embed is None:
        embed = data.get("n_images", 0) <= EMBED_UP_TO
    reviewable = all("sha256" in g for g in data.get("groups", []))
    out_html = Path(out_html) if out_html else groups_json.with_name("report.html")
    out_html.parent.mkdir(parents=True, exist_ok=True)
    root = Path(data.get("input", groups_json.parent))
    groups = sorted(data.get("groups", []), key=lambda g: (-len(g["images"]), g["id"]))
    multi = [g for g in groups if len(g["images"]) > 1]
    singles = [g for g in groups if len(g["images"]) == 1]
    # the groups likeliest to mix products first, except those a reviewer confirmed as they are (a
    # confirmed group of an applied round)
    confirmed = {frozenset(c) for r in (data.get("corrections") or {}).get("rounds", []) for c in r.get("confirmed", [])}
    reviewed = {g["id"] for g in multi if frozenset(g.get("sha256", ())) in confirmed}
    check = check_first(g for g in multi if g["id"] not in reviewed)
    checked = {g["id"] for g in check}
    rest = [g for g in multi if g["id"] not in checked]
    labels = {_norm(k): v for k, v in labels.items()} if labels else None
    per_group, split = label_check(groups, labels) if labels else ({}, {})
    mixed = [g["id"] for g in groups if len(per_group.get(g["id"], ())) > 1]
    counter, photo_index = iter(range(10**9)), iter(range(10**9))
    thumbs_dir = out_html.parent / "thumbs"

    def fig(rel: str, d: float | None, cls: str = "", tag: str = "", w: int = thumb_size, sha: str = "") -> str:
        """One thumbnail with its short name and distance (full path, note, product in the tooltip)
        and, for review, its index in the page, content hash and a "not this product" button."""
        im, note = thumbnail(_disk_path(root, rel), thumb_size)
        blob = _jpeg(im)
        if embed:
            src = "data:image/jpeg;base64," + base64.b64encode(blob).decode("ascii")
        else:
            thumbs_dir.mkdir(exist_ok=True)
            name = f"{next(counter):05d}.jpg"
            (thumbs_dir / name).write_bytes(blob)
            src = f"thumbs/{name}"
        name = rel.rsplit("/", 1)[-1]
        title = rel + (f" — {note}" if note else "") + (f" — {labels[_norm(rel)]}" if labels and _norm(rel) in labels else "")
        cap = f'<span class="name">{esc(_short(name))}</span><span class="d">{tag or _dist(d)}</span>'
        if note:
            cap += f'</figcaption><figcaption class="note">{esc(note[:40])}'
        cls = " ".join(c for c in (cls, "missing" if note else "") if c)
        review = (f' data-i="{next(photo_index)}" data-sha="{sha}" data-rel="{esc(rel)}"' if reviewable else "")
        out_button = '<button class="x" data-act="x" title="not this product (x)">✕</button>' if reviewable else ""
        return (f'<figure class="{cls}" title="{esc(title)}" style="width:{w}px"{review}>{out_button}'
                f'<img loading="lazy" src="{src}" width="{w}" height="{w}" alt="{esc(name)}">'
                f"<figcaption>{cap}</figcaption></figure>")

    def badges(gid: int) -> str:
        c, out = per_group.get(gid, Counter()), ""
        if len(c) > 1:
            out += f'<span class="badge mix">mixes {len(c)} products</span>'
        for p in c:
            if p in split:
                others = ", ".join(str(i) for i in split[p])
                out += f'<span class="badge split">product {esc(p)} split over groups {others}</span>'
        return out

    cfg, parts = data.get("config", {}), []
    counts = (f'{data.get("n_images", "?")} images · {len(multi)} groups of 2+ · {len(singles)} singletons · '
              f'{data.get("n_skipped", len(data.get("skipped", [])))} skipped')
    parts.append(f'<h1>ensemble-group report</h1><p class="meta"><code>{esc(root)}</code><br>{esc(counts)}</p>')
    links = " ".join(f'<a href="#g{g["id"]}">#{g["id"]} ({len(g["images"])})</a>' for g in multi)
    nav = ((f'<a href="#check">Check these first ({len(check)})</a> · ' if check else "")
           + f'<a href="#groups">Groups ({len(multi)})</a> · '
           f'<a href="#singletons">Singletons ({len(singles)})</a> · '
           f'<a href="#skipped">Skipped ({len(data.get("skipped", []))})</a>')
    if labels:
        nav += (f' · <a href="#labels">Label check: {_n(len(mixed), "mixed group")}, '
                f'{_n(len(split), "split product")}</a>')
    nav += ' · <a href="#settings">Settings</a>'
    parts.append(f'<nav class="toc">{nav}<div class="links">{links}</div></nav>')
    parts.append(review_bar(data, groups_json) if reviewable else
                 '<p class="note">This groups.json has no photo hashes (an older run): rerun `group` to review here.</p>')
    if labels:
        items = "".join(f'<li><span class="badge split">product {esc(p)} split over groups '
                        f'{", ".join(map(str, ids))}</span></li>' for p, ids in sorted(split.items()))
        mix = ": " + ", ".join(f'<a href="#g{i}">#{i}</a>' for i in mixed) if mixed else ""
        parts.append(f'<h2 id="labels">Label check</h2><p class="summary">{_n(len(mixed), "mixed group")}{mix} · '
                     f'{_n(len(split), "split product")}</p><ul>{items}</ul>')
    cut = data.get("cutoff", {}).get("value", cfg.get("cutoff"))

    def group_row(g: dict) -> str:
        c = per_group.get(g["id"], Counter())
        prods = ("<div class=\"products\">products: " + ", ".join(f"{esc(p)} ×{n}" for p, n in c.most_common())
                 + "</div>") if labels else ""
        top = c.most_common(1)[0][0] if len(c) > 1 else None  # in a mixed group, outline the others
        loose = loosest(g) if g["id"] in checked else None  # outlined where the reader starts
        figs = "".join(fig(r, d, " ".join(c for c in ("odd" if top and labels.get(_norm(r), top) != top else "",
                                                       "loosest" if i == loose else "") if c), sha=h)
                       for i, (r, d, h) in enumerate(zip(g["images"], g["distances"], g.get("sha256", g["images"]))))
        sure = "" if g.get("confidence") is None else f'<span class="n">margin {g["confidence"]:.2f}</span>'
        if g["id"] in reviewed:
            sure += '<span class="badge done">confirmed in review</span>'
        log(f"group {g['id']}: {len(g['images'])} thumbnails")
        buttons = ('<button data-act="y" title="looks right (y)">✓ looks right</button>'
                   '<button data-act="s" title="same product as group # (s)">= same product as…</button>'
                   if reviewable else "")
        return (f'<div class="group{" mixed" if len(c) > 1 else ""}" id="g{g["id"]}" data-gid="{g["id"]}">'
                f'<h3>Group {g["id"]} <span class="n">{len(g["images"])} images</span>{sure}{badges(g["id"])}'
                f'{buttons}</h3>{prods}<div class="row">{figs}</div></div>')

    if check:
        how = f"cut at {cut:.2f}; " if isinstance(cut, (int, float)) else ""
        parts.append(f'<h2 id="check">Check these first ({len(check)})</h2><p class="meta">{how}the groups whose '
                     'loosest photo (ringed in amber) is farthest from the rest of its group, its mean distance to them '
                     'under each photo: the likeliest to mix products.</p>')
        parts.extend(group_row(g) for g in check)
    parts.append(f'<h2 id="groups">{"Other groups" if check else "Groups"} ({len(rest)})</h2>')
    parts.extend(group_row(g) for g in rest)
    parts.append(f'<h2 id="singletons">Singletons ({len(singles)})</h2><div class="grid">')
    for g in singles:
        c = per_group.get(g["id"], Counter())
        why = "; ".join(f"product {p} split over groups {', '.join(map(str, split[p]))}" for p in c if p in split)
        parts.append(f'<div class="single{" split" if why else ""}" id="g{g["id"]}" data-gid="{g["id"]}" '
                     f'title="{esc(why)}">' + fig(g["images"][0], None, tag=f"#{g['id']}", w=thumb_size * 3 // 4,
                                                 sha=g.get("sha256", [""])[0]) + "</div>")
    parts.append("</div>")
    rows = "".join(f'<tr><td><code>{esc(s.get("path"))}</code></td><td>{esc(s.get("reason"))}</td></tr>'
                   for s in data.get("skipped", []))
    parts.append(f'<h2 id="skipped">Skipped ({len(data.get("skipped", []))})</h2>'
                 + (f"<table><tr><th>file</th><th>reason</th></tr>{rows}</table>" if rows else "<p>none</p>"))
    # the run's settings last, folded: a reviewer opens the page for the groups
    models = "".join(f'<tr><td>{esc(m.get("name"))}</td><td><code>{esc(m.get("weights_id", ""))}</code></td>'
                     f'<td>{esc(m.get("dim", ""))}</td>'
                     f'<td>{esc(m.get("input_size", ""))}</td></tr>' for m in data.get("models", []))
    kv = lambda d: "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in d.items())  # noqa: E731
    chosen = {f"{key} chosen": _chosen(key, d) for key in ("cutoff", "precision") if isinstance(d := data.get(key), dict)}
    parts.append(f'<details id="settings"><summary><h2>Settings</h2></summary><div class="settings">'
                 f'<table><tr><th>model</th><th>weights id</th><th>dim</th><th>input</th></tr>'
                 f'{models}</table><table>{kv({**chosen, **cfg})}</table><table>{kv(data.get("versions", {}))}</table>'
                 f'</div></details>')
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>ensemble-group report — {esc(root.name)}</title><style>{CSS}</style></head>'
            f'<body data-images-loaded="0">{SCRIPT}{"".join(parts)}'
            f'{"<script>" + REVIEW_JS + "</script>" if reviewable else ""}</body></html>\n')
    atomic_write(out_html, page)
    log(f"wrote {out_html}")
    return out_html


def review_bar(data: dict[str, Any], groups_json: Path) -> str:
    """The sticky review toolbar and what the page's script needs: the run's key (decisions are kept
    per grouping), the corrections this run applied (exported again with the new round)."""
    key = hashlib.sha256(json.dumps([g["sha256"] for g in data.get("groups", [])]).encode()).hexdigest()[:16]
    applied = data.get("corrections") or {}
    payload = {"key": key, "input": data.get("input"), "from": str(groups_json.resolve()),
               "rounds": applied.get("rounds", []), "names": applied.get("names", {})}
    blob = json.dumps(payload, ensure_ascii=True).replace("</", "<\\/")
    return ('<div id="review" class="review"><b>Review</b> <span class="count">0 decisions</span>'
            '<button data-act="y">Looks right (y)</button><button data-act="x">Not this product (x)</button>'
            '<button data-act="m">Move to # (m)</button><button data-act="s">Same product as # (s)</button>'
            '<button data-act="u">Undo (u)</button><button data-act="e" class="primary">Export corrections (e)</button>'
            '<label class="askbox"><span class="ask"></span><input inputmode="numeric" size="6"></label>'
            f'<span class="status"></span><details><summary>keys</summary>{esc(KEYS)}</details></div>'
            f'<script type="application/json" id="review-data">{blob}</script>')


def sheet_size(n: int, thumb_size: int = 200, columns: int = 6, labelled: bool = False) -> tuple[int, int]:
    """(width, height) of a contact sheet of n images."""
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    cell_w, cell_h = thumb_size + 2 * PAD, thumb_size + 2 * PAD + CAPTION_H * (3 if labelled else 2)
    return cols * cell_w, HEADER_H + rows * cell_h


def contact_sheet(groups_json: Path, group_id: int, out_png: Path, *, thumb_size: int = 200, columns: int = 6,
                  labels: dict[str, str] | None = None) -> Path:
    """One PNG grid of a group's thumbnails, with file name and distance (and product) under each."""
    data = json.loads(Path(groups_json).read_text(encoding="utf-8"))
    g = next((g for g in data["groups"] if g["id"] == group_id), None)
    if g is None:
        raise KeyError(f"no group {group_id} in {groups_json}")
    root, n = Path(data.get("input", Path(groups_json).parent)), len(g["images"])
    labels = {_norm(k): v for k, v in labels.items()} if labels else None
    sheet = Image.new("RGB", sheet_size(n, thumb_size, columns, bool(labels)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    draw.text((PAD, 6), f"group {group_id} — {n} images", fill="black", font=font)
    cols = max(1, min(columns, n))
    cell_w, cell_h = thumb_size + 2 * PAD, thumb_size + 2 * PAD + CAPTION_H * (3 if labels else 2)

    def fit(text: str) -> str:
        text = text.encode("utf-8", "backslashreplace").decode()
        while len(text) > 4 and draw.textlength(text, font=font) > thumb_size:
            text = text[:-2]
        return text

    for i, (rel, d) in enumerate(zip(g["images"], g["distances"])):
        x, y = (i % cols) * cell_w + PAD, HEADER_H + (i // cols) * cell_h + PAD
        im, note = thumbnail(_disk_path(root, rel), thumb_size)
        sheet.paste(im, (x + (thumb_size - im.width) // 2, y + (thumb_size - im.height) // 2))
        lines = [rel.rsplit("/", 1)[-1], f"d = {_dist(d)}" + (f"  ({note})" if note else "")]
        if labels:
            lines.append(labels.get(_norm(rel), "(no label)"))
        for k, line in enumerate(lines):
            draw.text((x, y + thumb_size + 2 + k * CAPTION_H), fit(line), fill=(40, 40, 40), font=font)
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    atomic_write(Path(out_png), buf.getvalue())
    return Path(out_png)


def contact_sheets(groups_json: Path, out_dir: Path, *, min_size: int = 2, thumb_size: int = 200,
                   columns: int = 6, labels: dict[str, str] | None = None) -> list[Path]:
    """Contact sheets `group-NNNN.png` in out_dir for every group of at least min_size images."""
    data = json.loads(Path(groups_json).read_text(encoding="utf-8"))
    return [contact_sheet(groups_json, g["id"], Path(out_dir) / f"group-{g['id']:04d}.png",
                          thumb_size=thumb_size, columns=columns, labels=labels)
            for g in data["groups"] if len(g["images"]) >= min_size]
