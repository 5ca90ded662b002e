import numpy as np
import pytest

from model.quantise import dequantise, quantise
from model.sampling import sample_steps


def _valid(seed=0, n=200, t=70):
    rng = np.random.default_rng(seed)
    valid = rng.random((n, t)) < rng.uniform(0.05, 0.9, (n, 1))
    valid[0] = False  # a pixel with no valid observation
    valid[1] = False
    valid[1, 5] = True  # exactly one
    return valid


def test_deterministic_sampling_is_reproducible_sorted_and_valid():
    valid = _valid()
    a, b = sample_steps(valid, 40, "evenly-spaced"), sample_steps(valid, 40)
    assert np.array_equal(a, b)
    rows = np.arange(len(valid))[:, None]
    assert valid[rows[2:], a[2:]].all()
    assert (np.diff(a, axis=1) >= 0).all()
    assert (a[1] == 5).all()
    many = valid.sum(1) >= 40
    # evenly spaced over all valid steps: first and last valid observations are always included
    first = valid.argmax(1)
    last = valid.shape[1] - 1 - valid[:, ::-1].argmax(1)
    assert (a[many, 0] == first[many]).all() and (a[many, -1] == last[many]).all()


def test_random_sampling_follows_v1():
    valid = _valid(1)
    a = sample_steps(valid, 40, "random", np.random.default_rng(7))
    b = sample_steps(valid, 40, "random", np.random.default_rng(7))
    c = sample_steps(valid, 40, "random", np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    rows = np.arange(len(valid))[:, None]
    assert valid[rows[2:], a[2:]].all()
    assert (np.diff(a, axis=1) >= 0).all()
    counts = valid.sum(1)
    for i in np.nonzero(counts >= 40)[0]:
        assert len(np.unique(a[i])) == 40, "without replacement when there are enough"
    few = np.nonzero((counts < 40) & (counts > 1))[0]
    assert any(len(np.unique(a[i])) < 40 for i in few), "with replacement when there are not"


def test_model_inputs_gather_values_with_each_pixels_doy_last():
    from model.series import PixelSeries

    s2 = np.arange(2 * 5 * 10).reshape(2, 5, 10).astype(np.uint16)
    s2_valid = np.array([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]], bool)
    doy = np.array([[10, 20, 30, 40, 50], [15, 25, 35, 45, 55]], np.int16)
    s1 = np.ones((2, 3, 2), np.int16)
    series = PixelSeries(s2, s2_valid, doy, s1, np.ones((2, 3), bool), doy[:, :3])
    s2_in, s1_in, _ = series.sampled(3)
    assert s2_in.shape == (2, 3, 11) and s1_in.shape == (2, 3, 3)
    assert s2_in[0, :, -1].tolist() == [10, 30, 50]
    assert s2_in[1, :, -1].tolist() == [25, 45, 45]  # ranks 0, 0.5 -> 1, 1 over its two valid steps
    assert s2_in[0, 1, :10].tolist() == s2[0, 2].tolist()
    padded = PixelSeries.concat([series, series.subset(np.array([0]))])
    assert len(padded) == 3 and padded.has_both.all()


def test_quantisation_round_trip():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (500, 128)).astype(np.float32)
    x[3] = np.nan
    q, scale = quantise(x)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    assert np.isnan(scale[3]) and (q[3] == 0).all()
    ok = np.isfinite(scale)
    assert np.allclose(scale[ok], np.abs(x[ok]).max(1) / 127)
    back = dequantise(q, scale)
    assert np.isnan(back[3]).all()
    assert (np.abs(back[ok] - x[ok]) <= scale[ok, None] / 2 + 1e-6).all()
    assert (np.abs(q[ok]).max(1) == 127).all()
    q2, scale2 = quantise(back[ok])
    assert np.array_equal(q2, q[ok]) and np.allclose(scale2, scale[ok])


@pytest.mark.parametrize("mode", ["bogus"])
def test_unknown_mode(mode):
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_steps(np.ones((1, 3), bool), 4, mode)
