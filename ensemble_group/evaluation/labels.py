"""Read ground-truth labels and line them up with a groups JSON.

The groups JSON lists paths relative to the input folder, the CSV relative to its own folder;
both are resolved to absolute normalised paths so the two can live in different places.
"""

from __future__ import annotations

import csv
import os
import posixpath
from pathlib import Path

import numpy as np

_SHOW = 10  # names listed per mismatch side; the counts are always complete


def _norm(rel: str) -> str:
    """POSIX, normalised, no leading './' so 'a\\b.jpg', './a/b.jpg' and 'a//b.jpg' agree."""
    return posixpath.normpath(rel.strip().replace("\\", "/"))


def _abs(root: Path | str, rel: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.join(os.fspath(root), _norm(rel))))


def absolute_path(root: Path | str, rel: str) -> str:
    """The normalised absolute path that both groups.json and a labels CSV are matched on."""
    return _abs(root, rel)


def labels_by_path(csv_path: Path) -> dict[str, str]:
    """read_labels keyed by normalised absolute path instead of CSV-relative path."""
    root = Path(csv_path).parent
    return {_abs(root, rel): product for rel, product in read_labels(csv_path).items()}


def read_labels(csv_path: Path) -> dict[str, str]:
    """Map image path (relative to the CSV's folder) -> product from an `image,product` CSV.

    Extra columns are ignored; repeated identical rows are tolerated, conflicting ones are not,
    since a silently picked label would skew every metric.
    """
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = [c for c in ("image", "product") if c not in fields]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; header is {fields}, "
                             "expected at least 'image,product'")
        reader.fieldnames = fields
        out: dict[str, str] = {}
        where: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            image, product = (row.get("image") or "").strip(), (row.get("product") or "").strip()
            if not any(isinstance(v, str) and v.strip() for v in row.values()):
                continue  # blank or all-empty line
            if not image or not product:
                raise ValueError(f"{csv_path}:{line}: empty image or product ({image!r}, {product!r})")
            key = _norm(image)
            if key in out and out[key] != product:
                raise ValueError(f"{csv_path}: {key!r} labelled {out[key]!r} on line {where[key]} "
                                 f"and {product!r} on line {line}")
            out[key], where[key] = product, where.get(key, line)
    if not out:
        raise ValueError(f"{csv_path}: no label rows")
    return out


def align(groups_json: dict, groups_root: Path | None, labels: dict[str, str],
          labels_root: Path) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """(true ids, predicted group ids, images, info) over images both grouped and labelled.

    Images are the groups JSON's relative paths, sorted; true ids index info['products'] and
    predicted ids are group positions in the JSON. info counts (and lists, truncated) images on
    only one side so a path-root mismatch is visible instead of silently shrinking the score.
    """
    root = groups_json.get("input") or groups_root
    if root is None:
        raise ValueError("groups JSON has no 'input' folder and no groups_root was given: "
                         "cannot resolve its relative image paths")
    groups = groups_json.get("groups")
    if not isinstance(groups, list):
        raise ValueError("groups JSON has no 'groups' list")
    grouped: dict[str, tuple[str, int]] = {}
    for gi, g in enumerate(groups):
        images = g.get("images") if isinstance(g, dict) else None
        if not isinstance(images, list):
            raise ValueError(f"group #{gi} has no 'images' list")
        for rel in images:
            key = _abs(root, rel)
            if key in grouped and grouped[key][1] != gi:
                raise ValueError(f"{rel!r} is in groups #{grouped[key][1]} and #{gi}; "
                                 "each image must be in exactly one group")
            grouped[key] = (_norm(rel), gi)
    labelled = {_abs(labels_root, rel): (rel, prod) for rel, prod in labels.items()}

    common = sorted(grouped.keys() & labelled.keys(), key=lambda k: grouped[k][0])
    if not common:
        eg_g = next(iter(grouped), "<no grouped images>")
        eg_l = next(iter(labelled), "<no labelled images>")
        raise ValueError(
            f"no grouped image matches a labelled one: compared {len(grouped)} groups paths "
            f"resolved against {os.fspath(root)!r} (e.g. {eg_g!r}) with {len(labelled)} label "
            f"paths resolved against {os.fspath(labels_root)!r} (e.g. {eg_l!r})")

    products = sorted({labelled[k][1] for k in common})
    pid = {p: i for i, p in enumerate(products)}
    true = np.array([pid[labelled[k][1]] for k in common], dtype=np.int64)
    pred = np.array([grouped[k][1] for k in common], dtype=np.int64)
    images = [grouped[k][0] for k in common]
    not_grouped = sorted(labelled[k][0] for k in labelled.keys() - grouped.keys())
    not_labelled = sorted(grouped[k][0] for k in grouped.keys() - labelled.keys())
    info = {
        "n_matched": len(common), "n_labelled": len(labelled), "n_grouped": len(grouped),
        "n_labelled_not_grouped": len(not_grouped), "labelled_not_grouped": not_grouped[:_SHOW],
        "n_grouped_not_labelled": len(not_labelled), "grouped_not_labelled": not_labelled[:_SHOW],
        "products": products,
    }
    return true, pred, images, info
