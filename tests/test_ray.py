"""The Ray backend (`group --ray`) on a real local Ray instance: the vectors and groups of the local path,
only the cache's misses sent to the cluster, a killed job resumed from its Parquet parts, bad files listed."""

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ensemble_group.cli import app
from ensemble_group.config import load_config
from ensemble_group.pipeline import folder_features
from ensemble_group.reporter import Reporter
from tests.test_cli import messy_folder

ray = pytest.importorskip("ray", reason="the Ray backend's tests need the ray extra: pip install -e '.[ray]'")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "flipkart"
OFFLINE = ROOT / "configs" / "offline.toml"
MEMBERS = "mobilenet-v2,colour-lab"  # the cheapest CNN member and the built-in one
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One small local Ray instance for the module, as a laptop would start it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


class Said(Reporter):
    """A reporter that keeps what it is told."""

    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)

    @contextmanager
    def task(self, description, total):
        self.lines.append(description)
        yield lambda n: None


def config(backend="local"):
    """Batches of 8, so that 20 photos keep two actors per member busy (with decoding tasks beside them)."""
    return load_config(OFFLINE).replace(models=MEMBERS.split(","), backend=backend, batch_size=8)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def local_vectors(weights_cache):
    feats, _ = folder_features(SAMPLE, config(), cache_file=None)
    return feats


def test_the_cluster_gives_the_local_vectors(local_vectors, tmp_path):
    said = Said()
    feats, _ = folder_features(SAMPLE, config("ray"), cache_file=None, vectors=tmp_path / "vectors", reporter=said)
    assert "extracting mobilenet-v2, colour-lab on Ray (2 actors)" in said.lines  # one pool for both members
    assert [im.rel for im in feats.images] == [im.rel for im in local_vectors.images]
    assert [im.sha256 for im in feats.images] == [im.sha256 for im in local_vectors.images]
    for m in MEMBERS.split(","):
        assert cosines(feats.vectors[m], local_vectors.vectors[m]).min() >= 0.9999, m
    assert feats.runtimes == {"mobilenet-v2": "tflite", "colour-lab": "numpy"}  # what the actors ran
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "vectors").iterdir()) == ["colour", "mobilenet"]


def test_a_killed_job_resumes_from_its_parts_and_sends_only_the_rest(local_vectors, tmp_path):
    vectors, cache = tmp_path / "vectors", tmp_path / "emb.sqlite"
    first_half = {im.sha256 for im in local_vectors.images[:10]}
    # a job killed half-way: the parts of the first ten photos were written, nothing else (and no cache)
    folder_features(SAMPLE, config("ray"), cache_file=None, vectors=vectors, select=lambda im: im.sha256 in first_half)
    (next(vectors.glob("mobilenet-v2-*")) / "part-killed.parquet").write_bytes(b"PAR1 half a part")
    said = Said()
    feats, _ = folder_features(SAMPLE, config("ray"), cache_file=cache, vectors=vectors, reporter=said)
    assert "extracting features of 10 images on Ray (0 from the cache, 10 from the Parquet parts" in "\n".join(said.lines)
    assert any(line.startswith("WARNING: skipping the unreadable Parquet part") and "part-killed" in line
               for line in said.lines)
    for m in MEMBERS.split(","):
        assert cosines(feats.vectors[m], local_vectors.vectors[m]).min() >= 0.9999, m
    # everything is in the local cache now: a rerun, here or on a laptop, sends nothing
    again = Said()
    warm, _ = folder_features(SAMPLE, config("ray"), cache_file=cache, vectors=tmp_path / "elsewhere", reporter=again)
    assert (warm.extracted, warm.cached) == (0, 20) and not any("on Ray (" in line for line in again.lines)
    local, _ = folder_features(SAMPLE, config(), cache_file=cache)
    assert (local.extracted, local.cached) == (0, 20)


def test_one_job_embeds_for_each_member_only_the_photos_it_lacks(local_vectors, tmp_path):
    import pyarrow.parquet as pq

    cache, vectors = tmp_path / "emb.sqlite", tmp_path / "vectors"
    first_half = {im.sha256 for im in local_vectors.images[:10]}
    mobilenet_only = config().replace(models=["mobilenet-v2"])
    folder_features(SAMPLE, mobilenet_only, cache_file=cache, select=lambda im: im.sha256 in first_half)
    said = Said()
    feats, _ = folder_features(SAMPLE, config("ray"), cache_file=cache, vectors=vectors, reporter=said)
    assert "extracting mobilenet-v2, colour-lab on Ray (2 actors)" in said.lines  # both members, one job
    rows = {p.name.split("-")[0]: sum(pq.read_table(f).num_rows for f in p.glob("part-*.parquet"))
            for p in vectors.iterdir()}
    assert rows == {"mobilenet": 10, "colour": 20}  # the cached half is not embedded again
    for m in MEMBERS.split(","):
        assert cosines(feats.vectors[m], local_vectors.vectors[m]).min() >= 0.9999, m


def test_group_on_ray_writes_the_local_groups_from_a_uri(tmp_path, weights_cache):
    args = ["--config", OFFLINE, "--models", MEMBERS, "--no-cache"]
    here = invoke("group", SAMPLE, "--out", tmp_path / "here", *args)
    assert here.exit_code == 0, here.output
    there = invoke("group", SAMPLE.as_uri(), "--ray", "--ray-workers", 4, "--out", tmp_path / "there", *args)
    assert there.exit_code == 0, there.output
    assert "4 workers asked for, 2 fit on the cluster's 2 CPUs" in there.output  # more would wait for ever
    doc, ray_doc = (json.loads((tmp_path / d / "groups.json").read_text()) for d in ("here", "there"))
    assert ray_doc["groups"] == doc["groups"] and ray_doc["n_groups"] == 6
    assert ray_doc["input"] == SAMPLE.as_uri() and ray_doc["config"] == doc["config"]
    assert len(list((tmp_path / "there" / "vectors").glob("*/part-*.parquet"))) >= 2  # beside the groups


def test_bad_files_are_skipped_and_listed_as_on_the_local_path(tmp_path, weights_cache):
    folder = messy_folder(tmp_path)
    args = ["--config", OFFLINE, "--models", "colour-lab", "--no-cache"]
    here = invoke("group", folder, "--out", tmp_path / "here", *args)
    there = invoke("group", folder, "--ray", "--out", tmp_path / "there", *args)
    assert here.exit_code == there.exit_code == 0, there.output
    skipped = [json.loads((tmp_path / d / "groups.json").read_text())["skipped"] for d in ("here", "there")]
    assert skipped[1] == skipped[0] and [s["path"] for s in skipped[1]] == ["broken.jpg", "empty.jpg", "notes.png"]
    assert "3 skipped" in there.output


def test_without_ray_installed_the_backend_fails_at_once_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    result = invoke("group", SAMPLE, "--ray", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "install the extra: pip install -e '.[ray]'" in result.output
    assert not (tmp_path / "o").exists()  # before any work
    bad = tmp_path / "c.toml"
    bad.write_text('[engine]\nbackend = "ray"\n')
    result = invoke("group", SAMPLE, "--config", bad, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "pip install -e '.[ray]'" in result.output
    uri = invoke("group", SAMPLE.as_uri(), "--out", tmp_path / "o")  # a URI is read on the Ray backend only
    assert uri.exit_code == 2 and "add --ray" in uri.output
