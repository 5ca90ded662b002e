"""The TESSERA v1.0 encoder: one transformer per sensor, GRU-aware temporal pooling, linear fusion.

Module names and shapes match the official checkpoint exactly (`s2_backbone.*`, `s1_backbone.*`,
`dim_reducer.*`), so official weights load strictly. The computation is arranged for speed without
changing the result: the GRU's three input-side maps run as one matrix multiply over all time steps
before the recurrence, and the transformer uses PyTorch's fused inference path.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import S1_BAND_COUNT, S2_BAND_COUNT, ModelConfig, Normalisation, preset
from model.dense import dense
from model.errors import CheckpointError

CHECKPOINT_FORMAT = "tessera-platform/1"
_IGNORED_PREFIXES = ("projector.",)
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


class GRUCell(nn.Module):
    """The reference's GRU cell: bias-free input and hidden maps, one bias per gate,
    candidate `tanh(W_ih x + W_hh (r * h) + b_h)`, update `(1 - z) h + z h~`."""

    def __init__(self, size: int):
        super().__init__()
        for name in ("W_ir", "W_iz", "W_ih", "W_hr", "W_hz", "W_hh"):
            setattr(self, name, nn.Linear(size, size, bias=False))
        self.b_r = nn.Parameter(torch.zeros(size))
        self.b_z = nn.Parameter(torch.zeros(size))
        self.b_h = nn.Parameter(torch.zeros(size))


class GRU(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.gru_cell = GRUCell(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All hidden states (B, T, D) from h0 = 0."""
        cell = self.gru_cell
        batch, _, size = x.shape
        input_weight = torch.cat([cell.W_ir.weight, cell.W_iz.weight, cell.W_ih.weight])
        input_bias = torch.cat([cell.b_r, cell.b_z, cell.b_h])
        gates_x = F.linear(x, input_weight, input_bias)  # one GEMM for every step
        hidden_rz = torch.cat([cell.W_hr.weight, cell.W_hz.weight]).T
        hidden_h = cell.W_hh.weight.T
        h = gates_x.new_zeros(batch, size)  # autocast: the gates dtype, so lerp sees one dtype
        outputs = []
        # unbind/split rather than indexing: in training, each indexed slice's backward would fill a
        # zero tensor the size of the whole input (that was half of a pretraining step's time)
        for gx in gates_x.unbind(1):
            gx_rz, gx_h = gx.split([2 * size, size], dim=1)
            r, z = torch.sigmoid(torch.addmm(gx_rz, h, hidden_rz)).chunk(2, dim=1)
            candidate = torch.tanh(torch.addmm(gx_h, r * h, hidden_h))
            h = torch.lerp(h, candidate, z)  # (1 - z) h + z h~, in one pass
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class TemporalAwarePooling(nn.Module):
    """Softmax weights over time from GRU context, applied to the transformer outputs themselves."""

    def __init__(self, width: int):
        super().__init__()
        self.temporal_context = GRU(width)
        self.query = nn.Linear(width, 1)
        self.layer_norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x[:, 0]
        context = self.layer_norm(self.temporal_context(x))
        weights = torch.softmax(self.query(context).float(), dim=1).to(x.dtype)
        return (weights * x).sum(dim=1)


