"""Where products live on disk, and the one way every partition is written: into a temporary
folder that is moved into place only when complete, so readers never see half a partition and a
failed run leaves the previous result whole. Replacing a partition swaps the two folders in one
step where the system allows (Linux), so a reader never finds the partition missing; in-progress
folders are hidden (`.name-tmp-...`) and `TesseraStorage.partitions` never lists them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from dagster import ConfigurableResource
from pydantic import PrivateAttr
from rasterio.crs import CRS
from rasterio.windows import Window

from model.model_card import model_card
from model.quantise import cosine_to, dequantise
from resources.storage.atomic import atomic_directory, atomic_file, is_published, temporary_sibling
from resources.storage.cog import cogs_in
from resources.storage.product_catalog import (CATALOG_FILE, COLLECTION_FILE, ITEM_FILE, PRODUCTS, Product,
                                               catalog_document, collection_document, item_links, partition_item,
                                               product_of)
from resources.errors import ConfigurationError, PartitionNotMaterialisedError
from resources.storage.object_store import ObjectRoot, is_object_uri, new_version
from resources.regions import RegionGrid

if TYPE_CHECKING:  # torch is imported by the runs that load an encoder, not at every run's start
    from model.encoder import TesseraEncoder

INDEX_FILE = "index.json"
ENCODER_CHECKPOINT = "encoder.pt"
CURRENT_ENCODER = "current.json"  # models/current.json: the pointer to the current encoder
DOWNLOADED = ".downloaded"  # in a cached copy of an object-store version: every file is there
ENCODER_FILE = "encoder.json"  # in an embeddings partition: the identity of the encoder that made it
MODEL_CARD = "MODEL_CARD.md"  # beside each kept checkpoint


class TesseraStorage(ConfigurableResource):
    """The data root: raw partitions, embeddings, checkpoints, maps, few-shot outputs. A local folder
    (partitions replaced by folder swaps) or an object-store prefix such as `s3://bucket/prefix`
    (partitions published by pointer; `resources.storage.object_store`), used through the same calls."""

    root: str = ".tessera/data"
    # object-store settings, LanceDB's keys (aws_endpoint, aws_region, allow_http, ...); keys are
    # best left to the environment (AWS_ACCESS_KEY_ID, ...), which obstore, LanceDB and GDAL all read
    storage_options: dict[str, str] = {}
    # local room beside an object-store root: staging before upload, downloaded checkpoints and
    # raw partitions, the explorer's labels (default: the system temp dir; a folder root is its own)
    cache: str | None = None
    _remote: ObjectRoot | None = PrivateAttr(default=None)

    @property
    def remote(self) -> ObjectRoot | None:
        """The object store, or None for a local root."""
        if self._remote is None and is_object_uri(self.root):
            self._remote = ObjectRoot(self.root, self.storage_options)
        return self._remote

    def path(self, *parts: str) -> Path:
        """A path under a local root (its on-disk layout: `raw/s2/2022/demo/...`)."""
        if self.remote is not None:
            raise ConfigurationError(f"{self.root} is an object store: its partitions are read through folder()")
        return Path(self.root).joinpath(*parts)

    def local(self, *parts: str) -> Path:
        """A local folder (created) for what is not a product: scratch, downloads, the explorer's
        labels. Under a folder root, in it; beside an object-store root, in the cache."""
        base = Path(self.cache or Path(tempfile.gettempdir(), "tessera-cache")) if self.remote is not None \
            else Path(self.root)
        folder = base.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- partitions ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def publish(self, *parts: str | int) -> Iterator[Path]:
        """A fresh local folder to write a partition into; when the block ends without an error its
        GeoTIFFs become COGs (`cog`), its STAC item is written into it (`product_catalog`), and it
        replaces the published partition in one step; else it vanishes and the old one stays."""
        parts = tuple(str(p) for p in parts)
        if self.remote is None:
            with atomic_directory(self.path(*parts)) as tmp:
                yield tmp
                _finish_partition(tmp, parts, "/".join(parts), self._key_of)
        else:
            version = new_version()  # taken at the start: the last run to start wins
            with temporary_sibling(self.local("staging") / "partition") as tmp:
                yield tmp
                _finish_partition(tmp, parts, f"{'/'.join(parts)}/{version}", self._key_of)
                self.remote.publish(tmp, "/".join(parts), version)
        found = product_of(parts)
        if found is not None:
            self.refresh_catalog(found[0])

    def publish_file(self, data: bytes, *parts: str | int, name: str) -> str:
        """A file added to a published partition (or a new one): the partition is published again
        whole, with the file, by the same protocol as every product; returns where the file is."""
        current = self.folder(*parts)
        with self.publish(*parts) as tmp:
            if current is not None and current.store is None:
                shutil.copytree(str(current), tmp, dirs_exist_ok=True)
            elif current is not None:
                current.store.download_prefix(current.key, tmp)
            (tmp / name).write_bytes(data)
        return f"{self.location(*parts)}/{name}"

    def refresh_catalog(self, product: Product | None = None) -> str:
        """Rewrite a product's STAC collection (every product's, without one) from the items of
        its published partitions, and the root catalog; returns where the catalog is. Under a
        local root one writer at a time (a lock file), so a listing never loses a partition."""
        products = [product] if product else list(PRODUCTS)
        with contextlib.ExitStack() as stack:
            if self.remote is None:
                lock = stack.enter_context(open(self.local() / ".catalog-lock", "w"))
                fcntl.flock(lock, fcntl.LOCK_EX)
            for each in products:
                items = []
                for year, region in self.partitions(*each.parts):
                    folder = self.folder(*each.parts, year, region)
                    data = folder.read_bytes(ITEM_FILE) if folder is not None else None
                    if data:
                        key = folder.key if folder.store is not None else "/".join((*each.parts, str(year), region))
                        items.append((key, json.loads(data)))
                relative = f"{'/'.join(each.parts)}/{COLLECTION_FILE}"
                if items or self._has_document(relative):  # an emptied product's collection says so
                    self._write_document(relative, collection_document(each, items))
            listed = [p for p in PRODUCTS if self.partitions(*p.parts)]
            self._write_document(CATALOG_FILE, catalog_document(listed))
        return self.location_of(CATALOG_FILE)

    def _key_of(self, *parts: str) -> str | None:
        """Where a published folder is under the root (with its version on an object store), or None."""
        folder = self.folder(*parts)
        if folder is None:
            return None
        return folder.key if folder.store is not None else "/".join(parts)

    def location_of(self, relative: str) -> str:
        """Where a file under the data root is, for people and clients (a path or a URI)."""
        return self.remote.uri(relative) if self.remote is not None else str(self.path(relative))

    def _has_document(self, relative: str) -> bool:
        return self.remote.exists(relative) if self.remote is not None else self.path(relative).exists()

    def _write_document(self, relative: str, document: dict) -> None:
        body = json.dumps(document, indent=1).encode()
        if self.remote is not None:
            self.remote.put(relative, body)
            return
        with atomic_file(self.path(relative)) as tmp:
            tmp.write_bytes(body)

    def folder(self, *parts: str | int) -> Folder | None:
        """The published partition folder, or None."""
        parts = tuple(str(p) for p in parts)
        if self.remote is None:
            path = self.path(*parts)
            return Folder(str(path)) if is_published(path) else None
        key = self.remote.published("/".join(parts))
        return Folder(self.remote.uri(key), self.remote, key) if key else None

    def partitions(self, *product: str) -> list[tuple[int, str]]:
        """(year, region) of every published partition of a product (`raw/s2`, `embeddings`, ...),
        never a hidden in-progress or replaced folder, never an unpublished version."""
        if self.remote is not None:
            keys = [k.rsplit("/", 2)[-2:] for k in self.remote.published_keys("/".join(product))]
            return sorted((int(year), name) for year, name in keys if year.isdigit())
        return sorted((int(folder.parent.name), folder.name) for folder in self.path(*product).glob("*/*")
                      if is_published(folder) and folder.parent.name.isdigit())

    def raw_partitions(self) -> list[tuple[int, str]]:
        """(year, region) of every raw partition materialised for both sensors."""
        return sorted(set(self.partitions("raw", "s2")) & set(self.partitions("raw", "s1")))

    def delete_region(self, region: str) -> int:
        """Remove every partition of a region, all years and products; returns how many."""
        products = [("raw", "s2"), ("raw", "s1"), ("embeddings",), ("similarity",), ("land_cover",), ("value_map",),
                    ("change",)]
        found = [(*product, str(year), name) for product in products
                 for year, name in self.partitions(*product) if name == region]
        for parts in found:
            if self.remote is None:
                shutil.rmtree(self.path(*parts))
            else:
                self.remote.unpublish("/".join(parts))
        if found:
            self.refresh_catalog()
        return len(found)

    def fetch(self, *parts: str) -> Path:
        """A published file as a local path (for readers that need one: parquet, torch): the file
        itself under a folder root, else a cached download of the immutable version."""
        *folder_parts, name = parts
        folder = self.folder(*folder_parts)
        if folder is None or not folder.exists(name):
            raise PartitionNotMaterialisedError(f"no {'/'.join(parts)} under {self.root}")
        if folder.store is None:
            return Path(folder / name)
        cached = self.local("downloads", folder.key) / name  # a version never changes: cached copies stay true
        return cached if cached.exists() else folder.store.download(f"{folder.key}/{name}", cached)

    def location(self, *parts: str | int) -> str:
        """Where a published partition is, for people (metadata `path`): a folder or a version URI."""
        return str(self.folder(*parts) or "/".join((self.root, *map(str, parts))))

    def read_file(self, relative: str) -> bytes:
        """A file of a published partition by its logical path (`raw/s2/2022/demo/preview.png`),
        whatever version is current: what the explorer serves for links in the Dagster UI."""
        folder_key, _, name = relative.rpartition("/")
        if self.remote is None and not self.path(relative).resolve().is_relative_to(Path(self.root).resolve()):
            raise FileNotFoundError(f"{relative} leads out of the data root")
        folder = self.folder(*folder_key.split("/")) if folder_key else None
        data = folder.read_bytes(name) if folder is not None else None
        if data is None:
            raise FileNotFoundError(f"no file {relative} under the data root")
        return data

    def open_embeddings(self, year: int, region: str) -> "EmbeddingPartition":
        folder = self.folder("embeddings", year, region)
        if folder is None or not folder.exists(SCALES_FILE):
            raise PartitionNotMaterialisedError(
                f"embeddings for year {year}, region {region!r} are not materialised (looked in "
                f"{self.root}/embeddings/{year}/{region})")
        return EmbeddingPartition(folder)

    def _raw_folder(self, sensor: str, year: int, region: str) -> Folder:
        folder = self.folder("raw", sensor, year, region)
        if folder is None or not folder.exists(INDEX_FILE):
            raise PartitionNotMaterialisedError(
                f"{sensor}_raw for year {year}, region {region!r} is not materialised (looked in "
                f"{self.root}/raw/{sensor}/{year}/{region})")
        return folder

    def open_raw(self, sensor: str, year: int, region: str) -> "RawPartition":
        """A raw partition; from an object store, a local copy of it: the encoder reads every file
        whole, which is 1.6x faster downloaded first than read in place (`bench/object_store.py`)."""
        folder = self._raw_folder(sensor, year, region)
        return RawPartition(folder if folder.store is None else self._local_copy(folder))

    def _local_copy(self, folder: Folder) -> Folder:
        """A published version on local disk, downloaded once (a version never changes); other
        versions of the partition are dropped from the cache."""
        target = self.local("downloads", folder.key)
        if not (target / DOWNLOADED).exists():
            for older in target.parent.iterdir():
                if older != target:
                    shutil.rmtree(older, ignore_errors=True)
            folder.store.download_prefix(folder.key, target)
            (target / DOWNLOADED).touch()
        return Folder(str(target))

    def observation_counts(self, sensor: str, year: int, region: str, shape: tuple[int, int]) -> np.ndarray:
        """Valid observations per pixel of the raw partition (one small raster, read in place, never
        a download of the partition); zeros (not known) where there is none, as for embeddings read
        from official tiles."""
        try:
            return RawPartition(self._raw_folder(sensor, year, region)).valid_count()
        except PartitionNotMaterialisedError:
            return np.zeros(shape, np.uint16)

    # -- encoders --------------------------------------------------------------------------------
    def keep_encoder(self, encoder: TesseraEncoder, files: dict[str, Path] | None = None,
                     source: str = "pretrained") -> str:
        """The checkpoint, its model card and `files` beside it (e.g. its loss curve), published
        once under its identity, never overwritten (the same id means the same weights); returns
        where the checkpoint is."""
        parts = ("models", encoder.identity.id)
        if self.folder(*parts) is None:
            with self.publish(*parts) as tmp:
                encoder.save(tmp / ENCODER_CHECKPOINT)
                (tmp / MODEL_CARD).write_text(model_card(encoder.identity.to_dict(), encoder.config.to_dict(),
                                                         encoder.parameter_count(), encoder.metadata, source))
                for name, path in (files or {}).items():
                    shutil.copyfile(path, tmp / name)
        return self.folder(*parts) / ENCODER_CHECKPOINT

    def publish_encoder(self, encoder: TesseraEncoder, extra: dict[str, Any] | None = None,
                        files: dict[str, Path] | None = None) -> str:
        """Keep the checkpoint and make it current with one small pointer write, so readers see the
        old or the new encoder, never neither (two runs at once: the last write wins)."""
        checkpoint = self.keep_encoder(encoder, files, str((extra or {}).get("source", "pretrained")))
        body = json.dumps(encoder.identity.to_dict() | {"checkpoint": checkpoint} | (extra or {}), indent=1)
        if self.remote is not None:
            self.remote.put(f"models/{CURRENT_ENCODER}", body.encode())
            return checkpoint
        with atomic_file(self.path("models", CURRENT_ENCODER)) as tmp:
            tmp.write_text(body)
        return checkpoint

    def current_encoder_id(self) -> str:
        if self.remote is not None:
            pointer = self.remote.get(f"models/{CURRENT_ENCODER}")
        else:
            path = self.path("models", CURRENT_ENCODER)
            pointer = path.read_bytes() if path.exists() else None
        if pointer is None:
            raise PartitionNotMaterialisedError(f"no encoder yet (no models/{CURRENT_ENCODER} under {self.root}): "
                                                "materialise encoder_checkpoint first")
        return json.loads(pointer)["id"]

    def kept_encoders(self) -> list[str]:
        if self.remote is not None:
            return [key.rsplit("/", 1)[-1] for key in self.remote.published_keys("models")]
        return sorted(p.parent.name for p in self.path("models").glob(f"*/{ENCODER_CHECKPOINT}"))

    def encoder_checkpoint(self, encoder_id: str) -> Path:
        """A kept checkpoint as a local file (from an object store, downloaded once per version)."""
        try:
            return self.fetch("models", encoder_id, ENCODER_CHECKPOINT)
        except PartitionNotMaterialisedError:
            raise PartitionNotMaterialisedError(f"no kept encoder {encoder_id!r} "
                                                f"(kept: {', '.join(self.kept_encoders()) or 'none'})") from None

    def load_encoder(self, encoder_id: str | None = None) -> TesseraEncoder:
        """The current encoder, or a kept one by id."""
        from model.encoder import TesseraEncoder

        return TesseraEncoder.from_checkpoint(self.encoder_checkpoint(encoder_id or self.current_encoder_id()))


def _finish_partition(folder: Path, parts: tuple[str, ...], key: str, locate) -> None:
    """What every partition gets before it is published: COGs, and its STAC item (for a catalogued
    product), whose links are relative to `key`, where it is published."""
    cogs_in(folder)
    item = partition_item(folder, parts, locate)
    if item is not None:
        (folder / ITEM_FILE).write_text(json.dumps(item_links(item, key, product_of(parts)[0]), indent=1))


@dataclass(frozen=True)
class Folder:
    """A published partition folder as readers use it: a local directory, or a version prefix on an
    object store (then `store` and `key` say where). `folder / name` is what GDAL opens."""

    location: str
    store: ObjectRoot | None = None
    key: str = ""

    def __truediv__(self, name: str) -> str:
        return f"{self.location}/{name}"

    def __str__(self) -> str:
        return self.location

    def read_bytes(self, name: str) -> bytes | None:
        if self.store is not None:
            return self.store.get(f"{self.key}/{name}")
        path = Path(self / name)
        return path.read_bytes() if path.is_file() else None

    def exists(self, name: str) -> bool:
        return self.store.exists(f"{self.key}/{name}") if self.store is not None else Path(self / name).exists()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[rasterio.io.DatasetReader]:
        if self.store is not None:
            with self.store.open_raster(f"{self.key}/{name}") as src:
                yield src
        else:
            with rasterio.open(self / name) as src:
                yield src


def as_folder(folder: Folder | Path | str) -> Folder:
    return folder if isinstance(folder, Folder) else Folder(str(folder))


def grid_to_json(grid: RegionGrid) -> dict[str, Any]:
    return {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6], "width": grid.width, "height": grid.height}


def grid_from_json(data: dict[str, Any]) -> RegionGrid:
    return RegionGrid(CRS.from_string(data["crs"]), Affine(*data["transform"]), data["width"], data["height"])


@dataclass
class RawPartition:
    """A materialised raw partition: one GeoTIFF per observation (bands + GDAL valid mask), and an index."""

    folder: Folder

    def __post_init__(self) -> None:
        self.folder = as_folder(self.folder)

    @property
    def index(self) -> dict[str, Any]:
        if not hasattr(self, "_index"):
            self._index = json.loads(self.folder.read_bytes(INDEX_FILE))
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
            with self.folder.open(obs["file"]) as src:
                values[t] = src.read(window=window)
                valid[t] = src.read_masks(1, window=window) > 0
        return values, valid

    def valid_count(self) -> np.ndarray:
        with self.folder.open("valid_count.tif") as src:
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

    folder: Folder

    def __post_init__(self) -> None:
        self.folder = as_folder(self.folder)

    @property
    def grid(self) -> RegionGrid:
        with self.folder.open(SCALES_FILE) as src:
            return RegionGrid(src.crs, src.transform, src.width, src.height)

    @property
    def dim(self) -> int:
        with self.folder.open(EMBEDDINGS_FILE) as src:
            return src.count

    @property
    def encoder(self) -> dict[str, Any]:
        """The identity of the encoder that made these vectors (`id` "unknown" for partitions
        written before identities were recorded)."""
        data = self.folder.read_bytes(ENCODER_FILE)
        return json.loads(data) if data else {"id": "unknown"}

    @property
    def encoder_id(self) -> str:
        return self.encoder["id"]

    def valid_pixels(self) -> int:
        """Pixels with a vector (finite scale), from the scales alone."""
        with self.folder.open(SCALES_FILE) as src:
            return sum(int(np.isfinite(src.read(1, window=w)).sum()) for _, w in src.block_windows(1))

    def read_overview(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray, Affine]:
        """int8 vectors (height, width, dim) and scales of the whole partition read at a reduced size
        (previews, map layers), with the transform of that size."""
        with self.folder.open(SCALES_FILE) as src:
            scales = src.read(1, out_shape=(height, width))
            transform = src.transform @ Affine.scale(src.width / width, src.height / height)
        with self.folder.open(EMBEDDINGS_FILE) as src:
            vectors = np.moveaxis(src.read(out_shape=(src.count, height, width)), 0, -1)
        return vectors, scales, transform

    def read(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """int8 vectors (h, w, dim) and scales (h, w)."""
        with self.folder.open(EMBEDDINGS_FILE) as src:
            vectors = np.moveaxis(src.read(window=window), 0, -1)
        with self.folder.open(SCALES_FILE) as src:
            scales = src.read(1, window=window)
        return vectors, scales


def write_similarity_raster(partition: EmbeddingPartition, query: np.ndarray, path: Path,
                            block: int = 512) -> dict[str, float]:
    """Cosine similarity of every pixel to `query` as a float32 GeoTIFF (NaN: no data), by blocks."""
    grid = partition.grid
    total = count = above = 0.0
    with rasterio.open(path, "w", **grid.geotiff_profile(count=1, dtype="float32", nodata=float("nan"))) as dst:
        dst.set_band_description(1, "cosine similarity")
        for window in grid.blocks(block):
            sim = cosine_to(*partition.read(window), query)
            dst.write(sim[None], window=window)
            ok = np.isfinite(sim)
            total += float(sim[ok].sum())
            count += float(ok.sum())
            above += float((sim[ok] > 0.9).sum())
    return {"mean": total / count if count else float("nan"), "above_0.9": above / count if count else 0.0}


def write_class_map(partition: EmbeddingPartition, predict_proba, class_names: list[str], folder: Path,
                    block: int = 256) -> np.ndarray:
    """`classes.tif` (uint8: 1 + class index, 0 = no data; the names in its `class_names` tag, so
    the file explains itself in QGIS or xarray) and `confidence.tif` (float32 max probability),
    block by block; returns the pixel count of each class."""
    grid = partition.grid
    classes = len(class_names)
    counts = np.zeros(classes, np.int64)
    with rasterio.open(folder / "classes.tif", "w", **grid.geotiff_profile(count=1, dtype="uint8", nodata=0)) as classes_out, \
            rasterio.open(folder / "confidence.tif", "w",
                          **grid.geotiff_profile(count=1, dtype="float32", nodata=float("nan"))) as confidence_out:
        classes_out.set_band_description(1, "class: 0 no data, else 1 + index into class_names")
        classes_out.update_tags(1, class_names=json.dumps([str(c) for c in class_names]))
        confidence_out.set_band_description(1, "classifier's top probability")
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
