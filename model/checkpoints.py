"""Reading TESSERA checkpoints of every family, and the identity of the weights they hold.

The family is told from the file's contents (reference/tessera_v2.md): a v2 student holds `args`
and `model`; v1.x holds `model_state` or `model_state_dict`, where v1.1 has the MLP fusion head
(`dim_reducer.4.weight`) and v1.0 a single 128 x 1024 `dim_reducer.0.weight`; our own files say
`format: tessera-platform/1`. v2 students are built from their `args`, never from a size name,
and the tensor shapes are checked against them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import PRESETS, ModelConfig, Normalisation, preset, preset_normalisation, v2_student_config
from model.errors import CheckpointError

CHECKPOINT_FORMAT = "tessera-platform/1"
_IGNORED_PREFIXES = ("projector.", "segmented_matryoshka_projector.")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass(frozen=True)
class EncoderIdentity:
    """What makes two sets of embeddings comparable: the same family, architecture, input
    normalisation and weights. `id` is filename-safe; checkpoints are kept under it."""

    family: str
    architecture: str
    normalisation: str
    weights_sha256: str

    @property
    def id(self) -> str:
        return f"{self.architecture}.{self.normalisation}.{self.weights_sha256[:12]}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self) | {"id": self.id}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, shapes and float32 values, so the same weights have the same digest
    whichever file (official or re-saved) they came from."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class LoadedCheckpoint:
    config: ModelConfig
    normalisation: Normalisation
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any]


def read_checkpoint(path: str | Path, data_source: str | None = None, trusted: bool = False) -> LoadedCheckpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # pickle errors come in many types
        hint = "" if trusted else " (if it holds pickled objects and you trust it, pass trusted=True)"
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} is a {type(payload).__name__}, expected a dict")
    metadata: dict[str, Any] = {"path": str(path)}
    if payload.get("format") == CHECKPOINT_FORMAT:
        config = ModelConfig.from_dict(payload["config"])
        norm = Normalisation.from_dict(payload["normalisation"])
        return LoadedCheckpoint(config, norm, extract_state_dict(payload, path), dict(payload.get("training", {})) | metadata)
    if "arch" in payload and "encoder_state_dict" in payload:
        raise CheckpointError(f"{path} is the TESSERA v2 2B teacher (research only, 2 billion parameters per pixel); "
                              "use one of the v2 students (nano, small, medium, large)")
    if "model" in payload and isinstance(payload["model"], dict) and "model_state" not in payload:
        state = _clean(payload["model"])
        config = _v2_config(payload.get("args"), state, path)
        norm = preset_normalisation(config, data_source)
        metadata |= {"source": "official", "family": "v2", "args": _plain(payload.get("args"))}
        return LoadedCheckpoint(config, norm, state, metadata)
    state = extract_state_dict(payload, path)
    width = _rows(state, "s2_backbone.embedding.0.weight", path)
    if "dim_reducer.4.weight" in state:
        config = preset("tessera-v1.1")
        if width != config.width:
            raise CheckpointError(f"{path} looks like TESSERA v1.1 (MLP fusion head) but its width is {width}, "
                                  f"not {config.width}")
        norm = preset_normalisation(config, data_source)
    else:
        config = preset("tessera-v1")
        norm = preset_normalisation(config, None)
    metadata |= {"source": "official", "family": config.family}
    return LoadedCheckpoint(config, norm, state, metadata)


def _plain(value: Any) -> Any:
    """The JSON-friendly part of a student's training arguments, for the partition metadata."""
    if not isinstance(value, dict):
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()
            if isinstance(v, (str, int, float, bool, type(None), list, tuple))}


def _rows(state: dict[str, torch.Tensor], key: str, path: Path) -> int:
    if key not in state:
        raise CheckpointError(f"checkpoint {path} has no {key}: not a TESSERA encoder")
    return int(state[key].shape[0])


def _v2_config(args: Any, state: dict[str, torch.Tensor], path: Path) -> ModelConfig:
    """The student's shapes from `args` (reference defaults for missing fields), checked against
    the tensors so a wrong `args` is an error naming the field, never a silently wrong model."""
    config = v2_student_config(args if isinstance(args, dict) else None, "tessera-v2-student")
    width = _rows(state, "s2_backbone.embedding.0.weight", path)
    qk = any(".q_proj." in k for k in state)
    segment = "" if qk else "layers."
    layer_ids = {k.split(".")[2 + (not qk)] for k in state if k.startswith(f"s2_backbone.transformer_encoder.{segment}")}
    found = {
        "latent_dim": width // 4,
        "num_layers": len(layer_ids),
        "dim_feedforward": _rows(state, f"s2_backbone.transformer_encoder.{segment}0.linear1.weight", path),
        "repr_dim": _rows(state, "dim_reducer.4.weight", path),
        "enable_qk_norm": qk,
    }
    expected = {"latent_dim": config.latent_dim, "num_layers": config.layers, "dim_feedforward": config.feedforward,
                "repr_dim": config.output_dim, "enable_qk_norm": config.qk_norm}
    wrong = [f"{k}={expected[k]} but the tensors say {found[k]}" for k in found if found[k] != expected[k]]
    if qk:
        head = _rows(state, "s2_backbone.transformer_encoder.0.q_norm.weight", path)
        if width // head != config.heads:
            wrong.append(f"nhead={config.heads} but q_norm has width {head} (nhead {width // head})")
    if wrong:
        source = "its args" if isinstance(args, dict) and args else "the reference defaults (the file has no args)"
        raise CheckpointError(f"v2 student {path}: {source} disagree with its tensors: " + "; ".join(wrong))
    name = next((n for n, p in PRESETS.items() if n.startswith("tessera-v2-") and replace(p, name=config.name) == config),
                config.name)
    return replace(config, name=name)


def extract_state_dict(payload: dict[str, Any], path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    for key in ("model_state", "model_state_dict", "state_dict"):
        if key in payload and isinstance(payload[key], dict):
            return _clean(payload[key])
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return _clean(payload)
    raise CheckpointError(
        f"checkpoint {path} has no model_state, model_state_dict (v1.x) or args + model (v2 student) "
        f"(top-level keys: {', '.join(sorted(map(str, payload))[:10])})"
    )


def _clean(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Strip compile/DataParallel prefixes and drop training-only heads."""
    cleaned = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(_IGNORED_PREFIXES):
            continue
        cleaned[key] = value
    return cleaned


def matryoshka_dims(metadata: dict[str, Any], config: ModelConfig) -> tuple[int, ...]:
    """The prefixes an encoder was trained to make usable alone: an official student's
    `args.matryoshka_dims` (a comma-separated string in the reference; a list accepted too, default
    16,32,64,128), what our pretraining recorded, else only the whole vector."""
    if config.family != "v2":
        return (config.embedding_dim,)
    if "args" in metadata:
        value = (metadata.get("args") or {}).get("matryoshka_dims") or "16,32,64,128"
    else:
        value = metadata.get("matryoshka_dims") or [config.embedding_dim]
    items = value.split(",") if isinstance(value, str) else value
    return tuple(int(v) for v in np.atleast_1d(items))
