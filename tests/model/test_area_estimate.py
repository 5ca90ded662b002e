"""The stratified area estimator against the paper's worked example, a hand computation and edges.

Olofsson et al. 2014, "Good practices for estimating area and assessing accuracy of land change",
Remote Sensing of Environment 148, 42-57, Section 5: a map of 10,000,000 Landsat pixels (30 m,
0.09 ha) in four classes, assessed with a stratified random sample of 640 pixels (Table 8).

Where the numbers come from (the PDF itself was not at hand, so every printed figure below is
from public reproductions of it, which agree with each other and with this implementation):
- the inputs (Table 8's pixel counts and error matrix of sample counts) are the example data of
  the R package mapaccuracy (Hugo Costa, CRAN; github.com/hagc/mapaccuracy, R/olofsson.R,
  "Example of table 8 in olofsson et al. (2014)", compared there with "p. 54" of the paper) and of
  its Python port PyMapAccuracy (github.com/agcopenhaver/PyMapAccuracy, tests/test_olofsson.py,
  test_olofsson_table8_2014);
- the printed results (p. 54-55) as transcribed in public reimplementations' test suites: areas
  21,158 +- 6,158, 11,686 +- 3,756, 285,770 +- 15,510 and 581,386 +- 16,282 ha; user's accuracy
  0.88 +- 0.07, 0.73 +- 0.10, 0.93 +- 0.04, 0.96 +- 0.02; producer's 0.75 +- 0.21, 0.85 +- 0.23,
  0.93 +- 0.03, 0.96 +- 0.01; overall 0.95 +- 0.02;
- the full-precision values are PyMapAccuracy's test expectations (which use the exact quantile
  1.959964 where the paper and this module use 1.96, hence the 1e-4 relative tolerance on CIs).

Two printed producer's-accuracy intervals do not follow from the paper's own eq. 7: forest gain
(printed 0.23, eq. 7 gives 0.254) and stable non-forest (printed 0.01, eq. 7 gives 0.018).
PyMapAccuracy gets 0.2544 and 0.0184 too; those two are pinned to eq. 7, not to the print.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from model.area_estimate import AreaEstimate, from_error_matrix, stratified_estimate

CLASSES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
# Table 8: rows = map class, columns = reference class
TABLE8_COUNTS = np.array([
    [66, 0, 5, 4],
    [0, 55, 8, 12],
    [1, 0, 153, 11],
    [2, 1, 9, 313],
])
TABLE8_PIXELS = {"deforestation": 200_000, "forest gain": 150_000,
                 "stable forest": 3_200_000, "stable non-forest": 6_450_000}
LANDSAT_HA = 0.09  # one 30 m pixel


@pytest.fixture(scope="module")
def paper() -> AreaEstimate:
    return from_error_matrix(TABLE8_COUNTS, TABLE8_PIXELS, CLASSES, LANDSAT_HA)


def _printed(values, digits) -> list[float]:
    """Round to the digits the paper prints (0 for hectares, 2 for accuracies)."""
    return [round(float(v), digits) for v in values]


def test_paper_areas_as_printed(paper):
    assert paper.total_area_ha == pytest.approx(900_000)
    assert _printed(paper.mapped_area_ha, 0) == [18_000, 13_500, 288_000, 580_500]
    assert _printed(paper.area_ha, 0) == [21_158, 11_686, 285_770, 581_386]
    assert _printed(paper.area_ci95_ha, 0) == [6_158, 3_756, 15_510, 16_282]
    # Table 9's bottom row, the estimated area proportions p_.j
    assert _printed(paper.proportions.sum(axis=0), 4) == [0.0235, 0.0130, 0.3175, 0.6460]
    assert paper.proportions[0, 0] == pytest.approx(0.020 * 66 / 75)  # Table 9, p_11 = 0.0176


def test_paper_accuracies_as_printed(paper):
    assert _printed(paper.users_accuracy, 2) == [0.88, 0.73, 0.93, 0.96]
    assert _printed(paper.users_ci95, 2) == [0.07, 0.10, 0.04, 0.02]
    assert _printed(paper.producers_accuracy, 2) == [0.75, 0.85, 0.93, 0.96]
    assert round(paper.overall_accuracy, 2) == 0.95
    assert round(paper.overall_ci95, 2) == 0.02
    # deforestation and stable forest as printed; forest gain and stable non-forest from eq. 7
    # (printed 0.23 and 0.01, see the module docstring)
    assert _printed(paper.producers_ci95, 2) == [0.21, 0.25, 0.03, 0.02]
    assert paper.producers_ci95[1] == pytest.approx(0.254, abs=5e-4)
    assert paper.producers_ci95[3] == pytest.approx(0.018, abs=5e-4)


def test_paper_full_precision_matches_pymapaccuracy(paper):
    """Against PyMapAccuracy's test_olofsson_table8_2014 expectations (CIs rescaled to 1.96)."""
    rescale = 1.96 / 1.959964
    assert paper.users_accuracy == pytest.approx([0.88, 0.7333333, 0.9272727, 0.9630769], abs=1e-7)
    assert paper.producers_accuracy == pytest.approx(
        [0.7486614, 0.8471564, 0.9345089, 0.9616090], abs=1e-7)
    assert paper.overall_accuracy == pytest.approx(0.9465119, abs=1e-7)
    assert paper.users_ci95 == pytest.approx(
        np.array([0.07403962, 0.10075516, 0.03974464, 0.02053312]) * rescale, rel=1e-5)
    assert paper.producers_ci95 == pytest.approx(
        np.array([0.21330593, 0.25440369, 0.03432379, 0.01836120]) * rescale, rel=1e-5)
    assert paper.overall_ci95 == pytest.approx(0.01848328 * rescale, rel=1e-5)
    assert paper.area_ha == pytest.approx([21157.76, 11686.15, 285769.9, 581386.2], abs=0.1)
    assert paper.area_ci95_ha == pytest.approx(
        np.array([6157.521, 3755.757, 15509.55, 16281.36]) * rescale, rel=1e-5)


