"""Architectures of the TESSERA family, their presets, and their input normalisation constants.

Three families share one backbone shape (band MLP, DOY sinusoid, post-norm transformer, pooling,
fusion) and differ in ways that fail silently when confused (`../shared/reference/`):

| family | pooling | fusion head | S1 normalisation | steps per pixel |
|---|---|---|---|---|
| v1.0 | GRU-context attention | Linear(2d, 128) | one pooled set | 40 sampled |
| v1.1 | GRU-context attention | MLP(2d, 4d, 192), first 128 kept | per orbit direction | all, in buckets |
| v2 student | plain attention | MLP(2d, 4d, 128) + LayerNorm | per orbit direction | all, in buckets |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

S2_BAND_COUNT = 10
S1_BAND_COUNT = 2
EMBEDDING_DIM = 128

Family = Literal["v1.0", "v1.1", "v2"]
FAMILIES: tuple[str, ...] = ("v1.0", "v1.1", "v2")
MATRYOSHKA_DIMS = (16, 32, 64, 128)


def _f32(*values: float) -> tuple[float, ...]:
    """Constants as the reference stores them (float32), so z-scores match bit for bit."""
    return tuple(np.array(values, np.float32).tolist())


@dataclass(frozen=True)
class Normalisation:
    """Per-band z-score constants, `z = (x - mean) / (std + 1e-9)` in float32.

    S1 carries one set per orbit direction; v1.0 uses one pooled set for both (the same numbers
    twice). Carried in our checkpoints so a model trained elsewhere keeps its own."""

    name: str
    s2_mean: tuple[float, ...]
    s2_std: tuple[float, ...]
    s1_asc_mean: tuple[float, ...]
    s1_asc_std: tuple[float, ...]
    s1_desc_mean: tuple[float, ...]
    s1_desc_std: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Normalisation":
        if "s1_mean" in data:  # checkpoints written before S1 was split by orbit direction
            data = dict(data, s1_asc_mean=data["s1_mean"], s1_asc_std=data["s1_std"],
                        s1_desc_mean=data["s1_mean"], s1_desc_std=data["s1_std"], name=data.get("name", "v1.0"))
            data.pop("s1_mean"), data.pop("s1_std")
        return cls(**{k: v if k == "name" else tuple(v) for k, v in data.items()})


_V1_S1_MEAN, _V1_S1_STD = _f32(5484.0407, 3003.7812), _f32(1871.2334, 1726.0670)

NORMALISATIONS: dict[str, Normalisation] = {
    "v1.0": Normalisation(
        "v1.0",
        _f32(1711.0938, 1308.8511, 1546.4543, 3010.1293, 3106.5083, 2068.3044, 2685.0845, 2931.5889, 2514.6928, 1899.4922),
        _f32(1926.1026, 1862.9751, 1803.1792, 1741.7837, 1677.4543, 1888.7862, 1736.3090, 1715.8104, 1514.5199, 1398.4779),
        _V1_S1_MEAN, _V1_S1_STD, _V1_S1_MEAN, _V1_S1_STD,
    ),
    "v1.1-mpc": Normalisation(
        "v1.1-mpc",
        _f32(2683.4553, 2223.3630, 2432.0950, 3633.1970, 3602.1755, 3006.4324, 3400.2710, 3515.6392, 2456.9163, 1983.8783),
        _f32(2739.5217, 2846.2993, 2690.8250, 2290.0439, 2088.8970, 2673.1106, 2381.4521, 2229.5225, 1601.0942, 1495.3545),
        _f32(5588.3291, 3025.6270), _f32(1713.4646, 1693.0471), _f32(5552.9683, 2955.0520), _f32(1685.5857, 1677.6414),
    ),
    "v1.1-aws": Normalisation(
        "v1.1-aws",
        _f32(2793.6589, 2356.7776, 2551.0496, 3741.9229, 3713.7844, 3120.1997, 3516.3342, 3637.0342, 2501.0283, 2038.1504),
        _f32(2810.0093, 2933.8835, 2755.6360, 2344.5027, 2145.7986, 2743.9019, 2438.8601, 2286.5977, 1680.7367, 1585.5529),
        _f32(5697.0859, 2838.6687), _f32(1671.3737, 1789.4116), _f32(5759.1367, 2873.2854), _f32(1583.2858, 1747.8390),
    ),
    "v2": Normalisation(
        "v2",
        _f32(1633.0042, 1341.1090, 1539.5536, 3054.8269, 3117.4658, 2004.1648, 2694.7275, 2945.1504, 2266.6079, 1657.3094),
        _f32(1999.4603, 2014.7549, 1929.2201, 1754.2493, 1649.9807, 1936.8988, 1748.6041, 1708.6991, 1207.5250, 1108.6046),
        _f32(5909.3921, 3405.0322), _f32(1507.1750, 1531.2615), _f32(5816.1382, 3277.7576), _f32(1554.6475, 1546.4733),
    ),
}
DEFAULT_NORMALISATION = {"v1.0": "v1.0", "v2": "v2"}  # v1.1 has none: the file does not say mpc or aws


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the encoder. `latent_dim * 4` is the transformer width, as in the reference code."""

    name: str
    family: Family = "v1.0"
    latent_dim: int = 128
    heads: int = 4
    layers: int = 4
    feedforward: int = 4096
    qk_norm: bool = False  # v2 only: separate Q/K/V projections with per-head RMS-normalised Q and K
    dropout: float = 0.1
    output_dim: int = EMBEDDING_DIM  # what the fusion head computes; v1.1 computes 192 and keeps 128
    embedding_dim: int = EMBEDDING_DIM
    sample_steps: int = 40  # v1.0's steps per pixel; also the length of each pretraining view
    max_bucket: int = 256  # v1.1 / v2: the largest bucket of the all-observation selection
    projector_dims: tuple[int, ...] = field(default=(16384,) * 6)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}: choose one of {', '.join(FAMILIES)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if self.qk_norm and self.family != "v2":
            raise ValueError("QK-norm layers exist only in the v2 students")

    @property
    def width(self) -> int:
        return self.latent_dim * 4

    @property
    def architecture(self) -> str:
        """A short, filename-safe description of the shapes, part of the encoder identity."""
        qk = "-qk" if self.qk_norm else ""
        return f"{self.family}-d{self.width}-l{self.layers}-h{self.heads}-f{self.feedforward}-o{self.output_dim}{qk}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["projector_dims"] = tuple(data.get("projector_dims", ()))
        return cls(**data)


def v2_student_config(args: dict | None, name: str = "tessera-v2") -> ModelConfig:
    """A v2 student built from its checkpoint's `args`, with the reference defaults for missing
    fields; fields the reference does not read are ignored."""
    args = dict(args or {})

    def read(key: str, default):
        value = args.get(key)
        return default if value is None else value

    return ModelConfig(
        name, family="v2", latent_dim=int(read("latent_dim", 64)), heads=int(read("nhead", 4)),
        layers=int(read("num_layers", 4)), feedforward=int(read("dim_feedforward", 1024)),
        qk_norm=bool(read("enable_qk_norm", False)), dropout=0.0, output_dim=int(read("repr_dim", EMBEDDING_DIM)),
        embedding_dim=int(read("repr_dim", EMBEDDING_DIM)), max_bucket=int(read("max_seq_len", 256)),
        projector_dims=(1024, 1024),
    )


_V2 = v2_student_config(None)

PRESETS: dict[str, ModelConfig] = {
    # Exactly TESSERA v1.0: 45,828,226 parameters without the projector.
    "tessera-v1": ModelConfig("tessera-v1"),
    # Exactly TESSERA v1.1's inference graph: 57,708,738 parameters.
    "tessera-v1.1": ModelConfig("tessera-v1.1", family="v1.1", latent_dim=192, feedforward=2048, output_dim=192),
    # The v2 students. Only small is the class default; the others reproduce the published parameter
    # counts but are inferred (reference/tessera_v2.md), so official files are always built from `args`.
    "tessera-v2-nano": replace(_V2, name="tessera-v2-nano", latent_dim=16, layers=6, feedforward=512),
    "tessera-v2-small": replace(_V2, name="tessera-v2-small"),
    "tessera-v2-medium": replace(_V2, name="tessera-v2-medium", latent_dim=120, layers=2, feedforward=3840),
    "tessera-v2-large": replace(_V2, name="tessera-v2-large", latent_dim=160, feedforward=2560),
    # The demo default: the v2 student architecture at a size that pretrains in minutes on 2 CPU
    # cores (its attention pooling costs a fraction of v1's GRU). No dropout: on a CPU drawing the
    # masks costs a third of a training step, and a model this small does not need it.
    "tessera-demo": ModelConfig(
        "tessera-demo", family="v2", latent_dim=32, heads=4, layers=2, feedforward=256, dropout=0.0,
        projector_dims=(512, 512, 512),
    ),
    # v1.0's architecture at the demo's size, for comparing families on the demo.
    "tessera-small": ModelConfig(
        "tessera-small", latent_dim=32, heads=4, layers=2, feedforward=256, dropout=0.0,
        projector_dims=(512, 512, 512),
    ),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)}") from None


