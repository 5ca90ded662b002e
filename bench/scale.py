"""The embedding table as it grows: each figure at several sizes of one table, fitted to a power of
the rows, with H3-sharded tables and the segmented (distributed) index build beside it; prints JSON.

    .venv/bin/python bench/scale.py [--sizes 1000000,4000000,10000000] [--compare-at 4000000] [--segments 2]

One table grows the way a backfill grows it: partitions of `--partition-rows` rows (regions x 2 years
of clustered 128-d unit vectors on real pixel grids, `bench/search.py`'s), each written by
`TableStore.write_partition`. At each size:
  write_last_partition_s - the write of the partition that reached this size (must not grow)
  index                  - the vector index trained from scratch at this size (`refresh_index`, what
                           `embedding_index` runs when the table has grown fourfold), lists, seconds
  bytes_per_row          - on disk, every index included
  warm                   - 100 queries one by one: p50 / p99 ms, recall@10 against the exact answer
  cold_first_query       - a fresh `python` that opens the table and answers one query
  batched                - the same queries in one `search_many` call: queries/s
At `--compare-at` rows:
  segmented_build        - the index rebuilt in `--segments` segments by that many worker processes
                           (Lance's distributed path, `resources/table/segmented_index.py`): train,
                           each segment, publish, and the recall of the result
  sharded                - tables of one partition each (H3-sharded tables: a shard per group of
                           cells) against the one table holding all their rows: a global query fanned
                           out to every shard in threads and merged, and a regional query routed to
                           its one shard against the one table filtered to that region
After the largest size:
  append_to_searchable   - one more partition: its write (its rows are then searchable, by exact scan
                           of the unindexed rows), query p50 meanwhile, then `refresh_index` folding it
                           into the index (top-up, no retraining) and p50 after
  fit                    - each figure as a * rows^b (least squares on log-log), and what that gives at
                           1e9 and 5.5e9 rows (a France-sized year): extrapolations, not measurements

The exact answers are kept as running top-10s over the partitions, whose vectors are regenerated
from their seeds, so memory holds one partition at a time (30M rows fit this way; the table's own
reads decide the peak). Run alone: every figure is wall time on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resources.table.similarity import SearchFilter, Similarity  # noqa: E402
from resources.table.store import TableStore  # noqa: E402
from search import YEARS, bytes_on_disk, cold_query, partition_rows, recall, timed  # noqa: E402  (bench/search.py)

CLUSTERS, DIM, K = 1000, 128, 10


class Vectors:
    """Clustered unit vectors of partition p, the same whenever they are asked for (seeded by p)."""

    def __init__(self, rows_per_partition: int):
        self.rows = rows_per_partition
        self.centres = np.random.default_rng(0).normal(size=(CLUSTERS, DIM)).astype(np.float32)

    def partition(self, p: int) -> np.ndarray:
        rng = np.random.default_rng(1000 + p)
        data = self.centres[rng.integers(0, CLUSTERS, self.rows)]
        data += rng.normal(scale=0.6, size=(self.rows, DIM)).astype(np.float32)
        return data / np.linalg.norm(data, axis=1, keepdims=True)


class ExactTopK:
    """Running exact top-k of the queries over the partitions seen so far (global pixel ids)."""

    def __init__(self, queries: np.ndarray):
        self.queries = queries
        self.scores = np.full((len(queries), K), -np.inf, np.float32)
        self.ids = np.full((len(queries), K), -1, np.int64)

    def add(self, vectors: np.ndarray, first_id: int, block: int = 250_000) -> None:
        for start in range(0, len(vectors), block):
            scores = self.queries @ vectors[start:start + block].T
            top = np.argpartition(-scores, K, axis=1)[:, :K]
            both_scores = np.concatenate([self.scores, np.take_along_axis(scores, top, 1)], axis=1)
            both_ids = np.concatenate([self.ids, top + first_id + start], axis=1)
            keep = np.argsort(-both_scores, axis=1)[:, :K]
            self.scores, self.ids = np.take_along_axis(both_scores, keep, 1), np.take_along_axis(both_ids, keep, 1)

    def truth(self) -> list[set[int]]:
        return [set(row.tolist()) for row in self.ids]


def pixel_ids(result: pa.Table, rows_per_partition: int, width: int) -> np.ndarray:
    """Global ids of result rows: partition p = 2 * region + year offset, then the pixel in its grid."""
    region = np.array([int(r.split("-")[1]) for r in result["region"].to_pylist()], np.int64)
    p = region * 2 + (result["year"].to_numpy() - YEARS[0])
    return p * rows_per_partition + result["row"].to_numpy() * width + result["col"].to_numpy()


def write(store: TableStore, vectors: Vectors, p: int, width: int) -> float:
    start = time.perf_counter()
    store.write_partition(YEARS[p % 2], f"region-{p // 2}", partition_rows(vectors.partition(p), YEARS[p % 2], p // 2, width),
                          DIM)
    return round(time.perf_counter() - start, 2)


def drop_vector_index(store: TableStore) -> None:
    table = store.table()
    current = store.vector_index(table)
    if current is not None:
        table.drop_index(current.name)


def measure_size(store: TableStore, queries: np.ndarray, exact: ExactTopK, ids, rows: int) -> dict:
    drop_vector_index(store)  # a build from scratch at this size
    start = time.perf_counter()
    index = store.refresh_index()
    build_s = time.perf_counter() - start
    store.dataset().cleanup_old_versions(older_than=None, retain_versions=1)  # the bench is the only reader
    similarity = Similarity(store)
    truth = exact.truth()
    warm, answers = timed(lambda q: ids(similarity.search(q, k=K)), queries)
    start = time.perf_counter()
    batch = similarity.search_many(queries, k=K)
    batch_s = time.perf_counter() - start
    batch_found = [ids(batch.filter(pc.equal(batch["query"], i))) for i in range(len(queries))]
    return {"rows": rows, "index": {"build_s": round(build_s, 1), "lists": index.parameters.get("num_partitions"),
                                    "name": index.parameters.get("name")},
            "bytes_per_row": round(bytes_on_disk(store.uri) / rows, 1),
            "warm": {**warm, "recall_at_10": recall(answers, truth)},
            "batched": {"queries_per_s": round(len(queries) / batch_s, 1),
                        "one_by_one_queries_per_s": round(1000 / warm["mean_ms"], 1),
                        "recall_at_10": recall(batch_found, truth)}}


def fit(sizes: list[int], values: list[float]) -> dict:
    """value = a * rows^b, least squares in log-log; with what it gives at 1e9 and 5.5e9 rows."""
    x, y = np.log(np.array(sizes, float)), np.log(np.maximum(np.array(values, float), 1e-9))
    b, log_a = np.polyfit(x, y, 1) if len(sizes) > 1 else (1.0, y[0] - x[0])
    at = lambda n: float(math.exp(log_a) * n ** b)  # noqa: E731
    return {"exponent": round(float(b), 3), "at_1e9": round(at(1e9), 2), "at_5_5e9": round(at(5.5e9), 2)}


def _segment(uri: str, plan, group: list[int]):
    """One worker of the segmented build: its own process and connection, handed only the plan."""
    start = time.perf_counter()
    segment = TableStore(uri=uri).build_index_segment(plan, group)
    return segment, time.perf_counter() - start


def segmented_build(store: TableStore, segments: int, queries: np.ndarray, exact: ExactTopK, ids) -> dict:
    drop_vector_index(store)
    split = store.model_copy(update={"index_segments": segments})
    start = time.perf_counter()
    plan = split.plan_index()
    plan_s = time.perf_counter() - start
    start = time.perf_counter()
    with ProcessPoolExecutor(segments, mp_context=multiprocessing.get_context("spawn")) as pool:  # no fork: lance runs threads
        built = list(pool.map(_segment, [store.uri] * len(plan.groups), [plan] * len(plan.groups), plan.groups))
    segments_s = time.perf_counter() - start
    start = time.perf_counter()
    report = split.publish_index(plan, [segment for segment, _ in built])
    publish_s = time.perf_counter() - start
    similarity = Similarity(store)
    warm, answers = timed(lambda q: ids(similarity.search(q, k=K)), queries)
    return {"segments": len(plan.groups), "workers": segments, "plan_and_train_s": round(plan_s, 1),
            "segment_s": [round(s, 1) for _, s in built], "all_segments_wall_s": round(segments_s, 1),
            "publish_s": round(publish_s, 1), "total_s": round(plan_s + segments_s + publish_s, 1),
            "indexed_rows": report.indexed_rows, "warm": {**warm, "recall_at_10": recall(answers, exact.truth())}}


def sharded(root: Path, whole: TableStore, vectors: Vectors, width: int, queries: np.ndarray, exact: ExactTopK) -> dict:
    """Tables of one partition each (a shard per group of H3 cells: a region-year is one) against
    `whole`, one table of all their rows, indexed; recall against the exact answer over those rows."""
    shards = whole.table().count_rows() // vectors.rows
    stores = [TableStore(uri=str(root / f"shard-{s}")) for s in range(shards)]
    for s, store in enumerate(stores):
        write(store, vectors, s, width)
        store.refresh_index()
    ids = lambda result: pixel_ids(result, vectors.rows, width)  # noqa: E731
    searchers = [Similarity(store) for store in stores]
    one = Similarity(whole)
    with ThreadPoolExecutor(shards) as pool:
        def fan_out(q: np.ndarray) -> np.ndarray:
            found = pa.concat_tables(pool.map(lambda s: s.search(q, k=K), searchers))
            best = np.argsort(-found["similarity"].to_numpy())[:K]
            return ids(found.take(best))

        global_fan_out, fan_answers = timed(fan_out, queries)
    one_table, one_answers = timed(lambda q: ids(one.search(q, k=K)), queries)
    shard_0, _ = timed(lambda q: ids(searchers[0].search(q, k=K)), queries)
    region = SearchFilter(regions=["region-0"], years=[YEARS[0]])  # partition 0: what shard 0 holds
    one_table_region, _ = timed(lambda q: ids(one.search(q, k=K, filters=region)), queries)
    truth = exact.truth()
    return {"shards": shards, "rows_per_shard": vectors.rows,
            "global_query_fan_out": {**global_fan_out, "recall_at_10": recall(fan_answers, truth)},
            "global_query_one_table": {**one_table, "recall_at_10": recall(one_answers, truth)},
            "regional_query_its_shard": shard_0, "regional_query_one_table_filtered": one_table_region}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,4000000,10000000", help="table sizes measured, rows, ascending")
    parser.add_argument("--partition-rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--compare-at", type=int, default=4_000_000,
                        help="the size (one of --sizes) at which the table is also built in segments and sharded "
                             "into tables of one partition each (0: neither)")
    parser.add_argument("--segments", type=int, default=2, help="segments (worker processes) of the distributed build")
    parser.add_argument("--dir", default=None, help="where the tables go (default: a temporary folder)")
    args = parser.parse_args()
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    if any(size % args.partition_rows for size in sizes):
        raise SystemExit(f"every size must be a multiple of --partition-rows {args.partition_rows}")
    if args.compare_at and args.compare_at not in sizes:
        raise SystemExit(f"--compare-at {args.compare_at} is not one of --sizes {sizes}")
    vectors = Vectors(args.partition_rows)
    width = int(math.ceil(math.sqrt(args.partition_rows)))
    rng = np.random.default_rng(1)
    first = vectors.partition(0)
    queries = first[rng.choice(len(first), args.queries, replace=False)]
    queries = queries + rng.normal(scale=0.05, size=queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    report: dict = {"sizes": sizes, "partition_rows": args.partition_rows, "dim": DIM, "queries": args.queries,
                    "cpus": os.cpu_count(), "at_size": []}
    exact = ExactTopK(queries)
    ids = lambda result: pixel_ids(result, args.partition_rows, width)  # noqa: E731
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = TableStore(uri=str(Path(tmp) / "growing"))
        p = 0
        for size in sizes:
            while (p + 1) * args.partition_rows <= size:
                seconds = write(store, vectors, p, width)
                exact.add(vectors.partition(p), p * args.partition_rows)
                p += 1
            at = {"write_last_partition_s": seconds, **measure_size(store, queries, exact, ids, size)}
            pixel = store.table().search().where("region = 'region-0' AND year = 2023").limit(1).to_arrow()
            at["cold_first_query"] = cold_query(store.uri, store, queries[0], (pixel["lon"][0].as_py(),
                                                pixel["lat"][0].as_py(), YEARS[0]))
            report["at_size"].append(at)
            print(json.dumps(at), file=sys.stderr, flush=True)  # progress: a size at a time
            if size == args.compare_at:
                report["segmented_build"] = segmented_build(store, args.segments, queries, exact, ids)
                report["sharded"] = sharded(Path(tmp), store, vectors, width, queries, exact)
                print(json.dumps({k: report[k] for k in ("segmented_build", "sharded")}), file=sys.stderr, flush=True)

        # one more partition appended to the largest table: searchable at once, indexed by a top-up
        similarity = Similarity(store)
        appended = write(store, vectors, p, width)
        exact.add(vectors.partition(p), p * args.partition_rows)
        unindexed, answers = timed(lambda q: ids(similarity.search(q, k=K)), queries)
        start = time.perf_counter()
        top_up = store.refresh_index()
        fold_s = time.perf_counter() - start
        after, answers_after = timed(lambda q: ids(similarity.search(q, k=K)), queries)
        truth = exact.truth()
        report["append_to_searchable"] = {
            "table_rows_before": sizes[-1], "partition_rows": args.partition_rows, "write_s": appended,
            "query_while_unindexed": {**unindexed, "recall_at_10": recall(answers, truth)},
            "refresh_index_s": round(fold_s, 1), "refresh_action": top_up.action,
            "query_after_refresh": {**after, "recall_at_10": recall(answers_after, truth)}}
    figures = {"index_build_s": [a["index"]["build_s"] for a in report["at_size"]],
               "bytes_per_row": [a["bytes_per_row"] for a in report["at_size"]],
               "warm_p50_ms": [a["warm"]["p50_ms"] for a in report["at_size"]],
               "cold_first_query_s": [a["cold_first_query"]["open_and_query_s"] for a in report["at_size"]],
               "write_partition_s": [a["write_last_partition_s"] for a in report["at_size"]]}
    report["fit"] = {name: fit(sizes, values) for name, values in figures.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
