"""TESSERA v1.0 written out op by op from the reference semantics, straight from a state dict.

Slow on purpose: no fused kernels, no reordering, the GRU cell exactly as the reference writes it.
Tests and `bench/embed.py` measure the fast encoder against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.config import ModelConfig, Normalisation


def _linear(x, state, name, bias=True):
    return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"] if bias else None)


def _positional(doy: torch.Tensor, width: int) -> torch.Tensor:
    position = doy.unsqueeze(-1).float()
    div_term = torch.exp(torch.arange(0, width, 2, dtype=torch.float) * -(math.log(10000.0) / width))
    pe = torch.zeros(doy.shape[0], doy.shape[1], width)
    pe[:, :, 0::2] = torch.sin(position * div_term)
    pe[:, :, 1::2] = torch.cos(position * div_term)
    return pe


def _attention(x, state, prefix, heads):
    b, t, d = x.shape
    qkv = F.linear(x, state[f"{prefix}.in_proj_weight"], state[f"{prefix}.in_proj_bias"])
    q, k, v = qkv.split(d, dim=-1)
    dh = d // heads
    q, k, v = (m.reshape(b, t, heads, dh).transpose(1, 2) for m in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
    return _linear(out, state, f"{prefix}.out_proj")


def _layer_norm(x, state, name):
    return F.layer_norm(x, (x.shape[-1],), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-5)


def _backbone(bands, doy, state, prefix, config: ModelConfig):
    x = _linear(torch.relu(_linear(bands, state, f"{prefix}.embedding.0")), state, f"{prefix}.embedding.2")
    x = x + _positional(doy, config.width)
    for i in range(config.layers):
        layer = f"{prefix}.transformer_encoder.layers.{i}"
        x = _layer_norm(x + _attention(x, state, f"{layer}.self_attn", config.heads), state, f"{layer}.norm1")
        ff = _linear(torch.relu(_linear(x, state, f"{layer}.linear1")), state, f"{layer}.linear2")
        x = _layer_norm(x + ff, state, f"{layer}.norm2")
    cell = f"{prefix}.attn_pool.temporal_context.gru_cell"

    def w(name, v):
        return F.linear(v, state[f"{cell}.{name}.weight"])

    h = torch.zeros(x.shape[0], x.shape[2])
    states = []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        r = torch.sigmoid(w("W_ir", x_t) + w("W_hr", h) + state[f"{cell}.b_r"])
        z = torch.sigmoid(w("W_iz", x_t) + w("W_hz", h) + state[f"{cell}.b_z"])
        h_tilde = torch.tanh(w("W_ih", x_t) + w("W_hh", r * h) + state[f"{cell}.b_h"])
        h = (1 - z) * h + z * h_tilde
        states.append(h)
    context = _layer_norm(torch.stack(states, dim=1), state, f"{prefix}.attn_pool.layer_norm")
    weights = torch.softmax(_linear(context, state, f"{prefix}.attn_pool.query"), dim=1)
    return (weights * x).sum(dim=1)


@torch.no_grad()
def reference_embed(state: dict[str, torch.Tensor], config: ModelConfig, s2: torch.Tensor, s1: torch.Tensor,
                    normalisation: Normalisation = Normalisation()) -> torch.Tensor:
    """Raw S2 (B, T, 11) and S1 (B, T, 3), DOY last -> (B, embedding_dim)."""
    state = {k: v.float().cpu() for k, v in state.items()}
    s2, s1 = torch.as_tensor(s2).float(), torch.as_tensor(s1).float()
    s2_bands = (s2[..., :-1] - torch.tensor(normalisation.s2_mean)) / torch.tensor(normalisation.s2_std)
    s1_bands = (s1[..., :-1] - torch.tensor(normalisation.s1_mean)) / torch.tensor(normalisation.s1_std)
    fused = torch.cat([
        _backbone(s2_bands, s2[..., -1], state, "s2_backbone", config),
        _backbone(s1_bands, s1[..., -1], state, "s1_backbone", config),
    ], dim=-1)
    return _linear(fused, state, "dim_reducer.0")
