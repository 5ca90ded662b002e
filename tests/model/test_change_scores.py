import numpy as np
import pytest

from model.change import TypicalChange, calibrate, change_vectors, detection_scores, patches
from model.errors import CalibrationError


def test_calibration_flags_the_stated_share_of_stable_pixels_and_finds_changes():
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.1):  # two regions whose stable pixels move by very different amounts
        stable = np.exp(rng.normal(np.log(scale), 0.3, 200_000))
        changed = np.exp(rng.normal(np.log(scale) + 3.0, 0.3, 2_000))
        calibration = calibrate(np.concatenate([stable, changed, [np.nan]]), false_alarm_rate=1e-3)
        assert np.mean(calibration.score(stable) > calibration.threshold) == pytest.approx(1e-3, abs=1e-3)
        assert np.mean(calibration.score(changed) > calibration.threshold) > 0.95


def test_calibration_refuses_too_few_pixels_and_bad_rates():
    with pytest.raises(ValueError, match="too few"):
        calibrate(np.ones(50))
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibrate(np.ones(500), false_alarm_rate=0.7)


def test_patches_drop_small_ones_and_join_diagonals():
    mask = np.zeros((10, 10), bool)
    mask[1, 1] = True  # alone: dropped
    mask[5, 5] = mask[6, 6] = mask[7, 7] = True  # diagonal: one patch of 3
    ids, count = patches(mask, min_pixels=2)
    assert count == 1 and ids[1, 1] == 0 and ids[5, 5] == ids[7, 7] == 1


def test_detection_scores_by_hand():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    found = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    scores = detection_scores(found, truth)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["false_alarm_rate"] == pytest.approx(1 / 5)


def test_change_vectors_ignore_each_year_s_scale():
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, -3.0]])
    assert change_vectors(a, b).tolist() == [[0.0, 0.0], [-1.0, -1.0]]


def test_a_quiet_dimension_that_moves_counts_more_than_a_loud_one():
    rng = np.random.default_rng(0)
    typical = TypicalChange.of(rng.normal(0.0, [0.2, 0.01], (50_000, 2)))  # dim 0 moves every year, dim 1 hardly
    assert typical.spread == pytest.approx([0.2, 0.01], rel=0.03)
    loud, quiet = typical.magnitude(np.array([[0.1, 0.0], [0.0, 0.1]]))
    assert quiet > 10 * loud
    # a change drawn from the typical one scores the mean |z| of a normal, sqrt(2 / pi)
    assert typical.magnitude(rng.normal(0.0, [0.2, 0.01], (50_000, 2))).mean() == pytest.approx(np.sqrt(2 / np.pi), rel=0.02)


def test_typical_change_refuses_too_few_pixels():
    with pytest.raises(CalibrationError, match="too few"):
        TypicalChange.of(np.zeros((99, 4)))


def test_neighbourhood_median_keeps_patches_and_drops_lone_pixels():
    from model.change import neighbourhood_median

    values = np.zeros((20, 20), np.float32)
    values[2, 2] = 9.0  # a lone noisy pixel
    values[10:16, 10:16] = 5.0  # a changed patch
    values[0, 19] = np.nan
    smooth = neighbourhood_median(values, 5)
    assert smooth[2, 2] == 0.0 and smooth[12, 12] == 5.0 and np.isnan(smooth[0, 19])
    assert neighbourhood_median(values, 1) is values
