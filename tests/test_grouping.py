"""Both grouping modes on hand-made vectors with known answers."""

import numpy as np

from ensemble_group.fusion import Fusion
from ensemble_group.grouping import canonical, group, group_average
from ensemble_group.index import ModelIndex


def on_circle(angles, dim=16, plane=(0, 1)):
    """Unit vectors at the given angles (radians) in one plane: angular distance = 2 sin(delta/2)."""
    v = np.zeros((len(angles), dim), dtype=np.float32)
    v[:, plane[0]], v[:, plane[1]] = np.cos(angles), np.sin(angles)
    return v


def run(vectors, mode, cutoff, k=5):
    fusion = Fusion.fit({"m": vectors}, method="none")  # raw angular distances: easy to reason about
    neigh = fusion.neighbours({"m": ModelIndex(vectors.shape[1], n_trees=10).build(vectors)}, k=k)
    return group(neigh, fusion, mode, cutoff, k)


def test_a_chain_of_close_pairs_does_not_merge_into_one_group():
    angles = np.arange(10) * 0.1  # neighbours 0.0999 apart, the ends 0.88 apart
    v = on_circle(angles)
    # plain connected components at this cutoff would make one group of all ten (check it):
    from scipy.sparse.csgraph import connected_components
    d = np.sqrt(np.clip(2 - 2 * v @ v.T, 0, None))
    assert connected_components(d < 0.15, directed=False)[0] == 1
    labels = run(v, "average", 0.15)
    for g in np.unique(labels):
        members = angles[labels == g]
        assert members.max() - members.min() <= 0.25  # no group spans more than a few links
    assert len(np.unique(labels)) >= 4


def test_a_product_with_a_far_back_view_is_not_split_and_look_alikes_stay_apart():
    # product A: catalogue shot at 0; model shots at +-0.1; back view at 0.18, 0.28 from one model shot
    # (complete linkage would cut it off; average linkage keeps it: 0.18 on average from the others)
    # product B: four photos around 1.0 rad, a look-alike product nowhere near A's photos on average
    a = [0.0, 0.1, -0.1, 0.18]
    b = [1.0, 1.08, 0.95, 1.12]
    v = on_circle(np.array(a + b))
    labels = run(v, "average", 0.2)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_singletons_are_allowed():
    v = on_circle(np.array([0.0, 0.05, 1.0, 2.0, 3.0]))
    labels = run(v, "average", 0.2)
    assert labels.tolist() == [0, 0, 1, 2, 3]


def test_seed_mode_reproduces_the_original_greedy_rule_and_its_split():
    # image 0 (a look-alike) sits next to product P's first photo (1); P = photos 1..4, close to each
    # other; image 5 is far from everything. Visiting 0 first claims photo 1 for 0's group, so the
    # greedy rule splits P: {0,1}, {2,3,4}; image 5 has nothing under the cutoff and is paired with
    # its nearest neighbour (4), joining that neighbour's group.
    v = on_circle(np.array([-0.09, 0.0, 0.04, 0.08, 0.12, 0.6]))
    labels = run(v, "seed", cutoff=0.095, k=5)
    assert labels.tolist() == [0, 0, 1, 1, 1, 1]  # product P cut in two
    # the default mode keeps P whole: 0 is closer to 1 than the cutoff, but far from P on average
    labels = run(v, "average", cutoff=0.1)
    assert labels[1] == labels[2] == labels[3] == labels[4]
    assert labels[0] != labels[1]


def test_oversized_components_are_cut_before_linkage():
    v = on_circle(np.arange(40) * 0.01)
    fusion = Fusion.fit({"m": v}, method="none")
    neigh = fusion.neighbours({"m": ModelIndex(16, n_trees=10).build(v)}, k=5)
    labels = group_average(neigh, fusion, 0.05, max_component=8)
    assert len(labels) == 40 and np.bincount(labels).max() <= 8


def test_canonical_numbers_groups_by_first_image():
    assert canonical(np.array([5, 5, 2, 9, 2])).tolist() == [0, 0, 1, 2, 1]


