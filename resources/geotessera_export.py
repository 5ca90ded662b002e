"""Export embeddings in the official TESSERA tile layout, so geotessera and tools built on it read them.

Tiles are 0.1 degree cells named by their centre (`grid_{lon:.2f}_{lat:.2f}`), each on its own 10 m
UTM grid computed as geotessera computes it; vectors are int8 (H, W, 128) `.npy` with float32 scales
(NaN = no data), and a landmask GeoTIFF carries each tile's CRS and transform. Pixels are taken from
the region grid by nearest neighbour at each tile pixel's centre; tile pixels outside the region stay
NaN, and exporting a neighbouring region later fills them in without overwriting what is there.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import rowcol
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from resources.regions import PIXEL_SIZE_M, RegionGrid
from resources.storage import EmbeddingPartition

TILE_DEGREES = 0.1
REPRESENTATION_DIR = "global_0.1_degree_representation"
LANDMASK_DIR = "global_0.1_degree_tiff_all"


def tile_name(lon: float, lat: float) -> str:
    return f"grid_{lon:.2f}_{lat:.2f}"


def tile_centres(bbox: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """Centres (x.x5) of every tile a WGS84 bbox touches."""
    west, south, east, north = bbox
    lons = np.arange(math.floor(west * 10), math.ceil(east * 10)) / 10 + 0.05
    lats = np.arange(math.floor(south * 10), math.ceil(north * 10)) / 10 + 0.05
    return [(round(float(x), 2), round(float(y), 2)) for y in lats for x in lons]


def tile_grid(lon: float, lat: float) -> RegionGrid:
    """geotessera's georeference of a tile: the UTM zone of its centre, origin at the west-most
    easting and north-most northing of the projected box, 10 m pixels covering its south and east."""
    zone = int(math.floor((lon + 180) / 6)) + 1
    crs = CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
    half = TILE_DEGREES / 2
    corners_lon = [lon - half, lon + half, lon - half, lon + half]
    corners_lat = [lat + half, lat + half, lat - half, lat - half]  # NW, NE, SW, SE
    xs, ys = warp_transform("EPSG:4326", crs, corners_lon, corners_lat)
    origin_e = min(xs[0], xs[2])
    origin_n = max(ys[0], ys[1])
    height = int(round((origin_n - min(ys[2], ys[3])) / PIXEL_SIZE_M))
    width = int(round((max(xs[1], xs[3]) - origin_e) / PIXEL_SIZE_M))
    return RegionGrid(crs, Affine(PIXEL_SIZE_M, 0, origin_e, 0, -PIXEL_SIZE_M, origin_n), width, height)


def _region_indices(tile: RegionGrid, region: RegionGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each tile pixel, the region row and col of its centre, and whether it falls inside."""
    rows, cols = np.mgrid[0:tile.height, 0:tile.width]
    xs = tile.transform.c + (cols + 0.5) * PIXEL_SIZE_M
    ys = tile.transform.f - (rows + 0.5) * PIXEL_SIZE_M
    if tile.crs != region.crs:
        flat_x, flat_y = warp_transform(tile.crs, region.crs, xs.ravel(), ys.ravel())
        xs, ys = np.asarray(flat_x).reshape(xs.shape), np.asarray(flat_y).reshape(ys.shape)
    r, c = rowcol(region.transform, xs.ravel(), ys.ravel(), op=math.floor)
    r, c = np.asarray(r).reshape(xs.shape), np.asarray(c).reshape(xs.shape)
    inside = (r >= 0) & (r < region.height) & (c >= 0) & (c < region.width)
    return r, c, inside


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def export_partition(partition: EmbeddingPartition, year: int, bbox: tuple[float, float, float, float],
                     root: Path) -> list[Path]:
    """Write (or fill in) every tile the region touches; returns the tiles' vector files."""
    region = partition.grid
    written = []
    for lon, lat in tile_centres(bbox):
        tile = tile_grid(lon, lat)
        r, c, inside = _region_indices(tile, region)
        if not inside.any():
            continue
        window = Window(int(c[inside].min()), int(r[inside].min()),
                        int(c[inside].max() - c[inside].min() + 1), int(r[inside].max() - r[inside].min() + 1))
        vectors, scales = partition.read(window)
        name = tile_name(lon, lat)
        folder = root / REPRESENTATION_DIR / str(year) / name
        folder.mkdir(parents=True, exist_ok=True)
        vec_path, scale_path = folder / f"{name}.npy", folder / f"{name}_scales.npy"
        if vec_path.exists():
            tile_vectors, tile_scales = np.load(vec_path), np.load(scale_path)
        else:
            tile_vectors = np.zeros((tile.height, tile.width, vectors.shape[-1]), np.int8)
            tile_scales = np.full((tile.height, tile.width), np.nan, np.float32)
        rr, cc = r[inside] - window.row_off, c[inside] - window.col_off
        source_scales = scales[rr, cc]
        fill = np.zeros(inside.shape, bool)
        fill[inside] = np.isfinite(source_scales)
        fill &= ~np.isfinite(tile_scales)  # never overwrite what another export put there
        take = fill[inside]
        tile_vectors[fill] = vectors[rr[take], cc[take]]
        tile_scales[fill] = source_scales[take]
        _save_npy(vec_path, tile_vectors)
        _save_npy(scale_path, tile_scales)
        _write_landmask(root / LANDMASK_DIR / f"{name}.tiff", tile)
        written.append(vec_path)
    return written


def _write_landmask(path: Path, tile: RegionGrid) -> None:
    """The georeference geotessera reads for the tile; we know of no water, so every pixel is land (1)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **tile.geotiff_profile(count=1, dtype="uint8")) as dst:
        dst.write(np.ones((1, tile.height, tile.width), np.uint8))