def doy_encoding(doy: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal encoding of the raw day of year (base 10000; sin on even, cos on odd channels).

    Days of year are integers, so the encoding is a lookup in a table computed by the same formula
    (identical values, and no sin/cos over every step of every pixel)."""
    if not torch.is_floating_point(doy) or bool((doy == doy.round()).all() and doy.min() >= 0 and doy.max() <= 366):
        return _doy_table(width, doy.device)[doy.long()]
    return _doy_formula(doy, width)


@functools.lru_cache(maxsize=8)
def _doy_table(width: int, device: torch.device) -> torch.Tensor:
    return _doy_formula(torch.arange(367, device=device), width)


def _doy_formula(doy: torch.Tensor, width: int) -> torch.Tensor:
    position = doy.float().unsqueeze(-1)
    div = torch.exp(torch.arange(0, width, 2, device=doy.device, dtype=torch.float32) * (-math.log(10000.0) / width))
    angles = position * div
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


class SensorBackbone(nn.Module):
    def __init__(self, bands: int, config: ModelConfig):
        super().__init__()
        width = config.width
        self.embedding = nn.Sequential(nn.Linear(bands, width), nn.ReLU(), nn.Linear(width, width))
        layer = nn.TransformerEncoderLayer(
            d_model=width, nhead=config.heads, dim_feedforward=config.feedforward, dropout=config.dropout,
            activation="relu", batch_first=True,
        )
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=config.layers, enable_nested_tensor=False)
        self.attn_pool = TemporalAwarePooling(width)

    def forward(self, bands: torch.Tensor, doy: torch.Tensor) -> torch.Tensor:
        x = self.embedding(bands) + doy_encoding(doy, self.embedding[0].out_features).to(bands.dtype)
        if self.training or torch.is_grad_enabled():
            x = self.transformer_encoder(x)
        else:
            for layer in self.transformer_encoder.layers:
                x = encoder_layer_inference(layer, x)
        return self.attn_pool(x)


# Pixels per slice in CPU inference: the feed-forward intermediate (rows x 4096) then stays in cache,
# which lifts the layer from ~0.85 to ~0.94 of the machine's GEMM rate. GPUs take the whole batch.
CPU_INFERENCE_CHUNK = 16


def encoder_layer_inference(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """A post-norm encoder layer in eval mode (no dropout), computed slice by slice of pixels;
    the same arithmetic as `layer(x)`, arranged for cache locality."""
    batch, steps, width = x.shape
    attn = layer.self_attn
    heads = attn.num_heads
    chunk = batch if x.is_cuda else CPU_INFERENCE_CHUNK
    flat = x.reshape(batch * steps, width)
    out = torch.empty_like(flat)
    rows = chunk * steps
    for start in range(0, batch * steps, rows):
        xc = flat[start:start + rows]
        n = xc.shape[0] // steps
        qkv = dense(xc, attn.in_proj_weight, attn.in_proj_bias).view(n, steps, 3, heads, width // heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        a = _attention(q, k, v).transpose(1, 2).reshape(n * steps, width)
        y = F.layer_norm(xc + dense(a, attn.out_proj.weight, attn.out_proj.bias), (width,),
                         layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        hidden = dense(y, layer.linear1.weight, layer.linear1.bias, relu=True)
        out[start:start + rows] = F.layer_norm(y + dense(hidden, layer.linear2.weight, layer.linear2.bias),
                                               (width,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
    return out.view(batch, steps, width)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention over the time steps. On CPU the 40 x 40 score matrices are too small for
    the fused flash kernel, which ran ~3x slower here than two batched products and a softmax
    (taken in fp32, as the fused kernels do)."""
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v)
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(q.shape[-1] ** -0.5)
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


