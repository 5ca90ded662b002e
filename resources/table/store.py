"""The embedding table: one LanceDB table, one row per pixel, year and region, H3-indexed.

`TableStore` is its one home, settings and operations, and needs no Dagster: a one-off `tessera
search` opens it without importing the orchestration stack (~0.5 s). The Dagster resource over it
is `resources.table.vector_store.VectorStore`, the same fields as run config.

Key: `"{year}-{region}-{h3 res-13 cell of the pixel centre}"` (res-13 cells, ~44 m2, are smaller
than a 10 m pixel, so the cell names the pixel). The region is part of the key because regions may
overlap (a field site inside a county) and their grids need not align: each partition owns its rows,
and re-materialising one never touches another's. Vectors are float16: the embeddings are int8 with
a per-pixel scale, which float16 holds to within 1e-3 relative, at half the bytes of float32.

Writing a partition is one `merge_insert` on the key that inserts, updates and deletes exactly that
partition's rows in one commit, so readers see the old or the new partition, never half. It builds
no index: rows written since the last index refresh are searched by exact scan, so results stay
right, and a write costs the same whatever the table's size. Commit conflicts between concurrent
writers are retried by Lance (the key is an unenforced primary key, see PITFALLS).

`refresh_index` is the maintenance step (the `embedding_index` asset): scalar indexes on the filter
columns (B-tree on the key and H3 cells, bitmap on year, region and encoder id), and the vector
index once the table is large enough to need one: IVF with RaBitQ codes of 4 bits a dimension
(cosine), one IVF list per `rows_per_partition` rows up to `max_partitions` lists (k-means on 64
rows a list, 20 iterations: building grows with rows x lists, and more lists did not raise recall),
queried with `nprobes` lists and an exact re-rank of `refine_factor * k` candidates on the stored
vectors. Chosen by measurement on 1M clustered 128-d rows (`bench/search.py`; recall@10 against
exact, build on 2 cores): IVF-PQ with 16, 32 and 64 sub-vectors reached 0.84, 0.98 and 0.99
(refine 20) but took 2-9 min to build; IVF-SQ ~0.96 at any refine; RaBitQ 1- and 2-bit 0.85 and
0.99 (refine 20); RaBitQ 4-bit 0.98 at refine 2 and 0.997 at refine 5, built in under a minute.
New rows are folded into the index by `compact()` (lancedb's `optimize()`, with our fragment size);
it is retrained when the table has grown fourfold since training (the index name records the rows it
was trained on).

A trained index is built by Lance's distributed path (`resources.table.segmented_index`): a shared
model trained once, then `index_segments` segments of whole fragments, each encoded by its own worker
(a step of `embedding_index`), merged and published in one commit. One segment is the one-machine
build; more let the encoding, which grows with rows x lists, leave one machine (`docs/scale.md`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, PrivateAttr

from model.errors import VectorDimensionError
from resources.errors import TableSchemaError
from resources.table.filters import equals, partition_filter
from resources.table.lancedb_import import import_lancedb

if TYPE_CHECKING:
    from resources.table.segmented_index import SegmentPlan

TABLE_NAME = "embeddings"
FILTER_RESOLUTIONS = (7, 9)
KEY_RESOLUTION = 13
SCHEMA_VERSION = "2"  # 1: float32 vectors, keys without the region
SCHEMA_VERSION_KEY = b"tessera:table-schema"
REBUILD_GROWTH = 4.0
RQ_BITS = 4  # RaBitQ bits a dimension: 64 bytes a 128-d row
SCALAR_INDEXES = (("key", "btree"), ("h3_r7", "btree"), ("h3_r9", "btree"),
                  ("year", "bitmap"), ("region", "bitmap"), ("encoder_id", "bitmap"))


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
        pa.field("vector", pa.list_(pa.float16(), dim)),
        pa.field("s2_obs", pa.int16()),
        pa.field("s1_obs", pa.int16()),
        pa.field("encoder_id", pa.string()),
    ], metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()})


def row_key(year: int, region: str, cell: int) -> str:
    return f"{year}-{region}-{cell:x}"


@dataclass
class WriteReport:
    rows: int
    table_rows: int
    version: int
    seconds: float


@dataclass
class IndexReport:
    """What `refresh_index` did and what the table's vector index is now, for asset metadata."""

    type: str
    action: str  # "none", "trained", "retrained", "folded in new rows"
    table_rows: int
    indexed_rows: int
    unindexed_rows: int
    seconds: float
    parameters: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "action": self.action, "table_rows": self.table_rows,
                "indexed_rows": self.indexed_rows, "unindexed_rows": self.unindexed_rows,
                "seconds": round(self.seconds, 2), **self.parameters}


