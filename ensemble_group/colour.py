"""The colour member: a CIE Lab histogram of each photo's foreground, a member that sees differently.

ImageNet CNNs are trained to name objects whatever their colour, so their pooled vectors put a red
and a blue shirt of one cut side by side; a colour histogram does the opposite. As one more member
beside the CNNs it moved the default grouping on grocery and on the shops' catalogue photos
(benchmarks/README.md, "Colour member"), at a few milliseconds per photo and with no weights.

The photo is shrunk to at most THUMB px; the background is the pixels within PAD_TOLERANCE of the
border's median colour (catalogue shots sit on a plain backdrop), and is left out unless it is nearly
all of the photo. The rest is binned in Lab (L in 4 bins, a and b in 8: lightness matters least) and
the vector is the square root of the bin shares (Hellinger), which has unit length. Bins are hard: a
flat colour right at a bin's edge can land on either side of it. Sharing each pixel between the
nearest bins (soft binning) removes that, but grouped worse on the folders measured (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from ensemble_group.images import PAD_TOLERANCE, border_colour

THUMB = 128  # the longest side the histogram is taken at: enough pixels, little work
BINS = (4, 8, 8)  # L, a, b
DIM = int(np.prod(BINS))
MIN_FOREGROUND = 0.05  # a "foreground" under this share of the photo is the photo itself (no backdrop)
VERSION = "lab-4x8x8-v1"  # changes whenever the vectors would: part of the cache key

# sRGB (D65) -> XYZ, and the D65 white point
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_WHITE = np.array([0.95047, 1.0, 1.08883])
_C = np.arange(256) / 255.0
_LINEAR = np.where(_C <= 0.04045, _C / 12.92, ((_C + 0.055) / 1.055) ** 2.4)  # sRGB's gamma undone, per 8-bit value


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float CIE L*a*b* (D65): L in 0..100, a and b about -128..127."""
    t = (_LINEAR[rgb] @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def foreground(rgb: np.ndarray) -> np.ndarray:
    """(h, w) bool: the pixels that differ from the border's median colour by more than PAD_TOLERANCE
    in some channel; all of them where that leaves under MIN_FOREGROUND (a photo with no backdrop)."""
    mask = (np.abs(rgb.astype(np.int16) - border_colour(rgb)) > PAD_TOLERANCE).any(axis=2)
    return mask if mask.mean() >= MIN_FOREGROUND else np.ones_like(mask)


def colour_histogram(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> (DIM,) float32 unit vector: sqrt of the foreground's Lab bin shares."""
    small = Image.fromarray(image)
    small.thumbnail((THUMB, THUMB))
    rgb = np.asarray(small)
    lab = srgb_to_lab(rgb[foreground(rgb)])
    # binned in the 8-bit Lab encoding (L x 2.55, a and b + 128, rounded), so the many neutral pixels of
    # a catalogue shot (a = b = 0 up to float noise) fall in one bin, not on either side of its edge
    coded = np.clip(np.rint(lab * (2.55, 1, 1) + (0, 128, 128)), 0, 255).astype(np.int64)
    bins = coded // (256 // np.array(BINS))
    counts = np.bincount(np.ravel_multi_index(bins.T, BINS), minlength=DIM)
    return np.sqrt(counts / max(counts.sum(), 1)).astype(np.float32)


class ColourMember:
    """The colour member behind the extractors' interface: decoded photos in, (n, DIM) vectors out.
    It needs no model, no weights and no framing (it reads the whole photo), so it has nothing to load."""

    runtime = "numpy"

    def embed(self, images: Sequence[np.ndarray], progress: Callable[[int], None] | None = None) -> np.ndarray:
        rows = np.zeros((len(images), DIM), np.float32)
        for i, image in enumerate(images):
            rows[i] = colour_histogram(image)
            if progress:
                progress(1)
        return rows