def test_paper_from_samples_equals_from_matrix(paper):
    """The same example given as one (map, reference) pair per sample, as mapaccuracy takes it."""
    mapped, reference = [], []
    for i, row in enumerate(TABLE8_COUNTS):
        for j, n in enumerate(row):
            mapped += [CLASSES[i]] * int(n)
            reference += [CLASSES[j]] * int(n)
    order = np.random.default_rng(0).permutation(len(mapped))
    est = stratified_estimate(np.array(mapped)[order], np.array(reference)[order],
                              TABLE8_PIXELS, CLASSES, LANDSAT_HA)
    assert (est.counts == TABLE8_COUNTS).all()
    assert est.area_ha == pytest.approx(paper.area_ha)
    assert est.producers_ci95 == pytest.approx(paper.producers_ci95)
    assert est.overall_ci95 == pytest.approx(paper.overall_ci95)


def test_class_order_does_not_matter(paper):
    perm = [2, 0, 3, 1]
    est = from_error_matrix(TABLE8_COUNTS[np.ix_(perm, perm)], TABLE8_PIXELS,
                            [CLASSES[i] for i in perm], LANDSAT_HA)
    assert est.area_ci95_ha == pytest.approx(paper.area_ci95_ha[perm])
    assert est.producers_ci95 == pytest.approx(paper.producers_ci95[perm])
    assert est.users_ci95 == pytest.approx(paper.users_ci95[perm])
    assert est.overall_accuracy == pytest.approx(paper.overall_accuracy)


def test_paper_outputs_for_metadata(paper):
    d = paper.as_dict()
    json.dumps(d, allow_nan=False)
    defo = d["classes"]["deforestation"]
    assert defo["mapped_pixels"] == 200_000 and defo["n_samples"] == 75
    assert round(defo["area_ha"]) == 21_158 and round(defo["area_ci95_ha"]) == 6_158
    assert d["n_samples"] == 640 and d["unsampled"] == [] and d["single_sample"] == []
    md = paper.markdown()
    assert md.splitlines()[0].startswith("| class | mapped ha (pixels) | estimated ha ± 95% CI")
    assert "| deforestation | 18,000 (200,000) | 21,158 ± 6,158 | 0.880 ± 0.074 | 0.749 ± 0.213 |" \
        in md
    assert "Overall accuracy 0.947 ± 0.018, from 640 reference samples" in md


