"""Embedding cache: exact round trips, key isolation, big batches, pruning, and surviving kill -9 and corrupt files."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ensemble_group.cache import CacheError, EmbeddingCache, model_key

KEY = model_key("mobilenet-v2", "pypi:x==1#sha256=aa", framing="squash", size=224)


def vectors(n, dim=8, seed=0, prefix="h"):
    rng = np.random.default_rng(seed)
    return {f"{prefix}{i:05d}": rng.normal(size=dim).astype(np.float32) for i in range(n)}


def test_model_key_is_canonical():
    assert model_key("m", "w", b=1, a="x") == model_key("m", "w", a="x", b=1) == "m|w|a=x|b=1"


def test_round_trip_is_exact_and_keys_isolate_models(tmp_path):
    items = vectors(10)
    with EmbeddingCache(tmp_path / "sub" / "c.sqlite") as c:  # creates the parent folder
        c.put_many(KEY, items)
        got = c.get_many(KEY, [*items, "missing"], dim=8)
        assert set(got) == set(items)
        for h, v in items.items():
            assert got[h].dtype == np.float32 and got[h].shape == (8,) and np.array_equal(got[h], v)
        for other in (model_key("mobilenet-v2", "pypi:x==2#sha256=bb", framing="squash", size=224),
                      model_key("mobilenet-v2", "pypi:x==1#sha256=aa", framing="pad", size=224),
                      model_key("vgg16", "pypi:x==1#sha256=aa", framing="squash", size=224)):
            assert c.get_many(other, list(items), dim=8) == {}
        assert c.get_many(KEY, list(items), dim=16) == {}  # a different dim is a miss, not garbage
    with EmbeddingCache(tmp_path / "sub" / "c.sqlite") as c:  # and it persisted
        assert len(c.get_many(KEY, list(items), dim=8)) == 10


def test_get_many_beyond_the_parameter_limit(tmp_path):
    items = vectors(2000, dim=4)
    with EmbeddingCache(tmp_path / "c.sqlite") as c:
        c.put_many(KEY, items)
        got = c.get_many(KEY, list(items) + list(items)[:5], dim=4)  # duplicates are fine
        assert len(got) == 2000 and all(np.array_equal(got[h], v) for h, v in items.items())


def test_put_rejects_bad_vectors(tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite") as c:
        c.put_many(KEY, {"a": np.ones(8, np.float32)})
        for bad in ({"b": np.array([1.0, np.nan], np.float32)}, {"b": np.array([np.inf, 1.0])},
                    {"b": np.array([1e300, 1.0])},  # finite float64 but inf as float32
                    {"b": np.ones(4, np.float32)},  # key already holds dim 8
                    {"b": np.ones(8, np.float32), "c": np.ones(7, np.float32)},
                    {"b": np.ones((2, 4), np.float32)}, {"b": np.arange(8)}):
            with pytest.raises(ValueError):
                c.put_many(KEY, bad)
        assert c.info()["vectors"] == 1  # nothing of a rejected batch was written
        c.put_many(KEY, {"d": np.ones(8)})  # float64 is accepted and stored as float32
        assert c.get_many(KEY, ["d"], 8)["d"].dtype == np.float32


def test_info_prune_clear(tmp_path):
    other = model_key("vgg16", "keras:sha256=cc")
    with EmbeddingCache(tmp_path / "c.sqlite") as c:
        c.put_many(KEY, vectors(30, dim=8))
        c.put_many(other, vectors(20, dim=16))
        info = c.info()
        assert info["vectors"] == 50 and info["file_bytes"] > 0 and info["path"] == str(tmp_path / "c.sqlite")
        assert info["models"][KEY]["count"] == 30 and info["models"][KEY]["dim"] == 8
        assert info["models"][KEY]["bytes"] == 30 * 8 * 4 and info["models"][other]["bytes"] == 20 * 16 * 4
        assert info["models"][KEY]["oldest_used"] <= info["models"][KEY]["newest_used"] <= time.time()

        assert c.prune(keep_hashes={f"h{i:05d}" for i in range(10)}, model_key=KEY) == 20
        assert c.info()["models"][KEY]["count"] == 10 and c.info()["models"][other]["count"] == 20
        with pytest.raises(ValueError):
            c.prune()

        old = [f"h{i:05d}" for i in range(5)]  # make 5 of `other` unused for 40 days
        c._db.execute(f"UPDATE vectors SET last_used=? WHERE sha256 IN ({','.join('?' * 5)})",
                      [time.time() - 40 * 86400, *old])
        assert c.prune(older_than_days=30) == 10  # both models' old ones
        assert c.prune(older_than_days=30) == 0
        assert c.prune(model_key=other) == 15
        assert c.info()["vectors"] == 5 and set(c.info()["models"]) == {KEY}
        assert c.clear() == 5 and c.info()["vectors"] == 0 and c.info()["models"] == {}


def test_reading_refreshes_last_used(tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite") as c:
        c.put_many(KEY, vectors(3))
        c._db.execute("UPDATE vectors SET last_used=0")
        c.get_many(KEY, ["h00000"], 8)
        assert c.prune(older_than_days=1) == 2  # the one just read survives
        assert list(c.get_many(KEY, ["h00000", "h00001"], 8)) == ["h00000"]


CHILD = textwrap.dedent("""
    import sys, numpy as np
    from ensemble_group.cache import EmbeddingCache
    c = EmbeddingCache(sys.argv[1])
    batch = 0
    while True:
        rng = np.random.default_rng(batch)
        c.put_many("k", {f"{batch:06d}-{j:02d}": rng.normal(size=64).astype(np.float32) for j in range(32)})
        print(batch, flush=True)
        batch += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_minus_9_loses_no_committed_batch(tmp_path):
    path = tmp_path / "c.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    reported = []
    try:
        while len(reported) < 5:
            line = child.stdout.readline()
            assert line, f"child died: {child.stderr.read()}"
            reported.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    reported += [int(line) for line in child.stdout.read().split()]  # lines printed before the kill landed
    child.stdout.close(), child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    with EmbeddingCache(path) as c:
        assert c._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for batch in reported:
            rng = np.random.default_rng(batch)
            expected = {f"{batch:06d}-{j:02d}": rng.normal(size=64).astype(np.float32) for j in range(32)}
            got = c.get_many("k", list(expected), 64)
            assert len(got) == 32 and all(np.array_equal(got[h], v) for h, v in expected.items())
        assert c.info()["vectors"] % 32 == 0  # a batch is all or nothing


