"""Where products live on disk, and the one way every partition is written: into a temporary
folder that is moved into place only when complete, so readers never see half a partition and a
failed run leaves the previous result whole. Replacing a partition swaps the two folders in one
step where the system allows (Linux), so a reader never finds the partition missing; in-progress
folders are hidden (`.name-tmp-...`) and `TesseraStorage.partitions` never lists them."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from dagster import ConfigurableResource
from rasterio.crs import CRS
from rasterio.windows import Window

from model.encoder import TesseraEncoder
from model.quantise import dequantise
from resources.errors import PartitionNotMaterialisedError
from resources.regions import RegionGrid

INDEX_FILE = "index.json"
ENCODER_CHECKPOINT = "encoder.pt"
CURRENT_ENCODER = "current.json"
ENCODER_FILE = "encoder.json"  # in an embeddings partition: the identity of the encoder that made it


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where
    the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def is_published(folder: Path) -> bool:
    """A partition folder readers may use: not an in-progress or replaced one (hidden names)."""
    return folder.is_dir() and not folder.name.startswith(".")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(final: Path) -> None:
    """Folders that writers of `final` killed on this machine left behind (their pid is in the name)."""
    pattern = re.compile(rf"\.{re.escape(final.name)}-(?:tmp|old)-(\d+)-[0-9a-f]{{8}}")
    for folder in final.parent.glob(f".{final.name}-*"):
        match = pattern.fullmatch(folder.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `final`; on success it replaces `final`, on error it vanishes
    (and what a killed writer left is removed by the next one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    tmp = final.with_name(f".{final.name}-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists() and _exchange(tmp, final):
            return  # the old partition is now at `tmp`, removed below
        old = final.with_name(f".{final.name}-old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TesseraStorage(ConfigurableResource):
    """The data root: raw partitions, embeddings, the demo catalog."""

    root: str = ".tessera/data"

    def path(self, *parts: str) -> Path:
        return Path(self.root).joinpath(*parts)

    def raw_dir(self, sensor: str, year: int, region: str) -> Path:
        return self.path("raw", sensor, str(year), region)

    def embeddings_dir(self, year: int, region: str) -> Path:
        return self.path("embeddings", str(year), region)

    def model_path(self, name: str) -> Path:
        return self.path("models", name)

    def encoder_dir(self, encoder_id: str) -> Path:
        """One folder per encoder identity: a checkpoint is never overwritten by another encoder."""
        return self.path("models", encoder_id)

    def keep_encoder(self, encoder: TesseraEncoder) -> Path:
        """The checkpoint under its identity (written once: the same id means the same weights)."""
        checkpoint = self.encoder_dir(encoder.identity.id) / ENCODER_CHECKPOINT
        if not checkpoint.exists():
            encoder.save(checkpoint)
        return checkpoint

    def publish_encoder(self, encoder: TesseraEncoder, extra: dict[str, Any] | None = None) -> Path:
        """Keep the checkpoint and make it current with one small pointer write (a temporary file
        renamed over the pointer), so readers see the old or the new encoder, never neither."""
        identity = encoder.identity
        checkpoint = self.keep_encoder(encoder)
        pointer = self.path("models", CURRENT_ENCODER)
        tmp = pointer.with_name(f".{pointer.name}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(identity.to_dict() | {"checkpoint": str(checkpoint)} | (extra or {}), indent=1))
        tmp.replace(pointer)
        return checkpoint

    def current_encoder_id(self) -> str:
        pointer = self.path("models", CURRENT_ENCODER)
        if not pointer.exists():
            raise PartitionNotMaterialisedError(f"no encoder yet (no {pointer}): materialise encoder_checkpoint first")
        return json.loads(pointer.read_text())["id"]

    def load_encoder(self, encoder_id: str | None = None) -> TesseraEncoder:
        """The current encoder, or a kept one by id."""
        encoder_id = encoder_id or self.current_encoder_id()
        checkpoint = self.encoder_dir(encoder_id) / ENCODER_CHECKPOINT
        if not checkpoint.exists():
            kept = sorted(p.parent.name for p in self.path("models").glob(f"*/{ENCODER_CHECKPOINT}"))
            raise PartitionNotMaterialisedError(f"no kept encoder {encoder_id!r} (kept: {', '.join(kept) or 'none'})")
        return TesseraEncoder.from_checkpoint(checkpoint)

    def open_embeddings(self, year: int, region: str) -> "EmbeddingPartition":
        folder = self.embeddings_dir(year, region)
        if not (folder / SCALES_FILE).exists():
            raise PartitionNotMaterialisedError(
                f"embeddings for year {year}, region {region!r} are not materialised (looked in {folder})"
            )
        return EmbeddingPartition(folder)

    def partitions(self, *product: str) -> list[tuple[int, str]]:
        """(year, region) of every published partition of a product (`raw/s2`, `embeddings`, ...),
        never a hidden in-progress or replaced folder."""
        return sorted((int(folder.parent.name), folder.name) for folder in self.path(*product).glob("*/*")
                      if is_published(folder) and folder.parent.name.isdigit())

    def region_folders(self, region: str) -> list[Path]:
        """Every partition folder of a region, all years and products (`.../<year>/<region>`)."""
        products = [("raw", "s2"), ("raw", "s1"), ("embeddings",), ("similarity",), ("land_cover",)]
        return sorted(self.path(*product, str(year), name) for product in products
                      for year, name in self.partitions(*product) if name == region)

    def raw_partitions(self) -> list[tuple[int, str]]:
        """(year, region) of every raw partition materialised for both sensors."""
        return [(year, region) for year, region in self.partitions("raw", "s2")
                if (self.raw_dir("s2", year, region) / INDEX_FILE).exists()
                and (self.raw_dir("s1", year, region) / INDEX_FILE).exists()]

    def observation_counts(self, sensor: str, year: int, region: str, shape: tuple[int, int]) -> np.ndarray:
        """Valid observations per pixel of the raw partition; zeros (not known) where there is none,
        as for embeddings read from official tiles."""
        try:
            return self.open_raw(sensor, year, region).valid_count()
        except PartitionNotMaterialisedError:
            return np.zeros(shape, np.uint16)

    def open_raw(self, sensor: str, year: int, region: str) -> "RawPartition":
        folder = self.raw_dir(sensor, year, region)
        if not (folder / INDEX_FILE).exists():
            raise PartitionNotMaterialisedError(
                f"{sensor}_raw for year {year}, region {region!r} is not materialised (looked in {folder})"
            )
        return RawPartition(folder)


def grid_to_json(grid: RegionGrid) -> dict[str, Any]:
    return {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6], "width": grid.width, "height": grid.height}


def grid_from_json(data: dict[str, Any]) -> RegionGrid:
    return RegionGrid(CRS.from_string(data["crs"]), Affine(*data["transform"]), data["width"], data["height"])


@dataclass
class RawPartition:
    """A materialised raw partition: one GeoTIFF per observation (bands + GDAL valid mask), and an index."""

    folder: Path

    @property
    def index(self) -> dict[str, Any]:
        if not hasattr(self, "_index"):
            self._index = json.loads((self.folder / INDEX_FILE).read_text())
        return self._index

    @property
    def grid(self) -> RegionGrid:
        return grid_from_json(self.index["grid"])

    @property
    def observations(self) -> list[dict[str, Any]]:
        return self.index["observations"]

    @property
    def doy(self) -> np.ndarray:
        return np.array([o["doy"] for o in self.observations], np.int16)

    def read_block(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Values (T, bands, h, w) and valid mask (T, h, w) of every observation in a window."""
        count = len(self.index["bands"])
        values = np.zeros((len(self.observations), count, int(window.height), int(window.width)), self.index["dtype"])
        valid = np.zeros((len(self.observations), int(window.height), int(window.width)), bool)
        for t, obs in enumerate(self.observations):
            with rasterio.open(self.folder / obs["file"]) as src:
                values[t] = src.read(window=window)
                valid[t] = src.read_masks(1, window=window) > 0
        return values, valid

    def valid_count(self) -> np.ndarray:
        with rasterio.open(self.folder / "valid_count.tif") as src:
            return src.read(1)


