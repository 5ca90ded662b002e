"""The dense layers of inference, on whichever kernel is fastest for the device.

On CPUs with bf16 units, oneDNN runs a linear layer about a third faster when its weight was
reordered once into the blocked layout the kernel wants (measured on this project's 2-core EPYC:
~720 -> ~990 GFLOP/s for the 640 x 512 x 4096 FFN product), instead of reordering it on every call
as `F.linear` does; the bias and ReLU are applied inside the same kernel. `pack_for_cpu` makes those
copies once (after `prepare_for_inference` casts to bf16); `dense` uses a copy only while the
weight it was made from is unchanged, so an encoder moved or re-loaded later falls back safely.
On CUDA, cuBLASLt applies the bias and ReLU in the matrix multiply's epilogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

# weight -> (its prepacked copy, the weight's identity when packed)
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _identity(weight: torch.Tensor) -> tuple:
    version = -1 if weight.is_inference() else weight._version  # inference tensors keep no counter
    return weight.data_ptr(), weight.dtype, weight.device, version


def cpu_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU: AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, as oneDNN
    itself checks. Without them (e.g. AVX2-only EPYCs), `_reorder_linear_weight` aborts with
    "bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq", so bf16
    runs through ATen's portable kernels instead, unpacked."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def onednn_packing_available() -> bool:
    """Prepacked bf16 weights: a oneDNN build with the reorder op, on a CPU with its bf16 kernels."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and cpu_bf16_kernels())


def pack_for_cpu(module: nn.Module, rows_hint: int) -> int:
    """Prepack every bf16 CPU weight of `module`'s linear and attention layers; returns how many
    (none where the CPU lacks oneDNN's bf16 kernels: `dense` then uses the plain ones)."""
    if not onednn_packing_available():
        return 0
    weights = []
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            weights.append(sub.weight)
        elif isinstance(sub, nn.MultiheadAttention) and sub.in_proj_weight is not None:
            weights.append(sub.in_proj_weight)
    packed = 0
    for weight in weights:
        if weight.device.type == "cpu" and weight.dtype == torch.bfloat16:
            _PACKED[weight] = (torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows_hint), _identity(weight))
            packed += 1
    return packed


def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False) -> torch.Tensor:
    """`x @ weight.T + bias`, optionally ReLU'd, for 2-D `x` in inference."""
    entry = _PACKED.get(weight)
    if entry is not None and entry[1] == _identity(weight) and x.dtype == weight.dtype:
        return torch.ops.mkldnn._linear_pointwise(x, entry[0], bias, "relu" if relu else "none", [], "")
    if not relu:
        return F.linear(x, weight, bias)
    # autocast does not cover this op, so cast as autocast would
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    return torch._addmm_activation(bias.to(dtype), x.to(dtype), weight.T.to(dtype))
