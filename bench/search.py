"""Similarity search at scale, our tuned path against its baselines in the same run; prints JSON.

    .venv/bin/python bench/search.py [--rows 1000000] [--queries 100]

Clustered unit vectors (128-d) in a table with our schema. For each path: index build time, p50/p95
latency of single queries, recall@10 against the exact answer (numpy over all rows):
  tuned        - `Similarity(engine="memory")`: the in-process IVF over the table's vectors
  lancedb_ivf_pq - `Similarity(engine="lancedb")`: the table's own IVF-PQ index as `VectorStore` derives it
  numpy        - an exact scan of an in-memory float32 matrix
  lancedb_flat - LanceDB with no vector index (`bypass_vector_index`)
and the tuned path with a prefilter on one H3 res-7 cell and on one region.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import h3
import numpy as np
import pyarrow as pa

from resources.similarity import SearchFilter, Similarity
from resources.vector_store import VectorStore, table_schema


PARENT_CELL = h3.latlng_to_cell(52.2, 0.1, 4)  # its res-7 children label the rows for filtered queries


def clustered(rows: int, dim: int, clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, rows)
    data = centres[labels] + rng.normal(scale=0.6, size=(rows, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True), labels


def batches(data: np.ndarray, rng: np.random.Generator, size: int = 100_000):
    schema = table_schema(data.shape[1])
    cells7 = np.array([h3.str_to_int(c) for c in sorted(h3.cell_to_children(PARENT_CELL, 7))[:100]], np.int64)
    for start in range(0, len(data), size):
        chunk = data[start:start + size]
        n = len(chunk)
        ids = np.arange(start, start + n)
        yield pa.RecordBatch.from_arrays([
            pa.array([f"2024-{i:x}" for i in ids]), pa.array(np.full(n, 2024, np.int32)),
            pa.array([f"region-{i % 10}" for i in ids]), pa.array((ids // 1000).astype(np.int32)),
            pa.array((ids % 1000).astype(np.int32)), pa.array(rng.uniform(0, 1, n)), pa.array(rng.uniform(50, 51, n)),
            pa.array(ids.astype(np.int64)), pa.array((ids % 5000).astype(np.int64)), pa.array(cells7[ids % 100]),
            pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), data.shape[1]),
            pa.array(np.full(n, 30, np.int16)), pa.array(np.full(n, 30, np.int16)),
        ], schema=schema)


def latency(run, queries: np.ndarray) -> tuple[dict, list]:
    run(queries[0])
    times, answers = [], []
    for q in queries:
        start = time.perf_counter()
        answers.append(run(q))
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2)}, answers


def recall(answers: list, truth: list) -> float:
    return round(float(np.mean([len(set(a) & set(t)) / len(t) for a, t in zip(answers, truth)])), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--flat-queries", type=int, default=20, help="LanceDB without index is slow: fewer queries")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data, _ = clustered(args.rows, 128, 1000, rng)
    queries = data[rng.choice(args.rows, args.queries, replace=False)] + rng.normal(scale=0.05, size=(args.queries, 128)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    report: dict = {"rows": args.rows, "dim": 128, "queries": args.queries}
    with tempfile.TemporaryDirectory() as tmp:
        store = VectorStore(uri=tmp)
        table = store.table(128)
        start = time.perf_counter()
        table.add(pa.Table.from_batches(list(batches(data, rng))))
        report["load_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        report["index"] = store.refresh_indexes(table)
        report["index_build_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        similarity = Similarity(store, engine="memory")
        similarity.snapshot()
        report["memory_index_build_seconds"] = round(time.perf_counter() - start, 1)
        on_disk = Similarity(store, engine="lancedb")

        def exact_ids(q: np.ndarray, mask: np.ndarray | None = None) -> list[int]:
            scores = data @ q
            if mask is not None:
                scores = np.where(mask, scores, -np.inf)
            return np.argpartition(-scores, 10)[:10].tolist()

        def ids(result: pa.Table) -> list[int]:
            return [int(k.split("-")[1], 16) for k in result["key"].to_pylist()]

        truth = [exact_ids(q) for q in queries]
        numpy_stats, _ = latency(exact_ids, queries)
        report["numpy_exact"] = {**numpy_stats, "recall_at_10": 1.0}
        tuned_stats, answers = latency(lambda q: ids(similarity.search(q, k=10)), queries)
        report["tuned"] = {**tuned_stats, "recall_at_10": recall(answers, truth)}
        ivf_stats, ivf_answers = latency(lambda q: ids(on_disk.search(q, k=10)), queries)
        report["lancedb_ivf_pq"] = {**ivf_stats, "recall_at_10": recall(ivf_answers, truth)}
        flat = queries[: args.flat_queries]
        flat_stats, flat_answers = latency(lambda q: ids(on_disk.search(q, k=10, exact=True)), flat)
        report["lancedb_flat"] = {**flat_stats, "recall_at_10": recall(flat_answers, truth[: len(flat)])}
        cell = 42
        cell_str = sorted(h3.cell_to_children(PARENT_CELL, 7))[cell]
        cell_mask = (np.arange(args.rows) % 100) == cell
        cell_truth = [exact_ids(q, cell_mask) for q in queries]
        cell_stats, cell_answers = latency(
            lambda q: ids(similarity.search(q, k=10, filters=SearchFilter(h3_cells=[cell_str]))), queries)
        report["tuned_filtered_h3_r7"] = {**cell_stats, "recall_at_10": recall(cell_answers, cell_truth),
                                          "rows_in_filter": int(cell_mask.sum())}
        region_mask = (np.arange(args.rows) % 10) == 3
        region_truth = [exact_ids(q, region_mask) for q in queries]
        region_stats, region_answers = latency(
            lambda q: ids(similarity.search(q, k=10, filters=SearchFilter(regions=["region-3"]))), queries)
        report["tuned_filtered_region"] = {**region_stats, "recall_at_10": recall(region_answers, region_truth),
                                           "rows_in_filter": int(region_mask.sum())}
    p50 = report["tuned"]["p50_ms"]
    report["speedup_vs_numpy_p50"] = round(report["numpy_exact"]["p50_ms"] / p50, 1)
    report["speedup_vs_lancedb_flat_p50"] = round(report["lancedb_flat"]["p50_ms"] / p50, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
