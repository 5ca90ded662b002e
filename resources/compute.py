"""Where and how inference runs: device, precision and batch size, chosen once per deployment."""

from __future__ import annotations

from dagster import ConfigurableResource

from model.inference import Precision, best_device, best_precision


class ComputeDevice(ConfigurableResource):
    """`auto` picks CUDA when present (bf16 autocast) and otherwise the CPU, in bf16 where it has
    native bf16 units (embeddings within cosine 0.999 of fp32) and fp32 elsewhere."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 1024
    block_size: int = 128

    def resolve(self) -> tuple["torch.device", Precision]:  # noqa: F821 - torch imported lazily by callers
        device = best_device(self.device)
        return device, best_precision(device, self.precision)
