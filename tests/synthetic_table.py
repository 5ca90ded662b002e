"""Rows of the embedding table made up for tests that need more, or other, rows than the demo has."""

from __future__ import annotations

import h3
import numpy as np
import pyarrow as pa

from resources.vector_store import row_key, table_schema

ORIGIN = (52.2, 0.1)  # lat, lon of row 0, col 0: rows go south, columns east, about 10 m apart


def synthetic_rows(vectors: np.ndarray, year: int = 2022, region: str = "r", encoder_id: str = "enc",
                   first: int = 0, width: int = 1000) -> pa.Table:
    """One row per vector, pixel `first + i` of a `width`-wide grid of 10 m pixels from ORIGIN, with
    the H3 cells of its centre (so H3 filters select real places)."""
    n = len(vectors)
    ids = np.arange(first, first + n)
    rows, cols = ids // width, ids % width
    lat = ORIGIN[0] - rows * 9e-5
    lon = ORIGIN[1] + cols * 1.47e-4
    r13 = np.array([h3.str_to_int(h3.latlng_to_cell(a, o, 13)) for a, o in zip(lat, lon)], np.int64)
    parent = {res: np.array([h3.str_to_int(h3.cell_to_parent(h3.int_to_str(int(c)), res)) for c in r13], np.int64)
              for res in (7, 9)}
    return pa.table({
        "key": [row_key(year, region, int(c)) for c in r13], "year": pa.array(np.full(n, year), pa.int32()),
        "region": [region] * n, "row": pa.array(rows, pa.int32()), "col": pa.array(cols, pa.int32()),
        "lon": lon, "lat": lat, "h3_r13": r13, "h3_r9": parent[9], "h3_r7": parent[7],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(vectors, np.float16).ravel()), vectors.shape[1]),
        "s2_obs": pa.array(np.ones(n), pa.int16()), "s1_obs": pa.array(np.ones(n), pa.int16()),
        "encoder_id": [encoder_id] * n,
    }, schema=table_schema(vectors.shape[1]))


def clustered(n: int, rng: np.random.Generator, clusters: int = 20, dim: int = 128) -> np.ndarray:
    """Unit vectors around `clusters` centres: the shape of real embeddings, where exact and
    approximate search can disagree."""
    centres = rng.standard_normal((clusters, dim))
    data = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
