"""The explorer's map layers of a partition, as RGBA rasters on its grid (`tiles.Raster`).

- `true_colour`: the median of clear Sentinel-2 observations (B04, B03, B02) of the raw partition;
- `pca`: the embeddings' first three principal components as false colour;
- `similarity`: cosine similarity of every pixel to a query vector, in magma, transparent below a threshold;
- `classes`: a class map in categorical colours, more opaque where the head is more confident;
- `values`, `change`: the published value map (viridis) and change score (inferno, faint where
  unchanged) of the partition, where `value_map` and `change_map` made them.

Each is computed once per partition (and query, or trained head) at most `DISPLAY_MAX_PX` a side and
kept in memory: the server is long-lived and tiles of one view ask for the same arrays many times.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from affine import Affine

from resources.errors import PartitionNotMaterialisedError
from model.quantise import cosine_to
from resources.previews import median_composite, pca_false_colour, preview_shape, stretch
from resources.storage.data_root import TesseraStorage
from tessera_assets.explorer.tiles import DISPLAY_MAX_PX, Raster

# categorical colours for classes 1..n (0 is no data); Tableau 10, then repeated
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], np.uint8)


def class_colours(names) -> dict[str, str]:
    """The colour of every class, by its place among all class names sorted: the one palette the
    map, the legend and the page's label marks share (the page gets it from the API, never its own
    copy), so a class keeps its colour when another class has no pixels in a partition."""
    colours = {}
    for i, name in enumerate(sorted(set(names))):
        r, g, b = PALETTE[i % len(PALETTE)]
        colours[name] = f"#{r:02x}{g:02x}{b:02x}"
    return colours


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


@lru_cache(maxsize=4)
def _lut(name: str) -> np.ndarray:
    """A matplotlib colour map as 256 RGB rows."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _magma() -> np.ndarray:
    return _lut("magma")


# published product layers: (product folder, raster, colour map)
PRODUCT_LAYERS = {"values": ("value_map", "values.tif", "viridis"), "change": ("change", "score.tif", "inferno")}


def _rgba(rgb: np.ndarray, visible: np.ndarray, alpha: np.ndarray | int = 255) -> np.ndarray:
    out = np.zeros((4, *rgb.shape[:2]), np.uint8)
    out[:3] = np.moveaxis(rgb, -1, 0)
    out[3] = np.where(visible, alpha, 0)
    return out


