"""Per-pixel Sentinel-2 and Sentinel-1 time series, the unit every model step consumes.

Pixels from different partitions have different observation dates, so the day of year is kept per
pixel and step; series of unequal length are padded with invalid steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.sampling import Mode, sample_steps


@dataclass
class PixelSeries:
    s2: np.ndarray  # (N, T2, 10) uint16 reflectance x 1e4
    s2_valid: np.ndarray  # (N, T2) bool
    s2_doy: np.ndarray  # (N, T2) int16
    s1: np.ndarray  # (N, T1, 2) int16 TESSERA units
    s1_valid: np.ndarray  # (N, T1) bool
    s1_doy: np.ndarray  # (N, T1) int16

    def __len__(self) -> int:
        return self.s2.shape[0]

    @property
    def has_data(self) -> np.ndarray:
        """Pixels with at least one valid observation of each sensor: the ones that get an embedding."""
        return self.s2_valid.any(axis=1) & self.s1_valid.any(axis=1)

    def subset(self, index: np.ndarray) -> "PixelSeries":
        return PixelSeries(*(getattr(self, f)[index] for f in _FIELDS))

    def model_inputs(self, steps: int, mode: Mode = "deterministic",
                     rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encoder inputs S2 (N, steps, 11) and S1 (N, steps, 3), DOY last, sampled per pixel."""
        return (
            _gather(self.s2, self.s2_doy, sample_steps(self.s2_valid, steps, mode, rng)),
            _gather(self.s1, self.s1_doy, sample_steps(self.s1_valid, steps, mode, rng)),
        )

    @staticmethod
    def concat(parts: list["PixelSeries"]) -> "PixelSeries":
        """Stack pixels of several partitions, padding the time axes with invalid steps."""
        t2 = max(p.s2.shape[1] for p in parts)
        t1 = max(p.s1.shape[1] for p in parts)

        def pad(a: np.ndarray, t: int) -> np.ndarray:
            widths = [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            return np.pad(a, widths)

        return PixelSeries(
            np.concatenate([pad(p.s2, t2) for p in parts]), np.concatenate([pad(p.s2_valid, t2) for p in parts]),
            np.concatenate([pad(p.s2_doy, t2) for p in parts]), np.concatenate([pad(p.s1, t1) for p in parts]),
            np.concatenate([pad(p.s1_valid, t1) for p in parts]), np.concatenate([pad(p.s1_doy, t1) for p in parts]),
        )


_FIELDS = ("s2", "s2_valid", "s2_doy", "s1", "s1_valid", "s1_doy")


def _gather(values: np.ndarray, doy: np.ndarray, indices: np.ndarray) -> np.ndarray:
    picked = np.take_along_axis(values, indices[:, :, None], axis=1).astype(np.float32)
    days = np.take_along_axis(doy, indices, axis=1).astype(np.float32)
    return np.concatenate([picked, days[:, :, None]], axis=2)