def preset_normalisation(config: ModelConfig, data_source: str | None = None) -> Normalisation:
    """The constants a preset trains or runs with. v1.1 needs the data source its weights were
    trained on (`mpc` or `aws`), which no file records; the other families have one set and ignore it."""
    if config.family == "v1.1":
        if data_source not in ("mpc", "aws"):
            raise ValueError(
                f"TESSERA v1.1 needs its data source, 'mpc' or 'aws' (got {data_source!r}): the MPC and AWS "
                "checkpoints were trained with different normalisation constants and the file does not say which")
        return NORMALISATIONS[f"v1.1-{data_source}"]
    return NORMALISATIONS[DEFAULT_NORMALISATION[config.family]]


def matryoshka_prefix(config: ModelConfig, dimensions: int, trained: tuple[int, ...]) -> int:
    """How many leading dimensions to store: a prefix the encoder was Matryoshka-trained for (the
    v2 students and our v2 presets: 16/32/64), or the whole vector (v1.x dimensions carry no order)."""
    if dimensions not in MATRYOSHKA_DIMS or dimensions > config.embedding_dim:
        raise ValueError(f"dimensions must be one of {MATRYOSHKA_DIMS} (at most {config.embedding_dim}), got {dimensions}")
    if dimensions < config.embedding_dim and config.family != "v2":
        raise ValueError(f"a {dimensions}-d prefix needs a Matryoshka-trained v2 encoder; this is {config.family}, "
                         f"whose {config.embedding_dim} dimensions are only meaningful together")
    if dimensions < config.embedding_dim and dimensions not in trained:
        raise ValueError(f"this encoder was trained to make prefixes of {', '.join(map(str, trained))} dimensions "
                         f"usable, not {dimensions}")
    return dimensions