class Layers:
    """Layers of the partitions in `storage`, computed on first use and kept (least recently used
    first out, `keep` at most)."""

    def __init__(self, storage: TesseraStorage, keep: int = 64):
        self.storage = storage
        self.keep = keep
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, key: tuple, make: Callable[[], object]) -> object:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = make()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return value

    def true_colour(self, year: int, region: str) -> Raster:
        def make() -> Raster:
            raw = self.storage.open_raw("s2", year, region)
            rgb = median_composite(raw, (0, 2, 1), DISPLAY_MAX_PX)
            grid = raw.grid
            h, w = rgb.shape[:2]
            return Raster(_rgba(stretch(rgb), np.isfinite(rgb).all(-1)),
                          grid.transform @ Affine.scale(grid.width / w, grid.height / h), grid.crs)
        return self.cached(("true_colour", year, region), make)

    def display_vectors(self, year: int, region: str) -> tuple[np.ndarray, np.ndarray, Affine]:
        """The partition's int8 vectors (h, w, d) and scales at display resolution, and their
        transform: read once, shared by the PCA layer and every query's similarity layer."""
        def make():
            partition = self.storage.open_embeddings(year, region)
            grid = partition.grid
            return partition.read_overview(*preview_shape(grid.height, grid.width, DISPLAY_MAX_PX))
        return self.cached(("vectors", year, region), make)

    def _crs(self, year: int, region: str):
        return self.storage.open_embeddings(year, region).grid.crs

    def pca(self, year: int, region: str) -> Raster:
        def make() -> Raster:
            q, scales, transform = self.display_vectors(year, region)
            rgb = pca_false_colour(q.astype(np.float32) * scales[..., None])
            return Raster(_rgba(rgb, np.isfinite(scales)), transform, self._crs(year, region))
        return self.cached(("pca", year, region), make)

    def similarity_values(self, year: int, region: str, query_id: str, vector: np.ndarray) -> tuple[np.ndarray, Affine]:
        """Cosine similarity of every displayed pixel to the query (the scale cancels in a cosine)."""
        def make():
            q, scales, transform = self.display_vectors(year, region)
            return cosine_to(q, scales, vector), transform
        return self.cached(("similarity", year, region, query_id), make)

    def similarity(self, year: int, region: str, query_id: str, vector: np.ndarray, threshold: float) -> Raster:
        values, transform = self.similarity_values(year, region, query_id, vector)
        finite = np.isfinite(values)
        low = float(np.nanpercentile(values, 2)) if finite.any() else 0.0
        scaled = np.clip((np.nan_to_num(values, nan=low) - low) / max(1.0 - low, 1e-6), 0, 1)
        rgb = _magma()[(scaled * 255).astype(np.uint8)]
        visible = finite & (np.nan_to_num(values, nan=-2) >= threshold)
        return Raster(_rgba(rgb, visible, 210), transform, self._crs(year, region))

    def product(self, layer: str, year: int, region: str) -> Raster:
        """A published map of the partition (`PRODUCT_LAYERS`) at display resolution, stretched
        between its 2nd and 98th percentiles; the change score is faint below its threshold. Kept
        per version of the file, so a re-materialised map shows at once."""
        import rasterio

        folder, name, cmap = PRODUCT_LAYERS[layer]
        path = self.storage.fetch(folder, str(year), region, name)

        def make() -> Raster:
            with rasterio.open(path) as src:
                h, w = preview_shape(src.height, src.width, DISPLAY_MAX_PX)
                data = src.read(1, out_shape=(h, w)).astype(np.float32)
                transform = src.transform @ Affine.scale(src.width / w, src.height / h)
                crs = src.crs
            finite = np.isfinite(data)
            low, high = (np.nanpercentile(data, (2, 98)) if finite.any() else (0.0, 1.0))
            if layer == "change":  # 0 (no change) to twice the threshold, whatever the region
                low, high = 0.0, 6.0
            scaled = np.clip((np.nan_to_num(data, nan=low) - low) / max(float(high - low), 1e-6), 0, 1)
            alpha = np.where(data > 3.0, 230, 90).astype(np.uint8) if layer == "change" else 220
            return Raster(_rgba(_lut(cmap)[(scaled * 255).astype(np.uint8)], finite, alpha), transform, crs)
        return self.cached((layer, year, region, path.stat().st_mtime_ns), make)

    def classes(self, year: int, region: str, labels: np.ndarray, confidence: np.ndarray,
                colours: list[str]) -> Raster:
        """A class raster (0 no data, 1 + class index) with its confidence, as the partition's grid;
        class i in `colours[i]`."""
        grid = self.storage.open_embeddings(year, region).grid
        table = np.array([_rgb(c) for c in colours], np.uint8)
        rgb = table[np.clip(labels.astype(int) - 1, 0, len(table) - 1)]
        alpha = (80 + 175 * np.nan_to_num(confidence, nan=0)).astype(np.uint8)
        return Raster(_rgba(rgb, labels > 0, alpha), grid.transform, grid.crs)


def products_of(storage: TesseraStorage, year: int, region: str) -> list[str]:
    """The product layers (`PRODUCT_LAYERS`) the partition has."""
    found = []
    for layer, (product, name, _) in PRODUCT_LAYERS.items():
        folder = storage.folder(product, year, region)
        if folder is not None and folder.exists(name):
            found.append(layer)
    return found


def has_raw(storage: TesseraStorage, year: int, region: str) -> bool:
    try:
        storage.open_raw("s2", year, region)
        return True
    except PartitionNotMaterialisedError:
        return False
