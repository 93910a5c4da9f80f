"""`cutoff = "auto"` and the per-group confidence, from vectors to a strict groups.json, on edge cases."""

import json
from pathlib import Path

import numpy as np
import pytest

from ensemble_group.autocut import BASE, MIN_SHARE, SHARE_AT_NO_FALLOFF, auto_cutoff, describe, resolve_cutoff
from ensemble_group.config import Config
from ensemble_group.evaluation.metrics import pairwise_prf
from ensemble_group.fusion import FusedNeighbours
from ensemble_group.grouper import Grouper
from ensemble_group.images import ImageFile
from ensemble_group.pipeline import Run
from ensemble_group.weights import WeightsRef

MODELS = ("vgg16-tv", "mobilenet-v2")


def grouped(vectors: np.ndarray, **settings) -> Run:
    """What `group` does after extraction, on (n, d) vectors given to two members (the second noisier)."""
    noisy = vectors + 0.05 * np.random.default_rng(1).normal(size=vectors.shape).astype(np.float32)
    config = Config(models=MODELS, **settings)
    images = [ImageFile(Path(f"/x/{i:04d}.jpg"), f"{i:04d}.jpg", f"{i:064x}") for i in range(len(vectors))]
    raw = {MODELS[0]: vectors, MODELS[1]: noisy}
    grouper = Grouper(config).fit(raw, [im.rel for im in images])
    weights = {m: WeightsRef(m, Path("/w"), "test", "test") for m in MODELS}
    return Run(Path("/x"), config, images, [], weights, raw, grouper)


def strict_json(run: Run) -> dict:
    """groups.json through a strict encoder (a NaN or an infinity fails), every image in exactly one group."""
    doc = json.loads(json.dumps(run.to_json(), allow_nan=False))
    names = [im for g in doc["groups"] for im in g["images"]]
    assert sorted(names) == sorted(im.rel for im in run.images)
    return doc


def products(n_products: int, photos: int, *, noise: float = 0.3, dim: int = 128, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(n_products), photos)
    return (rng.normal(size=(n_products, dim))[true] + noise * rng.normal(size=(len(true), dim))).astype(np.float32), true


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_folders(n):
    doc = strict_json(grouped(products(n, 1)[0]))
    assert doc["n_images"] == n and doc["cutoff"]["rule"] == "auto" and doc["cutoff"]["value"] <= BASE


def test_every_photo_of_one_product():
    doc = strict_json(grouped(products(1, 30, noise=0.05)[0]))
    # a folder with no unrelated pair has no scale to measure against: the run completes and says so
    assert doc["cutoff"]["rule"] == "auto" and all(g["confidence"] is None or np.isfinite(g["confidence"])
                                                  for g in doc["groups"])


def test_every_photo_a_different_product():
    doc = strict_json(grouped(products(150, 1)[0]))
    assert doc["n_groups"] > 30 and all(g["nearest_group"] != g["id"] for g in doc["groups"])


def test_fifty_copies_of_one_photo_and_fifty_others():
    others = products(50, 1, seed=3)[0]
    run = grouped(np.concatenate([np.repeat(others[:1], 50, axis=0), others[1:]]))
    doc = strict_json(run)
    copies = {f"{i:04d}.jpg" for i in range(50)}
    assert any(copies <= set(g["images"]) for g in doc["groups"])  # the copies in one group
    # half the folder at distance 0: the median nearest neighbour is a copy, so the cut is strict
    cut = doc["cutoff"]
    assert MIN_SHARE <= cut["scale"] <= SHARE_AT_NO_FALLOFF
    assert cut["value"] == pytest.approx(min(BASE, cut["scale"] * cut["nearest_median"]), abs=1e-3)


def test_two_products_that_differ_only_slightly_stay_two():
    # one shape in two colours: most of the vector shared, a small consistent difference
    rng = np.random.default_rng(7)
    shape, colour = rng.normal(size=128), 0.6 * rng.normal(size=128)
    photos = [shape + sign * colour + 0.1 * rng.normal(size=128) for sign in (1, -1) for _ in range(6)]
    others = products(40, 3, seed=8)[0]
    run = grouped(np.concatenate([np.array(photos, dtype=np.float32), others]))
    true = np.r_[np.repeat([0, 1], 6), 2 + np.repeat(np.arange(40), 3)]
    strict_json(run)
    assert pairwise_prf(true, run.labels)["pairwise_precision"] > 0.9


def test_auto_reads_the_nearest_neighbours_and_is_never_above_the_base():
    ids = np.array([[1, 2], [0, 2], [1, 0]])
    # the farthest listed (2nd) at -3, -5, -9: falloff 5 / 20 = 0.25, share 0.6 - 0.25
    far = FusedNeighbours(ids, np.array([[-20.0, -3.0], [-20.0, -5.0], [-15.0, -9.0]]))
    cut, how = auto_cutoff(far)
    assert cut == pytest.approx(0.35 * -20.0)
    assert how == {"rule": "auto", "nearest_median": -20.0, "falloff": 0.25, "scale": 0.35}
    near = FusedNeighbours(ids, np.array([[-4.0, -3.0], [-4.0, -1.0], [-3.0, -1.0]]))
    assert auto_cutoff(near)[0] == BASE  # 0.35 x -4 would be more lenient than -2
    assert auto_cutoff(FusedNeighbours(np.zeros((1, 0), int), np.zeros((1, 0))))[0] == BASE  # one photo
    assert resolve_cutoff(-3.5, far) == (-3.5, {"rule": "fixed"})
    assert describe(how) == "auto: 0.35 x the median nearest distance -20.00, falloff 0.25, never above -2"
    assert describe({"rule": "fixed"}) == "fixed" and describe({"rule": "auto", "nearest_median": None}) == "auto"


def test_the_share_follows_how_fast_the_neighbours_fall_away():
    n, ids = 8, np.tile(np.arange(1, 6), (8, 1))

    def cut(first, fifth):
        return auto_cutoff(FusedNeighbours(ids, np.tile(np.linspace(first, fifth, 5), (n, 1))))

    bursts, shop, unrelated = cut(-20.0, -18.0), cut(-20.0, -4.0), cut(-20.0, 1.0)
    assert bursts[1]["scale"] == MIN_SHARE and bursts[0] == pytest.approx(MIN_SHARE * -20.0)  # many photos each
    assert shop[1]["falloff"] == 0.2 and shop[0] == pytest.approx(0.4 * -20.0)  # the 5th nearest a look-alike
    assert unrelated[1]["scale"] == SHARE_AT_NO_FALLOFF  # the 5th nearest as far as an unrelated pair
    assert unrelated[0] < shop[0] < bursts[0] < BASE  # fewer photos per product: stricter
    padded = np.tile([-20.0, -19.0, np.inf, np.inf, np.inf], (n, 1))  # no 5th listed: the share before the falloff
    assert auto_cutoff(FusedNeighbours(ids, padded))[1]["scale"] == MIN_SHARE


def test_a_stricter_auto_cut_keeps_more_apart():
    # a folder whose photos all look alike: products tight, and the nearest of each photo very near
    vectors, true = products(60, 4, noise=0.08, dim=96, seed=11)
    auto, fixed = grouped(vectors), grouped(vectors, cutoff=BASE)
    assert auto.cutoff()[0] < BASE and fixed.cutoff() == (BASE, {"rule": "fixed"})
    assert pairwise_prf(true, auto.labels)["pairwise_precision"] >= pairwise_prf(true, fixed.labels)["pairwise_precision"]
