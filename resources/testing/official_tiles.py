"""Official embedding tiles made for tests, in the layout geotessera reads (../shared/GEOTESSERA.md)."""

from __future__ import annotations

import json

import numpy as np
import rasterio

from rasterio.warp import transform as warp_transform

from model.quantise import quantise
from resources.official.tiles import tile_grid
from resources.storage.data_root import EmbeddingPartition, EmbeddingWriter

BOUNDARY_BBOX = (5.994, 51.196, 6.006, 51.204)  # across the UTM 31/32 boundary at 6 E, and two tile rows


def write_official_tiles(root, year: int, centres, dim: int = 128, seed: int = 0, metadata: dict | None = None):
    """Tiles in the official layout (../shared/GEOTESSERA.md) whose vectors say where they are: dims
    0-2 hold the tile pixel's row and col (mod 127) and the tile's number, dims 3-10 a level that
    rises 40 a tile (tiles are numbered west to east, then south to north); a strip of water (NaN)."""
    rng = np.random.default_rng(seed)
    for number, (lon, lat) in enumerate(centres):
        grid = tile_grid(lon, lat)
        name = f"grid_{lon:.2f}_{lat:.2f}"
        rows, cols = np.mgrid[0:grid.height, 0:grid.width]
        q = rng.integers(-127, 128, (grid.height, grid.width, dim), dtype=np.int8)
        q[..., 0], q[..., 1], q[..., 2] = rows % 127, cols % 127, number
        q[..., 3:11] = number * 40 - 60
        scales = rng.uniform(0.005, 0.02, (grid.height, grid.width)).astype(np.float32)
        scales[:, :5] = np.nan  # water along the west edge
        folder = root / "global_0.1_degree_representation" / str(year) / name
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.npy", q)
        np.save(folder / f"{name}_scales.npy", scales)
        (root / "global_0.1_degree_tiff_all").mkdir(parents=True, exist_ok=True)
        with rasterio.open(root / "global_0.1_degree_tiff_all" / f"{name}.tiff", "w",
                           **grid.geotiff_profile(count=1, dtype="uint8")) as dst:
            dst.write(np.isfinite(scales)[None].astype(np.uint8))
    if metadata is not None:
        (root / "tessera_metadata.json").write_text(json.dumps(metadata))
    return root


def random_partition(folder, region, seed: int = 0):
    """An embeddings partition of random vectors over a region (its first three rows without data)."""
    grid = region.grid
    rng = np.random.default_rng(seed)
    vectors = rng.normal(0, 1, (grid.height, grid.width, 128)).astype(np.float32)
    vectors[:3] = np.nan  # a strip without data
    q, scales = quantise(vectors)
    writer = EmbeddingWriter(folder, grid, 128)
    writer.write(rasterio.windows.Window(0, 0, grid.width, grid.height), q, scales)
    writer.close()
    return EmbeddingPartition(folder), q, scales


def random_points(grid, n: int, seed: int) -> list[tuple[float, float]]:
    """Lon/lat of random points inside a grid."""
    rng = np.random.default_rng(seed)
    xs = grid.transform.c + rng.uniform(0, grid.width, n) * 10
    ys = grid.transform.f - rng.uniform(0, grid.height, n) * 10
    lon, lat = warp_transform(grid.crs, "EPSG:4326", xs, ys)
    return list(zip(lon, lat))
