"""Per-pixel Sentinel-2 and Sentinel-1 time series, the unit every model step consumes.

Pixels from different partitions have different observation dates, so the day of year is kept per
pixel and step; series of unequal length are padded with invalid steps. S1 steps carry their orbit
direction: v1.1 and v2 z-score each direction with its own constants and feed ascending before
descending.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.sampling import Mode, sample_steps


@dataclass
class PixelSeries:
    s2: np.ndarray  # (N, T2, 10) uint16 reflectance x 1e4
    s2_valid: np.ndarray  # (N, T2) bool: the clear mask
    s2_doy: np.ndarray  # (N, T2) int16
    s1: np.ndarray  # (N, T1, 2) int16 TESSERA units
    s1_valid: np.ndarray  # (N, T1) bool
    s1_doy: np.ndarray  # (N, T1) int16
    s1_desc: np.ndarray | None = None  # (N, T1) bool: descending pass; None when the source did not say

    def __len__(self) -> int:
        return self.s2.shape[0]

    @property
    def has_both(self) -> np.ndarray:
        """Pixels with at least one valid observation of each sensor."""
        return self.s2_valid.any(axis=1) & self.s1_valid.any(axis=1)

    @property
    def has_any(self) -> np.ndarray:
        return self.s2_valid.any(axis=1) | self.s1_valid.any(axis=1)

    def descending(self) -> np.ndarray:
        """The orbit flags; refuses series whose S1 steps never said their direction, since
        v1.1 and v2 would silently z-score them with the wrong constants."""
        if self.s1_desc is None:
            raise ValueError("the S1 observations carry no orbit direction (sat:orbit_state): "
                             "TESSERA v1.1 and v2 normalise ascending and descending passes separately")
        return self.s1_desc

    def subset(self, index: np.ndarray) -> "PixelSeries":
        return PixelSeries(*(None if getattr(self, f) is None else getattr(self, f)[index] for f in _FIELDS))

    def sampled(self, steps: int, mode: Mode = "evenly-spaced",
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, ...]:
        """v1.0's inputs: S2 (N, steps, 11) and S1 (N, steps, 3) raw, DOY last, and the S1 steps'
        descending flags (N, steps), sampled per pixel."""
        s1_index = sample_steps(self.s1_valid, steps, mode, rng)
        desc = np.zeros(s1_index.shape, bool) if self.s1_desc is None else np.take_along_axis(self.s1_desc, s1_index, 1)
        return (_gather(self.s2, self.s2_doy, sample_steps(self.s2_valid, steps, mode, rng)),
                _gather(self.s1, self.s1_doy, s1_index), desc)

    @staticmethod
    def concat(parts: list["PixelSeries"]) -> "PixelSeries":
        """Stack pixels of several partitions, padding the time axes with invalid steps."""
        t2 = max(p.s2.shape[1] for p in parts)
        t1 = max(p.s1.shape[1] for p in parts)

        def stack(field: str, t: int) -> np.ndarray | None:
            arrays = [getattr(p, field) for p in parts]
            if any(a is None for a in arrays):
                return None
            return np.concatenate([np.pad(a, [(0, 0), (0, t - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays])

        return PixelSeries(*(stack(f, t2 if f.startswith("s2") else t1) for f in _FIELDS))


_FIELDS = ("s2", "s2_valid", "s2_doy", "s1", "s1_valid", "s1_doy", "s1_desc")


def _gather(values: np.ndarray, doy: np.ndarray, indices: np.ndarray) -> np.ndarray:
    picked = np.take_along_axis(values, indices[:, :, None], axis=1).astype(np.float32)
    days = np.take_along_axis(doy, indices, axis=1).astype(np.float32)
    return np.concatenate([picked, days[:, :, None]], axis=2)


def series_from_arrays(s2_bands, s2_doys, s2_masks=None, s1_asc_bands=None, s1_asc_doys=None,
                       s1_desc_bands=None, s1_desc_doys=None) -> PixelSeries:
    """A PixelSeries from the reference's per-pixel arrays (`encode_pixels` conventions): S1
    ascending steps first, then descending, each flagged; an S1 step is valid when a channel is
    nonzero; DOYs per pixel (N, T) or shared (T,)."""
    s2 = np.asarray(s2_bands)
    if s2.ndim != 3 or s2.shape[-1] != 10:
        raise ValueError(f"s2_bands must be (N, T, 10), got {s2.shape}")
    n = s2.shape[0]

    def days(values, t: int, name: str) -> np.ndarray:
        d = np.asarray(values)
        if d.ndim == 1:
            d = np.broadcast_to(d, (n, len(d)))
        if d.shape != (n, t):
            raise ValueError(f"{name} must be ({n}, {t}) or ({t},), got {d.shape}")
        return d.astype(np.int16)

    masks = np.ones(s2.shape[:2], bool) if s2_masks is None else np.asarray(s2_masks) != 0
    if masks.shape != s2.shape[:2]:
        raise ValueError(f"s2_masks must be {s2.shape[:2]}, got {masks.shape}")
    passes = []
    for bands, doys, name, descending in ((s1_asc_bands, s1_asc_doys, "s1_asc", False),
                                          (s1_desc_bands, s1_desc_doys, "s1_desc", True)):
        if bands is None:
            continue
        b = np.asarray(bands)
        if b.ndim != 3 or b.shape[0] != n or b.shape[-1] != 2:
            raise ValueError(f"{name}_bands must be ({n}, T, 2), got {b.shape}")
        passes.append((b, days(doys, b.shape[1], f"{name}_doys"), np.full(b.shape[:2], descending)))
    if passes:
        s1 = np.concatenate([p[0] for p in passes], axis=1)
        s1_doy = np.concatenate([p[1] for p in passes], axis=1)
        s1_desc = np.concatenate([p[2] for p in passes], axis=1)
    else:
        s1, s1_doy, s1_desc = np.zeros((n, 0, 2), np.int16), np.zeros((n, 0), np.int16), np.zeros((n, 0), bool)
    return PixelSeries(s2, masks, days(s2_doys, s2.shape[1], "s2_doys"), s1, (s1 != 0).any(axis=2), s1_doy, s1_desc)