EMBEDDINGS_FILE = "embeddings.tif"
SCALES_FILE = "scales.tif"


class EmbeddingWriter:
    """Writes an embeddings partition block by block: int8 vectors (one band per dimension, pixel
    interleaved so a pixel's vector is contiguous) and float32 per-pixel scales (NaN = no data)."""

    def __init__(self, folder: Path, grid: RegionGrid, dim: int):
        self._vectors = rasterio.open(folder / EMBEDDINGS_FILE, "w",
                                      **grid.geotiff_profile(count=dim, dtype="int8", interleave="pixel"))
        self._scales = rasterio.open(folder / SCALES_FILE, "w", **grid.geotiff_profile(
            count=1, dtype="float32", nodata=float("nan"), predictor=3))
        self._scales.set_band_description(1, "quantisation scale (NaN: no data)")

    def write(self, window: Window, vectors: np.ndarray, scales: np.ndarray) -> None:
        """vectors (h, w, dim) int8 and scales (h, w) float32 for one window."""
        self._vectors.write(np.moveaxis(vectors, -1, 0), window=window)
        self._scales.write(scales[None], window=window)

    def close(self) -> None:
        self._vectors.close()
        self._scales.close()


@dataclass
class EmbeddingPartition:
    """A materialised embeddings partition in TESSERA's int8 + scale format, on the region grid."""

    folder: Path

    @property
    def grid(self) -> RegionGrid:
        with rasterio.open(self.folder / SCALES_FILE) as src:
            return RegionGrid(src.crs, src.transform, src.width, src.height)

    @property
    def dim(self) -> int:
        with rasterio.open(self.folder / EMBEDDINGS_FILE) as src:
            return src.count

    @property
    def encoder(self) -> dict[str, Any]:
        """The identity of the encoder that made these vectors (`id` "unknown" for partitions
        written before identities were recorded)."""
        path = self.folder / ENCODER_FILE
        return json.loads(path.read_text()) if path.exists() else {"id": "unknown"}

    @property
    def encoder_id(self) -> str:
        return self.encoder["id"]

    def valid_pixels(self) -> int:
        """Pixels with a vector (finite scale), from the scales alone."""
        with rasterio.open(self.folder / SCALES_FILE) as src:
            return sum(int(np.isfinite(src.read(1, window=w)).sum()) for _, w in src.block_windows(1))

    def read_overview(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray, Affine]:
        """int8 vectors (height, width, dim) and scales of the whole partition read at a reduced size
        (previews, map layers), with the transform of that size."""
        with rasterio.open(self.folder / SCALES_FILE) as src:
            scales = src.read(1, out_shape=(height, width))
            transform = src.transform @ Affine.scale(src.width / width, src.height / height)
        with rasterio.open(self.folder / EMBEDDINGS_FILE) as src:
            vectors = np.moveaxis(src.read(out_shape=(src.count, height, width)), 0, -1)
        return vectors, scales, transform

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """int8 vectors (h, w, dim) and scales (h, w)."""
        with rasterio.open(self.folder / EMBEDDINGS_FILE) as src:
            vectors = np.moveaxis(src.read(window=window), 0, -1)
        with rasterio.open(self.folder / SCALES_FILE) as src:
            scales = src.read(1, window=window)
        return vectors, scales


