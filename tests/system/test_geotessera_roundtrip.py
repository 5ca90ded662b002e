"""geotessera itself, installed in its own environment, against our exports and imports of the
official tile layout (slow: the first run builds the environment)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from resources.official.tiles import tile_centres, tile_grid
from resources.regions import make_region
from resources.storage.data_root import EmbeddingPartition
from resources.testing.official_tiles import BOUNDARY_BBOX, random_partition, random_points, write_official_tiles


@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    return write_official_tiles(root, 2024, tile_centres(BOUNDARY_BBOX),
                                metadata={"dataset_version": "1.1", "dataset_variant": "cambridge"})


def test_geotessera_reads_our_export_with_our_values_and_georeference(tmp_path):
    """Our export of a region across the UTM 31/32 boundary, read by geotessera 0.7.5: each tile's
    array is our dequantised tile and its georeference is the recipe's; at random points the
    client's sample is the region pixel our export put under that point."""
    from resources.testing.geotessera_client import read_with_geotessera
    from resources.official.tiles import export_region

    region = make_region("border", list(BOUNDARY_BBOX), 1000)
    (tmp_path / "emb").mkdir()
    partition, q, scales = random_partition(tmp_path / "emb", region)
    root, registry = tmp_path / "tiles", tmp_path / "registry"
    written, listed = export_region(partition, 2024, region.bbox, root, registry)
    assert listed == {"tiles": 4, "landmasks": 4}
    points = random_points(region.grid, 200, seed=3)
    centres = [tuple(float(v) for v in p.stem.split("_")[1:3]) for p in written]
    georef, arrays, sampled = read_with_geotessera(root, registry, 2024, centres, points, tmp_path / "client")
    for (lon, lat), vec_path in zip(centres, written):
        name, tile = f"{lon:.2f}_{lat:.2f}", tile_grid(lon, lat)
        ours = np.load(vec_path).astype(np.float32) * np.load(vec_path.with_name(f"{vec_path.stem}_scales.npy"))[..., None]
        assert np.array_equal(arrays[name], ours, equal_nan=True)
        assert georef[name]["epsg"] == tile.crs.to_epsg() and georef[name]["shape"] == [tile.height, tile.width, 128]
        assert np.allclose(georef[name]["transform"], list(tile.transform)[:6])
    vectors = q.astype(np.float32) * scales[..., None]
    for (lon, lat), got in zip(points, sampled):
        ix, iy = math.floor(lon * 10), math.floor(lat * 10)
        tile = tile_grid(round(ix / 10 + 0.05, 2), round(iy / 10 + 0.05, 2))
        (x,), (y,) = warp_transform("EPSG:4326", tile.crs, [lon], [lat])
        tr, tc = rasterio.transform.rowcol(tile.transform, x, y)
        cx, cy = rasterio.transform.xy(tile.transform, tr, tc)  # the tile pixel's centre picks the region pixel
        (rx,), (ry,) = warp_transform(tile.crs, region.grid.crs, [cx], [cy])
        rr, rc = rasterio.transform.rowcol(region.grid.transform, rx, ry)
        inside = 0 <= rr < region.grid.height and 0 <= rc < region.grid.width
        assert np.array_equal(got, vectors[rr, rc] if inside else np.full(128, np.nan), equal_nan=True)


def test_our_import_of_official_tiles_is_what_geotessera_samples(official_root, tmp_path):
    """Tiles in the official layout imported onto a region grid: at the centre of every sampled
    region pixel, geotessera 0.7.5 finds the vector (or the water) we imported there."""
    from resources.testing.geotessera_client import read_with_geotessera
    from resources.official.tiles import Dataset, TileRoot, import_tiles, write_registries

    root = tmp_path / "official"
    shutil.copytree(official_root, root)
    write_registries(root, tmp_path / "registry", Dataset.parse("1.1", "cambridge"))
    region = make_region("border", list(BOUNDARY_BBOX), 1000)
    (tmp_path / "out").mkdir()
    import_tiles(TileRoot(root), 2024, region.grid, region.bbox, tmp_path / "out")
    q, scales = EmbeddingPartition(tmp_path / "out").read()
    rng = np.random.default_rng(4)
    pixels = list(zip(rng.integers(0, region.grid.height, 300), rng.integers(0, region.grid.width, 300)))
    pixels += [(r, 0) for r in range(0, region.grid.height, 7)]  # the west edge, where the water is
    xs, ys = zip(*(rasterio.transform.xy(region.grid.transform, r, c) for r, c in pixels))
    points = list(zip(*warp_transform(region.grid.crs, "EPSG:4326", xs, ys)))
    _, _, sampled = read_with_geotessera(root, tmp_path / "registry", 2024, [], points, tmp_path / "client")
    ours = np.stack([q[r, c].astype(np.float32) * scales[r, c] for r, c in pixels])
    assert np.isnan(ours).any() and np.array_equal(sampled, ours, equal_nan=True)
