"""Similarity search at scale through the table's own index, against same-run baselines; prints JSON.

    .venv/bin/python bench/search.py [--rows 1000000] [--queries 100] [--sweep]

The table is written as a backfill writes it: `--partitions` partitions (regions x 2 years) of
clustered 128-d unit vectors on real pixel grids (so the H3 columns are real), each with
`VectorStore.write_partition`; then `VectorStore.refresh_index` (what `embedding_index` runs).
Reported:
  write_seconds       - the first and the last partition write (a write must not grow with the table)
  index               - build time and what was built; bytes on disk per row, index included
  cold                - a fresh `python` process that opens the table and answers one query (wall,
                        interpreter start and imports included), and `tessera search` end to end
  indexed             - `Similarity.search`, warm: p50/p95 and recall@10 against the exact answer
  batched             - `Similarity.search_many`: all the queries in one LanceDB call, queries/s against
                        the same queries one by one (`indexed`), and its recall@10
  filtered_*          - one H3 res-7 cell, one region, one year: latency, recall, shortest answer
  numpy_exact         - baseline: an exact scan of the vectors held in memory (float32)
  lancedb_flat        - baseline: the same table without its index (`bypass_vector_index`)
  sweep (--sweep)     - recall and p50 over nprobes x refine_factor on the built index
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import h3
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resources.table.similarity import SearchFilter, Similarity, search_report  # noqa: E402
from resources.table.rows import table_batch  # noqa: E402
from resources.table.vector_store import VectorStore  # noqa: E402

YEARS = (2023, 2024)
ORIGIN = (52.0, 0.0)  # lat, lon of region 0's north-west corner
CELL_LAT, CELL_LON = 9e-5, 1.46e-4  # about 10 m


def clustered(rows: int, rng: np.random.Generator, clusters: int = 1000, dim: int = 128) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    data = centres[rng.integers(0, clusters, rows)] + rng.normal(scale=0.6, size=(rows, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def partition_rows(vectors: np.ndarray, year: int, region: int, width: int, block: int = 200_000):
    """Record batches of one partition: pixel i of a `width`-wide grid whose corner is offset east by region."""
    for start in range(0, len(vectors), block):
        ids = np.arange(start, min(start + block, len(vectors)))
        rows, cols = ids // width, ids % width
        lat = ORIGIN[0] - rows * CELL_LAT
        lon = ORIGIN[1] + region * (width + 50) * CELL_LON + cols * CELL_LON
        yield table_batch(year, f"region-{region}", rows, cols, lon, lat, vectors[ids], np.full(len(ids), 30),
                          np.full(len(ids), 20), "bench-encoder")


def timed(run, queries: np.ndarray) -> tuple[dict, list]:
    run(queries[0])
    times, answers = [], []
    for q in queries:
        start = time.perf_counter()
        answers.append(run(q))
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2), "mean_ms": round(float(np.mean(times)), 2)}, answers


def recall(answers: list, truth: list) -> float:
    return round(float(np.mean([len(set(a) & set(t)) / max(1, len(t)) for a, t in zip(answers, truth)])), 4)


def bytes_on_disk(folder: str) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


COLD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
from resources.table.similarity import Similarity
from resources.table.vector_store import VectorStore
imported = time.perf_counter()
similarity = Similarity(VectorStore(uri=sys.argv[1], nprobes=int(sys.argv[2]), refine_factor=int(sys.argv[3])))
found = similarity.search(np.array(json.loads(sys.argv[4]), np.float32), k=10)
print(json.dumps({"imports_s": imported - start, "open_and_query_s": time.perf_counter() - imported, "hits": found.num_rows}))
"""


