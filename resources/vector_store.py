"""The embedding table: one LanceDB table, one row per pixel and year, H3-indexed.

Key: `"{year}-{h3 res-13 cell of the pixel centre}"` (res-13 cells, ~44 m2, are smaller than a 10 m
pixel, so the key is unique). Filter columns `h3_r7` (~5 km2) and `h3_r9` (~0.1 km2) carry B-tree
indexes, `year` and `region` bitmap indexes. A partition is written with one `merge_insert` that
inserts, updates, and deletes the partition's rows that are gone, in one commit: re-running never
duplicates, other partitions are untouched, and readers see the old or the new partition, never half.

Vector index (cosine): none below `ANN_MIN_ROWS` (an exact scan is fast and exact there, and IVF
training on few rows is poor); above it IVF-PQ with `sqrt(rows)` partitions (clamped to 16..4096)
and `dim / 4` sub-vectors of 8 bits (32 for 128-d: the default `dim/16` loses too much recall),
queried with 20-40 probes and a refine step that re-ranks 10x candidates by exact distance. Rows
written after the index are folded in by `optimize()`; the index is rebuilt when the table has
grown fourfold since it was trained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import h3
import numpy as np
import pyarrow as pa
from dagster import ConfigurableResource
from pydantic import PrivateAttr
from rasterio.warp import transform as warp_transform

from model.errors import VectorDimensionError
from model.quantise import dequantise
from resources.regions import RegionGrid
from resources.storage import EmbeddingPartition

TABLE_NAME = "embeddings"
FILTER_RESOLUTIONS = (7, 9)
KEY_RESOLUTION = 13
ANN_MIN_ROWS = 100_000
REBUILD_GROWTH = 4.0


def table_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("key", pa.string(), nullable=False, metadata={"lance-schema:unenforced-primary-key": "true"}),
        pa.field("year", pa.int32()),
        pa.field("region", pa.string()),
        pa.field("row", pa.int32()),
        pa.field("col", pa.int32()),
        pa.field("lon", pa.float64()),
        pa.field("lat", pa.float64()),
        pa.field("h3_r13", pa.int64()),
        pa.field("h3_r9", pa.int64()),
        pa.field("h3_r7", pa.int64()),
        pa.field("vector", pa.list_(pa.float32(), dim)),
        pa.field("s2_obs", pa.int16()),
        pa.field("s1_obs", pa.int16()),
        pa.field("encoder_id", pa.string()),
    ])


def h3_cells(lat: np.ndarray, lon: np.ndarray) -> dict[int, np.ndarray]:
    """Res-13 cells of points and their res-9 and res-7 parents, as int64."""
    r13 = np.fromiter((h3.str_to_int(h3.latlng_to_cell(a, o, KEY_RESOLUTION)) for a, o in zip(lat, lon)),
                      np.int64, len(lat))
    cells = {13: r13}
    for res in FILTER_RESOLUTIONS:
        cells[res] = np.fromiter((h3.str_to_int(h3.cell_to_parent(h3.int_to_str(int(c)), res)) for c in r13),
                                 np.int64, len(r13))
    return cells


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
        cells = h3_cells(lat, lon)
        keys = [f"{year}-{c:x}" for c in cells[13]]
        yield pa.RecordBatch.from_arrays([
            pa.array(keys), pa.array(np.full(len(rows), year, np.int32)), pa.array([region] * len(rows)),
            pa.array(rows.astype(np.int32)), pa.array(cols.astype(np.int32)), pa.array(lon), pa.array(lat),
            pa.array(cells[13]), pa.array(cells[9]), pa.array(cells[7]),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
            pa.array(s2_counts[rows, cols].astype(np.int16)), pa.array(s1_counts[rows, cols].astype(np.int16)),
            pa.array([encoder_id] * len(rows)),
        ], schema=table_schema(vectors.shape[1]))


@dataclass
class WriteReport:
    rows: int
    table_rows: int
    version: int
    index: dict[str, Any]
    write_seconds: float
    index_seconds: float


class VectorStore(ConfigurableResource):
    """The LanceDB database: a local folder by default, or `s3://bucket/prefix` with storage options."""

    uri: str = ".tessera/data/lancedb"
    storage_options: dict[str, str] = {}
    nprobes: int = 32
    refine_factor: int = 10
    ann_min_rows: int = ANN_MIN_ROWS
    memory_max_rows: int = 2_000_000  # `Similarity(engine="auto")` searches in memory up to this size
    _db: Any = PrivateAttr(default=None)

    def connection(self):
        if self._db is None:
            import lancedb

            # a short consistency interval: readers see other processes' commits
            self._db = lancedb.connect(self.uri, storage_options=self.storage_options or None,
                                       read_consistency_interval=timedelta(seconds=0))
        return self._db

    def table(self, dim: int | None = None):
        db = self.connection()
        if TABLE_NAME in db.table_names():
            table = db.open_table(TABLE_NAME)
            if "encoder_id" not in table.schema.names:  # written before rows carried their encoder
                table.add_columns({"encoder_id": "'unknown'"})
            return table
        if dim is None:
            return None
        return db.create_table(TABLE_NAME, schema=table_schema(dim))

    def write_partition(self, year: int, region: str, batches: Iterator[pa.RecordBatch], dim: int) -> WriteReport:
        table = self.table(dim)
        stored = table.schema.field("vector").type.list_size
        if stored != dim:
            raise VectorDimensionError(
                f"the embedding table holds {stored}-d vectors and this partition has {dim}: a table holds one "
                f"width; re-materialise the embeddings with dimensions={stored} or use another VectorStore uri")
        started = time.perf_counter()
        reader = pa.RecordBatchReader.from_batches(table_schema(dim), batches)
        (
            table.merge_insert("key")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"year = {int(year)} AND region = '{region}'")
            .execute(reader)
        )
        write_seconds = time.perf_counter() - started
        started = time.perf_counter()
        index = self.refresh_indexes(table)
        rows = table.count_rows(f"year = {int(year)} AND region = '{region}'")
        return WriteReport(rows, table.count_rows(), table.version, index, write_seconds, time.perf_counter() - started)

    def refresh_indexes(self, table) -> dict[str, Any]:
        """Scalar indexes always; the vector index once the table is large enough (see module doc)."""
        from lancedb.index import BTree, Bitmap, IvfPq

        existing = {ix.columns[0]: ix for ix in table.list_indices()}
        for column, config in (("key", BTree()), ("h3_r7", BTree()), ("h3_r9", BTree()),
                               ("year", Bitmap()), ("region", Bitmap()), ("encoder_id", Bitmap())):
            if column not in existing:
                table.create_index(column, config=config)
        rows = table.count_rows()
        dim = table.schema.field("vector").type.list_size
        if rows < self.ann_min_rows:
            table.optimize()
            return {"type": "none (exact search)", "reason": f"{rows} rows < {self.ann_min_rows}", "unindexed_rows": rows}
        partitions = int(min(4096, max(16, round(math.sqrt(rows)))))
        current = next((ix.name for ix in existing.values() if ix.columns[0] == "vector"), None)
        built_with = int(current.rsplit("_p", 1)[1]) if current and "_p" in current else 0
        if current is None or partitions > math.sqrt(REBUILD_GROWTH) * built_with:
            name = f"vector_ivfpq_p{partitions}"  # the name records what the index was trained for
            table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=partitions,
                                                      num_sub_vectors=max(1, dim // 4)), name=name)
            if current and current != name:
                table.drop_index(current)
            current, built_with = name, partitions
        table.optimize()  # folds new rows into every index, compacts small fragments
        stats = table.index_stats(current)
        return {
            "type": "IVF_PQ (cosine)", "name": current, "num_partitions": built_with,
            "num_sub_vectors": max(1, dim // 4), "num_bits": 8, "nprobes": self.nprobes,
            "refine_factor": self.refine_factor,
            "indexed_rows": stats.num_indexed_rows if stats else None,
            "unindexed_rows": stats.num_unindexed_rows if stats else None,
        }
