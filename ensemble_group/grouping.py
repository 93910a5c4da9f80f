"""Turning the fused ranking into groups.

Mode "graph" (the default) is average linkage over the neighbour graph: two groups merge when the
mean fused distance of the neighbour-list pairs that exist between them is under the cutoff, and
enough such pairs exist (at least half the size of the smaller group). Photos of one product that
were taken from very different angles are never in each other's neighbour lists, so they do not
count against the product; they are joined through the views in between (no split, the original's
failure). A look-alike product touches another through one or two close pairs, which is not enough
support (no chaining, the failure of plain connected components). Merges happen in rounds of
mutually best partners, vectorised, with memory linear in the number of images.

Mode "average" is classic average linkage inside each connected component of the cutoff graph:
a merge needs the photos to be close on average over *all* their pairs. Strict and good on small
products; it splits products with many varied photos (measured in benchmarks/).

Mode "seed" reproduces the original rule as a baseline: images are visited in order; an image not
yet grouped takes its k nearest neighbours under the cutoff that are not yet grouped; an image with
no neighbour under the cutoff is paired with its nearest neighbour (joining that neighbour's group
if it already has one). Greedy and order-dependent: it splits a product whose photos were claimed by
an earlier image's group, which is how the original cut one product into two groups.

Modes "components" (plain connected components of the cutoff graph) and "mutual" (the same, but an
edge needs both images in each other's top k) are baselines for `compare`.
Singletons are allowed in every mode: a product with one photo is a group of one. With
`alone_margin` > 0 (0.5 by default), `attach_alone` then gives an image left alone to the group it is
clearly nearest to on average: it gains where products have few photos, and keeps a product's
close-up with it (benchmarks/README "Lone images").
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ensemble_group.autocut import resolve_cutoff
from ensemble_group.config import Config
from ensemble_group.corrections import Constraints
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
    from scipy.cluster.hierarchy import fcluster, linkage  # only mode "average": 70 ms of every start-up otherwise
    from scipy.spatial.distance import squareform

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


def group_components(neigh: FusedNeighbours, cutoff: float, mutual_k: int = 0) -> np.ndarray:
    """Connected components of the cutoff graph. Plain (mutual_k=0) it is the baseline that shows the
    chaining problem; with mutual_k, an edge also needs each image in the other's top mutual_k."""
    n = len(neigh.ids)
    src, dst = _edges(neigh, cutoff, mutual_k)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    return canonical(connected_components(graph, directed=False)[1])


def _edges(neigh: FusedNeighbours, cutoff: float, mutual_k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) of the pairs under the cutoff; with mutual_k only pairs in each other's top mutual_k."""
    top = neigh.ids[:, :mutual_k] if mutual_k else neigh.ids
    rows, cols = np.nonzero((neigh.dist[:, :top.shape[1]] <= cutoff) & (top >= 0))
    src, dst = rows, top[rows, cols]
    if mutual_k:
        n = len(neigh.ids)
        pair = src.astype(np.int64) * n + dst
        back = dst.astype(np.int64) * n + src
        keep = np.isin(back, pair)
        src, dst = src[keep], dst[keep]
    return src, dst


