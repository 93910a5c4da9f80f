"""`cutoff = "auto"`: a cut that scales with the folder, read off its own nearest neighbours (no labels).

A fused distance is a robust z-score against the folder's random pairs (fusion.py), and -2 (two
robust standard deviations nearer than a typical unrelated pair) suits a folder of varied products.
Where every photo looks alike (one studio, one backdrop, one kind of product) random pairs are close
too, their spread shrinks, and every distance becomes a large negative number: two photos of one
product sit at -25, look-alikes at -10, and -2 merges many products into one group. Larger folders
hold more look-alikes too, and want a stricter cut for the same reason. The distance from each photo
to its nearest neighbour measures that scale: "auto" cuts at AUTO_SCALE x its median over the folder,
and never above -2 (precision first: it is only ever stricter than the fixed default).

AUTO_SCALE = 0.2 was chosen by exact regrouping on grocery (240 to 5,502 photos, its coarse classes,
drawn small folders), the sample and half of the shops (by shop); the other half of the shops was
the check. Measured per folder beside the best fixed cutoff: benchmarks/README.md "Transfer".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble_group.config import AUTO
from ensemble_group.fusion import FusedNeighbours

AUTO_SCALE = 0.2  # the cut, as a share of the median distance of a photo to its nearest neighbour
BASE = -2.0  # the fixed default: "auto" is never more lenient than it (and is it for a folder of one photo)


def auto_cutoff(neigh: FusedNeighbours) -> tuple[float, dict[str, Any]]:
    """(cutoff, what it was read from): min(BASE, AUTO_SCALE x the median nearest-neighbour fused distance)."""
    nearest = neigh.dist[:, 0] if neigh.dist.shape[1] else np.zeros(0)
    nearest = nearest[np.isfinite(nearest)]
    if not len(nearest):
        return BASE, {"rule": AUTO, "nearest_median": None}
    median = float(np.median(nearest))
    return min(BASE, AUTO_SCALE * median), {"rule": AUTO, "nearest_median": round(median, 4), "scale": AUTO_SCALE}


def resolve_cutoff(cutoff: float | str, neigh: FusedNeighbours) -> tuple[float, dict[str, Any]]:
    """The cutoff to group at, and how it was chosen, for a config's `cutoff` (a number or "auto")."""
    if cutoff == AUTO:
        return auto_cutoff(neigh)
    return float(cutoff), {"rule": "fixed"}
