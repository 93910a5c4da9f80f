"""The review loop end to end: group the sample, review its report in a real headless Chromium
(mouse clicks and keys), export corrections.json, regroup with --corrections and check the groups
obey them; then the next report carries the applied round forward."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from benchmarks.chromium import BrowserError, Chromium, find_chromium
from tests.test_cli import OFFLINE, SAMPLE, invoke


def _browser(tmp: Path) -> Chromium:
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set: .ci/run must `apt-get install -y chromium`")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return Chromium(tmp / "profile")


def _download(page, folder: Path) -> None:
    page.browser.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder),
                                                      "eventsEnabled": True})


def _wait_file(path: Path, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_size:
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass  # still being written
        time.sleep(0.1)
    raise AssertionError(f"{path} was not downloaded")


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, weights_cache):
    """The sample grouped with a report, reviewed in the browser; returns (tmp, groups.json doc, corrections doc)."""
    tmp = tmp_path_factory.mktemp("review")
    cache = tmp / "emb.sqlite"
    first = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp / "out", "--cache-file", cache, "--report")
    assert first.exit_code == 0, first.output
    doc = json.loads((tmp / "out" / "groups.json").read_text())
    assert [g["size"] for g in doc["groups"]] == [4, 4, 3, 3, 3, 3]  # the sample's 6 products, right
    with _browser(tmp) as browser:
        page = browser.open(tmp / "out" / "report.html")
        _download(page, tmp / "downloads")
        assert page.eval("document.body.dataset.decisions") == "0"
        page.click('#g1 button[data-act="y"]')                     # group 1: looks right
        page.click('#g0 figure[data-i]:nth-of-type(2) img')        # a photo of group 0 ...
        page.key("x")                                              # ... is not this product
        page.click("#g2 h3")                                       # group 2 ...
        page.key("s"), page.type("5"), page.key("Enter")           # ... is the same product as group 5
        page.click("#g3 figure[data-i] img")
        page.key("m"), page.type("4"), page.key("Enter")           # a move, then undone
        assert page.eval("document.querySelectorAll('#g4 figure.moved').length") == 1
        page.key("u")
        assert page.eval("document.querySelectorAll('figure.moved').length") == 1  # only the one taken out
        page.key("m"), page.type("99"), page.key("Enter")          # no such group: said, nothing changes
        assert "no group #99" in page.eval("document.querySelector('#review .status').textContent")
        assert page.eval("document.body.dataset.decisions") == "3"
        page.reload()                                              # kept in the browser
        assert page.eval("document.body.dataset.decisions") == "3"
        assert page.eval("document.querySelector('#g1').classList.contains('ok')")
        page.key("e")
        corrections = _wait_file(tmp / "downloads" / "corrections.json")
        page.screenshot(tmp / "review.png")
    return tmp, doc, corrections


def test_the_export_says_what_the_reviewer_did(reviewed):
    _, doc, corr = reviewed
    assert corr["kind"] == "ensemble-group corrections" and len(corr["rounds"]) == 1
    r = corr["rounds"][0]
    g = {x["id"]: x for x in doc["groups"]}
    assert r["confirmed"] == [g[1]["sha256"]]
    out = g[0]["sha256"][1]
    assert sorted(map(sorted, r["cannot_link"])) == sorted(sorted([out, h]) for h in g[0]["sha256"] if h != out)
    # "same product": every photo of groups 2 and 5 linked to one of them (a star), whatever the next cut
    both = set(g[2]["sha256"]) | set(g[5]["sha256"])
    assert len(r["must_link"]) == len(both) - 1 and {h for p in r["must_link"] for h in p} == both
    hub = set.intersection(*map(set, r["must_link"]))
    assert len(hub) == 1
    assert corr["names"][out] == g[0]["images"][1]


def test_the_next_run_obeys_the_corrections_and_carries_them_forward(reviewed):
    tmp, doc, corr = reviewed
    (tmp / "corrections.json").write_text(json.dumps(corr))
    again = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp / "out2", "--cache-file", tmp / "emb.sqlite",
                   "--corrections", tmp / "corrections.json", "--previous", tmp / "out" / "groups.json", "--report")
    assert again.exit_code == 0, again.output
    assert "corrections: 5 must-links, 3 cannot-links, 1 confirmed group applied" in again.output
    new = json.loads((tmp / "out2" / "groups.json").read_text())
    old = {g["id"]: set(g["sha256"]) for g in doc["groups"]}
    group_of = {h: g["id"] for g in new["groups"] for h in g["sha256"]}
    out = doc["groups"][0]["sha256"][1]
    assert all(group_of[out] != group_of[h] for h in old[0] - {out})           # taken out, stays out
    assert len({group_of[h] for h in old[0] - {out}}) == 1                     # the rest stays together
    assert len({group_of[h] for h in old[2] | old[5]}) == 1                    # same product: one group
    assert {g["id"]: set(g["sha256"]) for g in new["groups"]}[1] == old[1]     # confirmed: as it was, same id
    assert new["corrections"]["applied"] == {"must_link": 5, "cannot_link": 3, "confirmed": 1}
    assert new["corrections"]["contradictions"] == [] and new["corrections"]["unknown_photos"] == []
    # the new report exports the applied round again, with the next one
    with _browser(tmp / "b2") as browser:
        page = browser.open(tmp / "out2" / "report.html")
        _download(page, tmp / "downloads2")
        assert page.eval("JSON.parse(document.getElementById('review-data').textContent).rounds.length") == 1
        # the confirmed group is marked, and no longer among "Check these first"
        assert page.eval("!!document.querySelector('#g1 .badge.done')")
        first = page.eval("[...document.querySelectorAll('.group')].filter(g => g.compareDocumentPosition("
                          "document.getElementById('groups')) & Node.DOCUMENT_POSITION_FOLLOWING).map(g => g.dataset.gid)")
        assert first and "1" not in first
        page.key("j"), page.key("y"), page.key("e")
        carried = _wait_file(tmp / "downloads2" / "corrections.json")
    assert len(carried["rounds"]) == 2 and carried["rounds"][0]["must_link"] == corr["rounds"][0]["must_link"]


def test_bad_corrections_fail_before_any_work(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"must_link": [["x", "y"]]}')
    r = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp_path / "o", "--corrections", bad)
    assert r.exit_code == 2 and "must_link[0] must be a pair of photo hashes" in r.output
    r = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp_path / "o", "--corrections", tmp_path / "none.json")
    assert r.exit_code == 2 and "no such file" in r.output
    r = invoke("group", SAMPLE, "--config", OFFLINE, "--out", tmp_path / "o", "--corrections", bad, "--mode", "average")
    assert r.exit_code == 2 and 'corrections need mode = "graph"' in r.output
    assert not (tmp_path / "o").exists()


def test_the_browser_driver_reports_a_missing_element(tmp_path):
    page_file = tmp_path / "p.html"
    page_file.write_text("<p>x</p>")
    with _browser(tmp_path) as browser:
        page = browser.open(page_file)
        with pytest.raises(BrowserError, match="no element #nope"):
            page.click("#nope")
