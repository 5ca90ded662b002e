"""Where and how inference runs: device, precision and batch size, chosen once per deployment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import Field

if TYPE_CHECKING:  # torch is imported when a run resolves the device, not when the code location loads
    import torch

    from model.inference import Precision


class ComputeDevice(ConfigurableResource):
    """`auto` picks CUDA when present and otherwise the CPU; bf16 on GPUs (embeddings within cosine
    0.999 of fp32), fp32 on CPUs (`model.inference.best_precision` says why; `precision="bf16"`
    asks for it on a CPU with bf16 units)."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int = Field(
        default=0, description="Pixels per forward pass; 0 picks 1024 on CPU and 16384 (a whole 128 x 128 block) on CUDA.")
    block_size: int = 128
    readers: int = Field(
        default=0, description="Blocks read and sampled ahead, each on its own thread; 0 picks 1 on CPU, 4 on CUDA.")
    threads: int = Field(
        default=0, description="CPU threads (inference: single-threaded workers); 0 uses the CPUs granted (affinity, cgroup quota)")

    def resolve(self) -> tuple[torch.device, Precision]:
        """The device and precision; on CPU also sets the thread count to the CPUs actually granted."""
        import torch

        from model.inference import available_cpus, best_device, best_precision

        device = best_device(self.device)
        if device.type == "cpu":
            torch.set_num_threads(self.threads if self.threads > 0 else available_cpus())
        return device, best_precision(device, self.precision)

    def batch_for(self, device: torch.device) -> int:
        """GPUs need many pixels in flight (on an H100, tessera-v1 in bf16 runs ~60% faster at
        16384 than at 1024); on CPU a larger batch only costs memory."""
        if self.batch_size > 0:
            return self.batch_size
        return 16384 if device.type == "cuda" else 1024

    def readers_for(self, device: torch.device) -> int:
        """One thread samples ~70,000-85,000 px/s (measured on the H100 machine's host), short of
        the ~93,000 px/s tessera-v1 embeds there in bf16; on CPU the forward pass needs the cores."""
        if self.readers > 0:
            return self.readers
        return 4 if device.type == "cuda" else 1
