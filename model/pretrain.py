"""Self-supervised pretraining: Barlow Twins on two temporal views of each pixel, with mixup.

Each step draws a batch of pixels from a globally shuffled pool (pixels of every region and year
mixed), samples two independent v1.0-style views per pixel, and minimises
`sum_i (1 - C_ii)^2 + lambda * sum_{i!=j} C_ij^2` on batch-standardised projector outputs, plus the
mixup regulariser: a mix of view 1 with a permuted batch of view 2 must correlate with both views as
the same mix of their correlations. Training resumes from its last state file after an interruption.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.config import MATRYOSHKA_DIMS, ModelConfig, Normalisation
from model.encoder import TesseraEncoder
from model.inference import best_precision
from model.selection import normalise_s1, z_score
from model.series import PixelSeries


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 200
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 20
    grad_clip: float = 2.0
    barlow_lambda: float = 5e-3
    mixup_weight: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    precision: str = "auto"  # `training_precision`: bf16 autocast on GPUs, fp32 on CPUs; or fp32 / bf16


def projector(config: ModelConfig, inputs: int) -> nn.Sequential:
    """Linear layers with BatchNorm and ReLU between them, widening the embedding for the loss."""
    dims = (inputs, *config.projector_dims)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b, bias=i == len(dims) - 2))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def trained_prefixes(config: ModelConfig) -> tuple[int, ...]:
    """v2 encoders are Matryoshka-trained (each of the first 16/32/64 dimensions usable alone, as
    the official students are); v1.x learn the whole vector only."""
    return tuple(k for k in MATRYOSHKA_DIMS if k <= config.embedding_dim) if config.family == "v2" else (config.embedding_dim,)


class Projectors(nn.Module):
    """One projector per trained prefix of the embedding; the loss sums Barlow Twins over them."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.prefixes = trained_prefixes(config)
        self.heads = nn.ModuleList(projector(config, k) for k in self.prefixes)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [head(z[:, :k]).float() for k, head in zip(self.prefixes, self.heads)]


def _standardise(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean(0)) / (z.std(0) + 1e-6)


def cross_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _standardise(a).T @ _standardise(b) / a.shape[0]


def barlow_twins_loss(c: torch.Tensor, lam: float) -> torch.Tensor:
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lam * off_diag


def _views(pool: PixelSeries, index: np.ndarray, steps: int, rng: np.random.Generator, norm: Normalisation,
           device: torch.device) -> list[torch.Tensor]:
    """Two independent random draws of `steps` valid observations per pixel, z-scored as the
    encoder's family z-scores them (S1 per orbit direction for v1.1 and v2)."""
    batch = pool.subset(index)
    out = []
    for _ in range(2):
        s2, s1, desc = batch.sampled(steps, "random", rng)
        arrays = (z_score(s2[..., :-1], norm.s2_mean, norm.s2_std), s2[..., -1],
                  normalise_s1(s1[..., :-1], desc, norm), s1[..., -1])
        out += [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]
    return out


def _loss(za: torch.Tensor, zb: torch.Tensor, zm: torch.Tensor | None, alpha: float, perm: torch.Tensor,
          config: PretrainConfig) -> torch.Tensor:
    """Barlow Twins on two views, plus the mixup regulariser: a mix of view a with a permuted batch
    of view b must correlate with both views as the same mix of their correlations."""
    loss = barlow_twins_loss(cross_correlation(za, zb), config.barlow_lambda)
    if zm is None:
        return loss
    target_a = alpha * cross_correlation(za, za) + (1 - alpha) * cross_correlation(zb[perm], za)
    target_b = alpha * cross_correlation(za, zb) + (1 - alpha) * cross_correlation(zb[perm], zb)
    mix = (cross_correlation(zm, za) - target_a).pow(2).sum() + (cross_correlation(zm, zb) - target_b).pow(2).sum()
    return loss + config.mixup_weight * config.barlow_lambda * mix


