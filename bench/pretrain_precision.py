"""Pretraining step time in fp32 and in bf16 autocast on this CPU, alternated in one run (the machine's
noise falls on both), on pixels of the demo's raw partitions; prints JSON with the ratio. This is the
measurement behind `model.pretrain.training_precision` choosing fp32 on CPUs.

    .venv/bin/python bench/pretrain_precision.py [--data .tessera/data] [--steps 12] [--rounds 2]

Needs the demo's raw partitions (`make demo`). Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.config import preset  # noqa: E402
from model.pretrain import PretrainConfig, pretrain  # noqa: E402
from model.series import PixelSeries  # noqa: E402
from resources.storage.data_root import TesseraStorage  # noqa: E402
from resources.storage.pixel_series import sample_pixels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=".tessera/data", help="a data root holding the demo's raw partitions")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2, help="fp32 and bf16 alternated this many times")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    storage = TesseraStorage(root=args.data)
    partitions = storage.raw_partitions()
    if not partitions:
        sys.exit(f"no raw partitions under {args.data}: run `make demo` first")
    rng = np.random.default_rng(0)
    pool = PixelSeries.concat([sample_pixels(storage.open_raw("s2", y, r), storage.open_raw("s1", y, r), 2000, rng)
                               for y, r in partitions[:2]])
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for precision in ("bf16", "fp32"):
                config = PretrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=1e-3,
                                        warmup_steps=2, seed=0, precision=precision, checkpoint_every=10**9)
                started = time.perf_counter()
                pretrain(pool, preset("tessera-demo"), config, Path(tmp) / f"{precision}.pt", torch.device("cpu"))
                seconds[precision].append((time.perf_counter() - started) / args.steps)
                (Path(tmp) / f"{precision}.pt").unlink(missing_ok=True)
    print(json.dumps({
        "preset": "tessera-demo", "batch_size": args.batch_size, "steps": args.steps, "threads": torch.get_num_threads(),
        "native_bf16": bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()),
        "fp32_s_per_step": [round(v, 3) for v in seconds["fp32"]],
        "bf16_s_per_step": [round(v, 3) for v in seconds["bf16"]],
        "bf16_over_fp32": round(min(seconds["bf16"]) / min(seconds["fp32"]), 3),
    }, indent=1))


if __name__ == "__main__":
    main()
