"""Metrics checked against hand-worked cases, brute-force definitions, and the label/groups I/O."""

import json
import math
from fractions import Fraction as F
from itertools import combinations

import numpy as np
import pytest

from ensemble_group.evaluation import (
    adjusted_rand_index, align, bcubed, format_table, mean_image_f1, n_groups,
    normalized_mutual_info, pairwise_prf, read_labels, recall_at_k, score,
)

approx = pytest.approx
GROUPING_KEYS = ["n_images", "n_true_groups", "n_pred_groups", "ari", "nmi", "pairwise_precision",
                 "pairwise_recall", "pairwise_f1", "bcubed_precision", "bcubed_recall", "bcubed_f1",
                 "mean_image_f1"]
QUALITY = [k for k in GROUPING_KEYS if not k.startswith("n_")]


# --- hand-worked case A: true=[0,0,0,1,1], pred=[0,0,1,1,1] --------------------------------
# Contingency (rows true, cols pred): [[2,1],[0,2]]; a=(3,2), b=(2,3), n=5, all pairs C(5,2)=10.
# Together in both: C(2,2)+C(1,2)+C(2,2)=2; pred pairs C(2,2)+C(3,2)=4; true pairs C(3,2)+C(2,2)=4.
# tp=2, fp=2, fn=2, tn=10-6=4.
# ARI: expected=4*4/10=8/5, max=(4+4)/2=4 -> (2-8/5)/(4-8/5) = (2/5)/(12/5) = 1/6.
# Pairwise: P=2/4=1/2, R=2/4=1/2, F1=1/2.
# B-cubed per item (P=|C∩L|/|C|, R=|C∩L|/|L|): items 0,1: P=2/2, R=2/3; item 2: P=1/3, R=1/3;
#   items 3,4: P=2/3, R=2/2. P=(1+1+1/3+2/3+2/3)/5=11/15, R=(2/3+2/3+1/3+1+1)/5=11/15, F1=11/15.
# Mean image F1 = 2|C∩L|/(|C|+|L|): items 0,1: 4/5; item 2: 2/6=1/3; items 3,4: 4/5
#   -> (16/5+1/3)/5 = 53/75.
# NMI: MI = 2/5 ln(5*2/(3*2)) + 1/5 ln(5*1/(3*3)) + 2/5 ln(5*2/(2*3)) = 4/5 ln(5/3) + 1/5 ln(5/9);
#   H_true = H_pred = -(3/5 ln 3/5 + 2/5 ln 2/5); NMI = MI / H.
A_TRUE, A_PRED = [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]


def test_hand_case_a():
    s = score(A_TRUE, A_PRED)
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    mi = 0.8 * math.log(5 / 3) + 0.2 * math.log(5 / 9)
    assert (s["n_images"], s["n_true_groups"], s["n_pred_groups"]) == (5, 2, 2)
    assert s["ari"] == approx(float(F(1, 6)))
    assert s["nmi"] == approx(mi / h)
    assert (s["pairwise_precision"], s["pairwise_recall"], s["pairwise_f1"]) == approx((0.5, 0.5, 0.5))
    assert s["bcubed_precision"] == approx(float(F(11, 15)))
    assert s["bcubed_recall"] == approx(float(F(11, 15)))
    assert s["bcubed_f1"] == approx(float(F(11, 15)))
    assert s["mean_image_f1"] == approx(float(F(53, 75)))
    assert list(s) == GROUPING_KEYS


# --- hand-worked case B: one big cluster, true=[0,0,1,1], pred=[0,0,0,0] ------------------
# All pairs 6; tp = C(2,2)+C(2,2) = 2; pred pairs 6; true pairs 2 -> fp=4, fn=0, tn=0.
# ARI = 2(tp*tn - fn*fp)/((tp+fn)(fn+tn)+(tp+fp)(fp+tn)) = 2(0-0)/(2*0+6*4) = 0.
# NMI: pred has a single cluster, truth two -> MI=0 -> 0 (sklearn convention).
# Pairwise P=2/6=1/3, R=2/2=1, F1=2(1/3)/(4/3)=1/2.  B-cubed: every item P=2/4, R=2/2 -> F1=2/3.
# Mean image F1: 2*2/(2+4) = 2/3 for every item.
def test_hand_case_one_big_cluster():
    s = score([0, 0, 1, 1], [0, 0, 0, 0])
    assert s["ari"] == approx(0.0) and s["nmi"] == 0.0
    assert (s["pairwise_precision"], s["pairwise_recall"], s["pairwise_f1"]) == approx((1 / 3, 1.0, 0.5))
    assert (s["bcubed_precision"], s["bcubed_recall"], s["bcubed_f1"]) == approx((0.5, 1.0, 2 / 3))
    assert s["mean_image_f1"] == approx(2 / 3)
    assert (s["n_true_groups"], s["n_pred_groups"]) == (2, 1)


