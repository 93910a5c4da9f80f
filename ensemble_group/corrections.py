"""A reviewer's corrections, kept from run to run: must-link and cannot-link pairs, confirmed groups.

`report.html` exports them as corrections.json (`group --corrections FILE` reads it back); photos are
named by content hash, so a renamed or moved file keeps its corrections. The file holds review
*rounds*, oldest first, each with three lists:

    {"kind": "ensemble-group corrections", "version": 1,
     "rounds": [{"must_link": [[sha_a, sha_b], ...],      # always in one group
                 "cannot_link": [[sha_a, sha_c], ...],    # never in one group
                 "confirmed": [[sha_a, sha_b, ...], ...]}], # kept together, never merged with another
     "names": {sha: "photo/path.jpg"}}                     # optional: to name photos no longer there

(a hand-written file may give the three lists at the top level: one round). The page exports the
rounds the run applied plus the new one, so the latest file is all the next run needs.

Corrections can contradict each other (a must-link chain across a cannot-link). `resolve` takes them
newest first (later rounds; within a round cannot-links, then must-links, then confirmed groups)
and keeps each one that does not contradict those already kept: the reviewer's latest word wins,
and every constraint dropped is reported with the pairs involved. Constraints naming photos that
are not in the folder are reported, not fatal (the photo may come back).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KIND = "ensemble-group corrections"
FORMAT = 1
LISTS = ("must_link", "cannot_link", "confirmed")
_SHA = re.compile(r"[0-9a-f]{64}")


class CorrectionsError(ValueError):
    """A corrections file cannot be read; the message names the file, the key and the fix."""


@dataclass
class Corrections:
    """Review rounds, oldest first: each {"must_link": [(a, b)], "cannot_link": [(a, b)], "confirmed": [[..]]}."""

    rounds: list[dict[str, list]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # content hash -> a photo's name, where known
    files: list[str] = field(default_factory=list)

    def __add__(self, other: "Corrections") -> "Corrections":
        return Corrections(self.rounds + other.rounds, {**self.names, **other.names}, self.files + other.files)

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "version": FORMAT, "rounds": self.rounds, "names": self.names}


def read_corrections(path: Path | str) -> Corrections:
    """A corrections file, checked whole (CorrectionsError naming the key and what is wrong)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorrectionsError(f"{path}: no such file; export it from report.html (\"Export corrections\")") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorrectionsError(f"{path}: not a corrections file ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise CorrectionsError(f"{path}: expected a JSON object with \"rounds\" (or must_link / cannot_link / confirmed)")
    if doc.get("version", FORMAT) > FORMAT:
        raise CorrectionsError(f"{path}: written by a newer ensemble-group (version {doc['version']}); upgrade")
    rounds = doc["rounds"] if "rounds" in doc else [{key: doc[key] for key in LISTS if key in doc}]
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        raise CorrectionsError(f"{path}: \"rounds\" must be a list of objects")
    out = []
    for i, r in enumerate(rounds):
        where = f"rounds[{i}]." if "rounds" in doc else ""
        unknown = set(r) - set(LISTS) - {"exported", "from"}
        if unknown:
            raise CorrectionsError(f"{path}: unknown key {where}{sorted(unknown)[0]}; valid: {', '.join(LISTS)}")
        clean = {}
        for key in LISTS:
            items = r.get(key, [])
            if not isinstance(items, list):
                raise CorrectionsError(f"{path}: {where}{key} must be a list")
            for j, item in enumerate(items):
                pair = key != "confirmed"
                if not isinstance(item, list) or (len(item) != 2 if pair else not item) \
                        or not all(isinstance(h, str) and _SHA.fullmatch(h) for h in item):
                    what = "a pair of photo hashes" if pair else "a list of photo hashes"
                    raise CorrectionsError(f"{path}: {where}{key}[{j}] must be {what} (sha256, 64 lowercase hex "
                                           f"digits, as in groups.json), got {json.dumps(item)[:80]}")
            clean[key] = [list(item) for item in items]
        out.append({**{k: r[k] for k in ("exported", "from") if k in r}, **clean})
    names = doc.get("names", {})
    if not isinstance(names, dict):
        raise CorrectionsError(f"{path}: \"names\" must map photo hashes to names")
    return Corrections(out, {str(k): str(v) for k, v in names.items()}, [str(path)])


@dataclass
class Constraints:
    """The corrections that hold for one folder, as row pairs: `must` (m, 2), `cannot` (c, 2) int arrays."""

    must: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    cannot: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    def __bool__(self) -> bool:
        return bool(len(self.must) or len(self.cannot))

    def to_json(self) -> dict[str, list]:
        return {"must": self.must.tolist(), "cannot": self.cannot.tolist()}

    @classmethod
    def from_json(cls, doc: dict[str, list]) -> "Constraints":
        return cls(*(np.asarray(doc.get(k, []), np.int64).reshape(-1, 2) for k in ("must", "cannot")))

    def obeyed_by(self, labels: np.ndarray) -> bool:
        """Whether a grouping keeps every must-link together and every cannot-link apart."""
        return bool(np.all(labels[self.must[:, 0]] == labels[self.must[:, 1]])
                    and np.all(labels[self.cannot[:, 0]] != labels[self.cannot[:, 1]]))