def test_components_mode_is_the_chaining_baseline():
    v = on_circle(np.arange(10) * 0.1)
    assert run(v, "components", 0.15).tolist() == [0] * 10


def test_graph_mode_keeps_a_product_seen_from_many_angles_whole():
    # one product photographed all round: 24 views along an arc 0..0.69 rad; neighbouring views are
    # 0.03 apart, opposite views 0.69 (average linkage over all pairs cuts it into pieces).
    # A second product sits well away.
    views = np.linspace(0.0, 0.69, 24)
    other = 2.0 + np.array([0.0, 0.03, 0.06])
    v = on_circle(np.concatenate([views, other]))
    assert len(np.unique(run(v, "average", 0.12, k=6)[:24])) > 1
    labels = run(v, "graph", 0.12, k=6)
    assert len(np.unique(labels[:24])) == 1 and len(np.unique(labels[24:])) == 1 and labels[0] != labels[24]


def test_graph_mode_does_not_glue_two_products_through_one_look_alike():
    # products A and B: 8 photos each, tight; one odd photo between them is close enough to both
    # ends to chain A and B under plain connected components, but it is only one photo.
    a = np.linspace(0.0, 0.07, 8)
    b = np.linspace(0.27, 0.34, 8)
    v = on_circle(np.concatenate([a, [0.17], b]))
    assert run(v, "components", 0.12, k=6).tolist() == [0] * 17  # plain components chain them
    labels = run(v, "graph", 0.12, k=6)
    assert len(np.unique(labels[:8])) == 1 and len(np.unique(labels[9:])) == 1
    assert labels[0] != labels[9]  # the products stay apart


def lists(rows):
    """FusedNeighbours from {image: [(neighbour, fused distance), ...]} (nearest first), padded."""
    from ensemble_group.fusion import FusedNeighbours

    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    dist = np.full((len(rows), width), np.inf)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = [j for j, _ in r]
        dist[i, :len(r)] = [d for _, d in r]
    return FusedNeighbours(ids, dist)


def test_a_lone_image_joins_the_group_of_a_clearly_nearest_neighbour_only():
    from ensemble_group.grouping import attach_alone

    # groups {0,1,2}, {3,4}; images 5, 6, 7 were left alone
    label = np.array([0, 0, 0, 1, 1, 2, 3, 4])
    rows = [[(1, -4.0)], [(0, -4.0)], [(0, -4.0)], [(4, -4.0)], [(3, -4.0)],
            [(0, -3.0), (1, -2.8), (3, -1.0)],  # 5: group 0 is 2.0 nearer than group 1 -> joins group 0
            [(0, -3.0), (3, -2.5)],  # 6: group 1 is almost as near: ambiguous, stays alone
            [(3, 0.5), (0, 2.0)]]  # 7: its nearest is no nearer than a typical unrelated pair: stays alone
    assert attach_alone(label, lists(rows), margin=1.0).tolist() == [0, 0, 0, 1, 1, 0, 2, 3]
    assert attach_alone(label, lists(rows), margin=0.0).tolist() == label.tolist()  # 0 = off
    assert attach_alone(label, lists(rows), margin=2.5).tolist() == [0, 0, 0, 1, 1, 2, 3, 4]


