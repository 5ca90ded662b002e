"""PNG previews for the Dagster UI, which shows images only as Markdown with an inline data URI."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import rasterio
from dagster import MetadataValue

from resources.scenes.sentinel import tessera_units_to_db
from resources.storage.data_root import EmbeddingPartition, RawPartition

PREVIEW_MAX_PX = 384


def _pyplot():
    """matplotlib without a display, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
    plt.imsave(path, image)
    return path


THUMBNAIL_PX = 160


def markdown_image(path: Path, alt: str = "preview") -> MetadataValue:
    """A thumbnail of a PNG inline (at most THUMBNAIL_PX a side, a few KB): the run storage keeps
    every materialisation's metadata, so full-size images would bloat it over thousands of
    partitions; the full image is a file beside its partition, linked separately."""
    import io

    from PIL import Image

    image = Image.open(path)
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def preview_shape(height: int, width: int, max_px: int = PREVIEW_MAX_PX) -> tuple[int, int]:
    factor = max(1, int(np.ceil(max(height, width) / max_px)))
    return max(1, height // factor), max(1, width // factor)


def median_composite(partition: RawPartition, bands: tuple[int, ...], max_px: int = PREVIEW_MAX_PX) -> np.ndarray:
    """Per-pixel median over valid observations of some bands, read at most `max_px` a side."""
    grid = partition.grid
    h, w = preview_shape(grid.height, grid.width, max_px)
    stack = np.full((len(partition.observations), h, w, len(bands)), np.nan, np.float32)
    for t, obs in enumerate(partition.observations):
        with partition.folder.open(obs["file"]) as src:
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


def pca_false_colour(vectors: np.ndarray, sample: int = 20000, seed: int = 0) -> np.ndarray:
    """First three principal components of embeddings (h, w, d) as RGB, the usual way to look at
    them: pixels of similar embeddings get similar colours. No-data (NaN) pixels stay black."""
    h, w, d = vectors.shape
    flat = vectors.reshape(-1, d).astype(np.float32)
    ok = np.isfinite(flat).all(axis=1)
    rgb = np.full((h * w, 3), np.nan, np.float32)
    if ok.sum() >= 3:
        rng = np.random.default_rng(seed)
        rows = np.nonzero(ok)[0]
        fit = flat[rng.choice(rows, size=min(sample, len(rows)), replace=False)]
        mean = fit.mean(axis=0)
        _, _, components = np.linalg.svd(fit - mean, full_matrices=False)
        rgb[ok] = (flat[ok] - mean) @ components[:3].T
    return stretch(rgb.reshape(h, w, 3))


def loss_curve(losses: list[float], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1, color="0.6", label="step")
    if len(losses) >= 10:
        k = max(5, len(losses) // 20)
        ax.plot(np.arange(k, len(losses) + 1), np.convolve(losses, np.ones(k) / k, mode="valid"), lw=2, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss", title=title, yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def embedding_preview(folder: Path, path: Path) -> Path:
    """PCA false colour of an embeddings partition, read at preview resolution."""
    partition = EmbeddingPartition(folder)
    grid = partition.grid
    vectors, scales, _ = partition.read_overview(*preview_shape(grid.height, grid.width))
    return save_png(pca_false_colour(vectors.astype(np.float32) * scales[..., None]), path)


def raster_png(raster: Path, path: Path, cmap: str, label: str, vmin: float | None = None, vmax: float | None = None,
               marker: tuple[int, int] | None = None, outline: np.ndarray | None = None) -> Path:
    """A one-band raster in a perceptual colour map with a colour bar; `marker` (row, col) marked,
    `outline` (a boolean mask on the raster's grid) drawn as contours."""
    plt = _pyplot()
    with rasterio.open(raster) as src:
        h, w = preview_shape(src.height, src.width)
        data = src.read(1, out_shape=(h, w)).astype(np.float32)
        factor = src.height / h
    finite = np.isfinite(data).any()
    fig, ax = plt.subplots(figsize=(5, 5 * h / w + 0.4), dpi=100)
    shown = ax.imshow(data, cmap=cmap, vmin=vmin if vmin is not None else (np.nanpercentile(data, 2) if finite else 0),
                      vmax=vmax if vmax is not None else (np.nanpercentile(data, 98) if finite else 1))
    if marker is not None:
        ax.plot(marker[1] / factor, marker[0] / factor, marker="+", color="cyan", markersize=14, mew=2)
    if outline is not None and outline.any():
        ax.contour(np.linspace(0, w - 1, outline.shape[1]), np.linspace(0, h - 1, outline.shape[0]),
                   outline.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, fraction=0.046, label=label)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def similarity_png(raster: Path, path: Path, marker: tuple[int, int] | None = None) -> Path:
    """A similarity raster (dark: unlike, bright: alike), the query marked."""
    with rasterio.open(raster) as src:
        data = src.read(1, out_shape=preview_shape(src.height, src.width))
    low = float(np.nanpercentile(data, 2)) if np.isfinite(data).any() else 0.0
    return raster_png(raster, path, "magma", "cosine similarity", low, 1.0, marker)


def learning_curve_png(curves: dict[str, list[dict]], path: Path, head: str) -> Path:
    """Macro-F1 against labels per class, with the spread over draws, one line per feature set."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, curve in curves.items():
        labels = [str(p["k"]) for p in curve]
        mean = np.array([p["macro_f1"] for p in curve])
        std = np.array([p["macro_f1_std"] for p in curve])
        x = np.arange(len(curve))
        ax.plot(x, mean, marker="o", label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_xticks(x, labels)
    ax.set(xlabel="labelled pixels per class", ylabel="macro-F1 (held out)", ylim=(0, 1), title=f"k-shot, {head} head")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def regression_curve_png(curves: dict[str, list[dict]], path: Path, head: str, unit: str) -> Path:
    """R² against labelled pixels, with the spread over draws, one line per feature set, and the R²
    a map of classes alone gives (each sample its class's mean), where known."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, curve in curves.items():
        x = np.arange(len(curve))
        mean, std = np.array([p["r2"] for p in curve]), np.array([p["r2_std"] for p in curve])
        ax.plot(x, mean, marker="o", label=name)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_xticks(x, [str(p["n"]) for p in curve])
    reference = curves.get("embeddings", [])
    if any("class_mean_r2" in p for p in reference):
        ax.plot(np.arange(len(reference)), [p.get("class_mean_r2", np.nan) for p in reference], ls="--", color="grey",
                label="class mean only")
    ax.set(xlabel="labelled pixels", ylabel="R² (held out)", ylim=(min(0.0, ax.get_ylim()[0]), 1),
           title=f"few-shot regression of {unit}, {head} head")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def class_map_png(raster: Path, class_names: list[str], path: Path) -> Path:
    """The class raster in categorical colours with a legend."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    with rasterio.open(raster) as src:
        h, w = preview_shape(src.height, src.width)
        data = src.read(1, out_shape=(h, w))
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")(np.arange(len(class_names)))
    rgb = np.zeros((h, w, 3))
    for i, colour in enumerate(colours):
        rgb[data == i + 1] = colour[:3]
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=100)
    ax.imshow(rgb)
    ax.set_axis_off()
    ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(colours, class_names)], loc="center left",
              bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.savefig(path, bbox_inches="tight")  # the legend sits outside the axes: keep all of it
    plt.close(fig)
    return path