# --- hand-worked case C: all singletons, true=[0,0,1,1], pred=[0,1,2,3] -------------------
# tp=0, pred pairs=0, true pairs=2: fp=0, fn=2, tn=4 -> ARI = 2(0*4-2*0)/(...) = 0.
# Pairwise: no predicted pair -> precision 1.0 by convention (no false merge), R=0/2=0, F1=0.
# NMI: MI = 4 * 1/4 ln(4*1/(2*1)) = ln 2; H_true = ln 2, H_pred = ln 4 -> ln2 / (3/2 ln2) = 2/3.
# B-cubed: P=1/1, R=1/2 for every item -> F1 = 2/3.  Mean image F1 = 2*1/(1+2) = 2/3.
def test_hand_case_all_singletons():
    s = score([0, 0, 1, 1], [0, 1, 2, 3])
    assert s["ari"] == approx(0.0)
    assert s["nmi"] == approx(2 / 3)
    assert (s["pairwise_precision"], s["pairwise_recall"], s["pairwise_f1"]) == (1.0, 0.0, 0.0)
    assert (s["bcubed_precision"], s["bcubed_recall"], s["bcubed_f1"]) == approx((1.0, 0.5, 2 / 3))
    assert s["mean_image_f1"] == approx(2 / 3)


@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 1, 2], [5, 5, 5, 5], [0, 1, 2, 3], [7], []])
def test_identity_all_ones(labels):
    s = score(labels, labels)
    assert s["n_true_groups"] == s["n_pred_groups"] == len(set(labels))
    for k in QUALITY:
        assert s[k] == approx(1.0), k


def test_degenerate_conventions():
    # n<2 and "both one cluster" have no disagreeing pair: ARI 1; one cluster vs split: NMI 0.
    assert adjusted_rand_index([3], [9]) == 1.0
    assert adjusted_rand_index([1, 1, 1], [2, 2, 2]) == 1.0
    assert normalized_mutual_info([0, 0, 0], [0, 1, 2]) == 0.0
    # no true pair at all but a predicted one: recall vacuous 1.0, precision 0.
    assert pairwise_prf([0, 1], [0, 0]) == {"pairwise_precision": 0.0, "pairwise_recall": 1.0,
                                            "pairwise_f1": 0.0}
    with pytest.raises(ValueError, match="length"):
        score([0, 1], [0])


def test_permutation_invariance():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 6, 80), rng.integers(0, 9, 80)
    base = score(t, p)
    relabel_t, relabel_p = rng.permutation(100)[t] + 1000, rng.permutation(100)[p] - 50
    order = rng.permutation(80)
    for tt, pp in [(relabel_t, relabel_p), (t[order], p[order]), (t.astype(str), p.astype(str))]:
        s = score(tt, pp)
        for k in GROUPING_KEYS:
            assert s[k] == approx(base[k]), k
    # ARI and NMI are symmetric in (true, pred); pairwise/B-cubed P and R swap.
    swapped = score(p, t)
    assert swapped["ari"] == approx(base["ari"]) and swapped["nmi"] == approx(base["nmi"])
    assert swapped["pairwise_precision"] == approx(base["pairwise_recall"])
    assert swapped["bcubed_recall"] == approx(base["bcubed_precision"])


def _brute_ari(t, p):
    """Hubert-Arabie from the O(n^2) pair enumeration."""
    pairs = list(combinations(range(len(t)), 2))
    both = sum(t[i] == t[j] and p[i] == p[j] for i, j in pairs)
    st = sum(t[i] == t[j] for i, j in pairs)
    sp = sum(p[i] == p[j] for i, j in pairs)
    exp = st * sp / len(pairs)
    mx = (st + sp) / 2
    return 1.0 if mx == exp else (both - exp) / (mx - exp)


def _brute_nmi(t, p):
    """Definition: I(T;P) / mean(H(T), H(P)) with probabilities from counts."""
    n = len(t)
    pt = {a: list(t).count(a) / n for a in set(t)}
    pp = {b: list(p).count(b) / n for b in set(p)}
    pj = {}
    for a, b in zip(t, p):
        pj[a, b] = pj.get((a, b), 0) + 1 / n
    mi = sum(v * math.log(v / (pt[a] * pp[b])) for (a, b), v in pj.items())
    h = lambda d: -sum(v * math.log(v) for v in d.values())  # noqa: E731
    if len(pt) == len(pp) == 1:
        return 1.0
    return 0.0 if abs(mi) < 1e-15 else mi / ((h(pt) + h(pp)) / 2)


