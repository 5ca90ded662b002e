"""The pretraining pool drawn evenly over the kinds of land, not in proportion to their area."""

from __future__ import annotations

import numpy as np

from model.pretraining_pool import cluster_balanced, seasonal_means
from model.series import PixelSeries


def _land(rare: int, common: int, seed: int = 0) -> tuple[PixelSeries, np.ndarray]:
    """`common` pixels green in summer and `rare` dark all year (water), 24 dates a year, noisy;
    returns the series and which pixels are rare."""
    rng = np.random.default_rng(seed)
    n, t = rare + common, 24
    doy = np.tile(np.linspace(8, 358, t).astype(np.int16), (n, 1))
    summer = np.exp(-0.5 * ((doy - 190) / 40.0) ** 2)[..., None]
    is_rare = np.r_[np.ones(rare, bool), np.zeros(common, bool)]
    level = np.where(is_rare[:, None, None], 300.0, 1500.0 + 3000.0 * summer)
    s2 = np.clip(level + rng.normal(0, 100, (n, t, 10)), 0, 10000).astype(np.uint16)
    s1 = np.where(is_rare[:, None, None], 500, 4000) + rng.integers(-200, 200, (n, t // 2, 2))
    valid = rng.random((n, t)) > 0.3
    series = PixelSeries(s2, valid, doy, s1.astype(np.int16), np.ones((n, t // 2), bool), doy[:, ::2])
    return series, is_rare


def test_a_rare_cover_gets_an_even_share_of_the_pool():
    series, is_rare = _land(rare=100, common=1900)
    kept = cluster_balanced(series, 400, clusters=2, rng=np.random.default_rng(1))
    rare_kept = int((kept.s2[:, :, 0].mean(axis=1) < 800).sum())
    assert len(kept) == 400
    assert rare_kept == 100  # all of the 5% that is rare, where a uniform draw keeps about 20
    uniform = series.subset(np.random.default_rng(1).permutation(len(series))[:400])
    assert (uniform.s2[:, :, 0].mean(axis=1) < 800).sum() < 40


def test_the_draw_depends_only_on_the_seed_and_keeps_whole_pixels():
    series, _ = _land(rare=50, common=950)
    a = cluster_balanced(series, 200, clusters=4, rng=np.random.default_rng(7))
    b = cluster_balanced(series, 200, clusters=4, rng=np.random.default_rng(7))
    assert np.array_equal(a.s2, b.s2) and np.array_equal(a.s1_doy, b.s1_doy)
    rows = {series.s2[i].tobytes() for i in range(len(series))}
    assert all(a.s2[i].tobytes() in rows for i in range(len(a)))
    assert len({a.s2[i].tobytes() for i in range(len(a))}) == 200  # no pixel twice


def test_a_pool_smaller_than_asked_is_kept_whole():
    series, _ = _land(rare=10, common=40)
    assert len(cluster_balanced(series, 500, clusters=8, rng=np.random.default_rng(0))) == 50


def test_seasonal_means_average_only_the_valid_observations_of_each_quarter():
    series, _ = _land(rare=1, common=1)
    series.s2_valid[:] = False
    series.s2_valid[1, 10] = True  # one clear summer date for the common pixel, none for the rare one
    features = seasonal_means(series)
    quarter = (int(series.s2_doy[1, 10]) - 1) * 4 // 366
    assert features.shape == (2, 4 * 12)
    assert np.allclose(features[1, quarter * 10:(quarter + 1) * 10], series.s2[1, 10].astype(np.float32))
    assert np.all(features[0, :40] == 0)  # no clear observation: zeros, not NaN