def group_graph(neigh: FusedNeighbours, cutoff: float, support: float = 0.5,
                constraints: Constraints | None = None) -> np.ndarray:
    """Average linkage over the neighbour graph only, with a support rule against chaining.

    Two groups merge when the mean fused distance of the neighbour-list pairs *that exist* between
    them is under the cutoff, and those pairs involve at least `support` x (size of the smaller group)
    of pairs: far views of one product (never in each other's lists) do not count against it, while a
    single look-alike pair cannot glue two products together. Merges happen in rounds of mutually
    best partners (exact for average linkage, and vectorised), so it scales to 100k+ images.
    With `constraints` (a reviewer's corrections), must-linked images start as one group and two
    groups holding a cannot-linked pair never merge.
    """
    n = len(neigh.ids)
    a, b, w = _listed_pairs(neigh)
    label = np.arange(n) if not constraints else _must_groups(n, constraints.must)
    size = np.bincount(label, minlength=n)
    while True:
        ca, cb = label[a], label[b]
        between = ca != cb
        a, b, w, ca, cb = a[between], b[between], w[between], ca[between], cb[between]
        if not len(a):
            break
        x, y = np.minimum(ca, cb), np.maximum(ca, cb)
        pairs, inverse = np.unique(x.astype(np.int64) * n + y, return_inverse=True)
        count = np.bincount(inverse)
        mean = np.bincount(inverse, weights=w) / count
        px, py = pairs // n, pairs % n
        ok = (mean <= cutoff) & (count >= support * np.minimum(size[px], size[py]))
        if constraints is not None and len(constraints.cannot):
            la, lb = label[constraints.cannot[:, 0]], label[constraints.cannot[:, 1]]
            ok &= ~np.isin(pairs, np.minimum(la, lb).astype(np.int64) * n + np.maximum(la, lb))
        if not ok.any():
            break
        px, py, mean = px[ok], py[ok], mean[ok]
        # each group's best partner; merge the pairs that are each other's best
        ends = np.concatenate([px, py])
        partner = np.concatenate([py, px])
        order = np.lexsort((partner, np.concatenate([mean, mean]), ends))
        ends, partner = ends[order], partner[order]
        head = np.r_[True, ends[1:] != ends[:-1]]
        best = np.full(n, -1)
        best[ends[head]] = partner[head]
        g = ends[head]
        g = g[(best[best[g]] == g) & (g < best[g])]  # mutual best pairs: disjoint, merged together
        if not len(g):
            break
        remap = np.arange(n)
        remap[best[g]] = g
        np.add.at(size, g, size[best[g]])
        label = remap[label]
    return canonical(label)


def _must_groups(n: int, must: np.ndarray) -> np.ndarray:
    """(n,) labels joining must-linked images: each group labelled by its lowest image (graph's convention)."""
    graph = coo_matrix((np.ones(len(must)), (must[:, 0], must[:, 1])), shape=(n, n))
    comp = connected_components(graph, directed=False)[1]
    lowest = np.full(comp.max() + 1 if n else 0, n)
    np.minimum.at(lowest, comp, np.arange(n))
    return lowest[comp]