@dataclass(frozen=True)
class IndexPlan:
    """What `plan_index` decided: the segments to build (None when nothing is trained), and what to
    report. Picklable: it travels from the planning step to the segment and publishing steps."""

    started: float  # wall clock (time.time()), so the report covers every step
    rows: int
    replaces: str | None  # the vector index a trained one replaces
    action: str  # "none", "trained", "retrained", "folded in new rows"
    segments: SegmentPlan | None = None

    @property
    def groups(self) -> list[list[int]]:
        return self.segments.groups if self.segments is not None else []


class TableStore(BaseModel):
    """The LanceDB database (a local folder, or `s3://bucket/prefix` with storage options) and how
    its vector index is built and queried. Settings are frozen, as on the Dagster resource, so what
    a run was configured with is what it used."""

    model_config = ConfigDict(frozen=True)

    uri: str = ".tessera/data/lancedb"
    storage_options: dict[str, str] = {}
    ann_min_rows: int = 100_000  # below this an exact scan is fast, exact, and needs no training
    rows_per_partition: int = 4_096  # IVF lists of about this many rows, ...
    max_partitions: int = 1_024  # ... up to this many lists: training and assignment grow with rows x lists
    nprobes: int = 20  # at least this many IVF lists a query; more when a filter leaves fewer than k rows
    exact_scan_max_rows: int = 20_000  # filters keeping at most this many rows are scanned exactly
    refine_factor: int = 5  # candidates re-ranked by exact cosine on the stored vectors: refine_factor * k
    keep_versions_hours: float = 1.0  # older table versions are removed by refresh_index
    index_segments: int = 1  # a trained vector index is built in this many segments, one worker (step) each
    rows_per_fragment: int = 1_048_576  # compaction's target (Lance's default); a segment is whole fragments
    _db: Any = PrivateAttr(default=None)

    def connection(self):
        if self._db is None:
            lancedb = import_lancedb()
            # consistency interval 0: every read sees other processes' latest commits
            self._db = lancedb.connect(self.uri, storage_options=self.storage_options or None,
                                       read_consistency_interval=timedelta(seconds=0))
        return self._db

    def table(self, dim: int | None = None):
        """The table (created for `dim`-d vectors when missing and `dim` is given; else None)."""
        db = self.connection()
        if TABLE_NAME in db.table_names():
            table = db.open_table(TABLE_NAME)
            version = (table.schema.metadata or {}).get(SCHEMA_VERSION_KEY, b"1").decode()
            if version != SCHEMA_VERSION:
                raise TableSchemaError(
                    f"the embedding table at {self.uri} has layout {version} (float32 vectors, keys without the "
                    f"region); this version writes layout {SCHEMA_VERSION}. The table is derived data: move it away "
                    f"and re-materialise embedding_table for your partitions, then embedding_index")
            return table
        if dim is None:
            return None
        try:
            return db.create_table(TABLE_NAME, schema=table_schema(dim))
        except ValueError:  # another writer created it first
            return db.open_table(TABLE_NAME)

    def write_partition(self, year: int, region: str, batches: Iterable[pa.RecordBatch], dim: int) -> WriteReport:
        """Replace the partition's rows in one commit; indexes are left to `refresh_index`."""
        table = self.table(dim)
        stored = table.schema.field("vector").type.list_size
        if stored != dim:
            raise VectorDimensionError(
                f"the embedding table holds {stored}-d vectors and this partition has {dim}: a table holds one "
                f"width; re-materialise the embeddings with dimensions={stored} or use another VectorStore uri")
        started = time.perf_counter()
        reader = pa.RecordBatchReader.from_batches(table_schema(dim), iter(batches))
        (
            table.merge_insert("key")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(partition_filter(year, region))
            .execute(reader)
        )
        seconds = time.perf_counter() - started
        return WriteReport(table.count_rows(partition_filter(year, region)), table.count_rows(), table.version, seconds)

    def delete_region(self, region: str) -> int:
        """Remove a region's rows of every year (one commit); returns how many there were."""
        table = self.table()
        if table is None:
            return 0
        where = equals("region", region)
        rows = table.count_rows(where)
        if rows:
            table.delete(where)
        return rows

    def partition_counts(self) -> list[tuple[tuple[int, str], int]]:
        """Rows per (year, region), sorted: what the table holds, for the UI."""
        table = self.table()
        if table is None:
            return []
        columns = table.search().select(["year", "region"]).limit(None).to_arrow()
        counts = columns.group_by(["year", "region"]).aggregate([([], "count_all")]).to_pylist()
        return sorted(((c["year"], c["region"]), c["count_all"]) for c in counts)

    def vector_index(self, table) -> Any | None:
        return next((ix for ix in table.list_indices() if ix.columns[0] == "vector"), None)

    def dataset(self, version: int | None = None):
        """The table as a pylance dataset (for the segmented index build), at `version` or the latest."""
        from resources.table.segmented_index import open_dataset

        return open_dataset(f"{self.uri.rstrip('/')}/{TABLE_NAME}.lance", self.storage_options, version)

    def compact(self) -> None:
        """What lancedb's `optimize()` does, with our fragment size: small fragments compacted into
        fragments of `rows_per_fragment` rows (the unit a segmented index build shares out), new rows
        folded into every index, and versions older than `keep_versions_hours` dropped."""
        self.dataset().optimize.compact_files(target_rows_per_fragment=self.rows_per_fragment)
        dataset = self.dataset()
        dataset.optimize.optimize_indices()
        dataset.cleanup_old_versions(older_than=timedelta(hours=self.keep_versions_hours))

    def plan_index(self) -> IndexPlan:
        """Scalar indexes, compaction with new rows folded into every index, and the decision whether
        the vector index is (re)trained; when it is, the shared model and the fragment groups of its
        `index_segments` segments (`resources.table.segmented_index`)."""
        from lancedb.index import BTree, Bitmap

        from resources.table.segmented_index import KMEANS_SAMPLE_PER_LIST, SegmentPlan, fragment_groups, train_model

        started = time.time()
        table = self.table()
        if table is None:
            raise TableSchemaError(f"no embedding table at {self.uri}: materialise embedding_table first")
        existing = {ix.columns[0] for ix in table.list_indices()}
        for column, kind in SCALAR_INDEXES:
            if column not in existing:
                table.create_index(column, config=BTree() if kind == "btree" else Bitmap())
        rows = table.count_rows()
        current = self.vector_index(table)
        trained_rows, _ = _trained_size(current.name) if current else (0, 0)
        self.compact()
        replaces = current.name if current is not None else None
        if rows < self.ann_min_rows or (current is not None and rows < REBUILD_GROWTH * trained_rows):
            return IndexPlan(started, rows, replaces, "folded in new rows" if current is not None else "none")
        # trained after compaction, so no fragment it covers is rewritten (and the index remapped) later
        # k-means trains on KMEANS_SAMPLE_PER_LIST rows a list: never more lists than the rows allow
        lists = max(1, min(self.max_partitions, round(rows / self.rows_per_partition), rows // KMEANS_SAMPLE_PER_LIST))
        dataset = self.dataset()
        model = train_model(dataset, "vector", f"vector_ivfrq_p{lists}_n{rows}", lists, RQ_BITS)
        segments = SegmentPlan(model, dataset.version, fragment_groups(dataset, self.index_segments))
        return IndexPlan(started, rows, replaces, "retrained" if current is not None else "trained", segments)

    def build_index_segment(self, plan: IndexPlan, fragment_ids: list[int]) -> Any:
        """One segment of a planned vector index: what one worker builds (on the planned snapshot)."""
        from resources.table.segmented_index import build_segment

        if plan.segments is None:
            raise ValueError("this index plan trains nothing: there is no segment to build")
        return build_segment(self.dataset(plan.segments.version), "vector", plan.segments.model, fragment_ids)

    def publish_index(self, plan: IndexPlan, segments: list[Any]) -> IndexReport:
        """The workers' segments merged and committed as the vector index (if one was trained), and a
        report of what the table's index is now."""
        from resources.table.segmented_index import commit

        if plan.segments is not None:
            commit(self.dataset(plan.segments.version), "vector", plan.segments.model, segments, plan.replaces)
        table = self.table()
        current = self.vector_index(table)
        seconds = time.time() - plan.started
        if current is None:
            return IndexReport("none (exact search)", plan.action, plan.rows, 0, plan.rows, seconds,
                               {"reason": f"{plan.rows} rows < ann_min_rows {self.ann_min_rows}"})
        stats = table.index_stats(current.name)
        _, lists = _trained_size(current.name)
        return IndexReport(f"IVF_RQ {RQ_BITS}-bit (cosine)", plan.action, plan.rows, stats.num_indexed_rows,
                           stats.num_unindexed_rows, seconds, {
                               "name": current.name, "num_partitions": lists, "num_bits": RQ_BITS,
                               "segments_built": len(segments), "nprobes": self.nprobes,
                               "refine_factor": self.refine_factor})

    def refresh_index(self) -> IndexReport:
        """Scalar indexes always; the vector index trained, retrained or topped up (module doc), its
        segments built here one after another (the `embedding_index` asset builds them as steps)."""
        plan = self.plan_index()
        return self.publish_index(plan, [self.build_index_segment(plan, group) for group in plan.groups])

    def describe_index(self, table) -> dict[str, Any]:
        """The vector index queries will use (for search reports): its name and the query parameters."""
        current = self.vector_index(table)
        if current is None:
            return {"index": "none (exact scan)"}
        return {"index": current.name, "nprobes": self.nprobes, "refine_factor": self.refine_factor}


def _trained_size(index_name: str) -> tuple[int, int]:
    """(rows, IVF lists) a vector index was trained for, from its name (`vector_ivfrq_p{lists}_n{rows}`)."""
    fields = {part[0]: int(part[1:]) for part in index_name.split("_")[2:] if part[:1] in ("p", "n") and part[1:].isdigit()}
    return fields.get("n", 0), fields.get("p", 0)
