"""Every TESSERA family written out op by op from the reference semantics, straight from a state dict.

Slow on purpose: no fused kernels, no reordering, the GRU cell exactly as the reference writes it, and
the v1.1 / v2 observation selection pixel by pixel in plain Python as the fact sheets
(`../shared/reference/`) describe it, independently of the vectorised `model.selection`. Tests and
`bench/embed.py` measure the fast encoder against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import numpy as np

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


def _qk_norm_attention(x, state, layer, heads):
    """Separate Q/K/V projections; Q and K RMS-normalised per head with one shared gain."""
    b, t, d = x.shape
    dh = d // heads
    eps = torch.finfo(torch.float32).eps

    def split(m):
        return m.reshape(b, t, heads, dh).transpose(1, 2)

    def rms(m, name):
        return m / torch.sqrt(m.pow(2).mean(-1, keepdim=True) + eps) * state[f"{layer}.{name}.weight"]

    q = rms(split(_linear(x, state, f"{layer}.q_proj")), "q_norm")
    k = rms(split(_linear(x, state, f"{layer}.k_proj")), "k_norm")
    v = split(_linear(x, state, f"{layer}.v_proj"))
    out = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
    return _linear(out, state, f"{layer}.out_proj")


def _backbone(bands, doy, state, prefix, config: ModelConfig):
    x = _linear(torch.relu(_linear(bands, state, f"{prefix}.embedding.0")), state, f"{prefix}.embedding.2")
    x = x + _positional(doy, config.width)
    for i in range(config.layers):
        if config.qk_norm:
            layer = f"{prefix}.transformer_encoder.{i}"
            attended = _qk_norm_attention(x, state, layer, config.heads)
        else:
            layer = f"{prefix}.transformer_encoder.layers.{i}"
            attended = _attention(x, state, f"{layer}.self_attn", config.heads)
        x = _layer_norm(x + attended, state, f"{layer}.norm1")
        ff = _linear(torch.relu(_linear(x, state, f"{layer}.linear1")), state, f"{layer}.linear2")
        x = _layer_norm(x + ff, state, f"{layer}.norm2")
    if config.family == "v2":
        weights = torch.softmax(_linear(x, state, f"{prefix}.attn_pool.query"), dim=1)
        return (weights * x).sum(dim=1)
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


def _fusion(fused, state, config: ModelConfig):
    if config.family == "v1.0":
        return _linear(fused, state, "dim_reducer.0")
    hidden = torch.relu(_layer_norm(_linear(fused, state, "dim_reducer.0"), state, "dim_reducer.1"))
    out = _linear(hidden, state, "dim_reducer.4")
    if config.family == "v2":
        out = F.layer_norm(out, (out.shape[-1],), eps=1e-5)
    return out[:, :config.embedding_dim]


def _z(values, mean, std):
    return (np.asarray(values, np.float32) - np.asarray(mean, np.float32)) / (np.asarray(std, np.float32) + np.float32(1e-9))


@torch.no_grad()
def reference_embed(state: dict[str, torch.Tensor], config: ModelConfig, s2: torch.Tensor, s1: torch.Tensor,
                    normalisation: Normalisation) -> torch.Tensor:
    """v1.0's call: raw S2 (B, T, 11) and S1 (B, T, 3), DOY last, S1 with v1.0's pooled constants."""
    state = {k: v.float().cpu() for k, v in state.items()}
    s2, s1 = torch.as_tensor(s2).float(), torch.as_tensor(s1).float()
    s2_bands = torch.from_numpy(_z(s2[..., :-1].numpy(), normalisation.s2_mean, normalisation.s2_std))
    s1_bands = torch.from_numpy(_z(s1[..., :-1].numpy(), normalisation.s1_asc_mean, normalisation.s1_asc_std))
    fused = torch.cat([
        _backbone(s2_bands, s2[..., -1], state, "s2_backbone", config),
        _backbone(s1_bands, s1[..., -1], state, "s1_backbone", config),
    ], dim=-1)
    return _fusion(fused, state, config)


def reference_ranks(n: int, family: str, buckets: tuple[int, ...] = tuple(range(8, 257, 8))) -> list[int]:
    """One pixel's rank list, literally as the fact sheets state it."""
    if n == 0:
        return []
    length = next((b for b in buckets if b >= n), buckets[-1])
    if n == length:
        return list(range(n))
    if family == "v1.1":
        if n > length:
            return [int(chunk[len(chunk) // 2]) for chunk in np.array_split(np.arange(n), length)]
        extra = length - n
        fill = np.clip(np.rint(np.linspace(0, n - 1, extra + 2)[1:-1]).astype(int), 0, n - 1)
        return list(range(n)) + [int(v) for v in fill]
    if n > length:
        return [int(v) for v in np.floor(np.linspace(0, n - 1, length))]
    fill_count = length - n
    if fill_count <= n:
        fill = [int(chunk[len(chunk) // 2]) for chunk in np.array_split(np.arange(n), fill_count)]
    else:
        fill = [k % n for k in range(fill_count)]
    return list(range(n)) + fill


@torch.no_grad()
def reference_embed_series(state: dict[str, torch.Tensor], config: ModelConfig, normalisation: Normalisation,
                           s2_bands, s2_doys, s2_masks, s1_asc_bands, s1_asc_doys, s1_desc_bands,
                           s1_desc_doys) -> np.ndarray:
    """v1.1 / v2 `encode_pixels`, one pixel at a time: (N, 128), NaN for pixels with no observation.
    DOYs are per pixel (N, T); masks (N, T) nonzero = clear."""
    state = {k: v.float().cpu() for k, v in state.items()}
    norm = normalisation
    out = np.full((len(s2_bands), config.embedding_dim), np.nan, np.float32)
    for p in range(len(s2_bands)):
        clear = [t for t in range(s2_bands.shape[1]) if s2_masks[p, t] != 0]
        s2_rows = [(_z(s2_bands[p, t], norm.s2_mean, norm.s2_std), s2_doys[p, t]) for t in clear]
        s1_rows = []
        for bands, doys, mean, std in ((s1_asc_bands, s1_asc_doys, norm.s1_asc_mean, norm.s1_asc_std),
                                       (s1_desc_bands, s1_desc_doys, norm.s1_desc_mean, norm.s1_desc_std)):
            s1_rows += [(_z(bands[p, t], mean, std), doys[p, t]) for t in range(bands.shape[1]) if (bands[p, t] != 0).any()]
        if not s2_rows and not s1_rows:
            continue
        sequences = []
        for rows, width in ((s2_rows, 10), (s1_rows, 2)):
            if rows:
                picked = [rows[r] for r in reference_ranks(len(rows), config.family)]
                bands = np.stack([r[0] for r in picked])
                days = np.array([r[1] for r in picked], np.float32)
            else:  # the missing sensor: v1.1 runs the smallest bucket of zeros, v2 one zero row
                steps = 8 if config.family == "v1.1" else 1
                bands, days = np.zeros((steps, width), np.float32), np.zeros(steps, np.float32)
            sequences.append((torch.from_numpy(bands)[None], torch.from_numpy(days)[None]))
        fused = torch.cat([_backbone(*sequences[0], state, "s2_backbone", config),
                           _backbone(*sequences[1], state, "s1_backbone", config)], dim=-1)
        out[p] = _fusion(fused, state, config)[0].numpy()
    return out


def reference_pretrain_loss(za, zb, zm, alpha: float, perm, barlow_lambda: float, mixup_weight: float):
    """The pretraining loss for one projector prefix as the method writes it: Barlow Twins on the
    p x p cross-correlation of the two views, plus the mixup term, seven p x p cross-correlations in
    all. `model.pretrain._loss` computes the same value over n x n Gram matrices."""
    from model.pretrain import barlow_twins_loss, cross_correlation

    loss = barlow_twins_loss(cross_correlation(za, zb), barlow_lambda)
    if zm is None:
        return loss
    target_a = alpha * cross_correlation(za, za) + (1 - alpha) * cross_correlation(zb[perm], za)
    target_b = alpha * cross_correlation(za, zb) + (1 - alpha) * cross_correlation(zb[perm], zb)
    mix = (cross_correlation(zm, za) - target_a).pow(2).sum() + (cross_correlation(zm, zb) - target_b).pow(2).sum()
    return loss + mixup_weight * barlow_lambda * mix
