"""The official tile layout in both directions: tiles written by our export, official tiles imported
onto a region grid (across tiles and UTM zones), and bad tile roots named."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from resources.official.tiles import export_partition, tile_centres, tile_grid
from resources.regions import make_region
from resources.storage.data_root import EmbeddingPartition
from resources.testing.official_tiles import BOUNDARY_BBOX, random_partition, write_official_tiles


def test_tile_grid_matches_geotessera():
    grid = tile_grid(0.15, 52.05)
    assert grid.crs.to_epsg() == 32631
    assert (grid.height, grid.width) == (1139, 729)
    assert grid.transform.c == pytest.approx(300933.936, abs=1e-3)
    assert grid.transform.f == pytest.approx(5776128.478, abs=1e-3)


def test_tile_centres_cover_the_bbox():
    assert tile_centres((0.08, 52.19, 0.1175, 52.213)) == [(0.05, 52.15), (0.15, 52.15), (0.05, 52.25), (0.15, 52.25)]


def test_export_writes_official_layout_with_the_same_vectors(tmp_path):
    region = make_region("fens", [0.12, 52.21, 0.16, 52.23], 1000)
    (tmp_path / "emb").mkdir()
    partition, q, scales = random_partition(tmp_path / "emb", region)
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


# TorchGeo's TesseraEmbeddings (0.9): RasterDataset parses file names with re.VERBOSE
TORCHGEO_GLOB = "grid_*.tiff"
TORCHGEO_REGEX = r"""
    ^grid
    _(?P<lon>[0-9.-]+)
    _(?P<lat>[0-9.-]+)
    _(?P<date>[0-9]{4})
    .tiff$
