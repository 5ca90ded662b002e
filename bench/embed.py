"""Encoder throughput of every TESSERA family against the machine's own limit; prints JSON.

    .venv/bin/python bench/embed.py [--presets tessera-v1,tessera-v2-medium] [--busy]
    python bench/embed.py --device cuda          # on a GPU machine (needs only torch and numpy)

For each preset and precision: pixels/s of the forward pass on sequences of the family's shape (v1.0:
40 sampled steps; v1.1 and v2: one bucket of `--s2-steps` / `--s1-steps`, all observations of a
typical year), the model's FLOP/s, and the same run's large-GEMM FLOP/s, whose ratio is the
utilisation. Accuracy: max |fast - reference| in fp32 and min cosine(bf16, reference fp32), against
`resources.testing.reference_model` (op by op, with the fact sheets' selection). End to end: a materialised raw partition
streamed to stored embeddings, as a fraction of the pure forward rate on the same pixels. On CUDA the
end-to-end step is replaced by the host's selection rate (pixels/s that the CPU side can feed the
GPU), since a GPU machine may lack the geospatial stack. `--busy` measures each preset again beside
one competing CPU-bound process and reports the share of the solo rate it keeps, with the default
single-threaded workers side by side and with every operation split across threads (PyTorch's way).
Beside the encoders, on CPU: official tiles imported onto a 100 km2 region grid (four tiles), from
the tile layout and from the Zarr store, in pixels/s (importing is I/O-bound, not compute).
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

from busy import one_busy_process
from model.config import ModelConfig, preset, preset_normalisation
from model.dense import dense, pack_for_cpu
from model.encoder import TesseraEncoder
from model.dense import cpu_bf16_kernels
from model.inference import prepare_for_inference
from resources.testing.reference_model import reference_embed, reference_embed_series
from model.selection import EncoderInputs, SequenceGroup, select_inputs
from model.series import series_from_arrays

DEFAULT_PRESETS = "tessera-v1,tessera-v1.1,tessera-v2-nano,tessera-v2-medium,tessera-demo"


def sequence_lengths(config: ModelConfig, s2_steps: int, s1_steps: int) -> tuple[int, int]:
    return (config.sample_steps, config.sample_steps) if config.family == "v1.0" else (s2_steps, s1_steps)


def flops_per_pixel(config: ModelConfig, t2: int, t1: int) -> float:
    """Multiply-adds x 2 of both backbones and the fusion head (attention scores included)."""
    d, f = config.width, config.feedforward
    layer = 2 * (4 * d * d + 2 * d * f)  # per step: Q/K/V/out projections, feed-forward
    pooling = 2 * 6 * d * d if config.family != "v2" else 2 * d  # GRU maps, or one score per step

    def backbone(bands: int, t: int) -> float:
        return t * (2 * (bands * d + d * d) + config.layers * (layer + 2 * 2 * t * d) + pooling)

    fused = 2 * d
    head = 2 * fused * config.output_dim if config.family == "v1.0" else 2 * (fused * 4 * d + 4 * d * config.output_dim)
    return backbone(10, t2) + backbone(2, t1) + head


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


def randomised(name: str) -> TesseraEncoder:
    torch.manual_seed(0)
    config = preset(name)
    encoder = TesseraEncoder(config, preset_normalisation(config, "mpc"))
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return encoder.eval()


def group(pixels: int, t2: int, t1: int, seed: int = 0) -> EncoderInputs:
    """Normalised sequences of one shape, as the selection hands them to the encoder."""
    rng = np.random.default_rng(seed)
    doy = lambda t: np.sort(rng.integers(1, 366, (pixels, t)), axis=1).astype(np.float32)  # noqa: E731
    sequences = SequenceGroup(np.arange(pixels), rng.standard_normal((pixels, t2, 10), np.float32), doy(t2),
                              rng.standard_normal((pixels, t1, 2), np.float32), doy(t1))
    return EncoderInputs(pixels, [sequences])


def throughput(name: str, precision: str, pixels: int, batch: int, device: torch.device, t2: int, t1: int,
               intra_op: bool = False) -> float:
    """Pixels/s of the forward pass from host arrays to host embeddings (transfers included on CUDA).
    `intra_op`: on CPU, every operation split across all threads (PyTorch's way) instead of the
    default single-threaded workers side by side."""
    model = prepare_for_inference(randomised(name), device, precision)
    if intra_op:
        model.cpu_workers = 1
    inputs = group(pixels, t2, t1)
    model.embed_inputs(group(min(batch, pixels), t2, t1, seed=1), batch, precision)  # warm up
    synchronise(device)
    start = time.perf_counter()
    model.embed_inputs(inputs, batch, precision)
    return pixels / (time.perf_counter() - start)


def test_series(pixels: int = 24, seed: int = 1) -> tuple[np.ndarray, ...]:
    """Per-pixel raw series with a spread of observation counts (1 to 60, some single-sensor)."""
    rng = np.random.default_rng(seed)
    t2, ta, td = 60, 20, 20
    s2 = rng.uniform(0, 6000, (pixels, t2, 10)).astype(np.float32)
    masks = rng.random((pixels, t2)) < rng.uniform(0.02, 1.0, (pixels, 1))
    asc = rng.uniform(2000, 9000, (pixels, ta, 2)).astype(np.float32)
    desc = rng.uniform(2000, 9000, (pixels, td, 2)).astype(np.float32)
    asc[rng.random((pixels, ta)) < 0.5] = 0
    desc[:3] = 0
    asc[:3] = 0
    doy = lambda t: np.sort(rng.integers(1, 366, (pixels, t)), axis=1)  # noqa: E731
    return s2, doy(t2), masks, asc, doy(ta), desc, doy(td)


def accuracy(name: str, device: torch.device) -> dict[str, float]:
    encoder = randomised(name)
    config = encoder.config
    if config.family == "v1.0":
        s2, s1 = (a.numpy() for a in _v1_inputs(64))
        reference = reference_embed(encoder.state_dict(), config, torch.from_numpy(s2), torch.from_numpy(s1),
                                    encoder.normalisation).numpy()
        fp32 = encoder.to(device).embed(s2, s1)
        bf16 = prepare_for_inference(randomised(name), device, "bf16").embed(s2, s1, precision="bf16")
    else:
        arrays = test_series()
        reference = reference_embed_series(encoder.state_dict(), config, encoder.normalisation, *arrays)
        fp32 = encoder.to(device).embed_series(*arrays)
        bf16 = prepare_for_inference(randomised(name), device, "bf16").embed_series(*arrays, precision="bf16")
    ok = np.isfinite(reference).all(1)
    cosine = (bf16[ok] * reference[ok]).sum(1) / np.linalg.norm(bf16[ok], axis=1) / np.linalg.norm(reference[ok], axis=1)
    return {"max_abs_diff_fp32": float(np.abs(fp32[ok] - reference[ok]).max()), "min_cosine_bf16": float(cosine.min())}


def _v1_inputs(batch: int, steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(1)
    doy = lambda: np.sort(rng.integers(1, 366, (batch, steps, 1)), axis=1)  # noqa: E731
    s2 = np.concatenate([rng.uniform(0, 6000, (batch, steps, 10)), doy()], axis=2).astype(np.float32)
    s1 = np.concatenate([rng.uniform(2000, 9000, (batch, steps, 2)), doy()], axis=2).astype(np.float32)
    return torch.from_numpy(s2), torch.from_numpy(s1)


def end_to_end(name: str, precision: str, region: str, year: int, home: Path, max_blocks: int | None) -> dict:
    """Stream a raw partition to stored embeddings; compare with the forward pass alone on its pixels."""
    from resources.storage.pixel_series import read_window
    from resources.storage.data_root import EmbeddingWriter, TesseraStorage
    from tessera_assets.embeddings.streaming import stream_partition

    storage = TesseraStorage(root=str(home / "data"))
    s2, s1 = storage.open_raw("s2", year, region), storage.open_raw("s1", year, region)
    encoder = prepare_for_inference(randomised(name), torch.device("cpu"), precision)
    windows = s2.grid.blocks(128)[:max_blocks]
    batch = 1024
    prepared = [select_inputs(read_window(s2, s1, w), encoder.config, encoder.normalisation) for w in windows]
    encoder.embed_inputs(prepared[0], batch, precision)  # warm up
    start = time.perf_counter()
    for p in prepared:
        encoder.embed_inputs(p, batch, precision)
    forward = sum(len(p.index) for p in prepared) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        writer = EmbeddingWriter(Path(tmp), s2.grid, encoder.config.embedding_dim)
        stats = stream_partition(encoder, s2, s1, writer, 128, "auto", 0, batch, precision, windows=windows)
        writer.close()
    e2e = stats.embedded / stats.seconds
    return {"preset": name, "precision": precision, "pixels": stats.embedded, "forward_px_per_s": round(forward, 1),
            "end_to_end_px_per_s": round(e2e, 1), "end_to_end_over_forward": round(e2e / forward, 3)}


def host_selection(name: str, threads: int, pixels: int = 16384, times: int = 120, seed: int = 0) -> float:
    """Pixels/s at which this host turns raw per-pixel series into a family's encoder inputs, with
    `threads` blocks selected at once (as the embeddings stream's readers do)."""
    rng = np.random.default_rng(seed)
    doy = np.arange(1, 366, 365 // times, dtype=np.int16)[:times]
    series = series_from_arrays(
        rng.integers(0, 10000, (pixels, times, 10), dtype=np.uint16), doy, rng.random((pixels, times)) < 0.5,
        rng.integers(0, 9000, (pixels, times // 2, 2), dtype=np.int16), doy[::2],
        rng.integers(0, 9000, (pixels, times // 2, 2), dtype=np.int16), doy[1::2])
    config = preset(name)
    norm = preset_normalisation(config, "mpc")
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda _: select_inputs(series, config, norm), range(2 * threads)))
        return 2 * threads * pixels / (time.perf_counter() - start)


def tile_import(year: int = 2024) -> dict:
    """Seconds and pixels/s to fill a 10 x 10 km region grid from the four official tiles under it
    (the sha256 of every tile file, for provenance, included), and from the Zarr store (tiles freshly
    written: a warm page cache)."""
    from resources.testing.official_tiles import write_official_tiles
    from resources.official.tiles import TileRoot, import_tiles, tile_centres
    from resources.official.zarr_store import ZarrStore, export_zarr
    from resources.regions import make_region
    from resources.storage.data_root import EmbeddingPartition

    bbox = (0.127, 52.155, 0.273, 52.245)  # 10 x 10 km around the corner of four tiles
    region = make_region("bench", list(bbox), 1000)
    pixels = region.grid.width * region.grid.height
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_official_tiles(tmp / "tiles", year, tile_centres(bbox),
                             metadata={"dataset_version": "1.1", "dataset_variant": "bench"})
        (tmp / "from_tiles").mkdir()
        start = time.perf_counter()
        report = import_tiles(TileRoot(tmp / "tiles"), year, region.grid, region.bbox, tmp / "from_tiles")
        tiles_s = time.perf_counter() - start
        (tmp / "from_tiles" / "encoder.json").write_text(json.dumps({"id": "bench", "family": "v1.1"}))
        start = time.perf_counter()
        export_zarr(EmbeddingPartition(tmp / "from_tiles"), year, tmp / "store.zarr")
        zarr_export_s = time.perf_counter() - start
        (tmp / "from_zarr").mkdir()
        start = time.perf_counter()
        ZarrStore(tmp / "store.zarr").import_into(year, region.grid, region.bbox, tmp / "from_zarr")
        zarr_s = time.perf_counter() - start
    return {"region_km2": round(region.area_km2(), 1), "pixels": pixels, "tiles": len(report.tiles),
            "tiles_import_s": round(tiles_s, 2), "tiles_px_per_s": round(pixels / tiles_s),
            "zarr_export_s": round(zarr_export_s, 2),
            "zarr_import_s": round(zarr_s, 2), "zarr_px_per_s": round(pixels / zarr_s)}


def measure(name: str, precisions: list[str], pixels: int, batch: int, device: torch.device, gemm: dict,
            t2: int, t1: int, intra_op: bool = False) -> dict:
    flop = flops_per_pixel(preset(name), t2, t1)
    entry = {}
    for precision in precisions:
        rate = throughput(name, precision, pixels, batch, device, t2, t1, intra_op)
        entry[precision] = {"px_per_s": round(rate, 1), "model_gflops": round(rate * flop / 1e9, 1),
                            "utilisation": round(rate * flop / gemm[precision], 3)}
    return entry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default=DEFAULT_PRESETS)
    parser.add_argument("--seconds", type=float, default=3.0, help="rough forward time per measurement on CPU")
    parser.add_argument("--s2-steps", type=int, default=64, help="bucket of S2 observations for v1.1 / v2")
    parser.add_argument("--s1-steps", type=int, default=64, help="bucket of S1 observations for v1.1 / v2")
    parser.add_argument("--e2e-region", default="demo")
    parser.add_argument("--e2e-year", type=int, default=2022)
    parser.add_argument("--home", default=".tessera")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--busy", action="store_true", help="measure again beside one busy CPU-bound process")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precisions = ["fp32", "bf16"] if cuda or cpu_bf16_kernels() else ["fp32"]
    gemm = {p: gemm_flops(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in precisions}
    report: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "gemm_gflops": {p: round(v / 1e9, 1) for p, v in gemm.items()},
        "sequence_steps": {"v1.0": 40, "v1.1_and_v2": [args.s2_steps, args.s1_steps]}, "presets": {},
    }
    names = args.presets.split(",")
    sizes = {}
    for name in names:
        config = preset(name)
        t2, t1 = sequence_lengths(config, args.s2_steps, args.s1_steps)
        flop = flops_per_pixel(config, t2, t1)
        # about `--seconds` of work at the CPU's fp32 rate; a GPU needs far more pixels in flight
        pixels = int(np.clip(args.seconds * gemm["fp32"] * 0.8 / flop, 32, 65536)) if not cuda else \
            int(np.clip(1e15 / flop, 16384, 262144))
        batch = 16384 if cuda else 1024
        sizes[name] = (pixels, batch, t2, t1)
        entry = {"family": config.family, "parameters": randomised(name).parameter_count(),
                 "gflop_per_pixel": round(flop / 1e9, 4), "pixels": pixels, **accuracy(name, device)}
        entry |= measure(name, precisions, pixels, batch, device, gemm, t2, t1)
        if args.busy and not cuda:  # the solo baseline of PyTorch's own threading, before the competitor starts
            entry["solo_intra_op"] = measure(name, precisions, pixels, batch, device, gemm, t2, t1, intra_op=True)
        report["presets"][name] = entry
    if args.busy and not cuda:
        with one_busy_process():
            busy_gemm = {p: gemm_flops(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in precisions}
            report["busy_gemm_gflops"] = {p: round(v / 1e9, 1) for p, v in busy_gemm.items()}
            for name in names:  # our workers, and every operation split across threads (PyTorch's way)
                solo = report["presets"][name]
                solo_intra = measure(name, precisions, *sizes[name][:2], device, gemm, *sizes[name][2:], intra_op=True) \
                    if "solo_intra_op" not in solo else solo["solo_intra_op"]
                busy = measure(name, precisions, *sizes[name][:2], device, gemm, *sizes[name][2:])
                busy_intra = measure(name, precisions, *sizes[name][:2], device, gemm, *sizes[name][2:], intra_op=True)
                report["presets"][name]["busy"] = {p: {
                    "px_per_s": busy[p]["px_per_s"], "share_of_solo": round(busy[p]["px_per_s"] / solo[p]["px_per_s"], 3),
                    "intra_op_px_per_s": busy_intra[p]["px_per_s"],
                    "intra_op_share_of_its_solo": round(busy_intra[p]["px_per_s"] / solo_intra[p]["px_per_s"], 3),
                } for p in precisions}
    home = Path(args.home)
    if cuda:
        report["host_selection_px_per_s"] = {
            f"{name}_{n}_threads": round(host_selection(name, n), 1) for name in ("tessera-v1", "tessera-v2-medium")
            for n in (1, 4)}
    elif (home / "data" / "raw" / "s2" / str(args.e2e_year) / args.e2e_region).exists():
        report["end_to_end"] = [
            end_to_end(name, precisions[-1], args.e2e_region, args.e2e_year, home, 2 if preset(name).width > 256 else None)
            for name in names]
    else:
        report["end_to_end"] = f"skipped: materialise s2_raw/s1_raw {args.e2e_region}|{args.e2e_year} first (make demo)"
    if not cuda:
        report["official_tile_import"] = tile_import()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
