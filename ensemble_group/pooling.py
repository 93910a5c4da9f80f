"""Pooling: a net's last convolutional map (n, h, w, c) -> one vector per image (n, c), and unit length.

Each head exists twice, beside each other: as Keras layers built into the float nets (`pooled`), and
in numpy for the int8 members, whose backbone gives the map and whose pooling stays in float (`pool`);
tests/test_quantise.py checks the two equal.
"""

from __future__ import annotations

import numpy as np

from ensemble_group import quiet_tf

GEM_P = 3.0  # Radenovic et al. 2018: p = 3 is their fixed, untrained choice


def pooled(model: "keras.Model", pooling: str) -> "keras.Model":  # noqa: F821
    """The same net with `pooling` (avg | gem | rmac) of its last map in place of its global average.

    Shares the layers (and any acceleration) of `model`; "avg" returns `model` itself.
    """
    keras = quiet_tf.keras()

    if pooling == "avg":
        return model
    if not isinstance(model.layers[-1], keras.layers.GlobalAveragePooling2D):
        raise ValueError(f"{model.name}: {pooling} pooling needs a net ending in global average pooling")
    fmap = model.layers[-2].output
    head = gem if pooling == "gem" else rmac(int(fmap.shape[1]), int(fmap.shape[2]))
    return keras.Model(model.input, keras.layers.Lambda(head, name=pooling)(fmap), name=f"{model.name}_{pooling}")


def gem(x):
    """Generalized-mean pooling of (n, h, w, c) maps, (mean x^p)^(1/p): it weighs each channel's
    strongest activations more than average pooling does, so a product's distinctive print or logo
    counts for more than the background. Every member's last map is post-ReLU (x >= 0), as GeM needs."""
    keras = quiet_tf.keras()

    return keras.ops.power(keras.ops.mean(keras.ops.power(keras.ops.maximum(x, 1e-6), GEM_P), axis=(1, 2)),
                           1.0 / GEM_P)


RMAC_LEVELS = 3  # Tolias et al. 2016: regions at 3 scales


def rmac_regions(h: int, w: int, levels: int = RMAC_LEVELS, overlap: float = 0.4) -> list[tuple[int, int, int]]:
    """(top, left, side) of the R-MAC regions of an (h, w) map, sampled as in Radenovic et al.'s
    cnnimageretrieval: the whole map, then at level l squares of side 2 min(h, w) / (l + 1) spread
    evenly with about `overlap` (a 7 x 7 map: the whole map twice, 4 squares of 4, 9 of 3)."""
    side = min(h, w)
    steps = np.arange(2, 8)
    b = (max(h, w) - side) / (steps - 1)
    extra = int(np.argmin(np.abs((side ** 2 - side * b) / side ** 2 - overlap))) + 1
    wd, hd = (extra, 0) if h < w else (0, extra) if h > w else (0, 0)
    out = [(0, 0, 0)]  # side 0: the whole map
    for level in range(1, levels + 1):
        wl = int(np.floor(2 * side / (level + 1)))
        if wl == 0:
            continue
        half = np.floor(wl / 2 - 1)
        bw = 0 if level + wd == 1 else (w - wl) / (level + wd - 1)
        bh = 0 if level + hd == 1 else (h - wl) / (level + hd - 1)
        lefts = np.floor(half + np.arange(level + wd) * bw) - half
        tops = np.floor(half + np.arange(level + hd) * bh) - half
        out += [(int(t), int(left), wl) for t in tops for left in lefts]
    return out


def rmac(h: int, w: int):
    """R-MAC pooling (Tolias et al., ICLR 2016) of (n, h, w, c) maps: each region of `rmac_regions`
    max-pooled and l2-normalised, the regions summed. A product that fills only part of the photo (a
    close-up's detail, a packet on a shelf) still has regions of its own, where the global average
    mixes it with the background."""
    keras = quiet_tf.keras()

    boxes = [(0, 0, h, w) if s == 0 else (t, left, s, s) for t, left, s in rmac_regions(h, w)]

    def pool(x):
        total = 0.0
        for top, left, dh, dw in boxes:
            v = keras.ops.max(x[:, top:top + dh, left:left + dw, :], axis=(1, 2))
            total = total + v / keras.ops.maximum(keras.ops.norm(v, axis=-1, keepdims=True), 1e-30)  # 0 stays 0
        return total

    return pool


def pool(maps: np.ndarray, pooling: str) -> np.ndarray:
    """(n, h, w, c) maps -> (n, c) float32, the same pooling as `pooled` builds into the float nets (avg | gem | rmac), here in numpy."""
    maps = np.asarray(maps, np.float32)
    if pooling == "avg":
        return maps.mean(axis=(1, 2))
    if pooling == "gem":
        return np.power(np.power(np.maximum(maps, 1e-6), GEM_P).mean(axis=(1, 2)), 1.0 / GEM_P).astype(np.float32)
    if pooling != "rmac":
        raise ValueError(f"unknown pooling {pooling!r}")
    h, w = maps.shape[1:3]
    total = np.zeros((len(maps), maps.shape[3]), np.float32)
    for top, left, side in rmac_regions(h, w):
        dh, dw = (h, w) if side == 0 else (side, side)
        v = maps[:, top:top + dh, left:left + dw, :].max(axis=(1, 2))
        total += v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
    return total


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (an all-black crop can give one)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0).astype(np.float32)
