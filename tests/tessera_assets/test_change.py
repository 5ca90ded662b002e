"""change_map on the demo's tiny region: calibrated scores, patches, the baseline, the true changes,
and "find changes like this one"."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from dagster import materialize

from conftest import TINY_REGION, TINY_YEAR
from resources.change_search import similar_changes
from resources.errors import SearchError
from resources.scenes.demo_catalog import ground_truth_dir
from resources.scenes.demo_truth import change_scores
from tessera_assets.change.assets import change_map
from tessera_assets.partitions import year_region_key


def _meta(result):
    m = result.get_asset_materialization_events()[0].event_specific_data.materialization
    return {k: v.value for k, v in m.metadata.items()}


@pytest.fixture(scope="module")
def changed(embedded_env):
    env, instance, _, _ = embedded_env
    result = materialize([change_map], partition_key=year_region_key(TINY_YEAR, TINY_REGION), instance=instance,
                         resources=env.resources)
    return env, instance, result


def test_change_map_finds_the_true_changes(changed):
    env, _, result = changed
    meta = _meta(result)
    assert meta["reference_year"] == TINY_YEAR - 1 and meta["patches"] >= 1
    assert meta["map"].startswith("![change since")
    storage = env.resources["storage"]
    patches = json.loads(storage.path("change", str(TINY_YEAR), TINY_REGION, "patches.geojson").read_text())
    assert sum(f["properties"]["area_ha"] for f in patches["features"]) == pytest.approx(meta["changed_area_ha"], abs=0.05)
    scores = change_scores(storage, env.catalog_root, TINY_YEAR, TINY_REGION)
    assert set(scores) == {"embeddings", "baseline"}
    # a cleared wood, a new estate and a rotated field: most of it is found, and little else
    assert scores["embeddings"]["f1"] > 0.5, scores
    assert scores["embeddings"]["false_alarm_rate"] < 0.05


def test_the_first_year_has_nothing_to_compare_with(embedded_env):
    env, instance, _, _ = embedded_env
    result = materialize([change_map], partition_key=year_region_key(TINY_YEAR - 1, TINY_REGION), instance=instance,
                         resources=env.resources, raise_on_error=False)
    message = result.get_step_failure_events()[0].event_specific_data.error.cause.message
    assert f"measures change since {TINY_YEAR - 2}, whose embeddings are not materialised" in message


def test_changes_like_a_clearing_rank_the_clearing_first(changed):
    env, _, _ = changed
    truth = json.loads((ground_truth_dir(env.catalog_root, TINY_REGION, TINY_YEAR) / "changes.geojson").read_text())
    clearing = next(f for f in truth["features"] if f["properties"]["kind"] == "clearing")
    storage = env.resources["storage"]
    with rasterio.open(storage.path("change", str(TINY_YEAR), TINY_REGION, "patch_ids.tif")) as src:
        ids, transform, crs = src.read(1), src.transform, src.crs
    with rasterio.open(ground_truth_dir(env.catalog_root, TINY_REGION, TINY_YEAR) / "change.tif") as src:
        true_change = src.read(1) == 1
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    cleared = rasterize([(transform_geom("EPSG:4326", crs, clearing["geometry"]), 1)], out_shape=ids.shape,
                        transform=transform).astype(bool) & true_change
    found_here = np.bincount(ids[cleared & (ids > 0)])
    assert found_here.size > 1, "the clearing is among the changed patches"
    target = int(found_here[1:].argmax() + 1)
    row, col = np.argwhere(ids == target)[len(np.argwhere(ids == target)) // 2]
    lon, lat = rasterio.warp.transform(crs, "EPSG:4326", *rasterio.transform.xy(transform, [row], [col]))
    hits = similar_changes(storage, TINY_YEAR, TINY_REGION, lon[0], lat[0], k=5)
    assert hits[0]["properties"]["patch"] == target and hits[0]["properties"]["similarity"] > 0.5
    assert hits == sorted(hits, key=lambda f: -f["properties"]["similarity"])
    with pytest.raises(SearchError, match="outside region"):
        similar_changes(storage, TINY_YEAR, TINY_REGION, 10.0, 45.0)


def test_the_change_map_opens_in_xarray(changed):
    pytest.importorskip("rioxarray")
    from tessera_assets.products import open_change_map

    env, _, result = changed
    ds = open_change_map(TINY_YEAR, TINY_REGION, root=str(env.root / "data"))
    assert {"score", "changed", "patch_ids", "baseline_changed"} <= set(ds.data_vars)
    assert ds.attrs["reference_year"] == TINY_YEAR - 1
    assert float((ds.changed == 1).sum()) * 0.01 == pytest.approx(_meta(result)["changed_area_ha"], abs=0.005)
    assert bool(((ds.patch_ids > 0) == (ds.changed == 1)).all())  # 255: no data


def test_a_sampled_typical_change_scores_pixels_as_every_pixel_would(embedded_env, monkeypatch):
    """A large region's typical change comes from a sample of its pixels: drawn the same on every
    run, and close enough to all pixels' that the magnitudes rank the pixels alike."""
    import tessera_assets.change.assets as change_assets

    env, _, _, _ = embedded_env
    storage = env.resources["storage"]
    before, after = storage.open_embeddings(TINY_YEAR - 1, TINY_REGION), storage.open_embeddings(TINY_YEAR, TINY_REGION)
    every = change_assets.change_magnitude(before, after)
    valid = np.isfinite(every)
    monkeypatch.setattr(change_assets, "TYPICAL_CHANGE_SAMPLE", int(valid.sum()) // 4)
    sampled = change_assets.change_magnitude(before, after)
    assert np.array_equal(sampled, change_assets.change_magnitude(before, after), equal_nan=True)
    assert np.array_equal(np.isfinite(sampled), valid) and not np.array_equal(sampled, every, equal_nan=True)
    ranks = [np.argsort(np.argsort(m[valid])) for m in (every, sampled)]
    assert np.corrcoef(*ranks)[0, 1] > 0.99