def _listed_pairs(neigh: FusedNeighbours) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, w): every pair named in a neighbour list, once (a < b), with its fused distance."""
    n = len(neigh.ids)
    rows, cols = np.nonzero(neigh.ids >= 0)
    a, b, w = rows, neigh.ids[rows, cols], neigh.dist[rows, cols]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(lo.astype(np.int64) * n + hi, return_index=True)
    return lo[first], hi[first], w[first]


def group_margins(label: np.ndarray, neigh: FusedNeighbours, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """How sure each group is: ((g,) margin, (g,) nearest other group), g = label.max() + 1.

    A group's cohesion is the mean fused distance of the listed pairs inside it (the merges it
    accepted), its separation the lowest mean over the listed pairs to any other group (the merge
    it refused), as graph grouping measures groups. margin = min(cutoff - cohesion, separation -
    cutoff): how far the cutoff would have to move to change the group; small or negative means
    "check this one". A singleton has only its separation; a group with no listed pair to any other
    has only its cohesion (inf when it has neither). nearest: the closest other group's label (-1: none).
    """
    g = int(label.max()) + 1 if len(label) else 0
    a, b, w = _listed_pairs(neigh)
    la, lb = label[a], label[b]
    inside = la == lb
    count = np.bincount(la[inside], minlength=g)
    cohesion = np.where(count > 0, np.bincount(la[inside], weights=w[inside], minlength=g) / np.maximum(count, 1), -np.inf)
    x, y, wx = la[~inside], lb[~inside], w[~inside]
    pair, inverse = np.unique(np.minimum(x, y).astype(np.int64) * g + np.maximum(x, y), return_inverse=True)
    mean = np.bincount(inverse, weights=wx) / np.bincount(inverse) if len(pair) else np.zeros(0)
    separation, nearest = np.full(g, np.inf), np.full(g, -1)
    for ends, other in ((pair // g, pair % g), (pair % g, pair // g)):
        order = np.lexsort((other, -mean, ends))  # per group, its nearest partner last
        last = np.r_[ends[order][1:] != ends[order][:-1], True] if len(order) else np.zeros(0, dtype=bool)
        e, o, m = ends[order][last], other[order][last], mean[order][last]
        closer = m < separation[e]
        separation[e[closer]], nearest[e[closer]] = m[closer], o[closer]
    margin = np.minimum(cutoff - cohesion, separation - cutoff)
    return margin, nearest


def attach_alone(label: np.ndarray, neigh: FusedNeighbours, margin: float,
                 constraints: Constraints | None = None) -> np.ndarray:
    """Put an image left alone into the group it is clearly nearest to, on average.

    A close-up or an odd view of a product can be far from every photo by the cutoff's measure and
    still be plainly nearer to one product than to anything else. An image alone in its group joins
    the group with the lowest mean fused distance over the neighbour-list pairs between them (either
    direction, as graph grouping counts them) when that mean is nearer than a typical unrelated pair
    (< 0) and nearer, by at least `margin`, than any other group's. A group's mean, not its nearest
    photo: a close-up can be as near one photo of a look-alike as the nearest of its own product's,
    while nearer to all of its own (benchmarks/README "Lone images"). Only images that were alone
    move, each at most once, so no chain can form; never into a group it is cannot-linked to
    (`constraints`). margin <= 0: off.
    """
    if margin <= 0:
        return label
    n = len(label)
    alone = np.bincount(label, minlength=n)[label] == 1
    valid = neigh.ids >= 0
    listed = np.maximum(neigh.ids, 0)
    own = np.nonzero(valid & alone[:, None])  # the lone images' own lists
    back = np.nonzero(valid & alone[listed])  # other images' lists that name a lone image
    lone = np.r_[own[0], listed[back]]
    other = np.r_[listed[own], back[0]]
    dist = np.r_[neigh.dist[own], neigh.dist[back]]
    keep = lone != other
    lone, other, dist = lone[keep], other[keep], dist[keep]
    order = np.lexsort((dist, other, lone))  # by lone image, then pair; a pair listed twice: nearer first
    lone, other, dist = lone[order], other[order], dist[order]
    _, first = np.unique(lone.astype(np.int64) * n + other, return_index=True)
    lone, other, dist = lone[first], other[first], dist[first]
    starts = np.flatnonzero(np.r_[True, lone[1:] != lone[:-1]]) if len(lone) else np.array([], dtype=np.int64)
    out = label.copy()
    apart = defaultdict(list)  # image -> the images it is cannot-linked to
    for x, y in (constraints.cannot if constraints is not None else ()):
        apart[x].append(y)
        apart[y].append(x)
    for i, js, ds in zip(lone[starts], np.split(other, starts[1:]), np.split(dist, starts[1:])):
        if apart[i]:
            allowed = ~np.isin(out[js], out[apart[i]])
            js, ds = js[allowed], ds[allowed]
            if not len(js):
                continue
        groups, which = np.unique(out[js], return_inverse=True)  # `out`: two lone images can pair up
        mean = np.bincount(which, weights=ds) / np.bincount(which)
        ranked = np.argsort(mean)
        if mean[ranked[0]] < 0 and (len(ranked) == 1 or mean[ranked[1]] - mean[ranked[0]] >= margin):
            out[i] = groups[ranked[0]]
    return canonical(out)


def group(neigh: FusedNeighbours, fusion: Fusion, mode: str, cutoff: float, k: int,
          alone_margin: float = 0.0, constraints: Constraints | None = None) -> np.ndarray:
    """Dispatch on the configured mode, then `attach_alone` with `alone_margin`; `constraints` (a
    reviewer's corrections) are honoured by mode "graph" only."""
    if constraints and mode != "graph":
        raise ValueError(f'corrections need grouping mode "graph" (the default); mode {mode!r} is a baseline')
    if mode == "seed":
        label = group_seed(neigh, cutoff, k)
    elif mode == "components":
        label = group_components(neigh, cutoff)
    elif mode == "mutual":
        label = group_components(neigh, cutoff, mutual_k=k)
    elif mode == "graph":
        label = group_graph(neigh, cutoff, constraints=constraints)
    elif mode == "average":
        label = group_average(neigh, fusion, cutoff)
    else:
        raise ValueError(f"unknown grouping mode {mode!r}")
    return attach_alone(label, neigh, alone_margin, constraints)


def group_as(config: Config, neigh: FusedNeighbours, fusion: Fusion, cutoff: float | None = None,
             constraints: Constraints | None = None) -> np.ndarray:
    """`group` with a config's grouping settings (mode, k, alone_margin); `cutoff` overrides the config's
    (which may be "auto": autocut.resolve_cutoff reads it off `neigh`)."""
    if cutoff is None:
        cutoff = resolve_cutoff(config.cutoff, neigh)[0]
    return group(neigh, fusion, config.mode, cutoff, config.k, config.alone_margin, constraints)
