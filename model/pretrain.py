"""Self-supervised pretraining: Barlow Twins on two temporal views of each pixel, with mixup.

Each step draws a batch of pixels from a globally shuffled pool (pixels of every region and year
mixed), samples two independent v1.0-style views per pixel, and minimises
`sum_i (1 - C_ii)^2 + lambda * sum_{i!=j} C_ij^2` on batch-standardised projector outputs, plus the
mixup regulariser: a mix of view 1 with a permuted batch of view 2 must correlate with both views as
the same mix of their correlations. Training resumes from its last state file after an interruption.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    of view b must correlate with both views as the same mix of their correlations.

    The value of `barlow_twins_loss(cross_correlation(za, zb))` plus the mixup term written with
    `cross_correlation` (`resources.testing.reference_model.reference_pretrain_loss` keeps that
    form; a test and `bench/pretrain.py` compare), by two identities:
    with s = standardised rows, the residuals `C(zm, za) - alpha C(za, za) - (1 - alpha) C(zb[perm], za)`
    and likewise against zb are `D^T s_a / n` and `D^T s_b / n` for one n x p matrix
    `D = s_m - alpha s_a - (1 - alpha) s_b[perm]`; and a squared Frobenius norm `|X^T Y|^2` is
    `sum((X X^T) * (Y Y^T))`, over n x n Gram matrices (n = 128 pixels, p = 512 projector outputs).
    Three n x p x n products per prefix instead of seven p x n x p (~9x fewer FLOPs, and no
    difference of two near-equal p x p matrices)."""
    n = za.shape[0]
    sa, sb = _standardise(za), _standardise(zb)
    diagonal = (sa * sb).sum(0) / n  # C_ii of C(za, zb)
    gram_a, gram_b = sa @ sa.T, sb @ sb.T
    squares = (gram_a * gram_b).sum() / n**2  # sum_ij C_ij^2
    loss = (diagonal - 1).pow(2).sum() + config.barlow_lambda * (squares - diagonal.pow(2).sum())
    if zm is None:
        return loss
    residual = _standardise(zm) - alpha * sa - (1 - alpha) * sb[perm]  # standardising commutes with permuting rows
    mix = ((residual @ residual.T) * (gram_a + gram_b)).sum() / n**2
    return loss + config.mixup_weight * config.barlow_lambda * mix


class EncoderWorkers:
    """Threads that each run the encoder on one share of every view's pixels, forward and backward,
    with the intra-op threads split between them, instead of every operation split across all threads.

    On 2 CPUs this is faster alone and far faster beside other work: the demo preset's operations are
    small (a 5120 x 128 activation), so two threads of one operation spend much of their time at its
    barrier, waiting for whichever is descheduled. Measured (`bench/pretrain.py`, batch 128, 2-core
    EPYC): 0.51 against 0.55 s a step alone, 0.85 against 1.54 s beside one busy process. The encoder
    has no batch-dependent layer (LayerNorm is per step, attention and pooling per pixel), so a share
    gives exactly the embeddings of its pixels; the projectors' BatchNorm and the loss, which see the
    whole batch, run on the calling thread."""

    def __init__(self, count: int, threads: int):
        self.count, self.threads = count, threads
        # each thread's own team set before its first operation (why: TesseraEncoder.embed_inputs)
        self.pool = ThreadPoolExecutor(count, thread_name_prefix="pretrain", initializer=torch.set_num_threads,
                                       initargs=(threads,))

    def map(self, fn: Callable, items: list) -> list:
        with _intra_op_threads(self.threads):
            return list(self.pool.map(fn, items))

    def close(self) -> None:
        self.pool.shutdown()


