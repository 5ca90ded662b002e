"""Whether re-embedding a stored partition gives its bytes again, alone and beside a busy process; prints JSON.

    .venv/bin/python bench/reproducible.py [--home .tessera] [--year 2022] [--region demo-south] [--repeats 10] [--blocks 2]

The embeddings asset's `reproducible` check re-embeds a partition's first block once, so a rare
mismatch is seen only now and then: once, on a 2-core Xeon, one pixel of 8,372 came back one int8 step
off. This bench repeats what the check does. It re-embeds the first `--blocks` blocks of a stored
partition, `--repeats` times, with the encoder that embedded it and the asset's own defaults
(`ComputeDevice()`: its block and batch sizes, fp32 on a CPU, one single-threaded worker per CPU
granted; the sampling recorded with the partition, and the asset's default seed, 0, which a
partition does not record). It does so alone and then beside one
CPU-bound process, which is when a worker thread is held up and the slices change hands. It counts
the pixels whose int8 vector or scale differ from the stored ones. A nonzero count anywhere means
the embeddings depend on timing. Nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402

from busy import one_busy_process  # noqa: E402
from model.inference import prepare_for_inference  # noqa: E402
from model.quantise import quantise  # noqa: E402
from resources.compute import ComputeDevice  # noqa: E402
from resources.storage.data_root import TesseraStorage  # noqa: E402
from tessera_assets.embeddings.streaming import embed_block  # noqa: E402


def differing_pixels(encoder, storage: TesseraStorage, year: int, region: str, blocks: int, compute: ComputeDevice,
                     device, precision) -> tuple[int, int]:
    """(pixels that differ from the stored partition, pixels compared) over its first `blocks` blocks."""
    partition = storage.open_embeddings(year, region)
    recorded = partition.encoder
    s2, s1 = storage.open_raw("s2", year, region), storage.open_raw("s1", year, region)
    differ = compared = 0
    for index, window in enumerate(partition.grid.blocks(compute.block_size)[:blocks]):
        vectors = embed_block(encoder, s2, s1, window, index, recorded.get("sampling", "auto"), 0,
                              compute.batch_for(device), precision)
        q_again, scales_again = quantise(vectors[..., :partition.dim])
        q_stored, scales_stored = partition.read(window)
        same = (q_again == q_stored).all(axis=-1) & ((scales_again == scales_stored)
                                                     | (np.isnan(scales_again) & np.isnan(scales_stored)))
        differ += int((~same).sum())
        compared += int(np.isfinite(scales_stored).sum())
    return differ, compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".tessera")
    parser.add_argument("--year", type=int, default=2022)
    parser.add_argument("--region", default="demo-south")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=2)
    args = parser.parse_args()

    storage = TesseraStorage(root=str(args.home / "data"))
    compute = ComputeDevice()
    device, precision = compute.resolve()
    encoder_id = storage.open_embeddings(args.year, args.region).encoder_id
    encoder = prepare_for_inference(storage.load_encoder(encoder_id), device, precision, compute.threads)
    result: dict = {"partition": f"{args.region}|{args.year}", "encoder_id": encoder_id, "device": str(device),
                    "precision": precision, "cpu_workers": encoder.cpu_workers, "block": compute.block_size,
                    "batch": compute.batch_for(device), "blocks": args.blocks, "repeats": args.repeats}
    for condition in ("alone", "beside_one_busy_process"):
        started = time.perf_counter()
        with one_busy_process() if condition != "alone" else contextlib.nullcontext():
            counts = [differing_pixels(encoder, storage, args.year, args.region, args.blocks, compute, device, precision)
                      for _ in range(args.repeats)]
        result[condition] = {"pixels_compared": counts[0][1], "differing_pixels_per_repeat": [d for d, _ in counts],
                             "seconds": round(time.perf_counter() - started, 1)}
    result["reproducible"] = not any(d for c in ("alone", "beside_one_busy_process")
                                     for d in result[c]["differing_pixels_per_repeat"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
