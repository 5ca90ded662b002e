"""Inference: device and precision choice, and embedding of pixel series (no-data pixels get NaN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from model.dense import pack_for_cpu
from model.encoder import CPU_INFERENCE_CHUNK, TesseraEncoder
from model.sampling import Mode
from model.series import PixelSeries

Precision = Literal["fp32", "bf16"]


def best_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return torch.device(requested)


def cpu_supports_bf16() -> bool:
    """Native bf16 matrix units (avx512_bf16 or AMX); elsewhere bf16 on CPU is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def best_precision(device: torch.device, requested: str = "auto") -> Precision:
    if requested in ("fp32", "bf16"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}: use auto, fp32 or bf16")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def prepare_for_inference(encoder: TesseraEncoder, device: torch.device, precision: Precision) -> TesseraEncoder:
    """bf16 runs fastest with bf16 weights on both CPU and GPU: autocast would re-cast every weight
    on every batch (measured on an H100: bf16 weights + the fused FFN epilogue gave ~2x autocast)."""
    encoder = encoder.eval().to(device)
    if precision == "bf16":
        encoder = encoder.to(torch.bfloat16)
        if device.type == "cpu":
            pack_for_cpu(encoder, CPU_INFERENCE_CHUNK * encoder.config.sample_steps)
    return encoder


@dataclass
class EncoderInputs:
    """Sampled model inputs of the pixels that have data; `index` says which pixels they are."""

    count: int
    index: np.ndarray
    s2: np.ndarray
    s1: np.ndarray


def sample_inputs(series: PixelSeries, steps: int, mode: Mode = "deterministic",
                  rng: np.random.Generator | None = None) -> EncoderInputs:
    index = np.nonzero(series.has_data)[0]
    s2, s1 = series.subset(index).model_inputs(steps, mode, rng)
    return EncoderInputs(len(series), index, s2, s1)


def embed_inputs(encoder: TesseraEncoder, inputs: EncoderInputs, batch_size: int = 1024,
                 precision: Precision = "fp32") -> np.ndarray:
    """(N, dim) float32 embeddings; pixels without a valid observation of each sensor are NaN."""
    out = np.full((inputs.count, encoder.config.embedding_dim), np.nan, np.float32)
    if len(inputs.index):
        out[inputs.index] = encoder.embed(inputs.s2, inputs.s1, batch_size=batch_size, precision=precision)
    return out


def embed_series(encoder: TesseraEncoder, series: PixelSeries, mode: Mode = "deterministic",
                 rng: np.random.Generator | None = None, batch_size: int = 1024,
                 precision: Precision = "fp32") -> np.ndarray:
    return embed_inputs(encoder, sample_inputs(series, encoder.config.sample_steps, mode, rng), batch_size, precision)