class TesseraEncoder(nn.Module):
    """S2 and S1 backbones fused by one linear layer into the 128-d embedding."""

    def __init__(self, config: ModelConfig, normalisation: Normalisation | None = None):
        super().__init__()
        self.config = config
        self.normalisation = normalisation or Normalisation()
        self.s2_backbone = SensorBackbone(S2_BAND_COUNT, config)
        self.s1_backbone = SensorBackbone(S1_BAND_COUNT, config)
        self.dim_reducer = nn.Sequential(nn.Linear(2 * config.width, config.embedding_dim))
        norm = self.normalisation
        for name, values in (("s2_mean", norm.s2_mean), ("s2_std", norm.s2_std),
                             ("s1_mean", norm.s1_mean), ("s1_std", norm.s1_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)
        self.metadata: dict[str, Any] = {}

    @classmethod
    def from_preset(cls, name: str) -> "TesseraEncoder":
        return cls(preset(name))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, s2: torch.Tensor, s2_doy: torch.Tensor, s1: torch.Tensor, s1_doy: torch.Tensor) -> torch.Tensor:
        """Normalised bands (B, T, C) and day of year (B, T) per sensor -> (B, embedding_dim)."""
        fused = torch.cat([self.s2_backbone(s2, s2_doy), self.s1_backbone(s1, s1_doy)], dim=-1)
        return self.dim_reducer(fused)

    def normalise(self, s2: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Raw (B, T, bands + DOY) -> normalised bands and raw DOY, per sensor."""
        s2_bands = (s2[..., :-1].float() - self.s2_mean) / self.s2_std
        s1_bands = (s1[..., :-1].float() - self.s1_mean) / self.s1_std
        return s2_bands, s2[..., -1], s1_bands, s1[..., -1]

    @torch.inference_mode()
    def embed(self, s2: Any, s1: Any, batch_size: int = 4096, precision: str = "fp32") -> Any:
        """Embeddings (B, 128) float32 of raw inputs on exactly the given steps.

        S2 `(B, T, 11)` reflectance x 1e4 with DOY last; S1 `(B, T, 3)` TESSERA units with DOY last.
        Returns numpy for numpy input, a CPU tensor for tensor input. `precision="bf16"` computes in
        bfloat16 (autocast over fp32 weights, or natively once `model.inference.prepare_for_inference`
        cast the weights); results stay within cosine 0.999 of fp32."""
        as_numpy = isinstance(s2, np.ndarray)
        s2_t, s1_t = torch.as_tensor(s2), torch.as_tensor(s1)
        if s2_t.ndim != 3 or s2_t.shape[-1] != S2_BAND_COUNT + 1:
            raise ValueError(f"s2 must be (B, T, {S2_BAND_COUNT + 1}), got {tuple(s2_t.shape)}")
        if s1_t.ndim != 3 or s1_t.shape[-1] != S1_BAND_COUNT + 1 or s1_t.shape[0] != s2_t.shape[0]:
            raise ValueError(f"s1 must be (B, T, {S1_BAND_COUNT + 1}) with B = {s2_t.shape[0]}, got {tuple(s1_t.shape)}")
        self.eval()
        device = next(self.parameters()).device
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model_dtype = next(self.parameters()).dtype
        outputs = []
        for start in range(0, s2_t.shape[0], batch_size):
            s2_b = s2_t[start:start + batch_size].to(device, non_blocking=True)
            s1_b = s1_t[start:start + batch_size].to(device, non_blocking=True)
            s2_n, s2_doy, s1_n, s1_doy = self.normalise(s2_b, s1_b)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != model_dtype):
                out = self(s2_n.to(model_dtype), s2_doy, s1_n.to(model_dtype), s1_doy)
            outputs.append(out.float().cpu())
        result = torch.cat(outputs) if outputs else torch.zeros(0, self.config.embedding_dim)
        return result.numpy() if as_numpy else result

    # -- checkpoints -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, preset_name: str = "tessera-v1", trusted: bool = False) -> "TesseraEncoder":
        """Load an official TESSERA checkpoint or one of ours, strictly.

        Official files hold `model_state` or `model_state_dict` (keys maybe behind `_orig_mod.`);
        the training projector is ignored. Any missing, unexpected or mis-shaped tensor is an error
        that names it. `trusted=True` allows pickled non-tensor objects (only for files you trust)."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=not trusted)
        except Exception as exc:  # pickle errors come in many types
            hint = "" if trusted else " (if it holds pickled objects and you trust it, pass trusted=True)"
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
        if not isinstance(payload, dict):
            raise CheckpointError(f"checkpoint {path} is a {type(payload).__name__}, expected a dict")
        if payload.get("format") == CHECKPOINT_FORMAT:
            config = ModelConfig.from_dict(payload["config"])
            encoder = cls(config, Normalisation(**payload["normalisation"]))
            encoder.metadata = dict(payload.get("training", {}))
        else:
            encoder = cls(preset(preset_name))
            encoder.metadata = {"source": "official", "path": str(path)}
        encoder.load_strict(extract_state_dict(payload, path))
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

    def save(self, path: str | Path, training: dict[str, Any] | None = None) -> Path:
        """Our own format: weights plus the preset, normalisation and training metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "normalisation": asdict(self.normalisation),
            "training": training or self.metadata,
            "model_state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }, tmp)
        tmp.replace(path)
        return path


def extract_state_dict(payload: dict[str, Any], path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    for key in ("model_state", "model_state_dict", "state_dict"):
        if key in payload and isinstance(payload[key], dict):
            state = payload[key]
            break
    else:
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            state = payload
        else:
            raise CheckpointError(
                f"checkpoint {path} has no model_state or model_state_dict (top-level keys: {', '.join(sorted(payload)[:10])})"
            )
    cleaned = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(_IGNORED_PREFIXES):
            continue
        cleaned[key] = value
    return cleaned
