"""One Annoy index per model, built once per run and saved beside the outputs.

The original rebuilt its index for every query (quadratic in the folder size). Here each model's
vectors go into one angular Annoy index with a fixed seed, built once; neighbour lists for every
image come from that one index, and `query` reuses the saved file without rebuilding.
Annoy's angular distance is sqrt(2 - 2 cos), in [0, 2], which is also what `angular_distance` gives.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from ensemble_group.cpu import cores


class ModelIndex:
    """Annoy index over one model's (n, dim) unit vectors; item i is image i of the run."""

    def __init__(self, dim: int, *, n_trees: int = 20, search_k: int = -1, seed: int = 42) -> None:
        self.dim, self.n_trees, self.search_k, self.seed = dim, n_trees, search_k, seed
        self._index = AnnoyIndex(dim, "angular")
        self._index.set_seed(seed)
        self.size = 0
        self.built_in: Path | None = None  # the file an on-disk build wrote (memory-mapped)
        self.workdir = None  # the temporary folder holding it, kept alive with the index

    def build(self, vectors: np.ndarray, n_jobs: int = 1, on_disk: Path | None = None) -> "ModelIndex":
        """Add all vectors (n, dim) and build; n_jobs=1 keeps the trees identical run to run.

        `on_disk`: build into that file and memory-map it (Annoy's on_disk_build): a million photos'
        index needs no second copy in memory, and pages the queries no longer touch can be dropped."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        if on_disk is not None:
            self._index.on_disk_build(str(on_disk))
            self.built_in = Path(on_disk)
        for i, v in enumerate(vectors):
            self._index.add_item(i, v.tolist())
        self._index.build(self.n_trees, n_jobs=n_jobs)
        self.size = len(vectors)
        return self

    def drop_pages(self) -> None:
        """Let go of the pages of an index built on disk (map it again, untouched): after the neighbour
        lists of a million photos are made, 1.3 GB per member need not stay resident."""
        if self.built_in is not None:
            self._index.unload()
            self._index = AnnoyIndex(self.dim, "angular")
            self._index.load(str(self.built_in), prefault=False)

    def save(self, path: Path) -> None:
        """Write atomically: Annoy writes a temp file (an on-disk build's file is copied) that is renamed
        into place."""
        tmp = path.with_name(path.name + ".part")
        if self.built_in is not None:  # Annoy's save does nothing for an index built on disk
            self._index.unload()
            shutil.copyfile(self.built_in, tmp)
            self.built_in = None
        else:
            self._index.save(str(tmp))
        tmp.replace(path)
        self._index.unload()
        self._index = AnnoyIndex(self.dim, "angular")
        self._index.load(str(path))  # memory-mapped from now on, as a loaded index would be

    @classmethod
    def load(cls, path: Path, dim: int, *, n_trees: int = 20, search_k: int = -1, seed: int = 42) -> "ModelIndex":
        index = cls(dim, n_trees=n_trees, search_k=search_k, seed=seed)
        index._index.load(str(path))
        index.size = index._index.get_n_items()
        return index

    def neighbours(self, item: int, k: int) -> np.ndarray:
        """The k nearest other items of `item` (itself excluded), nearest first."""
        ids = self._index.get_nns_by_item(item, k + 1, search_k=self.search_k)
        return np.array([j for j in ids if j != item][:k], dtype=np.int64)

    def all_neighbours(self, k: int, workers: int | None = None, chunk: int = 512) -> np.ndarray:
        """(size, k) int64: every item's `neighbours(i, k)`, padded with -1.

        Annoy releases the GIL while it searches, so the queries run on every core (1.75x on 2).
        """
        out = np.full((self.size, k), -1, dtype=np.int64)

        def fill(start: int) -> None:
            for i in range(start, min(start + chunk, self.size)):
                ids = self.neighbours(i, k)
                out[i, :len(ids)] = ids

        with ThreadPoolExecutor(workers or cores()) as pool:
            list(pool.map(fill, range(0, self.size, chunk)))
        return out

    def query(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest k items to an outside vector: (ids, angular distances)."""
        ids, dists = self._index.get_nns_by_vector(vector.tolist(), k, search_k=self.search_k,
                                                   include_distances=True)
        return np.array(ids, dtype=np.int64), np.array(dists, dtype=np.float32)


    def vectors(self, ids) -> np.ndarray:
        """The stored (len(ids), dim) vectors of some items (Annoy keeps them; no separate copy needed)."""
        return np.array([self._index.get_item_vector(int(j)) for j in ids], dtype=np.float32).reshape(-1, self.dim)


def angular_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise sqrt(2 - 2 cos) between unit vectors a (..., d) and b (..., d): Annoy's angular metric."""
    cos = np.sum(a * b, axis=-1)
    return np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, 4.0))
