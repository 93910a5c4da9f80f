"""Carrying group ids from a previous run: matched by content, largest overlap first, never reused."""

import json

import numpy as np
import pytest

from ensemble_group.group_ids import PreviousGroupsError, carry_ids, previous_ids


def test_groups_keep_the_id_they_share_most_photos_with():
    previous = {"a": 7, "b": 7, "c": 7, "d": 3, "e": 3, "f": 9}
    # group 0 holds two of 7 and one of 3: it keeps 7; group 1 holds one of 3: it keeps 3
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    hashes = ["a", "b", "d", "e", "x", "y", "z"]
    got, counts = carry_ids(labels, hashes, previous)
    assert list(got) == [7, 7, 7, 3, 3, 3, 10]  # 2 shares nothing: a new id after the largest (9)
    assert counts == {"kept": 2, "new": 1}


def test_a_split_group_keeps_its_id_once_and_a_merged_group_takes_the_larger_part():
    previous = {"a": 0, "b": 0, "c": 0, "d": 1}
    split, _ = carry_ids(np.array([0, 0, 1]), ["a", "b", "c"], previous)  # 0 split into {a, b} and {c}
    assert list(split) == [0, 0, 2]
    merged, counts = carry_ids(np.array([0, 0, 0, 0]), ["a", "b", "c", "d"], previous)
    assert list(merged) == [0, 0, 0, 0] and counts == {"kept": 1, "new": 0}  # 1's id disappears, not reused


def test_no_previous_run_numbers_as_before():
    got, counts = carry_ids(np.array([1, 0, 1]), ["a", "b", "c"], {})
    assert list(got) == [1, 0, 1] and counts == {"kept": 0, "new": 2}


def test_previous_ids_reads_hashes_and_says_what_is_wrong(tmp_path):
    good = tmp_path / "groups.json"
    good.write_text(json.dumps({"groups": [{"id": 4, "images": ["x.jpg"], "sha256": ["h1"]}]}))
    assert previous_ids(good) == {"h1": 4}
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"groups": [{"id": 0, "images": ["x.jpg"]}]}))
    with pytest.raises(PreviousGroupsError, match="no photo hashes"):
        previous_ids(old)
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(PreviousGroupsError, match="not a groups.json"):
        previous_ids(junk)
