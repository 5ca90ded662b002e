"""Inference: device and precision choice, and embedding of pixel series (no-data pixels get NaN)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from model.dense import pack_for_cpu
from model.encoder import TesseraEncoder
from model.layers import CPU_INFERENCE_ROWS
from model.selection import select_inputs
from model.series import PixelSeries

Precision = Literal["fp32", "bf16"]


def best_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return torch.device(requested)


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (what a
    Kubernetes CPU limit sets). PyTorch counts the machine's cores instead; more threads than
    granted CPUs leaves some waiting on descheduled stragglers at every parallel region."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            fields = Path(quota_file).read_text().split()
            quota, period = (fields[0], fields[1]) if period_file is None else (fields[0], Path(period_file).read_text().strip())
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1"):
            count = min(count, max(1, math.floor(int(quota) / int(period))))
        break
    return count


def best_precision(device: torch.device, requested: str = "auto") -> Precision:
    """`auto`: bf16 on GPUs that have it, fp32 on every CPU. bf16 on a CPU pays only on some: on a
    2-core Zen 4 its packed oneDNN kernels ran the large presets' products ~1.4x faster than fp32,
    but on a 2-core Xeon with avx512_bf16 (no AMX) its GEMMs ran at 155 against 259 GFLOP/s in
    fp32, and the demo preset embedded at 1,042 against 1,367 px/s (`bench/embed.py --presets
    tessera-demo`). fp32 also gives the same embeddings on every kind of CPU, within float rounding;
    ask for `bf16` where it is measured faster."""
    if requested in ("fp32", "bf16"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}: use auto, fp32 or bf16")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def prepare_for_inference(encoder: TesseraEncoder, device: torch.device, precision: Precision,
                          threads: int = 0) -> TesseraEncoder:
    """bf16 runs fastest with bf16 weights on both CPU and GPU: autocast would re-cast every weight
    on every batch (measured on an H100: bf16 weights + the fused FFN epilogue gave ~2x autocast).
    On CPU, inference runs `threads` single-threaded workers (0: one per CPU granted)."""
    identity = encoder.identity  # of the fp32 weights, before any cast
    encoder = encoder.eval().to(device)
    if device.type == "cpu":
        encoder.cpu_workers = threads if threads > 0 else available_cpus()
    if precision == "bf16":
        encoder = encoder.to(torch.bfloat16)
        if device.type == "cpu":
            pack_for_cpu(encoder, CPU_INFERENCE_ROWS)
    encoder._digest = identity.weights_sha256
    return encoder


def embed_series(encoder: TesseraEncoder, series: PixelSeries, mode: str = "auto",
                 rng: np.random.Generator | None = None, batch_size: int = 1024,
                 precision: Precision = "fp32") -> np.ndarray:
    """(N, dim) float32 embeddings of a PixelSeries; pixels the family cannot embed are NaN."""
    inputs = select_inputs(series, encoder.config, encoder.normalisation, mode, rng)
    return encoder.embed_inputs(inputs, batch_size, precision)
