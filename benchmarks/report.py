"""How large the review page is and how fast it opens, for 20, 810 and 5,502 photos.

    python benchmarks/report.py [--sizes sample 810 all] [--rounds 3] [--embed-too]
    python benchmarks/report.py --screenshot docs/review.png --groups out/groups.json   # the README's picture

For each folder a groups.json is made from its labels (the true products, so the page has the real
number and sizes of groups; every photo's content hash as `group` records it), the report is written
(thumbnails embedded up to report.EMBED_UP_TO photos, else as files in thumbs/; `--embed-too` also
times the other way), and a real headless Chromium (DevTools over a pipe: chromium.py) opens it
`--rounds` times with a fresh profile: first contentful paint, the load event, the time to jump to
the end of the page and paint it, and the time one review decision takes to show. Written to
results/report-page-<tag>.json with the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from hashlib import sha256
from pathlib import Path

from chromium import Chromium
from common import GROCERY, ROOT, cpu, write_result

FOLDERS = {"sample": (ROOT / "samples" / "flipkart", "labels.csv"),
           "810": (GROCERY, "labels-810.csv"), "all": (GROCERY, "labels.csv")}


def labelled_groups(folder: Path, labels: str, out: Path) -> Path:
    """A groups.json whose groups are the labelled products (largest first), as `group` writes it."""
    products = defaultdict(list)
    with open(folder / labels, newline="") as f:
        for row in csv.DictReader(f):
            products[row["product"]].append(row["image"])
    ordered = sorted(products.values(), key=lambda g: (-len(g), g[0]))
    groups = [{"id": i, "size": len(g), "images": sorted(g), "distances": [None] * len(g), "confidence": None,
               "nearest_group": None, "sha256": [sha256((folder / r).read_bytes()).hexdigest() for r in sorted(g)]}
              for i, g in enumerate(ordered)]
    n = sum(len(g) for g in ordered)
    doc = {"tool": "ensemble-group", "input": str(folder), "n_images": n, "n_groups": len(groups), "n_skipped": 0,
           "config": {}, "groups": groups, "skipped": []}
    out.mkdir(parents=True, exist_ok=True)
    (out / "groups.json").write_text(json.dumps(doc))
    return out / "groups.json"


def size_of(page: Path) -> dict:
    thumbs = page.parent / "thumbs"
    files = list(thumbs.iterdir()) if thumbs.is_dir() else []
    return {"html_bytes": page.stat().st_size, "thumb_files": len(files),
            "thumb_bytes": sum(f.stat().st_size for f in files)}


OPEN = """(async () => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  let t = performance.now();
  window.scrollTo(0, document.body.scrollHeight); await frame();
  const toEnd = performance.now() - t;
  window.scrollTo(0, 0); await frame();
  const box = document.querySelector('[data-gid]');
  box.click();
  t = performance.now();
  document.dispatchEvent(new KeyboardEvent('keydown', {key: 'y'})); await frame();
  const decision = performance.now() - t;
  return {first_contentful_paint_ms: fcp ? fcp.startTime : null, dom_content_loaded_ms: nav.domContentLoadedEventEnd,
          load_ms: nav.loadEventEnd, scroll_to_end_ms: toEnd, decision_ms: decision,
          photos: document.querySelectorAll('figure[data-i]').length};
})()"""


def tree_pss_mb(pid: int) -> float:
    """Proportional set size (shared pages split among their users, so a sum is honest) of a process
    and all its descendants (Chromium's browser, renderer, GPU... processes), MB."""
    children: dict[int, list[int]] = defaultdict(list)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                children[int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(proc.name))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children[p])
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            total += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return round(total / 1024, 1)


def open_times(page: Path, rounds: int) -> dict:
    """Median (and all) of each browser timing over `rounds` fresh profiles."""
    runs = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as profile, Chromium(Path(profile)) as browser:
            tab = browser.open(page)
            time.sleep(0.3)  # let the paint entries settle
            runs.append(tab.eval(OPEN))
            runs[-1]["browser_pss_mb"] = tree_pss_mb(browser.proc.pid)
    keys = [k for k in runs[0] if k != "photos"]
    return {"photos": runs[0]["photos"], **{k: round(statistics.median(r[k] for r in runs), 1) for k in keys},
            "rounds": runs}


def screenshot(groups_json: Path, png: Path) -> None:
    """The review page of a run after a few decisions (the README's picture)."""
    from ensemble_group.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        page = write_report(groups_json, Path(tmp) / "report.html")
        with Chromium(Path(tmp) / "profile", width=1280, height=1000) as browser:
            tab = browser.open(page)
            tab.click('#g1 button[data-act="y"]')
            tab.click("#g0 figure[data-i]:nth-of-type(2) img")
            tab.key("x")
            tab.click("#g2 h3")
            tab.key("s"), tab.type("5"), tab.key("Enter")
            tab.click("#g0 figure[data-i] img")
            tab.eval("window.scrollTo(0, document.getElementById('review').offsetTop - 8)")
            tab.screenshot(png)
    print(f"wrote {png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(FOLDERS), choices=list(FOLDERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embed-too", action="store_true", help="also the other thumbnail mode than the default")
    parser.add_argument("--tag", default="", help="machine tag in the results file name")
    parser.add_argument("--screenshot", type=Path, help="only write this PNG of a reviewed page (needs --groups)")
    parser.add_argument("--groups", type=Path, help="the groups.json of a run, for --screenshot")
    args = parser.parse_args()
    if args.screenshot:
        return screenshot(args.groups, args.screenshot)
    from ensemble_group.report import EMBED_UP_TO, write_report

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            folder, labels = FOLDERS[name]
            groups_json = labelled_groups(folder, labels, Path(tmp) / name)
            n = json.loads(groups_json.read_text())["n_images"]
            default = n <= EMBED_UP_TO
            for embed in ([default, not default] if args.embed_too else [default]):
                out = Path(tmp) / name / ("embedded" if embed else "files")
                t0 = time.perf_counter()
                page = write_report(groups_json, out / "report.html", embed=embed)
                row = {"folder": name, "images": n, "embedded": embed, "default": embed == default,
                       "write_s": round(time.perf_counter() - t0, 2), **size_of(page), **open_times(page, args.rounds)}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
    write_result(f"report-page{'-' + args.tag if args.tag else ''}.json",
                 {"machine": {"cores": os.cpu_count(), "cpu": cpu(), "python": sys.version.split()[0]},
                  "command": "python benchmarks/report.py " + " ".join(sys.argv[1:]), "rows": rows})


if __name__ == "__main__":
    main()
