"""Model presets and TESSERA's input normalisation constants (from the public v1.0 reference)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

S2_BAND_COUNT = 10
S1_BAND_COUNT = 2
EMBEDDING_DIM = 128

S2_MEAN = np.array([1711.0938, 1308.8511, 1546.4543, 3010.1293, 3106.5083,
                    2068.3044, 2685.0845, 2931.5889, 2514.6928, 1899.4922], np.float32)
S2_STD = np.array([1926.1026, 1862.9751, 1803.1792, 1741.7837, 1677.4543,
                   1888.7862, 1736.3090, 1715.8104, 1514.5199, 1398.4779], np.float32)
S1_MEAN = np.array([5484.0407, 3003.7812], np.float32)
S1_STD = np.array([1871.2334, 1726.0670], np.float32)


@dataclass(frozen=True)
class Normalisation:
    """Per-band z-score constants; carried in our checkpoints so a model trained elsewhere keeps its own."""

    s2_mean: tuple[float, ...] = tuple(S2_MEAN.tolist())
    s2_std: tuple[float, ...] = tuple(S2_STD.tolist())
    s1_mean: tuple[float, ...] = tuple(S1_MEAN.tolist())
    s1_std: tuple[float, ...] = tuple(S1_STD.tolist())


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the encoder. `latent_dim * 4` is the transformer width, as in the reference code."""

    name: str
    latent_dim: int = 128
    heads: int = 4
    layers: int = 4
    feedforward: int = 4096
    dropout: float = 0.1
    embedding_dim: int = EMBEDDING_DIM
    sample_steps: int = 40
    projector_dims: tuple[int, ...] = field(default=(16384,) * 6)

    @property
    def width(self) -> int:
        return self.latent_dim * 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["projector_dims"] = tuple(data.get("projector_dims", ()))
        return cls(**data)


PRESETS: dict[str, ModelConfig] = {
    # Exactly TESSERA v1.0: 45,828,226 parameters without the projector.
    "tessera-v1": ModelConfig("tessera-v1"),
    # Pretrains in minutes on 2 CPU cores; the demo default. No dropout: on a CPU drawing the
    # dropout masks costs a third of a training step, and a model this small does not need it.
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
