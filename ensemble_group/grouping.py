"""Turning the fused ranking into groups.

Mode "seed" reproduces the original rule as a baseline: images are visited in order; an image not
yet grouped takes its k nearest neighbours under the cutoff that are not yet grouped; an image with
no neighbour under the cutoff is paired with its nearest neighbour (joining that neighbour's group
if it already has one). Greedy and order-dependent: it splits a product whose photos were claimed by
an earlier image's group, which is how the original cut one product into two groups.

Mode "average" (the default) has two steps:
1. Link every pair that one image's fused neighbour list puts under the cutoff, and take connected
   components. Any two photos of one product that are close enough end up in one component however
   they were ordered, so nothing is split by visiting order.
2. Inside each component run average-linkage clustering on the exact fused distances of all its
   pairs, cut at the same cutoff. Connected components alone chain unrelated products through a
   series of close pairs (A~B, B~C, C~D though A and D look nothing alike); average linkage merges
   two groups only when their photos are close *on average*, so a chain breaks at its weak middle
   while a product's catalogue shot, model shots and close-up, which are mostly close to each other,
   stay together. Single linkage would chain; complete linkage would split a product whose back view
   is far from its close-up; average sits between them and is the standard choice for this reason.
Singletons are allowed: a product with one photo is a group of one.
Mode "components" (plain connected components, step 1 alone) is kept as a baseline for `compare`.
Memory stays linear: the only dense matrices are per component, and a component larger than
`max_component` is first cut into pieces by raising its edge threshold until they fit.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from ensemble_group.fusion import FusedNeighbours, Fusion


def group_seed(neigh: FusedNeighbours, cutoff: float, k: int = 5) -> np.ndarray:
    """The original greedy rule. Returns (n,) group labels."""
    n = len(neigh.ids)
    label = np.full(n, -1, dtype=np.int64)
    next_label = 0
    for i in range(n):
        if label[i] >= 0:
            continue
        ids, dist = neigh.ids[i, :k], neigh.dist[i, :k]
        ids, dist = ids[ids >= 0], dist[ids >= 0]
        if len(ids) and not (dist < cutoff).any():
            nearest = ids[0]
            if label[nearest] >= 0:
                label[i] = label[nearest]
                continue
            members = [nearest]
        else:
            members = [j for j, d in zip(ids, dist) if d < cutoff and label[j] < 0]
        label[[i, *members]] = next_label
        next_label += 1
    return canonical(label)


def group_average(neigh: FusedNeighbours, fusion: Fusion, cutoff: float, *,
                  max_component: int = 4000) -> np.ndarray:
    """Connected components of the cutoff graph, each split by average linkage. Returns (n,) labels."""
    n = len(neigh.ids)
    rows, cols = np.nonzero((neigh.dist <= cutoff) & (neigh.ids >= 0))
    src, dst, w = rows, neigh.ids[rows, cols], neigh.dist[rows, cols]
    label = np.full(n, -1, dtype=np.int64)
    next_label = 0
    for members in _components(np.arange(n), src, dst, w, cutoff, max_component):
        for part in _average_linkage(members, fusion, cutoff):
            label[part] = next_label
            next_label += 1
    return canonical(label)


def _components(members, src, dst, w, threshold, max_component):
    """Yield the connected components (global ids) of the graph on sorted `members`.

    A component larger than max_component is cut again, keeping only its edges at or below their
    median weight, until every piece is small enough for a dense average-linkage step.
    """
    m = len(members)
    ls, ld = np.searchsorted(members, src), np.searchsorted(members, dst)
    count, comp = connected_components(coo_matrix((np.ones(len(ls)), (ls, ld)), shape=(m, m)), directed=False)
    for c in range(count):
        inside = comp == c
        sub = members[inside]
        if len(sub) <= max_component:
            yield sub
            continue
        sel = inside[ls]
        stricter = float(np.median(w[sel]))
        if stricter >= threshold:  # no weaker edges left to drop: cut by position instead
            for s in range(0, len(sub), max_component):
                yield sub[s:s + max_component]
            continue
        keep = sel & (w <= stricter)
        yield from _components(sub, src[keep], dst[keep], w[keep], stricter, max_component)


def _average_linkage(members: np.ndarray, fusion: Fusion, cutoff: float) -> list[np.ndarray]:
    if len(members) <= 2:
        if len(members) == 2 and fusion.pairs(members[:1], members[1:])[0] > cutoff:
            return [members[:1], members[1:]]
        return [members]
    d = fusion.matrix(members)
    low = min(float(d[~np.eye(len(d), dtype=bool)].min()), 0.0)  # linkage needs d >= 0: shift,
    shifted = d - low                                          # average linkage is shift-equivariant
    np.fill_diagonal(shifted, 0.0)
    tree = linkage(squareform(shifted, checks=False), method="average")
    flat = fcluster(tree, t=cutoff - low, criterion="distance")
    return [members[flat == c] for c in np.unique(flat)]


def canonical(label: np.ndarray) -> np.ndarray:
    """Renumber groups 0..g-1 in order of their first image, so equal groupings compare equal."""
    _, first = np.unique(label, return_index=True)
    order = np.argsort(first)
    mapping = np.empty(len(first), dtype=np.int64)
    mapping[order] = np.arange(len(first))
    return mapping[np.unique(label, return_inverse=True)[1]]


def group_components(neigh: FusedNeighbours, cutoff: float) -> np.ndarray:
    """Plain connected components of the cutoff graph: a baseline that shows the chaining problem."""
    n = len(neigh.ids)
    rows, cols = np.nonzero((neigh.dist <= cutoff) & (neigh.ids >= 0))
    graph = coo_matrix((np.ones(len(rows)), (rows, neigh.ids[rows, cols])), shape=(n, n))
    return canonical(connected_components(graph, directed=False)[1])


def group(neigh: FusedNeighbours, fusion: Fusion, mode: str, cutoff: float, k: int) -> np.ndarray:
    """Dispatch on the configured mode."""
    if mode == "seed":
        return group_seed(neigh, cutoff, k)
    if mode == "components":
        return group_components(neigh, cutoff)
    if mode == "average":
        return group_average(neigh, fusion, cutoff)
    raise ValueError(f"unknown grouping mode {mode!r}")