def _brute_pairwise_bcubed(t, p):
    n = len(t)
    pairs = list(combinations(range(n), 2))
    tp = sum(t[i] == t[j] and p[i] == p[j] for i, j in pairs)
    pp = sum(p[i] == p[j] for i, j in pairs)
    tt = sum(t[i] == t[j] for i, j in pairs)
    bp = np.mean([sum(t[j] == t[i] and p[j] == p[i] for j in range(n)) / sum(p[j] == p[i] for j in range(n))
                  for i in range(n)])
    return (tp / pp if pp else 1.0), (tp / tt if tt else 1.0), bp


@pytest.mark.parametrize("seed", range(12))
def test_random_cross_check(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 45))
    t = rng.integers(0, int(rng.integers(1, 8)), n)
    p = t.copy() if seed % 4 == 0 else rng.integers(0, int(rng.integers(1, 10)), n)
    if seed % 4 == 1:  # a near-miss of the truth: a few items moved
        p = t.copy()
        p[rng.integers(0, n, 3)] = rng.integers(0, 9, 3)
    assert adjusted_rand_index(t, p) == approx(_brute_ari(t, p), abs=1e-12)
    assert normalized_mutual_info(t, p) == approx(_brute_nmi(t, p), abs=1e-12)
    prec, rec, bp = _brute_pairwise_bcubed(t, p)
    pw = pairwise_prf(t, p)
    assert (pw["pairwise_precision"], pw["pairwise_recall"]) == approx((prec, rec))
    assert bcubed(t, p)["bcubed_precision"] == approx(bp)


def test_mean_image_f1_and_n_groups_direct():
    # true=[0,0,1], pred=[0,1,1]: item0 2*1/(2+1)=2/3; item1 2*1/(2+2)=1/2; item2 2*1/(1+2)=2/3
    # -> (2/3+1/2+2/3)/3 = 11/18.
    assert mean_image_f1([0, 0, 1], [0, 1, 1]) == approx(11 / 18)
    assert n_groups([0, 0, 1], [4, 5, 6]) == {"n_true_groups": 2, "n_pred_groups": 3}


# --- Recall@k, hand case: true=[0,0,1,1,2] (product 2 has no partner: 4 eligible queries) ----
# q0 [2,4,1,3]: first partner (1) at rank 3 -> miss@1, hit@5.  q1 [0,2,3,4]: hit@1.
# q2 [0,1,4,-1]: partner 3 never listed -> miss both.      q3 [2,-1,-1,-1]: hit@1.
# q4 ignored.  R@1 = 2/4, R@2 = 2/4, R@3 = 3/4, R@5 = 3/4.
def test_recall_at_k_hand():
    true = [0, 0, 1, 1, 2]
    nb = [[2, 4, 1, 3], [0, 2, 3, 4], [0, 1, 4, -1], [2, -1, -1, -1], [0, 1, 2, 3]]
    assert recall_at_k(true, nb) == {"recall_at_1": 0.5, "recall_at_5": 0.75}
    assert recall_at_k(true, nb, ks=(2, 3)) == {"recall_at_2": 0.5, "recall_at_3": 0.75}
    s = score(true, [0, 0, 1, 1, 2], neighbours=nb)
    assert list(s) == GROUPING_KEYS + ["recall_at_1", "recall_at_5"]
    # a stray self index counts as a miss, not a hit
    assert recall_at_k([0, 0], [[0, 1], [1, 0]], ks=(1, 2)) == {"recall_at_1": 0.0, "recall_at_2": 1.0}
    assert math.isnan(recall_at_k([0, 1], [[1], [0]])["recall_at_1"])
    with pytest.raises(ValueError):
        recall_at_k([0, 0], [[1], [5]])


def test_handles_100k_images():  # speed is measured in benchmarks/, not asserted here
    rng = np.random.default_rng(1)
    n = 100_000
    t = rng.integers(0, 20_000, n)
    p = np.where(rng.random(n) < 0.8, t, rng.integers(0, 25_000, n))
    nb = rng.integers(-1, n, (n, 5))
    s = score(t, p, neighbours=nb)
    assert 0 < s["ari"] < 1 and 0 < s["nmi"] < 1


def test_format_table():
    out = format_table([{"name": "a|b", "ari": 0.12345, "n": 3}, {"name": "c"}], ["name", "ari", "n"])
    assert out.splitlines() == ["| name | ari | n |", "|---|---|---|",
                                "| a\\|b | 0.123 | 3 |", "| c |  |  |"]


