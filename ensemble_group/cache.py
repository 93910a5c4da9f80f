"""Embedding cache: CNN features per (model key, image content hash), so no image is extracted twice.

Why SQLite (stdlib sqlite3): every `put_many` is one atomic transaction; in WAL mode with
synchronous=NORMAL a kill -9 loses nothing committed and a power loss loses at most the last
transactions, but the file is never left corrupt. It is one file, needs no extra dependency, and
readers work while a writer appends. The caller writes after every extracted batch, so a killed run
resumes where it stopped.

Keys: the image's sha256 (its content, not its path) and a model key built by `model_key` from the
model name, weights id and preprocessing settings; change any of them and the old vectors miss.

A file that is not a SQLite database (or is corrupt on open) is moved aside to
`<name>.corrupt-<timestamp>` and a fresh cache is started, with a warning through `log`: a cache
only saves time, so losing it must never stop a run. A schema newer than this code is an error
instead (the file is fine, this code is too old). Read-only mode never moves or writes anything.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DEFAULT_CACHE_FILE = "embeddings.sqlite"
SCHEMA_VERSION = 1
_CHUNK = 500  # parameters per IN (...): old SQLite builds allow only 999
_TOUCH_EVERY = 3600.0  # last_used granularity (s): repeated reads don't rewrite pages

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors(model_key TEXT NOT NULL, sha256 TEXT NOT NULL, dim INTEGER NOT NULL,
    vector BLOB NOT NULL, created REAL NOT NULL, last_used REAL NOT NULL, PRIMARY KEY(model_key, sha256));
"""


class CacheError(RuntimeError):
    """The cache file can't be used (read-only, too new a schema, unreadable)."""


def model_key(model: str, weights_id: str, **settings) -> str:
    """Canonical key, e.g. model_key("vgg16", "keras:sha256=ab", framing="squash") ->
    "vgg16|keras:sha256=ab|framing=squash" (settings sorted, so call order doesn't matter)."""
    return "|".join([model, weights_id] + [f"{k}={settings[k]}" for k in sorted(settings)])


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _chunks(seq: Sequence[str]):
    for i in range(0, len(seq), _CHUNK):
        yield seq[i:i + _CHUNK]


