"""embedding_table[year, region] (LanceDB, H3), its embedding_index, and similarity_map[year, region]
for saved queries."""

import time
from pathlib import Path
from typing import Any

import yaml
from dagster import (AllPartitionMapping, AssetCheckResult, AssetDep, AssetCheckSpec, AssetExecutionContext, AssetIn,
                     AssetKey, AutomationCondition, AutomationConditionSensorDefinition, Config, DefaultSensorStatus,
                     DynamicOut, DynamicOutput, In, MaterializeResult, MetadataValue, Nothing, OpExecutionContext, Out,
                     Output, asset, graph_asset, op)
from pydantic import Field

from resources.errors import EncoderMismatchError
from resources.regions import PartitionId
from resources.previews import similarity_png
from resources.table.similarity import Similarity
from resources.table.filters import partition_filter
from resources.table.store import IndexPlan
from resources.storage.data_root import TesseraStorage, write_similarity_raster
from resources.table.rows import pixel_rows
from resources.table.vector_store import VectorStore
from tessera_assets.lineage import RAW_INPUTS
from tessera_assets.metadata import preview_metadata
from tessera_assets.partitions import year_and_region, year_region_partitions


@asset(partitions_def=year_region_partitions, deps=[AssetKey("embeddings"), *RAW_INPUTS], group_name="search",
       pool="lancedb", kinds={"lancedb"}, code_version="table-layout-2",
       check_specs=[AssetCheckSpec("rows_match_embedded_pixels", asset="embedding_table", blocking=True,
                                   description="the table holds exactly one row per embedded pixel of the partition")])
def embedding_table(context: AssetExecutionContext, storage: TesseraStorage, vectors: VectorStore) -> MaterializeResult:
    """One row per embedded pixel of the partition in the shared LanceDB table, with the raw
    partitions' valid-observation counts where there are raw partitions, replacing exactly
    this partition's rows in one commit. Searchable at once (new rows by exact scan); the
    `embedding_index` asset folds them into the vector index."""
    year, region = year_and_region(context)
    partition = storage.open_embeddings(year, region)
    s2_counts, s1_counts = (storage.observation_counts(sensor, year, region, partition.grid.shape) for sensor in ("s2", "s1"))
    report = vectors.write_partition(year, region, pixel_rows(partition, year, region, s2_counts, s1_counts),
                                     partition.dim)
    context.log.info(f"{report.rows} rows for {region} {year} in {report.seconds:.1f} s; table has {report.table_rows}")
    embedded = partition.valid_pixels()
    stored = vectors.table().count_rows(partition_filter(year, region))
    check = AssetCheckResult(check_name="rows_match_embedded_pixels", passed=stored == embedded,
                             metadata={"rows_in_table": stored, "embedded_pixels": embedded})
    return MaterializeResult(check_results=[check], metadata={
        "rows": report.rows, "encoder_id": partition.encoder_id, "dimensions": partition.dim,
        "table_rows": report.table_rows, "table_version": report.version,
        "write_seconds": round(report.seconds, 2), "uri": vectors.uri,
    })


# after partition writes, once none is in progress (`eager()` would also wait for every partition
# of every year and region to exist, which never happens)
AFTER_WRITES = (AutomationCondition.any_deps_updated().since_last_handled() & ~AutomationCondition.any_deps_in_progress()
                & ~AutomationCondition.in_progress()).with_label("after partition writes")


@op(pool="lancedb", ins={"embedding_table": In(Nothing)},
    out={"plan": Out(description="what the refresh does; the shared model if it trains"),
         "fragments": DynamicOut(description="one group of fragments a segment")})
def plan_index(context: OpExecutionContext, vectors: VectorStore):
    """Scalar indexes and compaction; whether the vector index is trained; if so, its shared model
    and the fragments of each segment, fanned out to one step each."""
    plan = vectors.plan_index()
    context.log.info(f"{plan.rows} rows; vector index: {plan.action}"
                     + (f", {len(plan.groups)} segment(s)" if plan.segments is not None else ""))
    yield Output(plan, "plan")
    for i, group in enumerate(plan.groups):
        yield DynamicOutput(group, output_name="fragments", mapping_key=f"segment_{i}")


@op(description="one segment of the vector index: the shared model applied to these fragments")
def build_index_segment(context: OpExecutionContext, vectors: VectorStore, plan: IndexPlan,
                        fragments: list[int]) -> Any:
    started = time.perf_counter()
    segment = vectors.build_index_segment(plan, fragments)
    context.log.info(f"segment of fragments {fragments}: {time.perf_counter() - started:.1f} s")
    return segment


