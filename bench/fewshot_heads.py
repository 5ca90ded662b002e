"""Few-shot heads at low k on the demo's labelled samples, embeddings beside the raw-input
baseline, every head over the same protocol draws: the measurement behind the default head
(logistic regression) and its self-training below SELF_TRAIN_BELOW labels a class. Prints JSON.

    .venv/bin/python bench/fewshot_heads.py [--samples PATH] [--ks 1 2 3 5 10 20] [--draws 20] [--seeds 0 1 2]

Reads the newest `fewshot_samples` parquet under the data root (run `make demo` first) unless
`--samples` names one, and the unlabelled pixels drawn beside it (`unlabelled.parquet`): each head
runs without them, and `logistic` also with them as `logistic+self-training` (each feature set its
own features of the same pixels). The protocol is `model.fewshot.kshot_curve`, unchanged; with
several seeds each k's figure is the mean over seeds x draws.
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
from tessera_assets.fewshot.assets import UNLABELLED_FILE, feature_sets  # noqa: E402

SELF_TRAINED = "logistic+self-training"


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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    path = args.samples or newest_samples(Path(args.home))
    table = pq.read_table(path)
    y, groups = np.array(table["label"].to_pylist()), np.array(table["group"].to_pylist())
    features = feature_sets(table)
    pool_path = path.with_name(UNLABELLED_FILE)
    pool = feature_sets(pq.read_table(pool_path)) if pool_path.exists() else {}
    ks = [k if k == "all" else int(k) for k in args.ks]
    runs = [(head, head, None) for head in args.heads]
    if pool and "logistic" in args.heads:
        runs.append((SELF_TRAINED, "logistic", pool))
    out: dict = {"samples": str(path), "pixels": len(y), "unlabelled_pixels": len(pool.get("embeddings", [])),
                 "classes": len(np.unique(y)), "draws": args.draws, "seeds": args.seeds, "heads": {}}
    for name, head, unlabelled in runs:
        started = time.perf_counter()
        out["heads"][name] = {}
        for feature, x in features.items():
            curves = [kshot_curve(x, y, groups, ks, args.draws, head, seed, (unlabelled or {}).get(feature))
                      for seed in args.seeds]
            out["heads"][name][feature] = {str(k): round(float(np.mean([c[i]["accuracy"] for c in curves])), 4)
                                           for i, k in enumerate(ks)}
        out["heads"][name]["seconds"] = round(time.perf_counter() - started, 1)
    names = [name for name, _, _ in runs]
    if "baseline" in features:
        out["embeddings_minus_best_baseline_head"] = {
            head: {k: round(out["heads"][head]["embeddings"][k] - max(out["heads"][h]["baseline"][k] for h in names), 4)
                   for k in map(str, ks)} for head in names}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