def test_hand_computed_two_classes():
    """Two classes, worked on paper with the formulas of the module docstring.

    Map: a = 100 pixels, b = 300 pixels, 0.5 ha each: W = (1/4, 3/4), A_total = 200 ha.
    Sample: mapped a -> 4 a, 1 b (n_a. = 5); mapped b -> 2 a, 8 b (n_b. = 10).
    """
    est = from_error_matrix([[4, 1], [2, 8]], {"a": 100, "b": 300}, ["a", "b"], 0.5)
    # p_ij = W_i n_ij / n_i.
    assert est.proportions == pytest.approx(np.array([[0.25 * 4 / 5, 0.25 * 1 / 5],
                                                      [0.75 * 2 / 10, 0.75 * 8 / 10]]))
    # areas: p_.a = 0.2 + 0.15 = 0.35 -> 70 ha, p_.b = 0.65 -> 130 ha
    assert est.area_ha == pytest.approx([70.0, 130.0])
    assert est.mapped_area_ha == pytest.approx([50.0, 150.0])
    # V(p_.a) = (1/4)^2 (4/5)(1/5)/4 + (3/4)^2 (2/10)(8/10)/9 = 0.0025 + 0.01 = 0.0125 = V(p_.b)
    ci_area = 1.96 * math.sqrt(0.0125) * 200  # 43.83 ha
    assert est.area_ci95_ha == pytest.approx([ci_area, ci_area])
    # U_a = 4/5, V = 0.8 * 0.2 / 4 = 0.04; U_b = 8/10, V = 0.8 * 0.2 / 9
    assert est.users_accuracy == pytest.approx([0.8, 0.8])
    assert est.users_ci95 == pytest.approx([1.96 * 0.2, 1.96 * math.sqrt(0.16 / 9)])
    # O = 0.2 + 0.6, V(O) = (1/16)(0.04) + (9/16)(0.16/9) = 0.0025 + 0.01
    assert est.overall_accuracy == pytest.approx(0.8)
    assert est.overall_ci95 == pytest.approx(1.96 * math.sqrt(0.0125))
    # P_a = 0.2 / 0.35 = 4/7; in pixels N_.a = 100 * 4/5 + 300 * 2/10 = 140, and eq. 7:
    # V(P_a) = [100^2 (3/7)^2 (0.8 * 0.2 / 4) + (4/7)^2 300^2 (0.2 * 0.8 / 9)] / 140^2
    #        = [3600/49 + 25600/49] / 19600 = 29200 / 960400
    # P_b = 0.6 / 0.65 = 12/13; N_.b = 100 * 1/5 + 300 * 8/10 = 260:
    # V(P_b) = [300^2 (1/13)^2 (0.16 / 9) + (12/13)^2 100^2 (0.16 / 4)] / 260^2
    #        = [1600/169 + 57600/169] / 67600 = 59200 / 11424400
    assert est.producers_accuracy == pytest.approx([4 / 7, 12 / 13])
    assert est.producers_ci95 == pytest.approx([1.96 * math.sqrt(29200 / 960400),
                                                1.96 * math.sqrt(59200 / 11424400)])
    assert est.producers_ci95 == pytest.approx([0.341760, 0.141091], abs=1e-6)


def test_perfect_map():
    est = from_error_matrix(np.diag([10, 20, 5]), [100, 200, 50], ["x", "y", "z"], LANDSAT_HA)
    assert est.area_ha == pytest.approx(est.mapped_area_ha)
    assert (est.area_ci95_ha == 0).all()
    assert (est.users_accuracy == 1).all() and (est.producers_accuracy == 1).all()
    assert (est.users_ci95 == 0).all() and (est.producers_ci95 == 0).all()
    assert est.overall_accuracy == pytest.approx(1.0) and est.overall_ci95 == 0


def test_zero_width_intervals_and_small_strata_are_named():
    """A class whose 10 samples are all right, and into which no other class's sample falls, gets
    "± 0": the summary says the sample saw no error, not that there is none; strata under 50 samples
    are named too. The paper's strata (75 or more samples each) get neither note."""
    est = from_error_matrix([[10, 0, 0], [0, 55, 5], [0, 3, 60]], [100, 300, 300], ["bare", "crop", "grass"], 1.0)
    assert est.area_ci95_ha[0] == 0 and est.area_ci95_ha[1] > 0
    assert est.no_error_seen == ["bare"] and est.few_samples == ["bare"]
    assert est.as_dict()["no_error_seen"] == ["bare"] and est.as_dict()["few_samples"] == ["bare"]
    md = est.markdown()
    assert "No error seen in the sample of: bare" in md and "Fewer than 50 reference samples in: bare" in md
    perfect = from_error_matrix(np.diag([10, 20, 5]), [100, 200, 50], ["x", "y", "z"], LANDSAT_HA)
    assert perfect.no_error_seen == ["x", "y", "z"]


def test_the_papers_strata_need_no_note(paper):
    assert paper.no_error_seen == [] and paper.few_samples == []


def test_unsampled_stratum_keeps_its_mapped_area():
    """c is mapped (100 of 500 pixels, 1 ha each) but never sampled; one sample mapped a is c."""
    est = from_error_matrix([[4, 0, 1], [1, 9, 0], [0, 0, 0]], {"a": 100, "b": 300, "c": 100},
                            ["a", "b", "c"], 1.0)
    assert est.unsampled == ["c"] and est.single_sample == []
    # p_.c = 0 (row b) + 0.2 (row c taken as mapped) + 0.2 * 1/5 (row a) = 0.24 -> 120 ha
    assert est.area_ha == pytest.approx([110.0, 270.0, 120.0])
    # only row a contributes variance to p_.c: 0.2^2 (1/5)(4/5) / 4 = 0.0016
    assert est.area_ci95_ha[2] == pytest.approx(1.96 * 0.04 * 500)
    assert math.isnan(est.users_accuracy[2]) and math.isnan(est.users_ci95[2])
    assert est.producers_accuracy[2] == pytest.approx(0.2 / 0.24)
    assert est.producers_ci95[2] == pytest.approx(1.96 * math.sqrt((25 / 36) * 0.0016) / 0.24)
    # O counts c as mapped without error: 0.16 + 0.54 + 0.2; V(O) from rows a and b only
    assert est.overall_accuracy == pytest.approx(0.9)
    assert est.overall_ci95 == pytest.approx(1.96 * math.sqrt(0.04 * 0.16 / 4 + 0.36 * 0.09 / 9))
    d = est.as_dict()
    json.dumps(d, allow_nan=False)
    assert d["unsampled"] == ["c"] and d["classes"]["c"]["users_accuracy"] is None
    md = est.markdown()
    assert "120.00 ± 39.20 (not sampled)" in md and "No reference sample in: c" in md


