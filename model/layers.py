"""The building blocks of every TESSERA encoder, named as the official checkpoints name them.

Arranged for speed without changing the result: the GRU's three input-side maps run as one matrix
multiply over all time steps before the recurrence, and in inference the transformer layers run slice
by slice of pixels through `model.dense` (prepacked oneDNN weights on CPU, fused epilogues on CUDA).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.dense import dense


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


class AttentionPooling(nn.Module):
    """v2's pooling: one softmax score per step from the step itself; no recurrence, so the result
    does not depend on the row order."""

    def __init__(self, width: int):
        super().__init__()
        self.query = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x[:, 0]
        weights = torch.softmax(self.query(x).float(), dim=1).to(x.dtype)
        return (weights * x).sum(dim=1)


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


# Rows (pixels x steps) per slice in CPU inference: the feed-forward intermediate (rows x 4096) then
# stays in cache, which lifted v1.0's layer from ~0.85 to ~0.94 of the machine's GEMM rate (16 pixels
# of 40 steps). Bucketed families have longer sequences, so the slice is counted in rows, not pixels.
# GPUs take the whole batch.
CPU_INFERENCE_ROWS = 640


def encoder_layer_inference(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """A post-norm encoder layer in eval mode (no dropout), computed slice by slice of pixels;
    the same arithmetic as `layer(x)`, arranged for cache locality."""
    batch, steps, width = x.shape
    attn = layer.self_attn
    heads = attn.num_heads
    chunk = batch if x.is_cuda else max(1, CPU_INFERENCE_ROWS // steps)
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


def encoder_layer_training(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """A post-norm ReLU encoder layer with autograd: the arithmetic of `layer(x)` (dropout where
    PyTorch applies it), without `nn.MultiheadAttention`'s copies. That module works sequence-first,
    so it transposes the batch, copies the packed Q/K/V projection into a (3, T, B, width) block and
    indexes it, whose backward fills a zero tensor of that size for each of Q, K and V; with 40 steps
    it also takes the fused flash kernel, slower than two products and a softmax here. Measured on
    the demo preset (batch 128, 40 steps, 2 cores): see `bench/pretrain.py`."""
    if layer.norm_first or layer.activation_relu_or_gelu != 1:
        return layer(x)  # not a layout any preset builds
    batch, steps, width = x.shape
    attn = layer.self_attn
    heads = attn.num_heads
    flat = x.reshape(batch * steps, width)
    qkv = F.linear(flat, attn.in_proj_weight, attn.in_proj_bias).view(batch, steps, 3, heads, width // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (batch, heads, steps, head width) views
    a = _attention(q, k, v, attn.dropout if layer.training else 0.0).transpose(1, 2).reshape(batch * steps, width)
    y = layer.norm1(flat + layer.dropout1(F.linear(a, attn.out_proj.weight, attn.out_proj.bias)))
    hidden = layer.dropout(F.relu(F.linear(y, layer.linear1.weight, layer.linear1.bias), inplace=True))
    return layer.norm2(y + layer.dropout2(F.linear(hidden, layer.linear2.weight, layer.linear2.bias))).view(batch, steps, width)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Softmax attention over the time steps, for inference and (with autograd) training; `dropout`
    on the weights as `nn.MultiheadAttention` applies it. On CPU the 40 x 40 score matrices are too
    small for the fused flash kernel, which ran ~3x slower here than two batched products and a
    softmax (taken in fp32, as the fused kernels do)."""
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(q.shape[-1] ** -0.5)
    weights = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(F.dropout(weights, dropout) if dropout > 0 else weights, v)




class QKNormEncoderLayer(nn.Module):
    """The v2 students' optional layer: post-norm like PyTorch's, but Q, K and V from separate
    projections, and Q and K RMS-normalised per head (one gain shared by the heads; eps unset, so the
    working dtype's machine epsilon, as in the reference)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width, head = config.width, config.width // config.heads
        self.heads = config.heads
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, nn.Linear(width, width))
        self.q_norm = nn.RMSNorm(head)
        self.k_norm = nn.RMSNorm(head)
        self.linear1 = nn.Linear(width, config.feedforward)
        self.linear2 = nn.Linear(config.feedforward, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        flat = x.reshape(batch * steps, width)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, steps, self.heads, width // self.heads).transpose(1, 2)

        q = self.q_norm(heads(dense(flat, self.q_proj.weight, self.q_proj.bias)))
        k = self.k_norm(heads(dense(flat, self.k_proj.weight, self.k_proj.bias)))
        v = heads(dense(flat, self.v_proj.weight, self.v_proj.bias))
        a = _attention(q, k, v).transpose(1, 2).reshape(batch * steps, width)
        y = self.norm1(flat + self.dropout(dense(a, self.out_proj.weight, self.out_proj.bias)))
        hidden = self.dropout(dense(y, self.linear1.weight, self.linear1.bias, relu=True))
        return self.norm2(y + self.dropout(dense(hidden, self.linear2.weight, self.linear2.bias))).view(batch, steps, width)


class SensorBackbone(nn.Module):
    """Band MLP, DOY sinusoid, post-norm transformer, then pooling over time: the GRU-context
    pooling of v1.x or the plain attention pooling of v2."""

    def __init__(self, bands: int, config: ModelConfig):
        super().__init__()
        width = config.width
        self.embedding = nn.Sequential(nn.Linear(bands, width), nn.ReLU(), nn.Linear(width, width))
        if config.qk_norm:  # the reference keys these layers without a `layers.` segment
            self.transformer_encoder = nn.ModuleList(QKNormEncoderLayer(config) for _ in range(config.layers))
        else:
            layer = nn.TransformerEncoderLayer(
                d_model=width, nhead=config.heads, dim_feedforward=config.feedforward, dropout=config.dropout,
                activation="relu", batch_first=True,
            )
            self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=config.layers, enable_nested_tensor=False)
        self.attn_pool = AttentionPooling(width) if config.family == "v2" else TemporalAwarePooling(width)

    def forward(self, bands: torch.Tensor, doy: torch.Tensor) -> torch.Tensor:
        x = self.embedding(bands) + doy_encoding(doy, self.embedding[0].out_features).to(bands.dtype)
        if isinstance(self.transformer_encoder, nn.ModuleList):
            for layer in self.transformer_encoder:
                x = layer(x)
        elif self.training or torch.is_grad_enabled():
            for layer in self.transformer_encoder.layers:
                x = encoder_layer_training(layer, x)
        else:
            for layer in self.transformer_encoder.layers:
                x = encoder_layer_inference(layer, x)
        return self.attn_pool(x)