# --- labels CSV and alignment ---------------------------------------------------------------
@pytest.fixture
def layout(tmp_path):
    """labels.csv in tmp/data (paths 'photos/...'); the groups JSON's input is tmp/data/photos."""
    data = tmp_path / "data"
    (data / "photos" / "sub").mkdir(parents=True)
    csv_path = data / "labels.csv"
    csv_path.write_text(
        "image,product,notes\n"
        "photos/a.jpg,mug,x\n"
        "./photos//b.jpg,mug,\n"
        "photos\\sub\\c.jpg,lamp,\n"
        "photos/d.jpg,lamp,\n"
        "photos/d.jpg,lamp,dup ok\n"
        "photos/only_labelled.jpg,vase,\n", encoding="utf-8")
    groups = {"input": str(data / "photos"), "n_groups": 3,
              "groups": [{"id": 0, "images": ["a.jpg", "sub/c.jpg"]},
                         {"id": 1, "images": ["b.jpg", "./d.jpg"]},
                         {"id": 2, "images": ["only_grouped.jpg"]}]}
    return data, csv_path, groups


def test_read_labels_normalises(layout):
    _, csv_path, _ = layout
    assert read_labels(csv_path) == {"photos/a.jpg": "mug", "photos/b.jpg": "mug",
                                     "photos/sub/c.jpg": "lamp", "photos/d.jpg": "lamp",
                                     "photos/only_labelled.jpg": "vase"}


def test_align_different_roots(layout):
    data, csv_path, groups = layout
    true, pred, images, info = align(groups, None, read_labels(csv_path), data)
    assert images == ["a.jpg", "b.jpg", "d.jpg", "sub/c.jpg"]
    assert info["products"] == ["lamp", "mug"]
    assert true.tolist() == [1, 1, 0, 0] and pred.tolist() == [0, 1, 1, 0]
    assert info["n_matched"] == 4
    assert (info["n_labelled_not_grouped"], info["labelled_not_grouped"]) == (1, ["photos/only_labelled.jpg"])
    assert (info["n_grouped_not_labelled"], info["grouped_not_labelled"]) == (1, ["only_grouped.jpg"])
    # same result with groups_root instead of an 'input' key, and the JSON round-trips
    no_input = {k: v for k, v in json.loads(json.dumps(groups)).items() if k != "input"}
    t2, p2, im2, _ = align(no_input, data / "photos", read_labels(csv_path), data)
    assert (t2.tolist(), p2.tolist(), im2) == (true.tolist(), pred.tolist(), images)


def test_align_truncates_mismatch_lists(tmp_path):
    labels = {f"x{i:03d}.jpg": "p" for i in range(30)} | {"m.jpg": "p"}
    _, _, _, info = align({"groups": [{"images": ["m.jpg"]}]}, tmp_path, labels, tmp_path)
    assert info["n_labelled_not_grouped"] == 30 and len(info["labelled_not_grouped"]) == 10


@pytest.mark.parametrize("text, message", [
    ("file,product\na.jpg,x\n", "missing column.*image"),
    ("image,product\na.jpg,x\n./a.jpg,y\n", "'x' on line 2 and 'y' on line 3"),
    ("image,product\na.jpg,\n", "empty"),
    ("image,product\n", "no label rows"),
])
def test_label_errors(tmp_path, text, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_labels(bad)


def test_align_errors(layout, tmp_path):
    data, csv_path, groups = layout
    labels = read_labels(csv_path)
    with pytest.raises(ValueError, match="no grouped image matches") as e:
        align(groups, None, labels, tmp_path / "elsewhere")  # wrong labels root
    assert "a.jpg" in str(e.value) and "elsewhere" in str(e.value)
    with pytest.raises(ValueError, match="no 'input'"):
        align({"groups": []}, None, labels, data)
    with pytest.raises(ValueError, match="exactly one group"):
        align({"groups": [{"images": ["a.jpg"]}, {"images": ["./a.jpg"]}]}, data, labels, data)
    with pytest.raises(ValueError, match="'groups' list"):
        align({"clusters": []}, data, labels, data)


@pytest.mark.parametrize("seed", range(20))
def test_ari_and_nmi_agree_with_scikit_learn(seed):
    """scikit-learn's implementations as the reference (NMI: its default arithmetic mean), random labelings
    from 2 to 300 items, degenerate ones included (one cluster, all singletons)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 300))
    t = rng.integers(0, int(rng.integers(1, 30)), n)
    p = {0: np.zeros(n, int), 1: np.arange(n)}.get(seed % 5, rng.integers(0, int(rng.integers(1, 30)), n))
    assert adjusted_rand_index(t, p) == approx(adjusted_rand_score(t, p), abs=1e-10)
    assert normalized_mutual_info(t, p) == approx(normalized_mutual_info_score(t, p), abs=1e-10)
