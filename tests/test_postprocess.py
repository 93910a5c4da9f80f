"""Corpus-level post-processing: whitening learned on the folder, down to small folders."""

import numpy as np

from ensemble_group.config import Config
from ensemble_group.pooling import l2_normalise
from ensemble_group.postprocess import MIN_WHITEN_IMAGES, fit_transform, prepare


def catalogue(products: int, views: int, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of `products` x `views` photos that share one strong direction (the white backdrop
    every photo of a catalogue has) plus a weaker one of their own product and some noise."""
    rng = np.random.default_rng(seed)
    backdrop = rng.normal(size=d)
    own = rng.normal(size=(products, d))
    true = np.repeat(np.arange(products), views)
    x = 4.0 * backdrop + own[true] + 0.6 * rng.normal(size=(len(true), d))
    return l2_normalise(np.abs(x)), true  # post-ReLU features are >= 0


def separation(x: np.ndarray, true: np.ndarray) -> float:
    """Gap between the mean cosine of same-product pairs and of other pairs, in units of the latter's SD."""
    sim = x @ x.T
    same = true[:, None] == true[None, :]
    off = ~np.eye(len(x), dtype=bool)
    other = sim[off & ~same]
    return float((sim[off & same].mean() - other.mean()) / other.std())


def test_whitening_a_small_folder_takes_away_what_every_photo_shares():
    x, true = catalogue(products=4, views=3)  # 12 photos: above whiten_min, far below the old 50
    t, whitened = fit_transform(x, power=0.5, whiten_dim=256, whiten_min=MIN_WHITEN_IMAGES)
    assert t.projection is not None and whitened.shape == (12, 11)  # n - 1 components at most
    np.testing.assert_allclose(np.linalg.norm(whitened, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(t(x), whitened, atol=1e-5)  # a query is projected the same way
    _, unwhitened = fit_transform(x, power=0.5, whiten_dim=256, whiten_min=50)
    assert unwhitened.shape == x.shape
    assert separation(whitened, true) > 1.5 * separation(unwhitened, true)  # measured 8.6 vs 5.3


def test_folders_below_whiten_min_keep_their_dimensions():
    x, _ = catalogue(products=3, views=3)  # 9 photos
    t, out = fit_transform(x, power=1.0, whiten_dim=256, whiten_min=10)
    assert t.projection is None and t.mean is None
    np.testing.assert_allclose(out, x, atol=1e-6)
    t, out = fit_transform(x, power=1.0, whiten_dim=256, whiten_min=9)
    assert t.projection is not None and out.shape == (9, 8)


def test_the_configs_threshold_reaches_the_whitening():
    x, _ = catalogue(products=5, views=4)  # 20 photos
    cfg = Config()
    assert cfg.whiten_min == MIN_WHITEN_IMAGES
    for whiten_min, whitened in ((cfg.whiten_min, True), (21, False)):
        c = cfg.replace(whiten_min=whiten_min)
        t, _ = prepare(x, power=c.power, whiten_dim=c.whiten_dim, whiten_shrink=c.whiten_shrink,
                       whiten_min=c.whiten_min)
        assert (t.projection is not None) == whitened


def test_blocked_covariance_whitening_equals_the_svd(monkeypatch, tmp_path):
    """Large folders learn the whitening from the covariance, block by block, from rows that may live
    on disk: the same whitened vectors as the SVD (up to each component's sign: compare the cosines)."""
    from ensemble_group import postprocess

    x, _ = catalogue(60, 8, d=48)
    _, exact = fit_transform(x, power=0.5, whiten_dim=32)
    on_disk = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=x.shape)
    on_disk[:] = x
    monkeypatch.setattr(postprocess, "COVARIANCE_FROM", 100)
    monkeypatch.setattr(postprocess, "BLOCK", 64)  # several blocks, the last one short
    t, blocked = fit_transform(on_disk, power=0.5, whiten_dim=32)
    assert blocked.shape == exact.shape == (480, 32) and blocked.dtype == np.float32
    np.testing.assert_allclose(blocked @ blocked.T, exact @ exact.T, atol=2e-4)
    np.testing.assert_allclose(t(x[:5]), blocked[:5], atol=1e-5)  # the query-time transform agrees