def test_single_sample_stratum_has_no_variance_term():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 RuntimeWarning from n_i. - 1 = 0
        est = from_error_matrix([[1, 0], [2, 8]], [100, 300], ["a", "b"], 0.5)
    assert est.single_sample == ["a"] and est.unsampled == []
    assert est.users_accuracy[0] == 1.0 and math.isnan(est.users_ci95[0])
    # V(p_.a): row a contributes 0, row b (3/4)^2 (2/10)(8/10)/9 = 0.01
    assert est.area_ci95_ha == pytest.approx([1.96 * 0.1 * 200] * 2)
    assert np.isfinite(est.producers_ci95).all() and math.isfinite(est.overall_ci95)
    assert "One reference sample only in: a" in est.markdown()


def test_class_never_found_has_no_producers_accuracy():
    est = from_error_matrix([[5, 0], [3, 0]], [10, 10], ["a", "b"], 1.0)
    assert est.area_ha[1] == 0 and est.area_ci95_ha[1] == 0
    assert math.isnan(est.producers_accuracy[1]) and math.isnan(est.producers_ci95[1])
    assert est.as_dict()["classes"]["b"]["producers_accuracy"] is None
    assert "| b | 10.00 (10) | 0.00 ± 0.00 | 0.000 ± 0.000 | n/a |" in est.markdown()


@pytest.mark.parametrize("call, message", [
    (lambda: stratified_estimate(["a", "b"], ["a"], [1, 1], ["a", "b"], 1.0),
     "same length, got 2 and 1"),
    (lambda: stratified_estimate(["a", "x"], ["a", "b"], [1, 1], ["a", "b"], 1.0),
     r"mapped has values not in classes .*\['x'\]"),
    (lambda: stratified_estimate(["a", "b"], ["a", 2], [1, 1], ["a", "b"], 1.0),
     r"reference has values not in classes .*\['2'\]"),
    (lambda: stratified_estimate([], [], [1, 1], ["a", "b"], 1.0),
     "no reference sample at all"),
    (lambda: from_error_matrix([[0, 0], [0, 0]], [1, 1], ["a", "b"], 1.0),
     "no reference sample at all"),
    (lambda: from_error_matrix([[3, -1], [0, 2]], [1, 1], ["a", "b"], 1.0),
     "counts must not be negative"),
    (lambda: from_error_matrix([[3, 0.5], [0, 2]], [1, 1], ["a", "b"], 1.0),
     "whole numbers"),
    (lambda: from_error_matrix([[3, 0, 1], [0, 2, 0]], [1, 1], ["a", "b"], 1.0),
     r"2 x 2 matrix .*got shape \(2, 3\)"),
    (lambda: from_error_matrix([[3, 0], [0, 2]], {"a": 1}, ["a", "b"], 1.0),
     r"missing \['b'\]"),
    (lambda: from_error_matrix([[3, 0], [0, 2]], {"a": 1, "b": 1, "c": 1}, ["a", "b"], 1.0),
     r"not in classes \['c'\]"),
    (lambda: from_error_matrix([[3, 0], [0, 2]], [1, -1], ["a", "b"], 1.0),
     "map_pixels must be finite and not negative"),
    (lambda: from_error_matrix([[3, 0], [0, 2]], [1, 1, 1], ["a", "b"], 1.0),
     "one count per class"),
    (lambda: from_error_matrix([[3, 0], [0, 2]], [1, 0], ["a", "b"], 1.0),
     r"reference samples mapped but 0 pixels .*\['b'\]"),
    (lambda: from_error_matrix([[3, 0], [0, 2]], [1, 1], ["a", "b"], 0.0),
     "pixel_area_ha must be a positive number"),
    (lambda: from_error_matrix([[3, 0], [0, 2]], [1, 1], ["a", "a"], 1.0),
     "classes must be distinct"),
    (lambda: from_error_matrix([[3, 0], [0, 2]], [0, 0], ["a", "b"], 1.0),
     "map_pixels are all zero"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
