import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from model.quantise import quantise
from resources.geotessera_export import export_partition, tile_centres, tile_grid
from resources.regions import make_region
from resources.storage import EmbeddingPartition, EmbeddingWriter


def test_tile_grid_matches_geotessera():
    grid = tile_grid(0.15, 52.05)
    assert grid.crs.to_epsg() == 32631
    assert (grid.height, grid.width) == (1139, 729)
    assert grid.transform.c == pytest.approx(300933.936, abs=1e-3)
    assert grid.transform.f == pytest.approx(5776128.478, abs=1e-3)


def test_tile_centres_cover_the_bbox():
    assert tile_centres((0.08, 52.19, 0.1175, 52.213)) == [(0.05, 52.15), (0.15, 52.15), (0.05, 52.25), (0.15, 52.25)]


def _partition(tmp_path, region):
    grid = region.grid
    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 1, (grid.height, grid.width, 128)).astype(np.float32)
    vectors[:3] = np.nan  # a strip without data
    q, scales = quantise(vectors)
    writer = EmbeddingWriter(tmp_path, grid, 128)
    writer.write(rasterio.windows.Window(0, 0, grid.width, grid.height), q, scales)
    writer.close()
    return EmbeddingPartition(tmp_path), q, scales


def test_export_writes_official_layout_with_the_same_vectors(tmp_path):
    region = make_region("fens", [0.12, 52.21, 0.16, 52.23], 1000)
    (tmp_path / "emb").mkdir()
    partition, q, scales = _partition(tmp_path / "emb", region)
    root = tmp_path / "tiles"
    written = export_partition(partition, 2022, region.bbox, root)
    names = sorted(p.parent.name for p in written)
    assert names == ["grid_0.15_52.25"]
    vectors = np.load(written[0])
    tile_scales = np.load(written[0].with_name("grid_0.15_52.25_scales.npy"))
    tile = tile_grid(0.15, 52.25)
    assert vectors.shape == (tile.height, tile.width, 128) and vectors.dtype == np.int8
    with rasterio.open(root / "global_0.1_degree_tiff_all" / "grid_0.15_52.25.tiff") as src:
        assert src.crs == tile.crs and src.transform == tile.transform and src.shape == tile_scales.shape
    # a point inside the region: the tile pixel holds the region pixel's vector and scale
    lon, lat = 0.14, 52.222
    (x,), (y,) = warp_transform("EPSG:4326", tile.crs, [lon], [lat])
    tr, tc = rasterio.transform.rowcol(tile.transform, x, y)
    cx, cy = rasterio.transform.xy(tile.transform, tr, tc)  # the tile pixel's centre decides
    rr, rc = rasterio.transform.rowcol(region.grid.transform, cx, cy)  # same UTM zone here
    assert np.array_equal(vectors[tr, tc], q[rr, rc]) and tile_scales[tr, tc] == scales[rr, rc]
    assert np.isfinite(tile_scales).sum() == pytest.approx(np.isfinite(scales).sum(), rel=0.05)
    # outside the region: no data
    assert np.isnan(tile_scales[0, 0])
    # exporting again changes nothing that is already there
    before = vectors.copy()
    export_partition(partition, 2022, region.bbox, root)
    assert np.array_equal(np.load(written[0]), before)
