"""PNG previews for the Dagster UI, which shows images only as Markdown with an inline data URI."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import rasterio
from dagster import MetadataValue

from resources.sentinel import tessera_units_to_db
from resources.storage import RawPartition

PREVIEW_MAX_PX = 384


def stretch(rgb: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """Percentile stretch per channel to uint8; NaN becomes black."""
    out = np.zeros(rgb.shape, np.uint8)
    for c in range(rgb.shape[-1]):
        channel = rgb[..., c]
        finite = np.isfinite(channel)
        if not finite.any():
            continue
        lo, hi = np.percentile(channel[finite], [low, high])
        scaled = (channel - lo) / max(hi - lo, 1e-9)
        out[..., c] = np.where(finite, np.clip(scaled, 0, 1) * 255, 0).astype(np.uint8)
    return out


def save_png(image: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, image)
    return path


def markdown_image(path: Path, alt: str = "preview") -> MetadataValue:
    encoded = base64.b64encode(Path(path).read_bytes()).decode()
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def _decimated_shape(height: int, width: int) -> tuple[int, int]:
    factor = max(1, int(np.ceil(max(height, width) / PREVIEW_MAX_PX)))
    return max(1, height // factor), max(1, width // factor)


def median_composite(partition: RawPartition, bands: tuple[int, ...]) -> np.ndarray:
    """Per-pixel median over valid observations of some bands, read at preview resolution only."""
    grid = partition.grid
    h, w = _decimated_shape(grid.height, grid.width)
    stack = np.full((len(partition.observations), h, w, len(bands)), np.nan, np.float32)
    for t, obs in enumerate(partition.observations):
        with rasterio.open(partition.folder / obs["file"]) as src:
            data = src.read([b + 1 for b in bands], out_shape=(len(bands), h, w)).astype(np.float32)
            valid = src.read_masks(1, out_shape=(h, w)) > 0
        data[:, ~valid] = np.nan
        stack[t] = np.moveaxis(data, 0, -1)
    if len(stack) == 0:
        return np.full((h, w, len(bands)), np.nan, np.float32)
    return np.nanmedian(stack, axis=0)


def s2_true_colour(partition: RawPartition, path: Path) -> Path:
    """Median of clear observations in B04, B03, B02 (indices 0, 2, 1 in TESSERA order)."""
    return save_png(stretch(median_composite(partition, (0, 2, 1))), path)


def s1_composite(partition: RawPartition, path: Path) -> Path:
    """The usual dual-pol false colour: VV dB, VH dB, VV - VH dB as red, green, blue."""
    db = tessera_units_to_db(median_composite(partition, (0, 1)))
    rgb = np.stack([db[..., 0], db[..., 1], db[..., 0] - db[..., 1]], axis=-1)
    return save_png(stretch(rgb), path)
