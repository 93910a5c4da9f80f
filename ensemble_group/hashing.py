"""Perceptual hashes as a baseline "model": average, difference and perceptual (DCT) hash.

The original problem statement considered hashes first; `compare` shows them beside the CNNs with
the same grouper. A 64-bit hash becomes a (64,) vector of +-1/8: its angular distance is then
2 * sqrt(hamming / 64), a monotone function of the Hamming distance, so Annoy, the fusion and the
grouper work on hashes unchanged.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

HASHES = {"ahash": imagehash.average_hash, "dhash": imagehash.dhash, "phash": imagehash.phash}
HASH_SIZE = 8  # 8 x 8 = 64 bits, imagehash's default


def hash_vectors(images: list[np.ndarray], method: str) -> np.ndarray:
    """Decoded (H, W, 3) uint8 images -> (n, 64) float32 unit vectors of +-1/8 per bit."""
    if method not in HASHES:
        raise ValueError(f"unknown hash {method!r}; valid: {', '.join(HASHES)}")
    fn = HASHES[method]
    bits = np.array([fn(Image.fromarray(a), hash_size=HASH_SIZE).hash.ravel() for a in images], dtype=np.float32)
    return ((2.0 * bits - 1.0) / np.sqrt(HASH_SIZE * HASH_SIZE)).reshape(len(images), HASH_SIZE * HASH_SIZE)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between hash vectors made by `hash_vectors`."""
    return np.sum(np.sign(a) != np.sign(b), axis=-1)