def _schedule(config: PretrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _parameter_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms and GRU gate biases are left alone."""
    decay, no_decay = [], []
    for module in modules:
        for param in module.parameters():
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def training_precision(device: torch.device, requested: str = "auto") -> str:
    """`auto` trains in bf16 autocast on GPUs that have it and in fp32 on CPUs. On a CPU with native
    bf16 units (a 2-core Zen 4, avx512_bf16), autocast made the demo preset's steps slower, not faster
    (`bench/pretrain_precision.py`: 1.27-1.43 s a step against 0.86-0.97 s in fp32, batch 128; the
    preset's matrices are small, so the casts autocast adds cost more than the bf16 products save),
    and fp32 trains alike on every kind of CPU, which bf16 on some and fp32 on others does not."""
    if requested == "auto":
        return best_precision(device, "auto") if device.type == "cuda" else "fp32"
    return best_precision(device, requested)


def pretrain(pool: PixelSeries, model_config: ModelConfig, config: PretrainConfig, state_path: Path,
             device: torch.device | None = None, progress: Callable[[int, float], None] | None = None,
             normalisation: Normalisation | None = None) -> TesseraEncoder:
    """Train an encoder; `state_path` holds the resumable state while training runs. The inputs are
    z-scored with `normalisation` (the family's own constants by default)."""
    pool = pool.subset(np.nonzero(pool.has_both)[0])
    if len(pool) < config.batch_size:
        raise ValueError(f"pretraining needs at least {config.batch_size} pixels with S1 and S2 data, got {len(pool)}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    encoder = TesseraEncoder(model_config, normalisation).to(device)
    head = Projectors(model_config).to(device)
    optimizer = torch.optim.AdamW(_parameter_groups([encoder, head], config.weight_decay), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    rng = np.random.default_rng(config.seed)
    step, losses, seconds = 0, [], 0.0
    identity = {"model": model_config.to_dict(), "pretrain": asdict(config), "pixels": len(pool)}
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["identity"] == identity:
            encoder.load_state_dict(state["encoder"])
            head.load_state_dict(state["projector"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            step, losses, seconds = state["step"], state["losses"], state["seconds"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=training_precision(device, config.precision) == "bf16")
    encoder.train()
    head.train()
    order = rng.permutation(len(pool))
    cursor = (step * config.batch_size) % len(pool)
    started = time.perf_counter()
    while step < config.steps:
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(len(pool)), 0
        index = order[cursor:cursor + config.batch_size]
        cursor += config.batch_size
        a2, a2d, a1, a1d, b2, b2d, b1, b1d = _views(pool, index, model_config.sample_steps, rng, encoder.normalisation, device)
        with autocast:  # the networks in bf16 where available; the correlations below in fp32
            za = head(encoder(a2, a2d, a1, a1d))
            zb = head(encoder(b2, b2d, b1, b1d))
            alpha = float(rng.beta(1.0, 1.0))
            perm = torch.from_numpy(rng.permutation(len(index))).to(device)
            zm = head(encoder(alpha * a2 + (1 - alpha) * b2[perm], a2d, alpha * a1 + (1 - alpha) * b1[perm], a1d)) \
                if config.mixup_weight > 0 else [None] * len(za)
        # in bf16 the correlation matrix keeps ~3 significant digits and the loss moves in steps of 0.25
        loss = sum(_loss(a, b, m, alpha, perm, config) for a, b, m in zip(za, zb, zm))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(list(encoder.parameters()) + list(head.parameters()), config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(float(loss.detach()))
        if progress:
            progress(step, losses[-1])
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save_state(state_path, {
                "identity": identity, "encoder": encoder.state_dict(), "projector": head.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "step": step, "losses": losses,
                "seconds": seconds + time.perf_counter() - started,
            })
    encoder.eval()
    encoder.metadata = {
        "preset": model_config.name, "steps": step, "losses": losses, "pixels": len(pool), "device": str(device),
        "seconds": round(seconds + time.perf_counter() - started, 1), "pretrain": asdict(config),
        "matryoshka_dims": list(head.prefixes),
    }
    return encoder.cpu()


def _save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
