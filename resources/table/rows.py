"""An embeddings partition as rows of the embedding table (schema in `resources.table.store`)."""

from __future__ import annotations

from collections.abc import Iterator

import h3
import numpy as np
import pyarrow as pa
from rasterio.warp import transform as warp_transform

from model.quantise import dequantise
from resources.regions import RegionGrid
from resources.storage.data_root import EmbeddingPartition
from resources.table.store import FILTER_RESOLUTIONS, KEY_RESOLUTION, row_key, table_schema


def h3_cells(lat: np.ndarray, lon: np.ndarray) -> dict[int, np.ndarray]:
    """Res-13 cells of points and their res-9 and res-7 parents, as int64."""
    r13 = np.fromiter((h3.str_to_int(h3.latlng_to_cell(a, o, KEY_RESOLUTION)) for a, o in zip(lat, lon)),
                      np.int64, len(lat))
    cells = {KEY_RESOLUTION: r13}
    for res in FILTER_RESOLUTIONS:
        cells[res] = np.fromiter((h3.str_to_int(h3.cell_to_parent(h3.int_to_str(int(c)), res)) for c in r13),
                                 np.int64, len(r13))
    return cells


def table_batch(year: int, region: str, rows: np.ndarray, cols: np.ndarray, lon: np.ndarray, lat: np.ndarray,
                vectors: np.ndarray, s2_obs: np.ndarray, s1_obs: np.ndarray, encoder_id: str) -> pa.RecordBatch:
    """Rows of the table for pixels at (row, col) of a region's grid, centred at (lon, lat): the
    key and H3 cells derived here, vectors stored as float16."""
    cells = h3_cells(lat, lon)
    n = len(rows)
    vectors = np.asarray(vectors).astype(np.float16)
    return pa.RecordBatch.from_arrays([
        pa.array([row_key(year, region, int(c)) for c in cells[KEY_RESOLUTION]]),
        pa.array(np.full(n, year, np.int32)), pa.array([region] * n),
        pa.array(np.asarray(rows).astype(np.int32)), pa.array(np.asarray(cols).astype(np.int32)),
        pa.array(np.asarray(lon, np.float64)), pa.array(np.asarray(lat, np.float64)),
        pa.array(cells[KEY_RESOLUTION]), pa.array(cells[9]), pa.array(cells[7]),
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
        pa.array(np.asarray(s2_obs).astype(np.int16)), pa.array(np.asarray(s1_obs).astype(np.int16)),
        pa.array([encoder_id] * n),
    ], schema=table_schema(vectors.shape[1]))


def pixel_rows(partition: EmbeddingPartition, year: int, region: str, s2_counts: np.ndarray,
               s1_counts: np.ndarray, block: int = 512) -> Iterator[pa.RecordBatch]:
    """Rows of every pixel with an embedding, one record batch per block (memory bounded by it),
    each carrying the identity of the encoder that made it."""
    grid: RegionGrid = partition.grid
    encoder_id = partition.encoder_id
    for window in grid.blocks(block):
        q, scales = partition.read(window)
        rows, cols = np.nonzero(np.isfinite(scales))
        if len(rows) == 0:
            continue
        vectors = dequantise(q[rows, cols], scales[rows, cols])
        rows, cols = rows + int(window.row_off), cols + int(window.col_off)
        xs = grid.transform.c + (cols + 0.5) * grid.transform.a
        ys = grid.transform.f + (rows + 0.5) * grid.transform.e
        lon, lat = (np.asarray(v) for v in warp_transform(grid.crs, "EPSG:4326", xs, ys))
        yield table_batch(year, region, rows, cols, lon, lat, vectors, s2_counts[rows, cols], s1_counts[rows, cols],
                          encoder_id)