def write_similarity_raster(partition: EmbeddingPartition, query: np.ndarray, path: Path,
                            block: int = 512) -> dict[str, float]:
    """Cosine similarity of every pixel to `query` as a float32 GeoTIFF (NaN: no data), by blocks."""
    grid = partition.grid
    unit = query / np.linalg.norm(query)
    total = count = above = 0.0
    with rasterio.open(path, "w", **grid.geotiff_profile(count=1, dtype="float32", nodata=float("nan"))) as dst:
        dst.set_band_description(1, "cosine similarity")
        for window in grid.blocks(block):
            q, scales = partition.read(window)
            vectors = q.astype(np.float32)  # the scale cancels in the cosine
            norms = np.linalg.norm(vectors, axis=-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                sim = np.where(np.isfinite(scales) & (norms > 0), vectors @ unit / norms, np.nan).astype(np.float32)
            dst.write(sim[None], window=window)
            ok = np.isfinite(sim)
            total += float(sim[ok].sum())
            count += float(ok.sum())
            above += float((sim[ok] > 0.9).sum())
    return {"mean": total / count if count else float("nan"), "above_0.9": above / count if count else 0.0}


def write_class_map(partition: EmbeddingPartition, predict_proba, classes: int, folder: Path,
                    block: int = 256) -> np.ndarray:
    """`classes.tif` (uint8: 1 + class index, 0 = no data) and `confidence.tif` (float32 max
    probability), block by block; returns the pixel count of each class."""
    grid = partition.grid
    counts = np.zeros(classes, np.int64)
    with rasterio.open(folder / "classes.tif", "w", **grid.geotiff_profile(count=1, dtype="uint8", nodata=0)) as classes_out, \
            rasterio.open(folder / "confidence.tif", "w",
                          **grid.geotiff_profile(count=1, dtype="float32", nodata=float("nan"))) as confidence_out:
        for window in grid.blocks(block):
            q, scales = partition.read(window)
            valid = np.isfinite(scales)
            labels = np.zeros(scales.shape, np.uint8)
            confidence = np.full(scales.shape, np.nan, np.float32)
            if valid.any():
                proba = predict_proba(dequantise(q[valid], scales[valid]))
                labels[valid] = proba.argmax(axis=1) + 1
                confidence[valid] = proba.max(axis=1)
                counts += np.bincount(proba.argmax(axis=1), minlength=classes)
            classes_out.write(labels[None], window=window)
            confidence_out.write(confidence[None], window=window)
    return counts
