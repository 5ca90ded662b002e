"""v1.0's temporal sampling: a fixed number of each pixel's valid observations.

TESSERA v1.0 draws 40 valid steps at random (without replacement when there are enough, otherwise
with replacement) and sorts them in time, so its embeddings are stochastic (`random`). Our
`evenly-spaced` mode, the default for v1.0 weights, picks evenly spaced ranks among all valid steps
instead, so the same inputs always give the same embedding; it is this platform's choice, not a
TESSERA release's (v1.1 and v2 feed every observation in buckets: `model.selection`). Both are
vectorised over pixels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Mode = Literal["evenly-spaced", "random"]
MODES: tuple[str, ...] = ("evenly-spaced", "random")


def valid_first(valid: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """Per pixel, time indices with the valid steps first in stored order (then by `key`, stable:
    S1 passes its descending flag so that ascending steps come first). valid: (N, T)."""
    order_key = (~valid).astype(np.int8) * 2
    if key is not None:
        order_key = order_key + key.astype(np.int8)
    return np.argsort(order_key, axis=1, kind="stable")


def sample_steps(valid: np.ndarray, steps: int, mode: Mode = "evenly-spaced",
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Time indices (N, steps), sorted in time, for pixels with at least one valid step.

    Pixels with none get index 0 everywhere; callers must leave them out (they have no embedding)."""
    n_pixels, n_times = valid.shape
    counts = np.maximum(valid.sum(axis=1), 1)[:, None]
    order = valid_first(valid)
    if mode == "evenly-spaced":
        # evenly spaced ranks 0 .. count-1 among the valid steps (repeats when count < steps)
        ranks = np.floor(np.linspace(0.0, 1.0, steps)[None, :] * (counts - 1) + 0.5).astype(np.int64)
        return np.take_along_axis(order, ranks, axis=1)
    if mode != "random":
        raise ValueError(f"unknown sampling mode {mode!r}: use one of {', '.join(MODES)}")
    rng = rng or np.random.default_rng()
    ranks = np.sort(rng.integers(0, counts, (n_pixels, steps)), axis=1)
    indices = np.take_along_axis(order, ranks, axis=1)  # with replacement
    if n_times >= steps:
        keys = rng.random((n_pixels, n_times))
        keys[~valid] = np.inf
        without = np.sort(np.argsort(keys, axis=1)[:, :steps], axis=1)
        indices = np.where(counts >= steps, without, indices)
    return indices
