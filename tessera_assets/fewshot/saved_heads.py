"""The file a fitted head (classifier or regressor) is kept in, with what came with it (curves,
encoder id, held-out predictions): torch's pickle container, `classifier.pt` / `regressor.pt`, the
format of the files already stored. torch is imported when a head is saved or loaded, not when
the code location loads, which every Dagster run's process does first."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_head(saved: dict[str, Any], path: Path) -> None:
    import torch

    torch.save(saved, path)


def load_head(path: Path | str) -> dict[str, Any]:
    """The saved dict; pickled scikit-learn objects, so only files this platform wrote."""
    import torch

    return torch.load(path, weights_only=False)
