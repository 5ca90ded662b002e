"""The TESSERA encoder of every family: one backbone per sensor, fused into the 128-d embedding.

Module names and shapes match the official checkpoints exactly (`s2_backbone.*`, `s1_backbone.*`,
`dim_reducer.*`), so official weights load strictly; `model.checkpoints` tells the families apart.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.checkpoints import CHECKPOINT_FORMAT, EncoderIdentity, read_checkpoint, weights_digest
from model.config import (
    S1_BAND_COUNT, S2_BAND_COUNT, ModelConfig, Normalisation, preset, preset_normalisation,
)
from model.errors import CheckpointError
from model.layers import SensorBackbone
from model.selection import EncoderInputs, SequenceGroup, normalise_s1, select_inputs, z_score
from model.series import series_from_arrays


NOMINAL_STEPS = 64


@contextlib.contextmanager
def _single_threaded_ops(enabled: bool):
    """Intra-op threads at 1 while workers run side by side (the setting is process-wide)."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fusion_head(config: ModelConfig) -> nn.Sequential:
    """v1.0: one linear map. v1.1 and v2: an MLP (2d -> 4d -> output) with a LayerNorm; v2 ends in
    a parameter-free LayerNorm, so every embedding has mean 0 and variance ~1."""
    fused = 2 * config.width
    if config.family == "v1.0":
        return nn.Sequential(nn.Linear(fused, config.output_dim))
    hidden = 4 * config.width
    layers = [nn.Linear(fused, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(config.dropout),
              nn.Linear(hidden, config.output_dim)]
    if config.family == "v2":
        layers.append(nn.LayerNorm(config.output_dim, elementwise_affine=False))
    return nn.Sequential(*layers)


class TesseraEncoder(nn.Module):
    """S2 and S1 backbones fused into the embedding; knows its normalisation and identity."""

    def __init__(self, config: ModelConfig, normalisation: Normalisation | None = None):
        super().__init__()
        self.config = config
        self.normalisation = normalisation or preset_normalisation(config, "mpc" if config.family == "v1.1" else None)
        self.s2_backbone = SensorBackbone(S2_BAND_COUNT, config)
        self.s1_backbone = SensorBackbone(S1_BAND_COUNT, config)
        self.dim_reducer = fusion_head(config)
        self.metadata: dict[str, Any] = {}
        self._digest: str | None = None
        self.cpu_workers = 1  # set from the CPUs granted by model.inference.prepare_for_inference

    @classmethod
    def from_preset(cls, name: str, data_source: str | None = None) -> "TesseraEncoder":
        config = preset(name)
        return cls(config, preset_normalisation(config, data_source))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def identity(self) -> EncoderIdentity:
        """Family, architecture, normalisation set and a digest of the weights (computed once;
        `load_strict` and training reset it)."""
        if self._digest is None:
            self._digest = weights_digest(self.state_dict())
        return EncoderIdentity(self.config.family, self.config.architecture, self.normalisation.name, self._digest)

    def forward(self, s2: torch.Tensor, s2_doy: torch.Tensor, s1: torch.Tensor, s1_doy: torch.Tensor) -> torch.Tensor:
        """z-scored bands (B, T, C) and raw day of year (B, T) per sensor -> (B, embedding_dim)."""
        fused = torch.cat([self.s2_backbone(s2, s2_doy), self.s1_backbone(s1, s1_doy)], dim=-1)
        return self.dim_reducer(fused)[:, :self.config.embedding_dim]

    def train(self, mode: bool = True) -> "TesseraEncoder":
        if mode:
            self._digest = None  # weights are about to change
        return super().train(mode)

    @torch.inference_mode()
    def embed_inputs(self, inputs: EncoderInputs, batch_size: int = 4096, precision: str = "fp32") -> np.ndarray:
        """(count, embedding_dim) float32; pixels in no group are NaN. Each group is batched alone
        (its sequences share their lengths: no padding, so no pixel affects another).

        On CPU with `cpu_workers` > 1, each batch is cut into slices that single-threaded workers
        embed side by side, instead of every operation being split across threads. Measured on 2
        cores: 1.0-1.3x the speed alone, and beside one busy process 62-68% of that instead of 23-31%
        (threads of one operation wait at its barrier for whichever is descheduled). A slice's
        numerics do not depend on timing, so re-runs give the same bytes."""
        self.eval()
        device = next(self.parameters()).device
        workers = self.cpu_workers if device.type == "cpu" else 1
        out = np.full((inputs.count, self.config.embedding_dim), np.nan, np.float32)
        # each worker sets its own team of one before its first operation: `set_num_threads` here reaches
        # a new thread's OpenMP team only at that thread's first parallel region, and an operation before
        # it (a GEMM, a oneDNN kernel) could run on every core's team and round otherwise
        with _single_threaded_ops(workers > 1), ThreadPoolExecutor(
                workers, thread_name_prefix="embed", initializer=torch.set_num_threads, initargs=(1,)) as pool:
            run = pool.map if workers > 1 else map  # one worker: this thread, with its OpenMP team
            for group in inputs.groups:
                # `batch_size` counts pixels of up to NOMINAL_STEPS steps: longer sequences (v1.1 / v2 up
                # to 256) go in proportionally fewer pixels, so activation memory stays bounded
                longest = max(group.s2.shape[1], group.s1.shape[1])
                pixels = max(1, batch_size * NOMINAL_STEPS // max(longest, NOMINAL_STEPS))
                for start in range(0, len(group), pixels):
                    part = group.slice(start, start + pixels)
                    # a few slices per worker, so one held up by another process is caught up by the rest
                    edges = np.linspace(0, len(part), min(len(part), 4 * workers) + 1).astype(int)
                    slices = [part.slice(a, b) for a, b in zip(edges, edges[1:])] if workers > 1 else [part]
                    for piece, vectors in zip(slices, run(lambda x: self._forward(x, precision), slices)):
                        out[piece.index] = vectors
        return out

    @torch.inference_mode()  # per thread: the workers need it too
    def _forward(self, part: SequenceGroup, precision: str) -> np.ndarray:
        device = next(self.parameters()).device
        model_dtype = next(self.parameters()).dtype
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        s2, s2_doy, s1, s1_doy = (torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)
                                  for a in (part.s2, part.s2_doy, part.s1, part.s1_doy))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != model_dtype):
            vectors = self(s2.to(model_dtype), s2_doy, s1.to(model_dtype), s1_doy)
        return vectors.float().cpu().numpy()

    def embed(self, s2: Any, s1: Any, batch_size: int = 4096, precision: str = "fp32") -> Any:
        """v1.0's call: embeddings (B, 128) float32 of raw inputs on exactly the given steps.

        S2 `(B, T, 11)` reflectance x 1e4 with DOY last; S1 `(B, T, 3)` TESSERA units with DOY last,
        ascending and descending merged. Returns numpy for numpy input, a CPU tensor for tensor
        input. v1.1 and v2 need the S2 mask and the orbit directions: use `embed_series`."""
        if self.config.family != "v1.0":
            raise ValueError(f"embed(s2, s1) is v1.0's call; a {self.config.family} encoder selects its own steps "
                             "from the full series and needs S1 orbit directions: use embed_series")
        as_numpy = isinstance(s2, np.ndarray)
        s2_a, s1_a = np.asarray(s2, np.float32), np.asarray(s1, np.float32)
        if s2_a.ndim != 3 or s2_a.shape[-1] != S2_BAND_COUNT + 1:
            raise ValueError(f"s2 must be (B, T, {S2_BAND_COUNT + 1}), got {tuple(s2_a.shape)}")
        if s1_a.ndim != 3 or s1_a.shape[-1] != S1_BAND_COUNT + 1 or s1_a.shape[0] != s2_a.shape[0]:
            raise ValueError(f"s1 must be (B, T, {S1_BAND_COUNT + 1}) with B = {s2_a.shape[0]}, got {tuple(s1_a.shape)}")
        norm = self.normalisation
        # one group: every pixel has the same lengths
        group = SequenceGroup(np.arange(len(s2_a)), z_score(s2_a[..., :-1], norm.s2_mean, norm.s2_std), s2_a[..., -1],
                              normalise_s1(s1_a[..., :-1], np.zeros(s1_a.shape[:2], bool), norm), s1_a[..., -1])
        result = self.embed_inputs(EncoderInputs(len(s2_a), [group]), batch_size, precision)
        return result if as_numpy else torch.from_numpy(result)

    def embed_series(self, s2_bands, s2_doys, s2_masks=None, s1_asc_bands=None, s1_asc_doys=None,
                     s1_desc_bands=None, s1_desc_doys=None, data_source: str | None = None,
                     batch_size: int = 4096, precision: str = "fp32", sampling: str = "auto",
                     rng: np.random.Generator | None = None) -> np.ndarray:
        """(N, 128) float32 embeddings of raw per-pixel series, with the family's own selection.

        S2 bands (N, T2, 10) reflectance x 1e4 in TESSERA order, DOYs (N, T2) or shared (T2,),
        masks (N, T2) nonzero = clear (None: all clear). S1 ascending and descending passes
        separately, (N, Ta, 2) / (N, Td, 2) [VV, VH] in TESSERA units with their DOYs; a step is
        valid when a channel is nonzero. Pixels without any observation are NaN. `data_source`
        (v1.1: `mpc` / `aws`) must agree with the constants the encoder was loaded with."""
        if data_source not in (None, "", "auto") and self.normalisation.name != f"v1.1-{data_source}":
            raise ValueError(f"data_source {data_source!r} does not match this encoder's normalisation "
                             f"{self.normalisation.name!r}; load the checkpoint with data_source={data_source!r}")
        series = series_from_arrays(s2_bands, s2_doys, s2_masks, s1_asc_bands, s1_asc_doys, s1_desc_bands, s1_desc_doys)
        inputs = select_inputs(series, self.config, self.normalisation, sampling, rng)
        return self.embed_inputs(inputs, batch_size, precision)

    # -- checkpoints -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, data_source: str | None = None, trusted: bool = False) -> "TesseraEncoder":
        """Load any TESSERA checkpoint strictly: official v1.0, v1.1 (encoder-only or full), v2
        students (built from their `args`), or one of ours. The family is told from the contents.
        v1.1 needs `data_source` (`mpc` or `aws`): the file does not record it. Any missing,
        unexpected or mis-shaped tensor is an error that names it. `trusted=True` allows pickled
        non-tensor objects (only for files you trust)."""
        loaded = read_checkpoint(path, data_source, trusted)
        encoder = cls(loaded.config, loaded.normalisation)
        encoder.metadata = loaded.metadata
        encoder.load_strict(loaded.state)
        return encoder

    def load_strict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mis_shaped = sorted(
            f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
            for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape)
        )
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} ({len(missing)})")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})")
        if mis_shaped:
            problems.append(f"mis-shaped tensors: {', '.join(mis_shaped[:8])}")
        if problems:
            raise CheckpointError(f"checkpoint does not match {self.config.name}: " + "; ".join(problems))
        self.load_state_dict(state, strict=True)
        self._digest = None

    def save(self, path: str | Path, training: dict[str, Any] | None = None) -> Path:
        """Our own format: weights plus the architecture, normalisation, identity and training metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "normalisation": self.normalisation.to_dict(),
            "identity": self.identity.to_dict(),
            "training": training or self.metadata,
            "model_state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }, tmp)
        tmp.replace(path)
        return path
