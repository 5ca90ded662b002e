"""Per-pixel time series read from a pair of raw partitions (S2 and S1 of one year and region)."""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from model.series import PixelSeries
from resources.storage.data_root import RawPartition


def read_window(s2: RawPartition, s1: RawPartition, window: Window) -> PixelSeries:
    """Every pixel of a window, row-major, with both sensors' full series."""
    s2_values, s2_valid = s2.read_block(window)
    s1_values, s1_valid = s1.read_block(window)
    n = int(window.width * window.height)

    def per_pixel(values: np.ndarray, valid: np.ndarray, doy: np.ndarray):
        t = values.shape[0]
        return (
            values.reshape(t, values.shape[1], n).transpose(2, 0, 1).copy(),
            valid.reshape(t, n).T.copy(),
            np.broadcast_to(doy, (n, t)).copy(),
        )

    orbits = [o.get("orbit") for o in s1.observations]
    descending = None  # unknown unless every S1 observation says its pass direction
    if all(o in ("ascending", "descending") for o in orbits):
        descending = np.broadcast_to(np.array([o == "descending" for o in orbits]), (n, len(orbits))).copy()
    return PixelSeries(*per_pixel(s2_values, s2_valid, s2.doy), *per_pixel(s1_values, s1_valid, s1.doy), descending)


def sample_pixels(s2: RawPartition, s1: RawPartition, count: int, rng: np.random.Generator,
                  block: int = 256) -> PixelSeries:
    """Up to `count` random pixels that have data in both sensors, read one block at a time."""
    grid = s2.grid
    windows = grid.blocks(block)
    share = np.bincount(rng.integers(0, len(windows), count), minlength=len(windows))
    parts = []
    for window, k in zip(windows, share):
        if k == 0:
            continue
        series = read_window(s2, s1, window)
        candidates = np.nonzero(series.has_both)[0]
        if len(candidates):
            parts.append(series.subset(rng.choice(candidates, size=min(k, len(candidates)), replace=False)))
    if not parts:
        raise ValueError(f"no pixel with both S1 and S2 observations in {s2.folder}")
    return PixelSeries.concat(parts)
