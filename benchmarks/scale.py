"""Scale of the index-and-group stage alone: synthetic vectors, three models, 1k / 10k / 100k images.

Each size runs in a fresh subprocess so that its peak memory (max RSS) is its own. The vectors are
clustered like a catalogue (products of 1-6 views around a product centre) with the dimensions of
the default trio (ResNet50 2048, VGG16 512, InceptionV3 2048). Stages timed: Annoy build (one index
per model), fused neighbour lists (union of each model's top-k, exact re-scoring, k-reciprocal
re-ranking), grouping. The re-ranking step is also timed on its own (`rerank_s`, part of
`fuse_and_group_s`) by building the neighbourhoods again from the final lists.

    python benchmarks/scale.py                 # 1k, 10k, 100k
    python benchmarks/scale.py --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DIMS = {"resnet50": 2048, "vgg16": 512, "inception_v3": 2048}
RESULTS = Path(__file__).resolve().parent / "results"


class RowFile:
    """(n, dim) float32 rows in a raw file, read a block at a time with plain reads (not mapped), so
    the rows on disk never count in the process's memory: how vectors of a million photos are given
    to `Grouper.fit` (anything with `shape` and row slices works)."""

    def __init__(self, path: Path, n: int, dim: int) -> None:
        self.path, self.shape, self.ndim = path, (n, dim), 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice):
        import numpy as np

        start, stop, _ = rows.indices(self.shape[0])
        with open(self.path, "rb") as f:
            return np.fromfile(f, np.float32, (stop - start) * self.shape[1], offset=start * self.shape[1] * 4
                               ).reshape(-1, self.shape[1])


def synthetic(n: int, folder: Path, seed: int = 0, block: int = 20_000):
    """({model: RowFile of (n, dim) unit vectors}, (n,) product labels): products with 1-6 views each,
    model-specific noise; written a block of whole products at a time, so memory stays one block."""
    import numpy as np

    from ensemble_group.pooling import l2_normalise

    rng = np.random.default_rng(seed)
    views = rng.integers(1, 7, n)
    product = np.repeat(np.arange(n), views)[:n]
    starts = np.flatnonzero(np.r_[True, product[1:] != product[:-1]])  # first row of each product
    cuts = [*starts[::max(1, block // 4)], n]  # blocks of whole products
    files = {}
    for m, dim in DIMS.items():
        path = folder / f"{m}.f32"
        with open(path, "wb") as f:
            for b, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
                r = np.random.default_rng([seed, dim, b])
                own = product[lo:hi] - product[lo]
                centres = r.normal(size=(own[-1] + 1, dim)).astype(np.float32)
                f.write(l2_normalise(centres[own] + 0.6 * r.normal(size=(hi - lo, dim)).astype(np.float32)).tobytes())
        files[m] = RowFile(path, n, dim)
    return files, product


def one_size(n: int) -> dict:
    import tempfile

    import numpy as np

    from ensemble_group.config import Config
    from ensemble_group.evaluation.metrics import pairwise_prf
    from ensemble_group.grouper import Grouper
    from ensemble_group.rerank import Neighbourhoods

    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        t = time.perf_counter()
        vectors, product = synthetic(n, Path(tmp))
        made_s = time.perf_counter() - t
        config = Config(models=tuple(DIMS), cutoff=-3.0)
        t0 = time.perf_counter()
        grouper = Grouper(config).fit(vectors)
        t2 = time.perf_counter()
    t1 = t0 + grouper.timings_["index"]
    fusion, neighbours, labels = grouper.fusion_, grouper.neighbours_, grouper.labels_
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rerank_s = None
    if fusion.neighbourhoods is not None:
        rows = np.broadcast_to(np.arange(n)[:, None], neighbours.ids.shape)
        t3 = time.perf_counter()
        again = Neighbourhoods(neighbours.ids, config.rerank_k)
        again.adjustment(rows, np.maximum(neighbours.ids, 0), config.rerank_weight)
        rerank_s = round(time.perf_counter() - t3, 2)
    return {"n_images": n, "models": DIMS, "vectors_written_s": round(made_s, 1), "index_s": round(t1 - t0, 2),
            "fuse_and_group_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2), "rerank_s": rerank_s,
            "peak_rss_mb": round(peak), "n_groups": int(labels.max() + 1),
            "pairwise_f1_vs_synthetic_truth": round(pairwise_prf(product, labels)["pairwise_f1"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    for a, b in zip(rows, rows[1:]):
        b["time_growth_vs_previous"] = round(b["total_s"] / max(a["total_s"], 1e-9), 1)
        b["memory_growth_vs_previous"] = round(b["peak_rss_mb"] / max(a["peak_rss_mb"], 1), 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS / 'scale.json'}")


def machine() -> dict:
    import os

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}


if __name__ == "__main__":
    main()