def resolve(corrections: Corrections, hashes: list[str], names: list[str] | None = None) -> tuple[Constraints, dict[str, Any]]:
    """(the constraints on rows, a summary for groups.json) of `corrections` for a folder whose row i
    has content hash `hashes[i]` (and name `names[i]`). Newest first; one that contradicts those kept
    is dropped and reported (see the module docstring); photos not in the folder are reported."""
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        rows_of[h].append(i)
    shown = {h: names[rows[0]] for h, rows in rows_of.items()} if names else {}

    def name(h: str) -> str:
        return shown.get(h) or corrections.names.get(h) or h[:12]

    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    links: dict[int, list[int]] = defaultdict(list)  # kept must-links, to show a chain
    kept = {key: 0 for key in LISTS}
    must, cannot, contradictions = [], [], []
    unknown: set[str] = set()

    def tie(a: int, b: int) -> None:
        """Keep a must-link of rows a and b: in `must`, in the chain `links`, and their sets joined."""
        must.append((a, b))
        links[a].append(b)
        links[b].append(a)
        parent[root(b)] = root(a)

    def kept_apart(ends: set[int]) -> tuple[int, int] | None:
        """A kept cannot-link between two of the must-linked groups with roots `ends`."""
        return next(((x, y) for x, y in cannot if root(x) in ends and root(y) in ends), None)

    def chain(a: int, b: int) -> str:
        """The kept must-links that join row a to row b, as 'x – y – z'."""
        seen, queue = {a: None}, deque([a])
        while queue and b not in seen:
            x = queue.popleft()
            for y in links[x]:
                if y not in seen:
                    seen[y] = x
                    queue.append(y)
        path, x = [], b
        while x is not None and x in seen:
            path.append(hashes[x])
            x = seen[x]
        return " – ".join(name(h) for h in reversed(path))

    def link(a: str, b: str, kind: str) -> bool:
        if a not in rows_of or b not in rows_of:
            unknown.update(h for h in (a, b) if h not in rows_of)
            return False
        ra, rb = rows_of[a], rows_of[b]
        if kind == "cannot":
            joined = next(((x, y) for x in ra for y in rb if root(x) == root(y)), None)
            if joined:
                contradictions.append(f"cannot-link {name(a)} / {name(b)} dropped: newer must-links join them "
                                      f"({chain(*joined)})")
                return False
            cannot.extend((x, y) for x in ra for y in rb)
            return True
        clash = kept_apart({root(x) for x in ra + rb})
        if clash:
            contradictions.append(f"must-link {name(a)} / {name(b)} dropped: a newer cannot-link keeps "
                                  f"{name(hashes[clash[0]])} and {name(hashes[clash[1]])} apart")
            return False
        for x in ra + rb:
            if root(x) != root(ra[0]):
                tie(ra[0], x)
        return True

    for rows in rows_of.values():  # copies of one file are one photo: together, as its corrections say
        for x in rows[1:]:
            tie(rows[0], x)
    confirmed_roots = []
    for r in reversed(corrections.rounds):
        kept["cannot_link"] += sum(link(a, b, "cannot") for a, b in r["cannot_link"])
        kept["must_link"] += sum(link(a, b, "must") for a, b in r["must_link"])
        for members in r["confirmed"]:
            present = [h for h in members if h in rows_of]
            unknown.update(h for h in members if h not in rows_of)
            if present and all([link(present[0], h, "must") for h in present[1:]]):
                kept["confirmed"] += 1
                confirmed_roots.append(rows_of[present[0]][0])
    # confirmed groups are distinct products: never merged with each other (unless a must-link says so)
    for i, a in enumerate(confirmed_roots):
        for b in confirmed_roots[i + 1:]:
            if root(a) != root(b) and not kept_apart({root(a), root(b)}):
                cannot.append((a, b))
    summary = {"files": corrections.files, "n_rounds": len(corrections.rounds), "applied": kept,
               "unknown_photos": sorted(name(h) for h in unknown), "contradictions": contradictions,
               "rounds": corrections.rounds,  # the report exports them again with the next round
               "names": {h: n for h, n in corrections.names.items() if h not in rows_of}}  # of photos gone
    as_array = lambda pairs: np.asarray(pairs, np.int64).reshape(-1, 2)  # noqa: E731
    return Constraints(as_array(must), as_array(cannot)), summary
