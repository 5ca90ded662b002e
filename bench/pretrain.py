"""Pretraining throughput against the machine's own limit; prints JSON.

    .venv/bin/python bench/pretrain.py [--data .tessera/data] [--preset tessera-demo] [--steps 8] [--rounds 3] [--busy]
    .venv/bin/python bench/pretrain.py --synthetic      # no data root: generated series of the demo's shape

Seconds per step of `model.pretrain.pretrain` itself (timed between its progress callbacks, the first
step left out as warm-up) at the demo's batch of 128, on a pool sampled from the data root's raw
partitions as `encoder_checkpoint` samples it (`--synthetic`: random series of the demo partitions'
shape; a step's cost depends only on the shapes, 40 sampled steps per view). Beside it, the same
steps through the pre-optimisation path (`legacy`: `nn.MultiheadAttention` layers, the loss through
seven p x p cross-correlations, the per-tensor AdamW), alternated round by round so the machine's
noise falls on both, and the largest difference of their loss curves (same seed, same draws: only
float rounding apart). Each path's FLOPs per step (forward + backward, counted by
`torch.utils.flop_counter`) over its time is its model FLOP/s, and over the same round's large-GEMM
FLOP/s (`bench/embed.py`'s ceiling) its utilisation. `--busy` measures again beside one competing
CPU-bound process. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils import flop_counter  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import model.pretrain as pretraining  # noqa: E402
from busy import one_busy_process  # noqa: E402
from embed import gemm_flops  # noqa: E402
from model.config import preset, preset_normalisation  # noqa: E402
from model.encoder import TesseraEncoder  # noqa: E402
from model.layers import SensorBackbone, doy_encoding  # noqa: E402
from model.pretrain import PretrainConfig, Projectors  # noqa: E402
from model.series import PixelSeries  # noqa: E402
from resources.testing.reference_model import reference_pretrain_loss  # noqa: E402


# the CPU flash-attention kernels (the legacy path's) are not in the counter's registry: count them as
# the CUDA ones are counted (the backward recomputes the scores, as it really does)
def _flash_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


for _op, _formula in ((torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, _flash_forward),
                      (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward, _flash_backward)):
    if _op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(_op)(_formula)


def data_pool(data: Path, per_partition: int, seed: int = 0) -> PixelSeries:
    """Pixels with both sensors from every raw partition of a data root, as the demo samples them."""
    from resources.storage.data_root import TesseraStorage
    from resources.storage.pixel_series import sample_pixels

    storage = TesseraStorage(root=str(data))
    rng = np.random.default_rng(seed)
    return PixelSeries.concat([sample_pixels(storage.open_raw("s2", y, r), storage.open_raw("s1", y, r), per_partition, rng)
                               for y, r in storage.raw_partitions()])


def synthetic_pool(pixels: int, seed: int = 0, t2: int = 61, t1: int = 61) -> PixelSeries:
    """Random series of the demo partitions' shape (61 S2 and 61 S1 dates a year, a third of S2
    clouded); enough for timing, which depends only on the shapes."""
    rng = np.random.default_rng(seed)
    doy = lambda t: np.broadcast_to(np.linspace(1, 365, t).astype(np.int16), (pixels, t)).copy()  # noqa: E731
    return PixelSeries(rng.integers(0, 6000, (pixels, t2, 10), dtype=np.uint16), rng.random((pixels, t2)) < 0.66,
                       doy(t2), rng.integers(2000, 9000, (pixels, t1, 2), dtype=np.int16), rng.random((pixels, t1)) < 0.9,
                       doy(t1), rng.random((pixels, t1)) < 0.5)


# -- the path before this bench existed, kept to measure against --------------------------------
def _legacy_backbone(backbone: SensorBackbone, bands: torch.Tensor, doy: torch.Tensor) -> torch.Tensor:
    x = backbone.embedding(bands) + doy_encoding(doy, backbone.embedding[0].out_features).to(bands.dtype)
    return backbone.attn_pool(backbone.transformer_encoder(x))  # nn.TransformerEncoder's own forward


def _legacy_encoder(encoder: TesseraEncoder, s2, s2_doy, s1, s1_doy) -> torch.Tensor:
    fused = torch.cat([_legacy_backbone(encoder.s2_backbone, s2, s2_doy), _legacy_backbone(encoder.s1_backbone, s1, s1_doy)], -1)
    return encoder.dim_reducer(fused)[:, :encoder.config.embedding_dim]


def _legacy_batch_loss(encoder: TesseraEncoder, head: Projectors, views: list[torch.Tensor], alpha: float,
                       perm: torch.Tensor, config: PretrainConfig, autocast, workers=None) -> torch.Tensor:
    a2, a2d, a1, a1d, b2, b2d, b1, b1d = views
    with autocast:
        za = head(_legacy_encoder(encoder, a2, a2d, a1, a1d))
        zb = head(_legacy_encoder(encoder, b2, b2d, b1, b1d))
        zm = head(_legacy_encoder(encoder, alpha * a2 + (1 - alpha) * b2[perm], a2d, alpha * a1 + (1 - alpha) * b1[perm], a1d))
    return sum(reference_pretrain_loss(a, b, m, alpha, perm, config.barlow_lambda, config.mixup_weight)
               for a, b, m in zip(za, zb, zm))


def _legacy_optimizer(modules: list[nn.Module], config: PretrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(pretraining._parameter_groups(modules, config.weight_decay), lr=config.learning_rate)


@contextlib.contextmanager
def path(name: str):
    """`current` (model.pretrain as it is) or `legacy` (its step swapped for the old one)."""
    saved = pretraining._batch_loss, pretraining._optimizer, pretraining.training_workers
    if name == "legacy":
        pretraining._batch_loss, pretraining._optimizer = _legacy_batch_loss, _legacy_optimizer
        pretraining.training_workers = lambda *args: None  # every operation split across threads
    try:
        yield
    finally:
        pretraining._batch_loss, pretraining._optimizer, pretraining.training_workers = saved


# -- measurements --------------------------------------------------------------------------------
def run(pool: PixelSeries, name: str, steps: int, batch: int, tmp: Path) -> tuple[list[float], list[float]]:
    """Seconds of each step after the first, and every step's loss, of a fresh `pretrain`."""
    config = PretrainConfig(steps=steps, batch_size=batch, learning_rate=2e-3, warmup_steps=max(1, steps // 10),
                            checkpoint_every=10**9)
    stamps: list[float] = []
    state = tmp / f"{time.monotonic_ns()}.pt"
    model_config = preset(name)
    encoder = pretraining.pretrain(pool, model_config, config, state, torch.device("cpu"),
                                   lambda step, loss: stamps.append(time.perf_counter()),
                                   preset_normalisation(model_config, "mpc"))
    state.unlink(missing_ok=True)
    return list(np.diff(stamps)), encoder.metadata["losses"]


def flops_per_step(pool: PixelSeries, name: str, batch: int, tmp: Path) -> float:
    """Matrix FLOPs of one training step, forward and backward (the optimizer has none). Counted on
    this thread alone (the counter sees only its own thread; the workers do the same products)."""
    workers, pretraining.training_workers = pretraining.training_workers, lambda *args: None
    try:
        with FlopCounterMode(display=False) as counter:
            run(pool, name, 1, batch, tmp)
    finally:
        pretraining.training_workers = workers
    return float(counter.get_total_flops())


def measure(pool: PixelSeries, name: str, steps: int, batch: int, rounds: int, tmp: Path) -> dict:
    """Both paths alternated `rounds` times, each round beside its own GEMM ceiling."""
    paths = ("legacy", "current")
    flops, seconds, ratios, losses = {}, {p: [] for p in paths}, {p: [] for p in paths}, {}
    for p in paths:
        with path(p):
            flops[p] = flops_per_step(pool, name, batch, tmp)
    for _ in range(rounds):
        for p in paths:
            gemm = gemm_flops(torch.float32, torch.device("cpu"))
            with path(p):
                times, losses[p] = run(pool, name, steps, batch, tmp)
            seconds[p].append(float(np.median(times)))
            ratios[p].append(flops[p] / seconds[p][-1] / gemm)
    out = {p: {"s_per_step": round(min(seconds[p]), 3), "s_per_step_rounds": [round(s, 3) for s in seconds[p]],
               "gflop_per_step": round(flops[p] / 1e9, 2), "model_gflops": round(flops[p] / min(seconds[p]) / 1e9, 1),
               "gemm_utilisation": round(max(ratios[p]), 3)} for p in paths}
    out["legacy_over_current"] = round(min(seconds["legacy"]) / min(seconds["current"]), 2)
    curves = np.array(losses["legacy"]), np.array(losses["current"])
    out["loss_curves_max_rel_diff"] = float(np.max(np.abs(curves[0] - curves[1]) / np.abs(curves[0])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=".tessera/data", help="a data root holding raw partitions (make demo)")
    parser.add_argument("--synthetic", action="store_true", help="generated series instead of the data root's")
    parser.add_argument("--preset", default="tessera-demo")
    parser.add_argument("--steps", type=int, default=8, help="steps per run (the first is left out)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each path, alternated")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--busy", action="store_true", help="measure again beside one busy CPU-bound process")
    args = parser.parse_args()
    data = Path(args.data)
    synthetic = args.synthetic or not (data / "raw").is_dir()
    pool = synthetic_pool(8000) if synthetic else data_pool(data, 2000)
    gemm = gemm_flops(torch.float32, torch.device("cpu"))
    report: dict = {"preset": args.preset, "batch_size": args.batch_size, "steps": args.steps, "pool": len(pool),
                    "pool_source": "synthetic" if synthetic else str(data), "threads": torch.get_num_threads(),
                    "interop_threads": torch.get_num_interop_threads(), "torch": torch.__version__,
                    "gemm_gflops": round(gemm / 1e9, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        report["solo"] = measure(pool, args.preset, args.steps, args.batch_size, args.rounds, Path(tmp))
        if args.busy:
            with one_busy_process():
                report["busy"] = measure(pool, args.preset, args.steps, args.batch_size, args.rounds, Path(tmp))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
