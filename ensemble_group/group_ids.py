"""Group ids that stay put from run to run, so a downstream system can follow a product.

A run numbers its groups 0, 1, ... by size. Given the previous run's groups.json, a group that is
still there (it shares photos with a previous group, matched by the photos' content hashes, so a
renamed or moved file still counts) keeps that group's id; the largest overlaps are matched first,
each previous id at most once. Groups with no match get new ids after the largest previous one, so an
id that disappeared (its photos removed, or merged into another group) is never given to another
product.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np


class PreviousGroupsError(ValueError):
    """The previous groups.json cannot be read or holds no groups."""


def previous_ids(groups_json: Path | str) -> dict[str, int]:
    """Content hash -> group id, from a groups.json of this tool (one that records the hashes)."""
    path = Path(groups_json)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        groups = doc["groups"]
        return {h: int(g["id"]) for g in groups for h in g["sha256"]}
    except FileNotFoundError:
        raise PreviousGroupsError(f"{path}: no such file; give the groups.json of an earlier run") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        what = "it has no photo hashes (written before ensemble-group recorded them); rerun that folder once" \
            if isinstance(e, KeyError) else f"not a groups.json of ensemble-group ({type(e).__name__}: {e})"
        raise PreviousGroupsError(f"{path}: {what}") from None


def carry_ids(labels: np.ndarray, hashes: list[str], previous: dict[str, int]) -> tuple[np.ndarray, dict[str, int]]:
    """(labels (n,) with the previous run's ids where a group is still there, and {"kept", "new"} counts).

    `labels` are this run's group numbers (0..G-1, in the order new ids are handed out), `hashes[i]`
    is row i's content hash, `previous` maps the earlier run's hashes to its group ids."""
    overlaps = Counter((int(g), previous[h]) for g, h in zip(labels, hashes) if h in previous)
    taken_new: dict[int, int] = {}
    taken_old: set[int] = set()
    for (g, old), _ in sorted(overlaps.items(), key=lambda item: (-item[1], item[0])):
        if g not in taken_new and old not in taken_old:
            taken_new[g] = old
            taken_old.add(old)
    next_id = max(previous.values(), default=-1) + 1
    mapping = {}
    for g in np.unique(labels):
        if int(g) in taken_new:
            mapping[int(g)] = taken_new[int(g)]
        else:
            mapping[int(g)], next_id = next_id, next_id + 1
    return np.array([mapping[int(g)] for g in labels], dtype=np.int64), \
        {"kept": len(taken_new), "new": len(mapping) - len(taken_new)}
