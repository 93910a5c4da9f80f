"""A reviewer's corrections: reading the file, resolving chains and contradictions on hand-made
graphs (newest first), photos no longer there, and the graph grouping obeying what was kept."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ensemble_group.corrections import Constraints, Corrections, CorrectionsError, read_corrections, resolve
from ensemble_group.grouping import attach_alone, group, group_graph
from tests.test_grouping import lists

H = [f"{i:064x}" for i in range(10)]  # content hashes of photos 0..9
NAMES = [f"p{i}.jpg" for i in range(10)]


def rounds(*rs: dict) -> Corrections:
    return Corrections([{"must_link": r.get("must", []), "cannot_link": r.get("cannot", []),
                         "confirmed": r.get("confirmed", [])} for r in rs])


def pairs(a: np.ndarray) -> set[tuple[int, int]]:
    return {tuple(sorted(map(int, p))) for p in a}


def same(c: Constraints, n: int) -> np.ndarray:
    """The must-linked components as labels."""
    from ensemble_group.grouping import _must_groups

    return _must_groups(n, c.must)


def test_a_must_link_chain_joins_everything_on_it():
    c, s = resolve(rounds({"must": [[H[0], H[1]], [H[1], H[2]], [H[3], H[4]]]}), H[:6], NAMES[:6])
    lab = same(c, 6)
    assert lab[0] == lab[1] == lab[2] and lab[3] == lab[4] and len(set(lab)) == 3
    assert s["applied"] == {"must_link": 3, "cannot_link": 0, "confirmed": 0} and not s["contradictions"]


def test_a_cannot_link_across_a_chain_is_a_contradiction_named_with_the_chain():
    # one round: cannot-links win within a round, so the must-link that would close the chain is dropped
    c, s = resolve(rounds({"must": [[H[0], H[1]], [H[1], H[2]]], "cannot": [[H[0], H[2]]]}), H[:3], NAMES[:3])
    assert s["applied"]["cannot_link"] == 1 and s["applied"]["must_link"] == 1
    assert len(s["contradictions"]) == 1 and "p0.jpg and p2.jpg apart" in s["contradictions"][0]
    assert Constraints(c.must, c.cannot).obeyed_by(np.array([0, 0, 1])) or Constraints(c.must, c.cannot).obeyed_by(np.array([0, 1, 1]))


def test_the_newest_round_wins_and_the_dropped_one_shows_the_chain():
    old = {"cannot": [[H[0], H[2]]]}
    new = {"must": [[H[0], H[1]], [H[1], H[2]]]}  # the reviewer changed their mind
    c, s = resolve(rounds(old, new), H[:3], NAMES[:3])
    assert s["applied"] == {"must_link": 2, "cannot_link": 0, "confirmed": 0}
    assert s["contradictions"] == ["cannot-link p0.jpg / p2.jpg dropped: newer must-links join them "
                                   "(p0.jpg – p1.jpg – p2.jpg)"]
    assert len(set(same(c, 3))) == 1 and not len(c.cannot)


def test_photos_no_longer_there_are_reported_not_fatal():
    gone = "f" * 64
    corr = rounds({"must": [[H[0], gone], [H[0], H[1]]], "confirmed": [[H[2], gone, H[3]]]})
    corr.names = {gone: "old/photo.jpg"}
    c, s = resolve(corr, H[:4], NAMES[:4])
    assert s["unknown_photos"] == ["old/photo.jpg"]
    assert s["applied"] == {"must_link": 1, "cannot_link": 0, "confirmed": 1}
    lab = same(c, 4)
    assert lab[0] == lab[1] and lab[2] == lab[3] and lab[0] != lab[2]


def test_confirmed_groups_stay_whole_and_apart():
    c, s = resolve(rounds({"confirmed": [[H[0], H[1]], [H[2], H[3]]]}), H[:5], NAMES[:5])
    assert s["applied"]["confirmed"] == 2
    assert pairs(c.cannot) == {(0, 2)}
    assert c.obeyed_by(np.array([0, 0, 1, 1, 2])) and not c.obeyed_by(np.array([0, 0, 0, 0, 1]))


def test_copies_of_one_file_are_one_photo():
    hashes = [H[0], H[1], H[0]]  # rows 0 and 2 hold the same bytes
    c, _ = resolve(rounds({"cannot": [[H[0], H[1]]]}), hashes, ["a", "b", "a-copy"])
    assert c.obeyed_by(np.array([0, 1, 0])) and not c.obeyed_by(np.array([0, 1, 1]))


def test_graph_grouping_obeys_must_and_cannot_links():
    # two tight products {0,1,2} and {3,4,5}; 6 is near both
    rows = [[(1, -5), (2, -5), (6, -4)], [(0, -5), (2, -5)], [(0, -5), (1, -5)],
            [(4, -5), (5, -5), (6, -4)], [(3, -5), (5, -5)], [(3, -5), (4, -5)], [(0, -4), (3, -4)]]
    neigh = lists(rows)
    plain = group_graph(neigh, cutoff=-2)
    assert plain[0] == plain[1] == plain[2] and plain[3] == plain[4] == plain[5] and plain[0] != plain[3]
    # the reviewer: 2 is not this product (cannot-link with 0 and 1); 0 and 3 are one product
    c = Constraints(np.array([[0, 3]]), np.array([[2, 0], [2, 1]]))
    lab = group_graph(neigh, cutoff=-2, constraints=c)
    assert c.obeyed_by(lab)
    assert lab[0] == lab[1] == lab[3] == lab[4] == lab[5] and lab[2] != lab[0]
    # a cannot-link between the two products keeps the bridge photo 6 from gluing them
    c2 = Constraints(np.zeros((0, 2), np.int64), np.array([[0, 3]]))
    assert c2.obeyed_by(group_graph(neigh, cutoff=0, constraints=c2))


def test_a_lone_photo_never_joins_a_group_it_is_cannot_linked_to():
    label = np.array([0, 0, 0, 1, 1, 2])
    rows = [[(1, -5)], [(0, -5)], [(0, -5)], [(4, -5)], [(3, -5)], [(0, -3), (1, -3), (3, 1)]]
    neigh = lists(rows)
    assert attach_alone(label, neigh, 0.5)[5] == attach_alone(label, neigh, 0.5)[0]
    c = Constraints(np.zeros((0, 2), np.int64), np.array([[5, 1]]))
    out = attach_alone(label, neigh, 0.5, c)
    assert out[5] != out[0] and c.obeyed_by(out)


def test_other_modes_refuse_corrections():
    neigh = lists([[(1, -5)], [(0, -5)]])
    with pytest.raises(ValueError, match='mode "graph"'):
        group(neigh, None, "average", -2.0, 5, constraints=Constraints(np.array([[0, 1]]), np.zeros((0, 2), np.int64)))


def test_reading_a_file(tmp_path: Path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"must_link": [[H[0], H[1]]], "confirmed": [[H[2]]]}))
    corr = read_corrections(f)
    assert corr.rounds == [{"must_link": [[H[0], H[1]]], "cannot_link": [], "confirmed": [[H[2]]]}]
    f.write_text(json.dumps(corr.to_json()))
    assert read_corrections(f).rounds == corr.rounds


@pytest.mark.parametrize("doc, message", [
    ("{", "not a corrections file"),
    ('{"must_link": [["abc", "def"]]}', "must_link[0] must be a pair of photo hashes"),
    ('{"rounds": [{"cannot_link": [[1]]}]}', "rounds[0].cannot_link[0] must be a pair"),
    ('{"rounds": [{"merge": []}]}', "unknown key rounds[0].merge"),
    ('{"confirmed": [[]]}', "confirmed[0] must be a list of photo hashes"),
    ('{"version": 9}', "newer ensemble-group"),
])
def test_a_bad_file_names_the_key(tmp_path: Path, doc: str, message: str):
    f = tmp_path / "c.json"
    f.write_text(doc)
    with pytest.raises(CorrectionsError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        read_corrections(f)
    assert str(f) in str(e.value)
    with pytest.raises(CorrectionsError, match="no such file"):
        read_corrections(tmp_path / "none.json")