def test_a_lone_image_goes_by_the_groups_mean_not_by_one_look_alike_photo():
    from ensemble_group.grouping import attach_alone

    # groups {0,1,2} and {3,4}; image 5 (a close-up) is near every photo of group 0, and as near one
    # photo of group 1 as to group 0's nearest, but far from group 1's other photo
    label = np.array([0, 0, 0, 1, 1, 2])
    rows = [[(1, -4.0)], [(0, -4.0)], [(0, -4.0)], [(4, -4.0)], [(3, -4.0)],
            [(3, -1.7), (0, -1.68), (1, -1.67), (2, -1.48), (4, -0.2)]]
    # group means: 0 -> -1.61, 1 -> -0.95: group 0 is 0.66 nearer, though photo 3 is the nearest photo
    assert attach_alone(label, lists(rows), margin=0.5).tolist() == [0, 0, 0, 1, 1, 0]
    assert attach_alone(label, lists(rows), margin=0.7).tolist() == label.tolist()  # not by 0.7: stays alone
    # the pairs count from both ends: listed only in group 1's lists, photo 4's far pair still counts
    rows[5] = [(3, -1.7), (0, -1.68), (1, -1.67), (2, -1.48)]
    rows[4] = [(3, -4.0), (5, -0.2)]
    assert attach_alone(label, lists(rows), margin=0.5).tolist() == [0, 0, 0, 1, 1, 0]


def test_two_lone_images_that_are_each_others_nearest_end_up_together():
    from ensemble_group.grouping import attach_alone

    label = np.array([0, 0, 1, 2])
    rows = [[(1, -4.0)], [(0, -4.0)], [(3, -3.0), (0, -0.5)], [(2, -3.0), (1, -0.4)]]
    assert attach_alone(label, lists(rows), margin=1.0).tolist() == [0, 0, 1, 1]


def test_group_applies_the_lone_image_rule_after_any_mode():
    from ensemble_group.grouping import group

    rows = [[(1, -4.0), (2, -2.0)], [(0, -4.0), (2, -1.9)], [(0, -2.0), (1, -1.9)]]
    assert group(lists(rows), None, "graph", -3.0, 2).tolist() == [0, 0, 1]
    assert group(lists(rows), None, "graph", -3.0, 2, alone_margin=0.5).tolist() == [0, 0, 0]


def test_group_margins_measure_how_far_the_cutoff_would_have_to_move():
    from ensemble_group.fusion import FusedNeighbours
    from ensemble_group.grouping import group_margins

    # images 0-1 one group (pair at -5), 2-3 another (-4), 4 alone; 1-2 listed at -1.5, 3-4 at -0.5
    ids = np.array([[1, -1], [0, 2], [3, 1], [2, 4], [3, -1]])
    dist = np.array([[-5.0, np.inf], [-5.0, -1.5], [-4.0, -1.5], [-4.0, -0.5], [-0.5, np.inf]])
    label = np.array([0, 0, 1, 1, 2])
    margin, nearest = group_margins(label, FusedNeighbours(ids, dist), cutoff=-2.0)
    # group 0: cohesion -5 (3 from the cutoff), nearest group 1 at -1.5 (0.5 from it): 0.5
    # group 1: cohesion -4 (2), nearest: group 0 at -1.5 (0.5), group 2 at -0.5: 0.5
    # group 2: a singleton, nearest group 1 at -0.5: 1.5
    assert np.allclose(margin, [0.5, 0.5, 1.5]) and list(nearest) == [1, 0, 1]
    # a group whose own pairs are above the cutoff has a negative margin: check it first
    margin, _ = group_margins(np.array([0, 1, 1, 2, 2]), FusedNeighbours(ids, dist), cutoff=-2.0)
    # {1, 2}: its own pair at -1.5 (-0.5), but 0-1 at -5 was refused (-3); {3, 4}: -0.5 (-1.5), 2-3 at -4 (-2)
    assert np.allclose(margin, [-3.0, -3.0, -2.0])


def test_group_margins_of_a_group_with_no_listed_pair_outside():
    from ensemble_group.fusion import FusedNeighbours
    from ensemble_group.grouping import group_margins

    ids, dist = np.array([[1], [0]]), np.array([[-3.0], [-3.0]])
    margin, nearest = group_margins(np.array([0, 0]), FusedNeighbours(ids, dist), cutoff=-2.0)
    assert np.allclose(margin, [1.0]) and list(nearest) == [-1]
    margin, nearest = group_margins(np.array([0]), FusedNeighbours(np.zeros((1, 0), int), np.zeros((1, 0))), -2.0)
    assert np.isinf(margin[0]) and list(nearest) == [-1]
