"""What a Matryoshka prefix costs: recall of "find pixels like this" and bytes per pixel; prints JSON.

    .venv/bin/python bench/matryoshka.py [--year 2022 --region demo --queries 300]

On a materialised embeddings partition of a v2 encoder (the demo's `tessera-demo`, or an official
student), for each prefix K in 16/32/64/128: the top-10 most similar pixels (cosine, exact) of random
query pixels using only the first K dimensions, against the top-10 with all 128 (recall@10), with a
re-rank of the prefix's top-100 by the full vector (what a short index + full re-rank gives), and the
storage per pixel (int8 prefix + float32 scale, as stored; float16 as a table column would hold it).
The baseline in the same run is the full vector itself (recall 1.0).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from model.quantise import dequantise
from resources.storage.data_root import TesseraStorage


def top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ unit.T
    best = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1)
    return np.take_along_axis(best, order, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--year", type=int, default=2022)
    parser.add_argument("--region", default="demo")
    parser.add_argument("--home", default=".tessera/data")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    partition = TesseraStorage(root=args.home).open_embeddings(args.year, args.region)
    q, scales = partition.read()
    valid = np.isfinite(scales)
    vectors = dequantise(q[valid], scales[valid])
    rng = np.random.default_rng(0)
    queries = rng.choice(len(vectors), args.queries, replace=False)
    truth = top_k(vectors[queries], vectors, 10)
    report = {"partition": f"{args.region}|{args.year}", "encoder": partition.encoder, "pixels": int(len(vectors)),
              "queries": args.queries, "prefixes": {}}
    for k in (16, 32, 64, 128):
        if k > vectors.shape[1]:
            break
        found = top_k(vectors[queries, :k], vectors[:, :k], 10)
        candidates = top_k(vectors[queries, :k], vectors[:, :k], 100)
        reranked = np.stack([c[top_k(vectors[i][None], vectors[c], 10)[0]] for i, c in zip(queries, candidates)])
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
        recall_reranked = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(reranked, truth)])
        report["prefixes"][str(k)] = {
            "recall_at_10": round(float(recall), 3), "recall_at_10_rerank_100_full": round(float(recall_reranked), 3),
            "bytes_int8_plus_scale": k + 4, "bytes_float16": 2 * k, "bytes_float32": 4 * k,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
