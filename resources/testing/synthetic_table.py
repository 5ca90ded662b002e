"""Rows of the embedding table made up for tests that need more, or other, rows than the demo has."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from resources.table.rows import table_batch

ORIGIN = (52.2, 0.1)  # lat, lon of row 0, col 0: rows go south, columns east, about 10 m apart


def synthetic_rows(vectors: np.ndarray, year: int = 2022, region: str = "r", encoder_id: str = "enc",
                   first: int = 0, width: int = 1000) -> pa.Table:
    """One row per vector, pixel `first + i` of a `width`-wide grid of 10 m pixels from ORIGIN, with
    the H3 cells of its centre (so H3 filters select real places)."""
    ids = np.arange(first, first + len(vectors))
    rows, cols = ids // width, ids % width
    batch = table_batch(year, region, rows, cols, ORIGIN[1] + cols * 1.47e-4, ORIGIN[0] - rows * 9e-5, vectors,
                        np.ones(len(ids)), np.ones(len(ids)), encoder_id)
    return pa.Table.from_batches([batch])


def clustered(n: int, rng: np.random.Generator, clusters: int = 20, dim: int = 128) -> np.ndarray:
    """Unit vectors around `clusters` centres: the shape of real embeddings, where exact and
    approximate search can disagree."""
    centres = rng.standard_normal((clusters, dim))
    data = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