def training_workers(device: torch.device, config: ModelConfig, bf16: bool) -> EncoderWorkers | None:
    """Two workers on a CPU with at least two threads granted (`torch.get_num_threads`, which
    `ComputeDevice.resolve` sets to the CPUs granted), each with half of them. Not on GPUs, not under
    bf16 autocast (its state is per thread), and not with dropout: workers drawing masks from the one
    generator side by side would make a run depend on thread timing."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or bf16 or config.dropout > 0 or threads < 2:
        return None
    return EncoderWorkers(2, threads // 2)


@contextlib.contextmanager
def _intra_op_threads(count: int) -> Iterator[None]:
    """The process-wide intra-op thread count at `count` while workers run (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _WorkerGraphs(torch.autograd.Function):
    """Joins the workers' encoder graphs to the loss computed on the calling thread. Its inputs are the
    encoder's parameters, its outputs each view's embeddings (the workers' shares concatenated); its
    backward runs each worker's graph back in that worker and sums the parameter gradients in worker
    order, so the result does not depend on which finishes first."""

    @staticmethod
    def forward(ctx, workers: EncoderWorkers, parts: list[list[torch.Tensor]], *params: torch.Tensor):
        ctx.workers, ctx.parts, ctx.params = workers, parts, params
        ctx.sizes = [len(part[0]) for part in parts]
        return tuple(torch.cat([part[v].detach() for part in parts]) for v in range(len(parts[0])))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        params = ctx.params
        edges = np.cumsum([0, *ctx.sizes])

        def worker(i: int) -> tuple:
            part = ctx.parts[i]
            return torch.autograd.grad(part, params, [g[edges[i]:edges[i + 1]] for g in grads], allow_unused=True)

        shares = ctx.workers.map(worker, list(range(len(ctx.parts))))
        ctx.parts = None  # the workers' graphs are freed
        summed = []
        for per_param in zip(*shares):
            present = [g for g in per_param if g is not None]
            summed.append(sum(present[1:], present[0]) if present else None)
        return (None, None, *summed)


def _encode_views(encoder: TesseraEncoder, views: list[tuple[torch.Tensor, ...]],
                  workers: EncoderWorkers | None) -> list[torch.Tensor]:
    """The encoder's embeddings of each view's (s2, s2_doy, s1, s1_doy): in this thread, or split by
    pixels among `workers` (the same values; see `EncoderWorkers`)."""
    if workers is None:
        return [encoder(*view) for view in views]
    n = len(views[0][0])
    edges = np.linspace(0, n, workers.count + 1).astype(int)
    grad = torch.is_grad_enabled()

    def worker(i: int) -> list[torch.Tensor]:
        with torch.set_grad_enabled(grad):  # grad mode is per thread
            return [encoder(*(x[edges[i]:edges[i + 1]] for x in view)) for view in views]

    parts = workers.map(worker, [i for i in range(workers.count) if edges[i + 1] > edges[i]])
    if not grad:
        return [torch.cat([part[v] for part in parts]) for v in range(len(views))]
    params = [p for p in encoder.parameters() if p.requires_grad]
    outputs = _WorkerGraphs.apply(workers, parts, *params)
    return list(outputs)


def _batch_loss(encoder: TesseraEncoder, head: Projectors, views: list[torch.Tensor], alpha: float,
                perm: torch.Tensor, config: PretrainConfig, autocast: torch.autocast,
                workers: EncoderWorkers | None = None) -> torch.Tensor:
    """One step's loss: the encoder and projectors on view a, view b and their mix (view a's days
    of year), each projector prefix's Barlow Twins and mixup terms summed."""
    a2, a2d, a1, a1d, b2, b2d, b1, b1d = views
    inputs = [(a2, a2d, a1, a1d), (b2, b2d, b1, b1d)]
    if config.mixup_weight > 0:
        inputs.append((alpha * a2 + (1 - alpha) * b2[perm], a2d, alpha * a1 + (1 - alpha) * b1[perm], a1d))
    with autocast:  # the networks in bf16 where available; the correlations below in fp32
        za, zb, *zm = (head(z) for z in _encode_views(encoder, inputs, workers))
    zm = zm[0] if zm else [None] * len(za)
    # in bf16 the correlation matrix keeps ~3 significant digits and the loss moves in steps of 0.25
    return sum(_loss(a, b, m, alpha, perm, config) for a, b, m in zip(za, zb, zm))


def _optimizer(modules: list[nn.Module], config: PretrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where PyTorch has it (CPU and CUDA): the same update, but the
    per-tensor loop of the default implementation cost 24 ms a step on the demo preset's 98 tensors
    against 1.8 ms fused (2-core EPYC)."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(_parameter_groups(modules, config.weight_decay), lr=config.learning_rate, fused=fused)


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
    optimizer = _optimizer([encoder, head], config, device)
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
    bf16 = training_precision(device, config.precision) == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    encoder.train()
    head.train()
    workers = training_workers(device, model_config, bf16)
    order = rng.permutation(len(pool))
    cursor = (step * config.batch_size) % len(pool)
    started = time.perf_counter()
    try:
        while step < config.steps:
            if cursor + config.batch_size > len(order):
                order, cursor = rng.permutation(len(pool)), 0
            index = order[cursor:cursor + config.batch_size]
            cursor += config.batch_size
            views = _views(pool, index, model_config.sample_steps, rng, encoder.normalisation, device)
            alpha = float(rng.beta(1.0, 1.0))
            perm = torch.from_numpy(rng.permutation(len(index))).to(device)
            loss = _batch_loss(encoder, head, views, alpha, perm, config, autocast, workers)
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
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "step": step, "losses": losses,
                    "seconds": seconds + time.perf_counter() - started,
                })
    finally:
        if workers is not None:
            workers.close()
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
