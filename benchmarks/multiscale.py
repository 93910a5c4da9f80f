"""Multi-scale descriptors, measured before building them into the engine (issue 4).

Each member's average-pooled vector is taken at three scales of the squash-framed photo (224 px,
224/sqrt(2) and 112 px, as in Radenovic et al.'s multi-scale evaluation), each l2-normalised, then
summed. The ensemble with these vectors and with the engine's (single-scale) vectors is scored with
`compare`'s held-out protocol (cutoff tuned on half the products, scored on the other half).
The vectors are computed here with each member's plain net (no Winograd or folding), at about 1.75x
the pixels of one scale.

    python benchmarks/multiscale.py --sets sample grocery-810 grocery-packages
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from common import ROOT, cpu, sets, write_result
from details import any_size_trunk

SCALES = (1.0, 2 ** -0.5, 0.5)


def multiscale_vectors(paths: list[Path], models: tuple[str, ...], batch: int = 32) -> dict[str, np.ndarray]:
    import tensorflow as tf

    from ensemble_group.extractors import MODELS

    from ensemble_group.images import frame_batch

    from ensemble_group.pooling import l2_normalise
    from ensemble_group.images import load

    trunks = {m: any_size_trunk(m) for m in models}
    out = {m: np.zeros((len(paths), MODELS[m].dim), np.float32) for m in models}
    for s in range(0, len(paths), batch):
        framed = frame_batch([load(p) for p in paths[s:s + batch]], 224, "squash")
        for scale in SCALES:
            side = int(round(224 * scale / 32) * 32)
            x = framed if side == 224 else tf.image.resize(framed, (side, side), antialias=True).numpy()
            for m in models:
                out[m][s:s + batch] += l2_normalise(trunks[m](MODELS[m].preprocess(x)).numpy().mean(axis=(1, 2)))
    return {m: l2_normalise(v) for m, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.toml"))
    parser.add_argument("--grocery", type=Path, default=ROOT.parent / "shared" / "datasets" / "grocery")
    parser.add_argument("--sets", nargs="+", default=["sample", "grocery-810", "grocery-packages"])
    args = parser.parse_args()

    from ensemble_group.config import load_config
    from ensemble_group.evaluation.compare import Arm, Subset, labelled_features, run_arm, split_products
    from ensemble_group.reporter import Reporter

    config = load_config(args.config)
    report = {"config": Path(args.config).name, "scales": SCALES, "sets": {},
              "machine": {"cores": os.cpu_count(), "cpu": cpu()}}
    for name in args.sets:
        folder, labels = sets(args.grocery)[name]
        vectors, products, rels, _ = labelled_features(folder, labels, config, Reporter(), hashes=False)
        tune, test = split_products(products, 0)
        rows = {}
        for label, vec in (("single scale (the engine's)", vectors),
                           ("multi-scale", multiscale_vectors([folder / r for r in rels], config.models))):
            row = run_arm(Arm(label, config.models), Subset({m: v[tune] for m, v in vec.items()}, products[tune]),
                          Subset({m: v[test] for m, v in vec.items()}, products[test]), config)
            rows[label] = {k: row[k] for k in ("cutoff", "n_pred_groups", "pairwise_f1", "bcubed_f1", "recall_at_1")}
            print(name, label, rows[label], flush=True)
        report["sets"][name] = rows
    write_result("multiscale.json", report)


if __name__ == "__main__":
    main()