class EmbeddingCache:
    """SQLite-backed cache of float32 feature vectors; see the module docstring."""

    def __init__(self, path: Path, *, readonly: bool = False, log: Callable[[str], None] = _stderr) -> None:
        self.path, self.readonly = Path(path), readonly
        if readonly and not self.path.is_file():
            raise CacheError(f"embedding cache {self.path} does not exist (read-only mode creates nothing)")
        try:
            self._db = self._open()
        except sqlite3.OperationalError as e:  # locked, unopenable, I/O: the file may be fine, never move it
            raise CacheError(f"can't open embedding cache {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:  # not a database (NOTADB) / malformed (CORRUPT)
            if readonly:
                raise CacheError(f"embedding cache {self.path} is unreadable ({e}); "
                                 "`ensemble-group cache clear` or deleting the file fixes it") from e
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("-wal", "-shm"):  # a stale WAL must not be replayed into the fresh file
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.path.replace(aside)
            log(f"WARNING: embedding cache {self.path} was corrupt ({e}); moved it to {aside.name}, starting empty")
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.readonly:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                 isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # we BEGIN/COMMIT ourselves
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not self.readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                if not tables:  # new file: create both tables and the version in one transaction
                    db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} INSERT OR IGNORE INTO meta "
                                     f"VALUES('schema_version', '{SCHEMA_VERSION}'); COMMIT;")
                    tables = {"meta", "vectors"}
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
                if "meta" in tables else None
        except BaseException:
            db.close()
            raise
        if row is None or row[0] != str(SCHEMA_VERSION) or "vectors" not in tables:
            db.close()
            raise CacheError(f"{self.path} is not an embedding cache of schema version {SCHEMA_VERSION} "
                             f"(found {row[0] if row else 'none'}); use another file or a newer ensemble-group")
        return db

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE (take the write lock up front, waiting up to 30 s) ... COMMIT, or ROLLBACK."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _writable(self) -> None:
        if self.readonly:
            raise CacheError(f"embedding cache {self.path} is open read-only")

    def get_many(self, model_key: str, hashes: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """Cached vectors among `hashes` (float32, shape (dim,)); misses are simply absent."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        for part in _chunks(unique):
            marks = ",".join("?" * len(part))
            for sha, d, blob in self._db.execute(
                    f"SELECT sha256, dim, vector FROM vectors WHERE model_key=? AND sha256 IN ({marks})",
                    [model_key, *part]):
                if d == dim and len(blob) == 4 * dim:
                    found[sha] = np.frombuffer(blob, dtype="<f4").astype(np.float32)  # a writable copy
        if found and not self.readonly:
            now = time.time()
            with self._transaction() as db:
                for part in _chunks(list(found)):
                    db.execute(f"UPDATE vectors SET last_used=? WHERE model_key=? AND last_used<? "
                               f"AND sha256 IN ({','.join('?' * len(part))})", [now, model_key, now - _TOUCH_EVERY, *part])
        return found

    def put_many(self, model_key: str, items: Mapping[str, np.ndarray]) -> None:
        """Store a batch in one transaction (all or nothing). ValueError on non-float, non-1-D,
        non-finite vectors or a dim differing from the batch's / the key's stored vectors."""
        self._writable()
        rows, now, dims = [], time.time(), set()
        for sha, v in items.items():
            a = np.asarray(v)
            if a.dtype.kind != "f" or a.ndim != 1 or a.size == 0:
                raise ValueError(f"{sha}: need a 1-D float vector, got {a.dtype} {a.shape}")
            with np.errstate(over="ignore"):  # overflow becomes inf, rejected just below
                a = a.astype("<f4")
            if not np.isfinite(a).all():
                raise ValueError(f"{sha}: vector has NaN or inf values (as float32)")
            dims.add(a.size)
            rows.append((model_key, sha, a.size, a.tobytes(), now, now))
        if not rows:
            return
        stored = self._db.execute("SELECT dim FROM vectors WHERE model_key=? LIMIT 1", (model_key,)).fetchone()
        if len(dims | {stored[0] if stored else a.size}) > 1:
            raise ValueError(f"dims {sorted(dims)} for {model_key!r} (already stored: {stored and stored[0]})")
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO vectors VALUES (?,?,?,?,?,?)", rows)

    def info(self) -> dict:
        """Sizes and counts: path, file_bytes (db + WAL), vectors, models{key: count, dim, bytes, oldest/newest_used}."""
        models = {k: {"count": n, "dim": d, "bytes": b, "oldest_used": lo, "newest_used": hi}
                  for k, n, d, b, lo, hi in self._db.execute(
                      "SELECT model_key, COUNT(*), MAX(dim), SUM(LENGTH(vector)), MIN(last_used), MAX(last_used) "
                      "FROM vectors GROUP BY model_key ORDER BY model_key")}
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return {"path": str(self.path), "file_bytes": size,
                "vectors": sum(m["count"] for m in models.values()), "models": models}

    def prune(self, *, keep_hashes: set[str] | None = None, older_than_days: float | None = None,
              model_key: str | None = None) -> int:
        """Delete rows matching ALL given criteria (hash not in keep_hashes, last used more than N days
        ago, this model key); returns how many. Then VACUUM, so the file really shrinks."""
        self._writable()
        where, params = [], []
        if model_key is not None:
            where.append("model_key=?"), params.append(model_key)
        if older_than_days is not None:
            where.append("last_used<?"), params.append(time.time() - older_than_days * 86400)
        if keep_hashes is not None:
            where.append("sha256 NOT IN (SELECT sha256 FROM temp.keep)")
        if not where:
            raise ValueError("prune needs at least one criterion (use clear() to delete everything)")
        return self._delete(" AND ".join(where), params, keep_hashes)

    def clear(self) -> int:
        """Delete every vector; returns how many."""
        self._writable()
        return self._delete("1", [], None)

    def _delete(self, where: str, params: list, keep: set[str] | None) -> int:
        with self._transaction() as db:
            if keep is not None:  # a temp table, not IN (?...): keep sets can be far over the parameter limit
                db.execute("CREATE TEMP TABLE IF NOT EXISTS keep(sha256 TEXT PRIMARY KEY)")
                db.execute("DELETE FROM temp.keep")
                db.executemany("INSERT OR IGNORE INTO temp.keep VALUES (?)", ((h,) for h in keep))
            n = db.execute(f"DELETE FROM vectors WHERE {where}", params).rowcount
        if n:
            self._db.execute("VACUUM")  # give the space back to the disk
        return n

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
