"""Web map tiles (EPSG:3857, 256 px, z/x/y) cut from rasters on a region grid.

Each layer is a small RGBA array on its partition's grid (at most `DISPLAY_MAX_PX` a side), held in
memory by the server; a tile is that array reprojected into the tile's bounds (nearest pixel). Our
rasters are one partition each, so a reprojection of a few hundred pixels per tile takes
milliseconds: a tiler stack (rio-tiler / titiler), whose strength is overviews of large COG mosaics
across zoom levels, would add dependencies for nothing we need.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject, transform_bounds

TILE_PX = 256
MERCATOR_HALF = 20037508.342789244  # metres from the origin to the edge of the EPSG:3857 square
MERCATOR = CRS.from_epsg(3857)
DISPLAY_MAX_PX = 2048


@dataclass
class Raster:
    """An RGBA layer (4, h, w) uint8 on a grid: alpha 0 is transparent."""

    rgba: np.ndarray
    transform: Affine
    crs: CRS

    @property
    def mercator_bounds(self) -> tuple[float, float, float, float]:
        h, w = self.rgba.shape[1:]
        west, north = self.transform @ (0, 0)
        east, south = self.transform @ (w, h)
        return transform_bounds(self.crs, MERCATOR, west, south, east, north)


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """West, south, east, north of a tile in EPSG:3857 metres."""
    size = 2 * MERCATOR_HALF / 2 ** z
    west, north = -MERCATOR_HALF + x * size, MERCATOR_HALF - y * size
    return west, north - size, west + size, north


def check_tile(z: int, x: int, y: int) -> None:
    if not (0 <= z <= 24 and 0 <= x < 2 ** z and 0 <= y < 2 ** z):
        raise ValueError(f"no tile {z}/{x}/{y}: z is 0..24 and x, y are 0..2^z - 1")


def render(raster: Raster, z: int, x: int, y: int) -> bytes:
    """The PNG of one tile of a layer; a transparent tile where the layer has nothing."""
    check_tile(z, x, y)
    west, south, east, north = tile_bounds(z, x, y)
    lw, ls, le, ln = raster.mercator_bounds
    if east <= lw or west >= le or north <= ls or south >= ln:
        return empty_tile()
    tile = np.zeros((4, TILE_PX, TILE_PX), np.uint8)
    reproject(raster.rgba, tile, src_transform=raster.transform, src_crs=raster.crs,
              dst_transform=from_bounds(west, south, east, north, TILE_PX, TILE_PX), dst_crs=MERCATOR,
              resampling=Resampling.nearest)
    return encode_png(tile)


def encode_png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.moveaxis(rgba, 0, -1)), "RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def empty_tile() -> bytes:
    return encode_png(np.zeros((4, TILE_PX, TILE_PX), np.uint8))


def lonlat_to_tile(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The tile holding a point (for tests and the benchmark's clients)."""
    n = 2 ** z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y