def test_corrupt_file_is_moved_aside(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    messages = []
    with EmbeddingCache(path, log=messages.append) as c:
        c.put_many(KEY, vectors(3))
        assert len(c.get_many(KEY, list(vectors(3)), 8)) == 3
    aside = list(tmp_path.glob("c.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == np.random.default_rng(0).bytes(8192)
    assert len(messages) == 1 and "corrupt" in messages[0] and str(path) in messages[0]
    with pytest.raises(CacheError, match="cache clear"):  # read-only never moves files: it explains instead
        EmbeddingCache(aside[0], readonly=True)


def test_unopenable_path_is_an_error_not_corruption(tmp_path):
    (tmp_path / "dir.sqlite").mkdir()  # sqlite3.OperationalError, like "database is locked": don't move it
    with pytest.raises(CacheError, match="can't open"):
        EmbeddingCache(tmp_path / "dir.sqlite", log=pytest.fail)
    assert (tmp_path / "dir.sqlite").is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_newer_schema_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    EmbeddingCache(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99'")
    with pytest.raises(CacheError, match="schema version"):
        EmbeddingCache(path)
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))  # a valid file is never moved aside


def test_readonly_reads_and_refuses_writes(tmp_path):
    path = tmp_path / "c.sqlite"
    with pytest.raises(CacheError):
        EmbeddingCache(path, readonly=True)  # nothing to read, and read-only creates nothing
    assert not path.exists()
    with EmbeddingCache(path) as c:
        c.put_many(KEY, vectors(4))
    with EmbeddingCache(path, readonly=True) as c:
        assert len(c.get_many(KEY, list(vectors(4)), 8)) == 4 and c.info()["vectors"] == 4
        for write in (lambda: c.put_many(KEY, vectors(1, prefix="z")), c.clear, lambda: c.prune(model_key=KEY)):
            with pytest.raises(CacheError, match="read-only"):
                write()
