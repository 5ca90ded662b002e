"""Encoder throughput against the machine's own limit; prints JSON.

    .venv/bin/python bench/embed.py [--v1-pixels 512] [--small-pixels 8192] [--e2e-region demo --e2e-year 2022]
    python bench/embed.py --device cuda          # on a GPU machine (needs only torch and numpy)

For each preset and precision: pixels/s of the forward pass, the model's FLOP/s, and the same run's
large-GEMM FLOP/s, whose ratio is the utilisation. Accuracy: max |fast - reference| in fp32 and min
cosine(bf16, reference fp32), against `model.reference` (op by op). End to end: a materialised raw
partition streamed to stored embeddings, as a fraction of the pure forward rate on the same pixels.
On CUDA the end-to-end step is replaced by the host's sampling rate (pixels/s that the CPU side can
feed the GPU), since a GPU machine may lack the geospatial stack.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.config import ModelConfig, preset
from model.dense import dense, pack_for_cpu
from model.encoder import TesseraEncoder
from model.inference import cpu_supports_bf16, embed_inputs, prepare_for_inference, sample_inputs
from model.reference import reference_embed
from model.series import PixelSeries


def flops_per_pixel(config: ModelConfig, steps: int | None = None) -> float:
    """Multiply-adds x 2 of both backbones and the fusion (attention scores included)."""
    t, d, f = steps or config.sample_steps, config.width, config.feedforward
    layer = 2 * (3 * d * d + d * d + 2 * d * f) + 2 * 2 * t * d  # per step: projections, FFN, scores
    backbone = t * (2 * (10 * d + d * d) + config.layers * layer + 2 * 6 * d * d)  # embed + layers + GRU
    backbone_s1 = backbone - t * 2 * 8 * d
    return backbone + backbone_s1 + 2 * 2 * d * config.embedding_dim


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def gemm_flops(dtype: torch.dtype, device: torch.device) -> float:
    """The best large square matrix multiply rate over a few sizes: the machine's own ceiling.

    Measured both as a plain product and through `model.dense` with prepacked weights (what the
    encoder uses on CPU in bf16), so the ceiling is never lower than the kernels the model runs."""
    sizes, repeats = ((4096, 8192), 10) if device.type == "cuda" else ((1024, 2048, 4096), 3)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        layer = nn.Linear(n, n, bias=False).to(device, dtype)
        pack_for_cpu(layer, n)
        for product in (lambda: a @ layer.weight, lambda: dense(a, layer.weight, None)):
            product()
            synchronise(device)
            start = time.perf_counter()
            for _ in range(repeats):
                product()
            synchronise(device)
            best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start))
    return best


def inputs(batch: int, steps: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    doy2 = np.sort(rng.integers(1, 366, (batch, steps, 1)), axis=1)
    doy1 = np.sort(rng.integers(1, 366, (batch, steps, 1)), axis=1)
    s2 = np.concatenate([rng.uniform(0, 6000, (batch, steps, 10)), doy2], axis=2).astype(np.float32)
    s1 = np.concatenate([rng.uniform(2000, 9000, (batch, steps, 2)), doy1], axis=2).astype(np.float32)
    return s2, s1


def randomised(name: str) -> TesseraEncoder:
    torch.manual_seed(0)
    encoder = TesseraEncoder.from_preset(name)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return encoder.eval()


def throughput(name: str, precision: str, pixels: int, batch: int, device: torch.device) -> float:
    """Pixels/s of `embed` from host arrays to host embeddings (transfers included on CUDA)."""
    model = prepare_for_inference(randomised(name), device, precision)
    s2, s1 = inputs(pixels)
    model.embed(s2[:batch], s1[:batch], batch_size=batch, precision=precision)  # warm up
    synchronise(device)
    start = time.perf_counter()
    model.embed(s2, s1, batch_size=batch, precision=precision)
    return pixels / (time.perf_counter() - start)


def accuracy(name: str, device: torch.device) -> dict[str, float]:
    encoder = randomised(name)
    s2, s1 = inputs(64, seed=1)
    reference = reference_embed(encoder.state_dict(), encoder.config, torch.from_numpy(s2), torch.from_numpy(s1), encoder.normalisation).numpy()
    fp32 = encoder.to(device).embed(s2, s1)
    bf16 = prepare_for_inference(randomised(name), device, "bf16").embed(s2, s1, precision="bf16")
    cosine = (bf16 * reference).sum(1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(reference, axis=1)
    return {"max_abs_diff_fp32": float(np.abs(fp32 - reference).max()), "min_cosine_bf16": float(cosine.min())}


def end_to_end(name: str, precision: str, region: str, year: int, home: Path, max_blocks: int | None) -> dict:
    """Stream a raw partition to stored embeddings; compare with the forward pass alone on its pixels."""
    from resources.pixel_series import read_window
    from resources.storage import EmbeddingWriter, TesseraStorage
    from tessera_assets.embeddings.streaming import stream_partition

    storage = TesseraStorage(root=str(home / "data"))
    s2, s1 = storage.open_raw("s2", year, region), storage.open_raw("s1", year, region)
    encoder = prepare_for_inference(randomised(name), torch.device("cpu"), precision)
    windows = s2.grid.blocks(128)[:max_blocks]
    batch = 1024
    prepared = [sample_inputs(read_window(s2, s1, w), encoder.config.sample_steps) for w in windows]
    embed_inputs(encoder, prepared[0], batch, precision)  # warm up
    start = time.perf_counter()
    for p in prepared:
        embed_inputs(encoder, p, batch, precision)
    forward = sum(len(p.index) for p in prepared) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        writer = EmbeddingWriter(Path(tmp), s2.grid, encoder.config.embedding_dim)
        stats = stream_partition(encoder, s2, s1, writer, 128, "deterministic", 0, batch, precision, windows=windows)
        writer.close()
    e2e = stats.embedded / stats.seconds
    return {"preset": name, "precision": precision, "pixels": stats.embedded, "forward_px_per_s": round(forward, 1),
            "end_to_end_px_per_s": round(e2e, 1), "end_to_end_over_forward": round(e2e / forward, 3)}


def host_sampling(threads: int, pixels: int = 65536, times: int = 120, seed: int = 0) -> float:
    """Pixels/s at which this host turns raw per-pixel series into encoder inputs, with `threads`
    blocks sampled at once (as the embeddings stream's readers do)."""
    rng = np.random.default_rng(seed)
    doy = np.tile(np.arange(1, 366, 365 // times, dtype=np.int16)[:times], (pixels, 1))
    series = PixelSeries(
        rng.integers(0, 10000, (pixels, times, 10), dtype=np.uint16), rng.random((pixels, times)) < 0.4, doy,
        rng.integers(0, 9000, (pixels, times, 2), dtype=np.int16), rng.random((pixels, times)) < 0.9, doy,
    )
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: sample_inputs(series, 40), range(2 * threads)))
        return 2 * threads * pixels / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--v1-pixels", type=int, default=1024)
    parser.add_argument("--small-pixels", type=int, default=16384)
    parser.add_argument("--e2e-region", default="demo")
    parser.add_argument("--e2e-year", type=int, default=2022)
    parser.add_argument("--home", default=".tessera")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precisions = ["fp32", "bf16"] if cuda or cpu_supports_bf16() else ["fp32"]
    gemm = {p: gemm_flops(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in precisions}
    report: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "gemm_gflops": {p: round(v / 1e9, 1) for p, v in gemm.items()}, "presets": {},
    }
    scale = 64 if cuda else 1  # a GPU needs far more pixels in flight to be timed fairly
    for name, pixels, batch in (("tessera-v1", args.v1_pixels, 1024), ("tessera-small", args.small_pixels, 4096)):
        config = preset(name)
        flop = flops_per_pixel(config)
        entry = {"gflop_per_pixel": round(flop / 1e9, 4), **accuracy(name, device)}
        for precision in precisions:
            rate = throughput(name, precision, pixels * scale, batch * (16 if cuda else 1), device)
            entry[precision] = {"px_per_s": round(rate, 1), "model_gflops": round(rate * flop / 1e9, 1),
                                "utilisation": round(rate * flop / gemm[precision], 3)}
        report["presets"][name] = entry
    home = Path(args.home)
    if cuda:
        report["host_sampling_px_per_s"] = {f"{n}_threads": round(host_sampling(n), 1) for n in (1, 4)}
    elif (home / "data" / "raw" / "s2" / str(args.e2e_year) / args.e2e_region).exists():
        report["end_to_end"] = [
            end_to_end("tessera-small", precisions[-1], args.e2e_region, args.e2e_year, home, None),
            end_to_end("tessera-v1", precisions[-1], args.e2e_region, args.e2e_year, home, 2),
        ]
    else:
        report["end_to_end"] = f"skipped: materialise s2_raw/s1_raw {args.e2e_region}|{args.e2e_year} first (make demo)"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