"""


def test_tiff_export_is_the_layout_torchgeo_reads(tmp_path):
    """geotessera's GeoTIFF layout, checked against TorchGeo's file-name contract and read with
    rasterio as TorchGeo does: float32, 128 bands, the tile's UTM grid, NaN where there is no data;
    values are the dequantised vectors; a second region fills the same tile without overwriting."""
    import re

    from model.quantise import dequantise
    from resources.official.tiles import export_tiffs

    cogeo = pytest.importorskip("rio_cogeo.cogeo")
    region = make_region("fens", [0.12, 52.21, 0.16, 52.23], 1000)
    (tmp_path / "emb").mkdir()
    partition, q, scales = random_partition(tmp_path / "emb", region)
    root = tmp_path / "tiffs"
    written = export_tiffs(partition, 2022, region.bbox, root)
    assert [p.relative_to(root).as_posix() for p in written] == [
        "global_0.1_degree_representation/2022/grid_0.15_52.25/grid_0.15_52.25_2022.tiff"]
    path = written[0]
    assert path.match(TORCHGEO_GLOB)
    match = re.match(TORCHGEO_REGEX, path.name, re.VERBOSE)
    assert match and match.group("lon", "lat", "date") == ("0.15", "52.25", "2022")
    tile = tile_grid(0.15, 52.25)
    with rasterio.open(path) as src:
        assert (src.count, src.dtypes[0], src.crs, src.transform, src.shape) == \
            (128, "float32", tile.crs, tile.transform, (tile.height, tile.width))
        values = np.moveaxis(src.read(), 0, -1)
    assert cogeo.cog_validate(str(path), strict=True)[0]
    lon, lat = 0.14, 52.222
    (x,), (y,) = warp_transform("EPSG:4326", tile.crs, [lon], [lat])
    tr, tc = rasterio.transform.rowcol(tile.transform, x, y)
    cx, cy = rasterio.transform.xy(tile.transform, tr, tc)
    rr, rc = rasterio.transform.rowcol(region.grid.transform, cx, cy)
    assert np.array_equal(values[tr, tc], dequantise(q[rr, rc], scales[rr, rc]))
    assert np.isnan(values[0, 0]).all()
    filled = np.isfinite(values[..., 0]).sum()
    neighbour = make_region("fens-east", [0.16, 52.21, 0.19, 52.23], 1000)
    (tmp_path / "emb2").mkdir()
    other, _, _ = random_partition(tmp_path / "emb2", neighbour, seed=1)
    export_tiffs(other, 2022, neighbour.bbox, root)
    with rasterio.open(path) as src:
        again = np.moveaxis(src.read(), 0, -1)
    assert np.array_equal(again[tr, tc], values[tr, tc]) and np.isfinite(again[..., 0]).sum() > filled


# --- official tiles in ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    from resources.official.tiles import tile_centres

    root = tmp_path_factory.mktemp("official")
    return write_official_tiles(root, 2024, tile_centres(BOUNDARY_BBOX),
                                metadata={"dataset_version": "1.1", "dataset_variant": "cambridge"})


def _expected_at(root, year, lon, lat):
    """The tile pixel under a point, found the way geotessera's recipe describes it (read from the
    files directly)."""
    ix, iy = math.floor(lon * 10), math.floor(lat * 10)
    name = f"grid_{ix / 10 + 0.05:.2f}_{iy / 10 + 0.05:.2f}"
    with rasterio.open(root / "global_0.1_degree_tiff_all" / f"{name}.tiff") as src:
        (x,), (y,) = warp_transform("EPSG:4326", src.crs, [lon], [lat])
        r, c = src.index(x, y)
    folder = root / "global_0.1_degree_representation" / str(year) / name
    return np.load(folder / f"{name}.npy", mmap_mode="r")[r, c], np.load(folder / f"{name}_scales.npy")[r, c]


def test_import_takes_the_tile_pixel_under_each_pixel_centre_across_tiles_and_utm_zones(official_root, tmp_path):
    from resources.official.tiles import TileRoot, import_tiles

    region = make_region("border", list(BOUNDARY_BBOX), 1000)
    report = import_tiles(TileRoot(official_root), 2024, region.grid, region.bbox, tmp_path, block=64)
    assert len(report.tiles) == 4 and report.missing == [] and report.dim == 128
    q, scales = EmbeddingPartition(tmp_path).read()
    assert set(np.unique(q[..., 2][np.isfinite(scales)])) == {0, 1, 2, 3}, "every tile contributes"
    grid = region.grid
    rng = np.random.default_rng(1)
    for r, c in zip(rng.integers(0, grid.height, 300), rng.integers(0, grid.width, 300)):
        x, y = rasterio.transform.xy(grid.transform, r, c)
        (lon,), (lat,) = warp_transform(grid.crs, "EPSG:4326", [x], [y])
        vector, scale = _expected_at(official_root, 2024, lon, lat)
        assert np.array_equal(q[r, c], vector) and np.array_equal(scales[r, c], scale, equal_nan=True)


def test_missing_tiles_and_water_stay_no_data(official_root, tmp_path):
    import shutil

    from resources.official.tiles import TileRoot, import_tiles

    partial_root = tmp_path / "partial"
    shutil.copytree(official_root, partial_root)
    shutil.rmtree(partial_root / "global_0.1_degree_representation" / "2024" / "grid_6.05_51.25")
    region = make_region("border", list(BOUNDARY_BBOX), 1000)
    (tmp_path / "out").mkdir()
    report = import_tiles(TileRoot(partial_root), 2024, region.grid, region.bbox, tmp_path / "out")
    assert report.missing == ["grid_6.05_51.25"]
    q, scales = EmbeddingPartition(tmp_path / "out").read()
    assert 0 < report.filled < report.pixels and not (q[..., 2][np.isfinite(scales)] == 3).any()


@pytest.mark.parametrize("damage, message", [
    ("no_folders", "is not a geotessera tile root"),
    ("shape", "but its landmask grid_6.05_51.15.tiff is"),
    ("negative", "holds negative scales"),
    ("version", "says these tiles are dataset version 1.1, not the 2.0 asked for"),
    ("no_metadata", "has no tessera_metadata.json: name the dataset version"),
    ("elsewhere", "no tile of 2024 under"),
])
def test_bad_tiles_are_named_and_nothing_is_written(official_root, tmp_path, damage, message):
    import shutil

    from resources.errors import TileSourceError
    from resources.official.source import OfficialTiles
    from resources.official.tiles import TileRoot, import_tiles

    root = tmp_path / "root"
    shutil.copytree(official_root, root)
    tile = root / "global_0.1_degree_representation" / "2024" / "grid_6.05_51.15"
    bbox, version = BOUNDARY_BBOX, None
    if damage == "no_folders":
        shutil.rmtree(root / "global_0.1_degree_tiff_all")
    elif damage == "shape":
        np.save(tile / "grid_6.05_51.15.npy", np.zeros((10, 10, 128), np.int8))
        np.save(tile / "grid_6.05_51.15_scales.npy", np.ones((10, 10), np.float32))
    elif damage == "negative":
        scales = np.load(tile / "grid_6.05_51.15_scales.npy")
        scales[7, 7] = -0.01
        np.save(tile / "grid_6.05_51.15_scales.npy", scales)
    elif damage == "version":
        version = "v2"
    elif damage == "no_metadata":
        (root / "tessera_metadata.json").unlink()
    elif damage == "elsewhere":
        bbox = (10.0, 45.0, 10.01, 45.01)
    with pytest.raises(TileSourceError, match=message):
        OfficialTiles(root=str(root), dataset_version=version).open()
        region = make_region("somewhere", list(bbox), 1000)
        (tmp_path / "out").mkdir()
        import_tiles(TileRoot(root), 2024, region.grid, region.bbox, tmp_path / "out")


def test_official_tiles_feed_the_table_search_and_few_shot_without_raw_data(official_root, tmp_path, monkeypatch):
    """A deployment with TESSERA_EMBEDDINGS_TILES: `embeddings` reads the tiles (lineage from
    `geotessera_tiles`, no raw assets), rows carry the official dataset's identity, a pixel's own
    vector finds that pixel, and few-shot runs with no raw-input baseline."""
    import importlib
    import json

    import yaml
    from dagster import AssetKey, instance_for_test, materialize

    from resources.regions import RegionCatalog
    from resources.table.similarity import Similarity
    from tessera_assets.partitions import year_region_key

    (tmp_path / "regions.yaml").write_text(yaml.safe_dump({"regions": {"border": {"bbox": list(BOUNDARY_BBOX)}}}))
    monkeypatch.setenv("TESSERA_EMBEDDINGS_TILES", str(official_root))
    monkeypatch.setenv("TESSERA_REGIONS", str(tmp_path / "regions.yaml"))
    monkeypatch.setenv("TESSERA_HOME", str(tmp_path / "home"))
    import tessera_assets.definitions as definitions

    try:
        defs = importlib.reload(definitions).defs
        graph = defs.resolve_asset_graph()
        assert graph.get(AssetKey("embeddings")).parent_keys == {AssetKey("geotessera_tiles")}
        assert not graph.has(AssetKey("s2_raw")) and not graph.has(AssetKey("encoder_checkpoint"))
        resources = dict(defs.resources)
    finally:
        monkeypatch.delenv("TESSERA_EMBEDDINGS_TILES")
        importlib.reload(definitions)
    from tessera_assets.embeddings.imported import imported_embeddings
    from tessera_assets.fewshot.assets import fewshot_classifier, fewshot_samples
    from tessera_assets.vectors.assets import embedding_table

    assert isinstance(resources["regions"], RegionCatalog)
    key = year_region_key(2024, "border")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", ["border"])
        result = materialize([imported_embeddings, embedding_table], partition_key=key, instance=instance,
                             resources=resources)
        assert result.success
        meta = {m.event_specific_data.materialization.asset_key.to_user_string():
                {k: v.value for k, v in m.event_specific_data.materialization.metadata.items()}
                for m in result.get_asset_materialization_events()}
        assert meta["embeddings"]["encoder_id"] == "official.tessera-v1.1.cambridge"
        assert meta["embeddings"]["dataset_version"] == "1.1" and len(meta["embeddings"]["tile_digests"]) == 4
        assert meta["embeddings"]["explorer"].endswith("/#year=2024&region=border"), "linked to its explorer view"
        assert all(c.passed for c in result.get_asset_check_evaluations())
        store = resources["vectors"]
        rows = store.table().search().where("row = 17 AND col = 23").limit(1).to_arrow().to_pylist()[0]
        assert rows["encoder_id"] == "official.tessera-v1.1.cambridge" and rows["s2_obs"] == 0
        found = Similarity(store).search(np.asarray(rows["vector"], np.float32), k=1)
        assert (found["row"][0].as_py(), found["col"][0].as_py()) == (17, 23)

        grid = resources["regions"].get("border").grid
        features = []
        for r in range(10, grid.height - 10, 12):
            for c in (10, 20, 30, grid.width - 30, grid.width - 20, grid.width - 10):
                x, y = rasterio.transform.xy(grid.transform, r, c)
                (lon,), (lat,) = warp_transform(grid.crs, "EPSG:4326", [x], [y])
                features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                                 "properties": {"label": "west" if lon < 6.0 else "east"}})
        labels = tmp_path / "labels.geojson"
        labels.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        trained = materialize([fewshot_samples, fewshot_classifier], instance=instance, resources=resources,
                              run_config={"ops": {"fewshot_samples": {"config": {"labels_path": str(labels), "year": 2024}},
                                                  "fewshot_classifier": {"config": {"ks": ["2", "all"], "draws": 3}}}})
        assert trained.success
        curves = trained.get_asset_materialization_events()[-1].event_specific_data.materialization.metadata["curves"].value
        assert set(curves) == {"embeddings"}, "no raw partitions: no raw-input baseline"


# --- both directions through the official client -------------------------------------------------

# --- the Zarr store (geotessera 0.11's layout) -----------------------------------------------------

def _encoded_partition(folder, region, identity: dict):
    import json

    folder.mkdir()
    partition, q, scales = random_partition(folder, region)
    (folder / "encoder.json").write_text(json.dumps(identity))
    return partition, q, scales


def test_zarr_export_reads_back_exactly_and_opens_as_the_stores_reader_opens_it(tmp_path):
    from resources.testing.geotessera_client import read_zarr_with_xarray
    from resources.official.zarr_store import ZarrStore, export_zarr

    region = make_region("fens", [0.12, 52.21, 0.16, 52.23], 1000)
    partition, q, scales = _encoded_partition(tmp_path / "emb", region, {"id": "v1.1.mpc.abc", "family": "v1.1"})
    store_path = tmp_path / "tessera.zarr"
    assert export_zarr(partition, 2024, store_path) == int(np.isfinite(scales).sum())
    from resources.official.source import OfficialTiles

    store, dataset = OfficialTiles(root=str(store_path)).open()
    assert isinstance(store, ZarrStore) and dataset.encoder_id == "v1.1.mpc.abc", \
        "a store is told from a tile root; our own vectors keep their encoder's identity"
    (tmp_path / "back").mkdir()
    report = store.import_into(2024, region.grid, region.bbox, tmp_path / "back")
    back_q, back_scales = EmbeddingPartition(tmp_path / "back").read()
    valid = np.isfinite(scales)
    assert report.used == {"utm31": {"build": "v1.1.mpc.abc", "year": "2024"}}
    assert np.array_equal(back_scales, scales, equal_nan=True) and np.array_equal(back_q[valid], q[valid])
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, region.grid.height, 100), rng.integers(0, region.grid.width, 100)
    xs, ys = rasterio.transform.xy(region.grid.transform, rows, cols)
    described, sampled = read_zarr_with_xarray(store_path, "utm31", 2024, list(xs), list(ys), tmp_path / "x.npy")
    assert described["dims"] == ["time", "band", "y", "x"] and described["attrs"]["proj:code"] == "EPSG:32631"
    assert np.array_equal(sampled, q[rows, cols].astype(np.float32) * scales[rows, cols, None], equal_nan=True)


def test_zarr_neighbours_fill_in_and_bad_stores_are_named(tmp_path):
    import zarr

    from resources.errors import TileSourceError
    from resources.official.zarr_store import ZarrStore, export_zarr

    identity = {"id": "v1.1.mpc.abc", "family": "v1.1"}
    west = make_region("west", [0.10, 52.21, 0.13, 52.23], 1000)
    east = make_region("east", [0.12, 52.21, 0.15, 52.23], 1000)  # overlaps west by 0.01 degree
    west_partition, _, _ = _encoded_partition(tmp_path / "w", west, identity)
    east_partition, _, east_scales = _encoded_partition(tmp_path / "e", east, identity)
    store_path = tmp_path / "tessera.zarr"
    export_zarr(west_partition, 2024, store_path)
    assert export_zarr(east_partition, 2024, store_path) < int(np.isfinite(east_scales).sum()), \
        "the overlap keeps what the first export wrote"
    other = {"id": "v2.small.xyz", "family": "v2"}
    other_partition, _, _ = _encoded_partition(tmp_path / "o", east, other)
    with pytest.raises(TileSourceError, match="holds dataset 1.1 'v1.1.mpc.abc'"):
        export_zarr(other_partition, 2024, store_path)
    with pytest.raises(TileSourceError, match="holds dataset version 1.1, not the 2.0 asked for"):
        ZarrStore(store_path).dataset("v2")
    bare = zarr.open_group(str(tmp_path / "bare.zarr"), mode="w", zarr_format=3)
    bare.create_group("utm31")
    with pytest.raises(TileSourceError, match="has no consolidated metadata"):
        ZarrStore(tmp_path / "bare.zarr")
    (tmp_path / "out").mkdir()
    with pytest.raises(TileSourceError, match="holds no zone with 2023 over the region"):
        ZarrStore(store_path).import_into(2023, east.grid, east.bbox, tmp_path / "out")
