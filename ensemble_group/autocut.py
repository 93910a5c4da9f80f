"""`cutoff = "auto"`: a cut that scales with the folder, read off its own nearest neighbours (no labels).

A fused distance is a robust z-score against the folder's random pairs (fusion.py). Where every photo
looks alike (one studio, one backdrop, one kind of product) random pairs are close too, their spread
shrinks, and every distance becomes a large negative number: two photos of one product sit at -20,
look-alikes at -10, and the fixed -2 merges many products into one group. The distance from each
photo to its nearest neighbour measures that scale: "auto" cuts at AUTO_SCALE (0.4) x its median
over the folder. On catalogue photos (a few photos per product) that follows the best cut per
folder from -2 to -10; where products come in bursts of many near-identical photos (shelf photos,
50+ per product) the nearest neighbour is a near-duplicate and the cut comes out too strict: there,
a fixed cutoff (-2) groups better. Measured per folder beside the best fixed cutoff in
benchmarks/README.md "Transfer"; 0.4 was chosen on grocery, the sample and half of the shops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble_group.fusion import FusedNeighbours

AUTO = "auto"
AUTO_SCALE = 0.4  # the cut, as a share of the median distance of a photo to its nearest neighbour
FALLBACK = -2.0  # a folder with no pair at all (one photo)


def auto_cutoff(neigh: FusedNeighbours) -> tuple[float, dict[str, Any]]:
    """(cutoff, what it was read from): AUTO_SCALE x the median nearest-neighbour fused distance."""
    nearest = neigh.dist[:, 0] if neigh.dist.shape[1] else np.zeros(0)
    nearest = nearest[np.isfinite(nearest)]
    if not len(nearest):
        return FALLBACK, {"rule": AUTO, "nearest_median": None}
    median = float(np.median(nearest))
    return AUTO_SCALE * median, {"rule": AUTO, "nearest_median": round(median, 4), "scale": AUTO_SCALE}


def resolve_cutoff(cutoff: float | str, neigh: FusedNeighbours) -> tuple[float, dict[str, Any]]:
    """The cutoff to group at, and how it was chosen, for a config's `cutoff` (a number or "auto")."""
    if cutoff == AUTO:
        return auto_cutoff(neigh)
    return float(cutoff), {"rule": "fixed"}