def cold_query(uri: str, store: VectorStore, query: np.ndarray, pixel: tuple[float, float, int]) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", COLD, uri, str(store.nprobes), str(store.refine_factor),
                          json.dumps(query.tolist())], capture_output=True, text=True, check=True, env=env, cwd=root)
    wall = time.perf_counter() - start
    inside = json.loads(out.stdout.strip().splitlines()[-1])
    lon, lat, year = pixel
    start = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "tessera_assets.cli", "search", "--lon", repr(lon), "--lat", repr(lat),
                          "--year", str(year)], capture_output=True, text=True, env=dict(env, TESSERA_LANCEDB_URI=uri),
                         cwd=root)
    cli_wall = time.perf_counter() - start
    if cli.returncode != 0:
        raise RuntimeError(cli.stderr)
    return {"wall_s": round(wall, 3), "imports_s": round(inside["imports_s"], 3),
            "open_and_query_s": round(inside["open_and_query_s"], 3),
            "python_start_s": round(wall - inside["imports_s"] - inside["open_and_query_s"], 3),
            "cli_search_wall_s": round(cli_wall, 3), "cli_says": cli.stdout.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=10, help="regions x 2 years; an even number")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--flat-queries", type=int, default=10, help="LanceDB without index is slow: fewer queries")
    parser.add_argument("--nprobes", type=int, default=VectorStore().nprobes)
    parser.add_argument("--refine-factor", type=int, default=VectorStore().refine_factor)
    parser.add_argument("--rows-per-partition", type=int, default=VectorStore().rows_per_partition)
    parser.add_argument("--sweep", action="store_true", help="also sweep nprobes x refine_factor")
    parser.add_argument("--dir", default=None, help="where the table goes (default: a temporary folder)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    per_partition = args.rows // args.partitions
    width = int(math.ceil(math.sqrt(per_partition)))
    data = clustered(per_partition * args.partitions, rng)
    rows = len(data)
    picks = rng.choice(rows, args.queries, replace=False)
    queries = data[picks] + rng.normal(scale=0.05, size=(args.queries, 128)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    report: dict = {"rows": rows, "partitions": args.partitions, "dim": 128, "queries": args.queries,
                    "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = VectorStore(uri=tmp, nprobes=args.nprobes, refine_factor=args.refine_factor,
                            rows_per_partition=args.rows_per_partition)
        # partition p holds rows [p * per_partition, (p + 1) * per_partition): year = p % 2, region = p // 2
        writes = []
        for p in range(args.partitions):
            block = data[p * per_partition:(p + 1) * per_partition]
            start = time.perf_counter()
            store.write_partition(YEARS[p % 2], f"region-{p // 2}", partition_rows(block, YEARS[p % 2], p // 2, width), 128)
            writes.append(time.perf_counter() - start)
        report["write_seconds"] = {"first_partition": round(writes[0], 2), "last_partition": round(writes[-1], 2),
                                   "rows_per_partition": per_partition}
        start = time.perf_counter()
        index = store.refresh_index()
        report["index"] = {**index.to_dict(), "build_seconds": round(time.perf_counter() - start, 1)}
        store.table().optimize(cleanup_older_than=timedelta(0))  # the bench is the only reader
        report["bytes_per_row"] = round(bytes_on_disk(tmp) / rows, 1)

        table = store.table()
        ordered = table.search().select(["year", "region", "row", "col", "h3_r7", "lon", "lat"]).limit(None).to_arrow()
        # the row id of a table row: its partition's block start + its pixel index
        part = (np.array([int(r.split("-")[1]) for r in ordered["region"].to_pylist()]) * 2
                + (ordered["year"].to_numpy() - YEARS[0]))
        positions = part * per_partition + ordered["row"].to_numpy() * width + ordered["col"].to_numpy()
        lookup = np.empty(rows, np.int64)
        lookup[positions] = np.arange(rows)  # data row -> table row (for filter masks)
        h3_r7 = ordered["h3_r7"].to_numpy()[lookup]
        year = ordered["year"].to_numpy()[lookup]
        region = part // 2

        def ids(result: pa.Table) -> list[int]:
            p = (np.array([int(r.split("-")[1]) for r in result["region"].to_pylist()], np.int64) * 2
                 + (result["year"].to_numpy() - YEARS[0]))
            return (p * per_partition + result["row"].to_numpy() * width + result["col"].to_numpy()).tolist()

        def exact(q: np.ndarray, mask: np.ndarray | None = None) -> list[int]:
            scores = data @ q
            if mask is not None:
                scores = np.where(mask, scores, -np.inf)
            top = np.argpartition(-scores, 10)[:10]
            return top[np.isfinite(scores[top])].tolist()

        pixel_row = int(lookup[picks[0]])
        cold = cold_query(tmp, store, queries[0], (ordered["lon"][pixel_row].as_py(), ordered["lat"][pixel_row].as_py(),
                                                   int(ordered["year"][pixel_row].as_py())))
        report["cold"] = cold
        similarity = Similarity(store)
        truth = [exact(q) for q in queries]
        stats, answers = timed(lambda q: ids(similarity.search(q, k=10)), queries)
        report["indexed"] = {**stats, "recall_at_10": recall(answers, truth),
                             "index": search_report(similarity.search(queries[0], k=10))["index"]}
        # many queries at once: one batched LanceDB query against the same queries one by one
        start = time.perf_counter()
        batch = similarity.search_many(queries, k=10)
        batch_s = time.perf_counter() - start
        batch_answers = [ids(batch.filter(pa.compute.equal(batch["query"], i))) for i in range(len(queries))]
        one_by_one_s = stats["mean_ms"] * len(queries) / 1000
        report["batched"] = {"queries": len(queries), "seconds": round(batch_s, 3),
                             "ms_per_query": round(1000 * batch_s / len(queries), 2),
                             "queries_per_second": round(len(queries) / batch_s, 1),
                             "one_by_one_queries_per_second": round(len(queries) / one_by_one_s, 1),
                             "speedup_vs_one_by_one": round(one_by_one_s / batch_s, 1),
                             "recall_at_10": recall(batch_answers, truth)}
        cell = h3_r7[picks[0]]
        for name, filters, mask in (
            ("filtered_h3_r7", SearchFilter(h3_cells=[h3.int_to_str(int(cell))]), h3_r7 == cell),
            ("filtered_region", SearchFilter(regions=["region-1"]), region == 1),
            ("filtered_year", SearchFilter(years=[YEARS[1]]), year == YEARS[1]),
        ):
            found = []
            stats, answers = timed(lambda q: found.append(similarity.search(q, k=10, filters=filters)) or ids(found[-1]),
                                   queries)
            report[name] = {**stats, "recall_at_10": recall(answers, [exact(q, mask) for q in queries]),
                            "rows_in_filter": int(mask.sum()), "fewest_results": min(r.num_rows for r in found),
                            "path": search_report(found[-1])["index"]}
        numpy_stats, _ = timed(exact, queries)
        report["numpy_exact"] = {**numpy_stats, "recall_at_10": 1.0}
        flat = queries[: args.flat_queries]
        flat_stats, flat_answers = timed(lambda q: ids(similarity.search(q, k=10, exact=True)), flat)
        report["lancedb_flat"] = {**flat_stats, "recall_at_10": recall(flat_answers, truth[: len(flat)])}
        if args.sweep:
            report["sweep"] = {}
            for nprobes in (10, 20, 40):
                for refine in (5, 10, 20):
                    swept = Similarity(VectorStore(uri=tmp, nprobes=nprobes, refine_factor=refine))
                    stats, answers = timed(lambda q: ids(swept.search(q, k=10)), queries)
                    report["sweep"][f"nprobes{nprobes}_refine{refine}"] = {**stats, "recall_at_10": recall(answers, truth)}
    p50 = report["indexed"]["p50_ms"]
    report["speedup_vs_numpy_p50"] = round(report["numpy_exact"]["p50_ms"] / p50, 1)
    report["speedup_vs_lancedb_flat_p50"] = round(report["lancedb_flat"]["p50_ms"] / p50, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
