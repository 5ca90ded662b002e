"""Few-shot heads at low k on the demo's labelled samples, embeddings beside the raw-input
baseline, every head over the same protocol draws: the measurement behind `auto` (nearest class
mean below NCM_BELOW labels a class, logistic regression above). Prints JSON.

    .venv/bin/python bench/fewshot_heads.py [--samples PATH] [--ks 1 2 3 5 10 20] [--draws 20]

Reads the newest `fewshot_samples` parquet under the data root (run `make demo` first) unless
`--samples` names one. The protocol is `model.fewshot.kshot_curve`, unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from model.fewshot import HEADS, kshot_curve  # noqa: E402


def newest_samples(home: Path) -> Path:
    found = sorted((home / "data" / "fewshot" / "samples").glob("*/samples.parquet"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"no few-shot samples under {home}/data/fewshot/samples: run `make demo` first")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", default=".tessera")
    parser.add_argument("--samples", type=Path)
    parser.add_argument("--ks", nargs="+", default=["1", "2", "3", "5", "10", "20"])
    parser.add_argument("--heads", nargs="+", default=[h for h in HEADS if h != "mlp"], choices=HEADS)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = args.samples or newest_samples(Path(args.home))
    table = pq.read_table(path)
    y, groups = np.array(table["label"].to_pylist()), np.array(table["group"].to_pylist())
    features = {"embeddings": np.array(table["embedding"].to_pylist(), np.float32)}
    if table["baseline"].null_count == 0:
        features["baseline"] = np.array(table["baseline"].to_pylist(), np.float32)
    ks = [k if k == "all" else int(k) for k in args.ks]
    out: dict = {"samples": str(path), "pixels": len(y), "classes": len(np.unique(y)), "draws": args.draws, "heads": {}}
    for head in args.heads:
        started = time.perf_counter()
        out["heads"][head] = {name: {str(p["k"]): round(p["accuracy"], 4) for p in
                                     kshot_curve(x, y, groups, ks, args.draws, head, args.seed)}
                              for name, x in features.items()}
        out["heads"][head]["seconds"] = round(time.perf_counter() - started, 1)
    if "baseline" in features:
        out["embeddings_minus_best_baseline_head"] = {
            head: {k: round(out["heads"][head]["embeddings"][k] - max(out["heads"][h]["baseline"][k] for h in args.heads), 4)
                   for k in map(str, ks)} for head in args.heads}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
