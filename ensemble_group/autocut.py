"""`cutoff = "auto"`: a cut that scales with the folder, read off its own nearest neighbours (no labels).

A fused distance is a robust z-score against the folder's random pairs (fusion.py), and -2 (two
robust standard deviations nearer than a typical unrelated pair) suits a folder of varied products.
Where every photo looks alike (one studio, one backdrop, one kind of product) random pairs are close
too, their spread shrinks, and every distance becomes a large negative number: two photos of one
product sit at -25, look-alikes at -10, and -2 merges many products into one group. Larger folders
hold more look-alikes too, and want a stricter cut for the same reason. The distance from each photo
to its nearest neighbour measures that scale: "auto" cuts at a share of its median over the folder,
and never above -2 (precision first: it is only ever stricter than the fixed default).

The share follows how fast a photo's neighbours fall away, the folder's `falloff`: the median fused
distance to the 5th nearest over the median to the nearest. Where products have many photos, the 5th
nearest is still the same product and keeps half or more of the nearest's distance (falloff 0.45-0.6
on grocery's folders): the cut can sit close to the nearest distance's scale without splitting them
(share 0.2). Where products have two to four photos each (a shop's catalogue), the 5th nearest is
already a look-alike, far behind the first (falloff 0.1-0.38 on the shops), and look-alikes are what
the cut must keep out: the share rises to 0.6 - falloff, so a shop's cut is stricter. It never goes
below 0.2 (the rule before it, and what folders of bursts of near-identical photos need) nor above
0.6.

The constants (0.6, 0.2, the 5th nearest) were chosen by exact regrouping on grocery (240 to 5,502
photos, its coarse classes, drawn small folders), the sample and half of the shops (by shop); the
other half of the shops was the check. Measured per folder beside the best fixed cutoff:
benchmarks/README.md "Transfer".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble_group.config import AUTO
from ensemble_group.fusion import FusedNeighbours

BASE = -2.0  # the fixed default: "auto" is never more lenient than it (and is it for a folder of one photo)
FALLOFF_RANK = 5  # the falloff compares the median distance to this nearest (or the farthest listed) with the nearest
SHARE_AT_NO_FALLOFF = 0.6  # the share where the 5th nearest is as far as a typical pair (products of one or two photos)
MIN_SHARE = 0.2  # the share where the 5th nearest is about as near as the first (products with many photos)


def auto_cutoff(neigh: FusedNeighbours) -> tuple[float, dict[str, Any]]:
    """(cutoff, what it was read from): min(BASE, share x the median nearest-neighbour fused distance),
    share = clip(SHARE_AT_NO_FALLOFF - falloff, MIN_SHARE, SHARE_AT_NO_FALLOFF)."""
    nearest = _median(neigh, 0)
    if nearest is None:
        return BASE, {"rule": AUTO, "nearest_median": None}
    fifth = _median(neigh, min(FALLOFF_RANK, neigh.dist.shape[1]) - 1)
    # nearest >= 0: no scale to read (the cut is BASE anyway); no 5th listed: the share before the falloff
    falloff = fifth / nearest if nearest < 0 and fifth is not None else 1.0
    share = float(np.clip(SHARE_AT_NO_FALLOFF - falloff, MIN_SHARE, SHARE_AT_NO_FALLOFF))
    return min(BASE, share * nearest), {"rule": AUTO, "nearest_median": round(nearest, 4),
                                        "falloff": round(falloff, 4), "scale": round(share, 4)}


def _median(neigh: FusedNeighbours, rank: int) -> float | None:
    """The median over the folder of each photo's fused distance to its (rank + 1)-th nearest (None: none listed)."""
    if neigh.dist.shape[1] <= rank:
        return None
    d = neigh.dist[:, rank]
    d = d[np.isfinite(d)]
    return float(np.median(d)) if len(d) else None


def describe(how: dict[str, Any]) -> str:
    """How a cutoff was chosen, in words (the summary line, the report): "fixed", or what "auto" read."""
    if "falloff" not in how:  # fixed, or a folder with no neighbour to read a scale from
        return str(how.get("rule"))
    return (f"auto: {how['scale']:.2f} x the median nearest distance {how['nearest_median']:.2f}, "
            f"falloff {how['falloff']:.2f}, never above {BASE:g}")


def resolve_cutoff(cutoff: float | str, neigh: FusedNeighbours) -> tuple[float, dict[str, Any]]:
    """The cutoff to group at, and how it was chosen, for a config's `cutoff` (a number or "auto")."""
    if cutoff == AUTO:
        return auto_cutoff(neigh)
    return float(cutoff), {"rule": "fixed"}