@op(pool="lancedb", out=Out(Nothing))
def publish_index(context: OpExecutionContext, vectors: VectorStore, plan: IndexPlan, segments: list) -> None:
    """The segments merged and committed as one index; the table's index state as metadata."""
    report = vectors.publish_index(plan, segments)
    context.log.info(f"index {report.type}: {report.action}; {report.indexed_rows} of {report.table_rows} rows indexed "
                     f"in {report.seconds:.1f} s")
    partitions = vectors.partition_counts()
    context.add_output_metadata({
        "index": MetadataValue.json(report.to_dict()), "index_type": report.type, "action": report.action,
        "table_rows": report.table_rows, "indexed_rows": report.indexed_rows,
        "unindexed_rows": report.unindexed_rows, "seconds": round(report.seconds, 2),
        "segments_built": len(segments), "partitions": len(partitions), "rows_by_partition": MetadataValue.md(
            "| year | region | rows |\n|---|---|---|\n" + "\n".join(f"| {y} | {r} | {n} |" for (y, r), n in partitions)),
        "uri": vectors.uri,
    })


@graph_asset(ins={"embedding_table": AssetIn(dagster_type=Nothing)}, group_name="search", kinds={"lancedb"},
             automation_condition=AFTER_WRITES, code_version="index-ivfrq-segments-1")
def embedding_index(embedding_table):
    """The table's indexes, refreshed after partitions are written: scalar indexes on the filter
    columns, and the IVF-RaBitQ vector index trained once the table is large enough, topped up with new
    rows, and retrained when the table has grown fourfold. A trained index is built in `index_segments`
    segments, one step each (Lance's distributed index path: `resources/table/segmented_index.py`), and
    published as one. Runs by itself after writes (automation), so that a partition write never waits
    for, or pays for, an index build."""
    plan, fragments = plan_index(embedding_table)
    return publish_index(plan, fragments.map(lambda group: build_index_segment(plan, group)).collect())


index_after_writes = AutomationConditionSensorDefinition(
    "embedding_index_after_writes", target=[embedding_index], default_status=DefaultSensorStatus.RUNNING,
    description="Refreshes embedding_index once partition writes to the embedding table have finished.")


class SavedQueries(Config):
    queries_path: str = Field("queries.yaml", description="saved queries: {name: {lon, lat, year}}")


def load_queries(path: str) -> dict[str, dict]:
    file = Path(path)
    if not file.exists():
        return {}
    queries = (yaml.safe_load(file.read_text()) or {}).get("queries") or {}
    for name, spec in queries.items():
        missing = {"lon", "lat", "year"} - set(spec)
        if missing:
            raise ValueError(f"saved query {name!r} in {path} lacks {', '.join(sorted(missing))}")
    return queries


# the query vectors come from the table, from whichever partitions hold the saved queries' pixels
@asset(partitions_def=year_region_partitions,
       deps=[AssetKey("embeddings"), AssetDep("embedding_table", partition_mapping=AllPartitionMapping())],
       group_name="search", kinds={"geotiff"}, code_version="similarity-1", tags={"tessera/needs": "queries"})
def similarity_map(context: AssetExecutionContext, config: SavedQueries, storage: TesseraStorage,
                   vectors: VectorStore) -> MaterializeResult:
    """Cosine similarity of every pixel of the partition to each saved query pixel (any year)."""
    year, region = year_and_region(context)
    queries = load_queries(config.queries_path)
    if not queries:
        raise ValueError(f"no saved queries in {config.queries_path}: add {{queries: {{name: {{lon, lat, year}}}}}}")
    partition = storage.open_embeddings(year, region)
    similarity = Similarity(vectors)
    metadata = {"queries": len(queries)}
    parts = ("similarity", str(year), region)
    with storage.publish(*parts) as tmp:
        for name, spec in sorted(queries.items()):
            query, origin = similarity.vector_at(float(spec["lon"]), float(spec["lat"]), int(spec["year"]))
            if origin["encoder_id"] != partition.encoder_id:
                raise EncoderMismatchError(
                    f"saved query {name!r} is a vector of encoder {origin['encoder_id']}, but {PartitionId(year, region)} was "
                    f"embedded by {partition.encoder_id}: re-materialise one of them with the same encoder")
            stats = write_similarity_raster(partition, query, tmp / f"{name}.tif")
            similarity_png(tmp / f"{name}.tif", tmp / f"{name}.png", marker=(origin["row"], origin["col"])
                           if origin["region"] == region and origin["year"] == year else None)
            metadata[f"{name}_mean_similarity"] = round(stats["mean"], 4)
            metadata[f"{name}_fraction_above_0.9"] = round(stats["above_0.9"], 4)
            metadata |= preview_metadata(f"{name}_map", tmp / f"{name}.png", parts,
                                         f"similarity to {name}")
    metadata["path"] = MetadataValue.path(storage.location(*parts))
    return MaterializeResult(metadata=metadata)
