"""Change between two years from embeddings (or from a raw-input baseline), calibrated so that a
score means the same in every region, grouped into patches, and scored against true changes.

What is measured: a pixel's change vector (its unit embedding this year minus last year's), each
dimension as a robust z-score against the region's typical change in that dimension, averaged as
|z| over the dimensions (`TypicalChange.magnitude`). Why not the cosine distance of the two
embeddings: it weighs every dimension alike, while some dimensions move a lot between any two years
(season timing, observation counts) and others hardly at all unless the land changes; standardising
lets a quiet dimension that moves count for more. On the demo's true changes the calibrated map
scored F1 0.93-0.95 in its three regions this way, against 0.42-0.66 with the cosine, whose
calibrated threshold flagged almost nothing; at a strict threshold set from the truth the cosine
still separated better in one region (demo-mol, where 15% of the pixels changed), and there the
measured false-alarm rate was 13 times the one asked (README, `bench/change_statistics.py`).

Why calibrate: the magnitude of stable pixels still depends on the region (its seasons, its
clouds), so one fixed threshold flags much of one region and nothing of another. Most pixels of a
region do not change from one year to the next; their magnitudes are the region's own null
distribution. The score is a robust z-score of log magnitude against it (median and MAD, which the
few changed pixels barely move), and the threshold is the normal quantile of the false-alarm rate
asked for: under the assumption that stable pixels' log magnitudes are normal, that fraction of
stable pixels is flagged. The assumption is checked on the demo's ground truth (README: the
measured false-alarm rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.errors import CalibrationError
from model.quantise import unit_rows

MAD_TO_SD = 1.4826  # a normal distribution's standard deviation per median absolute deviation


def change_vectors(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """unit(after) - unit(before) of each row pair: how a pixel's embedding moved (the scale of an
    int8 embedding is not part of what it says, so each year's vector is unit length first)."""
    return unit_rows(after) - unit_rows(before)


@dataclass(frozen=True)
class TypicalChange:
    """The region's typical change vector, dimension by dimension: the median and the spread (MAD,
    as a standard deviation) of its pixels' change vectors, changed pixels included (they are few
    and the median and MAD barely move for them)."""

    centre: np.ndarray
    spread: np.ndarray

    @classmethod
    def of(cls, change: np.ndarray) -> "TypicalChange":
        """From (N, dim) change vectors with no NaN: every pixel, or a sample drawn over the region."""
        if len(change) < 100:
            raise CalibrationError(f"{len(change)} pixels with data in both years: too few to tell stable from "
                                   "changed (need 100)")
        centre = np.median(change, axis=0)
        spread = np.median(np.abs(change - centre), axis=0) * MAD_TO_SD
        return cls(centre.astype(np.float32), np.maximum(spread, 1e-6).astype(np.float32))

    def magnitude(self, change: np.ndarray) -> np.ndarray:
        """Mean |robust z| over the dimensions of each (N, dim) change vector: 0.8 for a change drawn
        from the typical one (the mean |z| of a normal), larger the more unusual it is."""
        return np.mean(np.abs((change - self.centre) / self.spread), axis=-1).astype(np.float32)


@dataclass(frozen=True)
class Calibration:
    """The stable pixels' log-statistic centre and spread, and the score above which a pixel changed."""

    centre: float
    spread: float
    threshold: float
    false_alarm_rate: float

    def score(self, statistic: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return ((np.log(np.maximum(statistic, 1e-9)) - self.centre) / self.spread).astype(np.float32)


def calibrate(statistic: np.ndarray, false_alarm_rate: float = 1e-3) -> Calibration:
    """A calibration from every valid pixel's change statistic (positive; NaN ignored): a change
    magnitude, or a baseline's absolute difference. Most pixels must be stable."""
    from scipy.stats import norm

    if not 0 < false_alarm_rate < 0.5:
        raise ValueError(f"false_alarm_rate must be between 0 and 0.5, not {false_alarm_rate}")
    logs = np.log(np.maximum(statistic[np.isfinite(statistic)], 1e-9))
    if len(logs) < 100:
        raise CalibrationError(f"{len(logs)} pixels with data in both years: too few to tell stable from changed (need 100)")
    centre = float(np.median(logs))
    spread = float(np.median(np.abs(logs - centre))) * MAD_TO_SD
    return Calibration(centre, max(spread, 1e-6), float(norm.isf(false_alarm_rate)), false_alarm_rate)


def neighbourhood_median(values: np.ndarray, size: int) -> np.ndarray:
    """The median over each pixel's size x size neighbourhood (NaN stays NaN and counts as the
    raster's median). Why: land changes in patches (a clearing, an estate, a field), while the noise
    of two yearly embeddings is pixel by pixel; the median keeps a patch and drops the noise, which
    on the demo turned a recall of 0.08 into 0.84 at the same false-alarm rate (README)."""
    from scipy import ndimage

    if size <= 1:
        return values
    valid = np.isfinite(values)
    filled = np.where(valid, values, np.nanmedian(values) if valid.any() else 0.0)
    return np.where(valid, ndimage.median_filter(filled, size=size, mode="nearest"), np.nan).astype(np.float32)


def patches(changed: np.ndarray, min_pixels: int) -> tuple[np.ndarray, int]:
    """Connected changed pixels (8-neighbours) as patch ids from 1 (0: none), patches smaller than
    `min_pixels` dropped: isolated flagged pixels are mostly the false alarms the rate allows."""
    from scipy import ndimage

    labels, count = ndimage.label(changed, structure=np.ones((3, 3), int))
    if count == 0:
        return labels.astype(np.int32), 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    renumber = np.zeros(count + 1, np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[labels], int(keep.sum())


def flagged_patches(score: np.ndarray, threshold: float, min_pixels: int) -> tuple[np.ndarray, int]:
    """`patches` of the pixels scoring above `threshold`; a NaN score (no data) is never flagged."""
    return patches(np.nan_to_num(score, nan=-np.inf) > threshold, min_pixels)


def detection_scores(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Pixel-level precision, recall and F1 of a change mask against the true one."""
    valid = np.ones(truth.shape, bool) if valid is None else valid
    p, t = predicted.astype(bool) & valid, truth.astype(bool) & valid
    tp, fp, fn = float(np.sum(p & t)), float(np.sum(p & ~t)), float(np.sum(~p & t))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    false_alarm = fp / float(np.sum(~t & valid)) if np.sum(~t & valid) else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "false_alarm_rate": false_alarm}


def combined_baseline_score(*scores: np.ndarray) -> np.ndarray:
    """The raw-input baseline's score: the largest of its calibrated per-feature scores (|change of
    annual median NDVI|, |change of annual median VV|), so a change in either is found."""
    return np.nanmax(np.stack(scores), axis=0)
