"""The demo's ground truth: per-year classes, biomass that the series carry, true changes."""

from __future__ import annotations

import json

import numpy as np
import rasterio
import rasterio.transform
import rasterio.warp
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from conftest import TINY_REGION, TINY_YEAR
from resources.scenes.demo_catalog import BIOMASS_T_HA, CLASS_NAMES, ground_truth_dir, land_cover, next_year


class _Georef:
    def __init__(self, src):
        self.crs, self.transform = src.crs, src.transform

    def index(self, x, y):
        return rasterio.transform.rowcol(self.transform, x, y)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), _Georef(src)


def test_changes_between_years_are_where_their_polygons_say(demo_env):
    before, _ = _read(ground_truth_dir(demo_env.catalog_root, TINY_REGION, TINY_YEAR - 1) / "classes.tif")
    after, src = _read(ground_truth_dir(demo_env.catalog_root, TINY_REGION, TINY_YEAR) / "classes.tif")
    changed, _ = _read(ground_truth_dir(demo_env.catalog_root, TINY_REGION, TINY_YEAR) / "change.tif")
    assert np.array_equal(changed == 1, before != after), "change.tif is exactly where the class changed"
    polygons = json.loads((ground_truth_dir(demo_env.catalog_root, TINY_REGION, TINY_YEAR) / "changes.geojson").read_text())
    kinds = {f["properties"]["kind"] for f in polygons["features"]}
    assert {"clearing", "built-up", "rotation"} <= kinds
    drawn = rasterize([(transform_geom("EPSG:4326", src.crs, f["geometry"]), 1) for f in polygons["features"]],
                      out_shape=after.shape, transform=src.transform).astype(bool)
    assert np.array_equal(drawn, changed == 1)
    assert not (ground_truth_dir(demo_env.catalog_root, TINY_REGION, TINY_YEAR - 1) / "change.tif").exists()


def test_labels_lie_on_stable_pixels_and_carry_their_biomass(demo_env):
    truth = ground_truth_dir(demo_env.catalog_root, TINY_REGION)
    classes = {y: _read(truth / str(y) / "classes.tif")[0] for y in (TINY_YEAR - 1, TINY_YEAR)}
    biomass, src = _read(truth / str(TINY_YEAR) / "biomass.tif")
    for feature in json.loads((truth / "labels.geojson").read_text())["features"]:
        (x,), (y,) = rasterio.warp.transform("EPSG:4326", src.crs, [feature["geometry"]["coordinates"][0]],
                                            [feature["geometry"]["coordinates"][1]])
        row, col = src.index(x, y)
        props = feature["properties"]
        assert classes[TINY_YEAR - 1][row, col] == classes[TINY_YEAR][row, col] == props["class_id"]
        assert props["biomass"] == round(float(biomass[row, col]), 2)


def test_biomass_varies_within_a_class_and_scales_green_cover():
    land = land_cover((120, 120), seed=7)
    for cls in BIOMASS_T_HA:
        values = land.biomass[land.classes == cls]
        if len(values) > 50:
            assert values.std() / values.mean() > 0.1, f"{CLASS_NAMES[cls]}: biomass varies within the class"
    assert np.all(land.biomass[np.isin(land.classes, (5, 6, 7))] == 0)
    later, changes = next_year(land, seed=8)
    for change in changes:
        assert np.all(later.classes[change.mask] == change.after) and np.all(land.classes[change.mask] == change.before)
    untouched = ~np.logical_or.reduce([c.mask for c in changes])
    assert np.array_equal(later.classes[untouched], land.classes[untouched])


def test_the_catalog_is_the_same_whatever_the_number_of_processes(tmp_path, monkeypatch):
    """Region-years are written side by side; their items join the collections in one order."""
    import hashlib

    import resources.scenes.demo_catalog as demo_catalog
    from resources.regions import make_region

    regions = [make_region("one", [5.05, 51.216, 5.0535, 51.218], 100),
               make_region("two", [18.85, -33.95, 18.8535, -33.948], 100)]

    def digest(folder):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    demo_catalog.ensure_demo_catalog(tmp_path / "parallel", regions)
    monkeypatch.setattr(demo_catalog.os, "sched_getaffinity", lambda pid: {0})
    demo_catalog.ensure_demo_catalog(tmp_path / "serial", regions)
    parallel, serial = digest(tmp_path / "parallel"), digest(tmp_path / "serial")
    assert parallel == serial and len(parallel) > 100
    ids = [json.loads((tmp_path / "serial" / name).read_text())["id"] for name in serial
           if name.startswith("sentinel-1-rtc/") and name.endswith(".json") and name.count("/") == 2]
    assert {i.split("_")[2] for i in ids} == {"one", "two"}


def test_no_cloud_reflectance_passes_as_valid_through_the_20m_scene_classes(demo_env):
    """Each 10 m pixel is valid by the 20 m SCL block it lies in; a cloudy 10 m pixel in a block
    must make the whole block cloud, or its cloud reflectance reaches the embeddings as data."""
    from resources.scenes.sentinel import SCL_INVALID

    items = sorted((demo_env.catalog_root / "sentinel-2-l2a").glob("S2_DEMO_*"))
    cloudy_seen = 0
    for item in items:
        blue, _ = _read(item / "B02.tif")
        scl, _ = _read(item / "SCL.tif")
        valid = ~np.isin(np.kron(scl, np.ones((2, 2), scl.dtype)), SCL_INVALID)
        cloudy = blue > 3500  # cloud is above 0.40 reflectance, clear land below 0.20 (+0.1 offset)
        cloudy_seen += int(cloudy.sum())
        assert not np.any(cloudy & valid), f"{item.name}: {int((cloudy & valid).sum())} cloudy pixels marked valid"
    assert cloudy_seen > 0, "the demo has cloudy scenes"
