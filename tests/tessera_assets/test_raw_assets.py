"""s2_raw / s1_raw materialised for real on a tiny demo partition, through a Dagster instance."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from dagster import materialize

from conftest import TINY_REGION, TINY_YEAR, make_env
from resources.scenes.ingest import ValueStats
from tessera_assets.partitions import year_region_key
from tessera_assets.raw.assets import s1_raw, s2_raw


def _materialize(env, instance, region=TINY_REGION, year=TINY_YEAR, **kwargs):
    return materialize([s2_raw, s1_raw], partition_key=year_region_key(year, region), instance=instance,
                       resources=env.resources, **kwargs)


@pytest.fixture(scope="module")
def ingested(demo_env):
    from dagster import instance_for_test

    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [TINY_REGION, "nowhere"])
        result = _materialize(demo_env, instance)
        yield demo_env, instance, result


def _metadata(result, asset):
    events = [e for e in result.get_asset_materialization_events()
              if e.event_specific_data.materialization.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in events[0].event_specific_data.materialization.metadata.items()}


def test_partition_is_georeferenced_with_dates_and_masks(ingested):
    env, _, result = ingested
    assert result.success
    storage = env.resources["storage"]
    s2 = storage.open_raw("s2", TINY_YEAR, TINY_REGION)
    grid = env.resources["regions"].get(TINY_REGION).grid
    assert s2.grid == grid
    assert len(s2.observations) > 40
    assert all(o["doy"] == _doy(o["date"]) for o in s2.observations)
    first = s2.observations[0]
    with rasterio.open(s2.folder / first["file"]) as src:
        assert src.crs == grid.crs and src.transform == grid.transform
        assert src.count == 10 and src.descriptions[0] == "B04"
        assert src.tags()["date"] == first["date"]
        mask = src.read_masks(1)
    assert set(np.unique(mask)) <= {0, 255}
    assert abs((mask > 0).mean() - first["valid_fraction"]) < 1e-3


def _doy(date: str) -> int:
    import datetime as dt

    return dt.date.fromisoformat(date).timetuple().tm_yday


def test_same_date_granules_are_mosaicked(ingested):
    env, _, _ = ingested
    s2 = env.resources["storage"].open_raw("s2", TINY_YEAR, TINY_REGION)
    both = [o for o in s2.observations if len(o["scenes"]) == 2]
    assert len(both) > len(s2.observations) // 2  # the rest lost one granule to the cloud-cover filter
    assert max(o["valid_fraction"] for o in both) > 0.99, "full coverage needs both granules"


def _source_dn(env, scene_id: str, band: str, lon_lat_xy) -> int:
    href = env.catalog_root / "sentinel-2-l2a" / scene_id / f"{band}.tif"
    with rasterio.open(href) as src:
        return int(next(src.sample([lon_lat_xy]))[0])


def test_baseline_offset_removed_exactly_once(ingested):
    env, _, _ = ingested
    s2 = env.resources["storage"].open_raw("s2", TINY_YEAR, TINY_REGION)
    grid = s2.grid
    checked = set()
    for obs in s2.observations:
        offset = 1000 if obs["date"] >= "2022-01-25" else 0
        if offset in checked:
            continue
        with rasterio.open(s2.folder / obs["file"]) as src:
            data, mask = src.read(1), src.read_masks(1) > 0
        rows, cols = np.nonzero(mask[:, : grid.width // 3])  # the west third lies in granule A only
        if len(rows) == 0:
            continue
        xy = rasterio.transform.xy(grid.transform, rows[0], cols[0])
        source = _source_dn(env, obs["scenes"][0], "B04", xy)
        assert data[rows[0], cols[0]] == source - offset
        checked.add(offset)
    assert checked == {0, 1000}


def test_masked_pixels_agree_with_scl(ingested):
    env, _, _ = ingested
    s2 = env.resources["storage"].open_raw("s2", TINY_YEAR, TINY_REGION)
    obs = min(s2.observations, key=lambda o: abs(o["valid_fraction"] - 0.5))
    with rasterio.open(s2.folder / obs["file"]) as src:
        valid = src.read_masks(1) > 0
    scl_path = env.catalog_root / "sentinel-2-l2a" / obs["scenes"][0] / "SCL.tif"
    with rasterio.open(scl_path) as src, rasterio.vrt.WarpedVRT(
        src, crs=s2.grid.crs, transform=s2.grid.transform, width=s2.grid.width, height=s2.grid.height
    ) as vrt:
        scl = vrt.read(1)
    cols = slice(0, s2.grid.width // 3)
    assert not valid[:, cols][np.isin(scl[:, cols], (0, 3, 8, 9))].any()
    assert valid[:, cols][np.isin(scl[:, cols], (4, 5, 6, 10))].all()


def test_s1_keeps_orbits_apart_in_tessera_units(ingested):
    env, _, result = ingested
    s1 = env.resources["storage"].open_raw("s1", TINY_YEAR, TINY_REGION)
    orbits = {o["orbit"] for o in s1.observations}
    assert orbits == {"ascending", "descending"}
    values, valid = s1.read_block(s1.grid.blocks(1000)[0])
    vv, vh = values[:, 0][valid], values[:, 1][valid]
    assert vv.dtype == np.int16 and ((vv > 0) | (vh > 0)).all(), "valid means some band is non-zero"
    assert not values[:, :, ~valid.any(axis=0)].any()
    assert 2000 < np.median(vv) < 12000
    assert _metadata(result, "s1_raw")["observations"] == len(s1.observations)


def test_metadata_and_checks(ingested):
    _, _, result = ingested
    meta = _metadata(result, "s2_raw")
    for key in ("scenes_found", "scenes_used", "scenes_skipped", "valid_obs_per_pixel_median",
                "coverage_any_valid", "ingest_seconds", "peak_rss_mb", "preview"):
        assert key in meta
    assert meta["scenes_used"] <= meta["scenes_found"]
    assert meta["catalog_layout"] == f"demo ({meta['scenes_found'] - meta['scenes_skipped']} items)"
    assert meta["preview"].startswith("![s2 composite](data:image/png;base64,")
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {("s2_raw", "enough_observations"): True, ("s2_raw", "physical_range"): True,
                      ("s1_raw", "enough_observations"): True, ("s1_raw", "physical_range"): True}
    s2 = ingested[0].resources["storage"].open_raw("s2", TINY_YEAR, TINY_REGION)
    valid_values = sum(o["valid_fraction"] for o in s2.observations) * s2.grid.width * s2.grid.height * 10
    ranged = next(c for c in result.get_asset_check_evaluations()
                  if c.asset_key.to_user_string() == "s2_raw" and c.check_name == "physical_range")
    assert ranged.metadata["values_checked"].value == pytest.approx(valid_values, rel=1e-3)  # every band, every pixel


def test_value_stats_count_what_falls_outside_the_range():
    stats = ValueStats(0, 10000)
    stats.add(np.array([[5, 20000], [0, 10001]]))
    other = ValueStats(0, 10000)
    other.add(np.array([-1]))
    stats.merge(other)
    assert (stats.count, stats.outside, stats.minimum, stats.maximum) == (5, 3, -1, 20000)
    assert stats.outside_fraction == pytest.approx(0.6)


def test_rematerialising_replaces_cleanly(ingested):
    env, instance, _ = ingested
    folder = env.resources["storage"].path("raw", "s2", str(TINY_YEAR), TINY_REGION)
    before = (folder / "index.json").read_text()
    files_before = sorted(p.name for p in (folder / "obs").iterdir())
    assert _materialize(env, instance).success
    assert (folder / "index.json").read_text() == before
    assert sorted(p.name for p in (folder / "obs").iterdir()) == files_before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no temporary folders left"


def test_no_scenes_names_region_year_and_collection(ingested):
    env, instance, _ = ingested
    result = _materialize(env, instance, region="nowhere", raise_on_error=False)
    assert not result.success
    messages = sorted(e.event_specific_data.error.cause.message for e in result.get_step_failure_events())
    assert "no usable sentinel-1-rtc scenes for region 'nowhere' in 2022" in messages[0]
    assert "no usable sentinel-2-l2a scenes for region 'nowhere' in 2022" in messages[1]


def test_unknown_region_fails_before_any_work(ingested):
    env, instance, _ = ingested
    instance.add_dynamic_partitions("region", ["ghost"])
    result = _materialize(env, instance, region="ghost", raise_on_error=False)
    message = result.get_step_failure_events()[0].event_specific_data.error.cause.message
    assert "unknown region 'ghost'" in message


def test_corrupt_cog_is_skipped_and_reported(tmp_path, demo_env):
    from dagster import instance_for_test

    env = make_env(tmp_path)  # an own copy of the catalog, then one COG truncated
    victim = sorted((env.catalog_root / "sentinel-2-l2a").glob("*_A_2022071*"))[0]
    band = victim / "B08.tif"
    band.write_bytes(band.read_bytes()[: band.stat().st_size // 3])
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [TINY_REGION])
        result = materialize([s2_raw], partition_key=year_region_key(TINY_YEAR, TINY_REGION),
                             instance=instance, resources=env.resources)
    assert result.success
    meta = _metadata(result, "s2_raw")
    assert victim.name in meta["skipped_reasons"]
    s2 = env.resources["storage"].open_raw("s2", TINY_YEAR, TINY_REGION)
    assert all(victim.name not in o["scenes"] for o in s2.observations)
    index = json.loads(s2.folder.read_bytes("index.json"))
    assert any(s["id"] == victim.name and ("corrupt" in s["reason"] or "unreadable" in s["reason"])
               for s in index["skipped"])


def test_a_users_catalog_configured_as_demo_is_refused_and_left_whole(demo_env, tmp_path, instance):
    """The demo generator replaces only folders it made: a user's own catalog named `provider: demo`
    by mistake used to be replaced by an empty demo catalog."""
    from resources.scenes.stac import StacCatalog

    own = tmp_path / "my_catalog"
    own.mkdir()
    (own / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "mine", "stac_version": "1.0.0",
                                                  "description": "a user's scenes", "links": []}))
    (own / "scene.tif").write_bytes(b"not the demo's")
    catalog = StacCatalog(url=str(own / "catalog.json"), provider="demo")
    instance.add_dynamic_partitions("region", [TINY_REGION])
    result = materialize([s2_raw], partition_key=year_region_key(TINY_YEAR, TINY_REGION), instance=instance,
                         resources=dict(demo_env.resources, s2_catalog=catalog, s1_catalog=catalog),
                         raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].event_specific_data.error.cause.message
    assert "holds files the demo generator did not write" in message and "not 'demo'" in message
    assert sorted(p.name for p in own.iterdir()) == ["catalog.json", "scene.tif"]
    assert (own / "scene.tif").read_bytes() == b"not the demo's"


def test_s1_in_db_is_converted_and_uncalibrated_numbers_fail_the_range(demo_env, tmp_path):
    """The same scenes delivered in dB give the same partition as in linear power (within one unit
    of rounding); delivered as digital numbers they are implausible and the range check says so."""
    from resources.scenes.ingest import ingest
    from resources.scenes.stac import Scene

    region = demo_env.resources["regions"].get(TINY_REGION)
    scenes = demo_env.resources["s1_catalog"].search("s1", region.bbox, TINY_YEAR).scenes[:4]

    def rewritten(kind: str) -> list[Scene]:
        out = []
        for scene in scenes:
            hrefs = {}
            for band, href in scene.hrefs.items():
                with rasterio.open(href) as src:
                    profile, power = src.profile, src.read(1, masked=True).astype(np.float64)
                values = 10 * np.log10(power) if kind == "db" else np.sqrt(power) * 10_000  # amplitude DN-like
                target = tmp_path / kind / f"{scene.id}_{band}.tif"
                target.parent.mkdir(exist_ok=True)
                profile.update(dtype="float32", nodata=np.nan)
                with rasterio.open(target, "w", **profile) as dst:
                    dst.write(values.filled(np.nan).astype(np.float32), 1)
                hrefs[band] = str(target)
            out.append(Scene(scene.id, scene.collection, scene.datetime, hrefs, orbit_state=scene.orbit_state))
        return out

    reports, cubes = {}, {}
    for kind, inputs in (("linear", scenes), ("db", rewritten("db")), ("numbers", rewritten("numbers"))):
        folder = tmp_path / f"out-{kind}"
        folder.mkdir()
        reports[kind] = ingest("s1", inputs, region.grid, folder)
        obs = sorted((folder / "obs").glob("*.tif"))
        with rasterio.open(obs[0]) as src:
            cubes[kind] = src.read().astype(np.int32)
    assert set(reports["linear"].values.units.values()) == {"linear"}
    assert set(reports["db"].values.units.values()) == {"db"}
    assert np.abs(cubes["db"] - cubes["linear"]).max() <= 1
    assert reports["db"].values.implausible_input_fraction == 0
    assert reports["numbers"].values.implausible_input_fraction > 0.5, "digital numbers: not gamma0 in either unit"


def test_items_without_scl_are_refused_unless_the_catalog_opts_out_of_the_mask(demo_env, tmp_path):
    from resources.scenes.ingest import ingest
    from resources.scenes.stac import StacCatalog, scene_from_item

    item = _load_fixture_item()
    del item["assets"]["SCL"]
    strict = StacCatalog(url="https://example.org/stac/v1", provider="planetary-computer")
    assert scene_from_item(item, "s2", strict.provider_for(item, "s2")).startswith("missing assets SCL")
    lenient = strict.model_copy(update={"s2_mask": "none"})
    assert "SCL" not in scene_from_item(item, "s2", lenient.provider_for(item, "s2")).hrefs

    region = demo_env.resources["regions"].get(TINY_REGION)
    scenes = demo_env.resources["s2_catalog"].search("s2", region.bbox, TINY_YEAR).scenes[:6]
    unmasked = [dataclasses.replace(s, hrefs={b: h for b, h in s.hrefs.items() if b != "SCL"}) for s in scenes]
    counts = {}
    for name, inputs in (("scl", scenes), ("none", unmasked)):
        (tmp_path / name).mkdir()
        ingest("s2", inputs, region.grid, tmp_path / name)
        with rasterio.open(tmp_path / name / "valid_count.tif") as src:
            counts[name] = src.read(1)
    assert (counts["none"] >= counts["scl"]).all() and counts["none"].sum() > counts["scl"].sum(), \
        "cloudy pixels the SCL masks are observations without it"


def _load_fixture_item() -> dict:
    from conftest import fixtures_dir

    page = json.loads((fixtures_dir() / "stac" / "pystac-client" /
                       "planetary-computer_search_sentinel-2-l2a_2019-01-01.json").read_text())
    return next(f for f in page["features"] if f["properties"].get("eo:cloud_cover", 100) < 90)


def _scenes_over_http(demo_env, server, sensor: str, count: int):
    region = demo_env.resources["regions"].get(TINY_REGION)
    scenes = demo_env.resources[f"{sensor}_catalog"].search(sensor, region.bbox, TINY_YEAR).scenes[:count]
    remote = [dataclasses.replace(s, hrefs={b: server.href(h) for b, h in s.hrefs.items()}) for s in scenes]
    return region, scenes, remote


def _cube(folder):
    with rasterio.open(folder / "valid_count.tif") as src:
        counts = src.read(1)
    files = sorted((folder / "obs").glob("*.tif"))
    arrays = []
    for path in files:
        with rasterio.open(path) as src:
            arrays.append((path.name, src.read(), src.read_masks(1)))
    return counts, arrays


def test_remote_reads_in_parallel_survive_transient_failures_with_the_same_bytes(demo_env, tmp_path):
    """COGs over HTTP with 20 ms a request and 5% of requests failing with 503: read by 4 workers,
    every scene arrives (GDAL retries), and the partition is the one a local read writes."""
    from resources.testing.flaky_http import FlakyCogServer
    from resources.scenes.ingest import ingest

    with FlakyCogServer(demo_env.catalog_root, latency_s=0.02, fail_share=0.05) as server:
        region, local, remote = _scenes_over_http(demo_env, server, "s2", 6)
        (tmp_path / "local").mkdir()
        (tmp_path / "remote").mkdir()
        ingest("s2", local, region.grid, tmp_path / "local")
        report = ingest("s2", remote, region.grid, tmp_path / "remote", workers=4)
    assert server.failed > 0, "the server did fail some requests"
    assert report.lost == []
    _same_cube(tmp_path / "local", tmp_path / "remote")


def _same_cube(expected_dir, got_dir) -> None:
    expected, got = _cube(expected_dir), _cube(got_dir)
    assert np.array_equal(expected[0], got[0])
    for (name_a, data_a, mask_a), (name_b, data_b, mask_b) in zip(expected[1], got[1], strict=True):
        assert name_a == name_b and np.array_equal(data_a, data_b) and np.array_equal(mask_a, mask_b)


def test_hrefs_are_signed_as_they_are_opened_so_tokens_never_expire_mid_ingest(demo_env, tmp_path):
    """A server whose tokens live 1.5 s: hrefs signed when the scenes were found are refused after
    that long; signed by the ingest as each file is opened, every scene is read."""
    import time

    from resources.testing.flaky_http import FlakyCogServer
    from resources.scenes.ingest import ingest

    with FlakyCogServer(demo_env.catalog_root, latency_s=0.01, token_ttl_s=1.5) as server:
        region, _, remote = _scenes_over_http(demo_env, server, "s2", 4)
        signed_early = [dataclasses.replace(s, hrefs={b: server.sign(h) for b, h in s.hrefs.items()}) for s in remote]
        time.sleep(1.6)
        for name in ("early", "at_read"):
            (tmp_path / name).mkdir()
        early = ingest("s2", signed_early, region.grid, tmp_path / "early", workers=2)
        at_read = ingest("s2", remote, region.grid, tmp_path / "at_read", workers=2, sign=server.sign)
    assert len(early.lost) == 4 and all("403" in reason for _, reason in early.lost), early.lost
    assert at_read.lost == [] and at_read.scenes_used == 4
    assert server.signed == 2 * sum(len(s.hrefs) for s in remote), "each href signed once more, as it was opened"


def test_s3_hrefs_are_read_with_the_catalogs_endpoint_and_keys(demo_env, tmp_path, s3_endpoint):
    """The demo COGs copied to a local S3 API and named by s3:// hrefs (CDSE's eodata layout): read
    with the endpoint and keys of the catalog, the partition is the one a local read writes."""
    from resources.scenes.ingest import ingest
    from resources.scenes.stac import StacCatalog

    region = demo_env.resources["regions"].get(TINY_REGION)
    local = demo_env.resources["s2_catalog"].search("s2", region.bbox, TINY_YEAR).scenes[:3]
    remote = []
    for scene in local:
        hrefs = {}
        for band, href in scene.hrefs.items():
            key = f"eodata/{Path(href).relative_to(demo_env.catalog_root)}"
            s3_endpoint.client.upload_file(href, "tessera", key)
            hrefs[band] = f"s3://tessera/{key}"
        remote.append(dataclasses.replace(scene, hrefs=hrefs))
    catalog = StacCatalog(url="https://stac.example.org/v1", provider="cdse", s3_endpoint=s3_endpoint.url,
                          s3_access_key_id=s3_endpoint.key_id, s3_secret_access_key=s3_endpoint.secret)
    for name in ("local", "s3"):
        (tmp_path / name).mkdir()
    ingest("s2", local, region.grid, tmp_path / "local")
    report = ingest("s2", remote, region.grid, tmp_path / "s3", workers=2, gdal_options=catalog.gdal_options())
    assert report.lost == [] and report.scenes_used == 3
    _same_cube(tmp_path / "local", tmp_path / "s3")


def test_a_cloud_probability_asset_can_stand_in_for_scl(demo_env, tmp_path):
    """`s2_mask: cloud` with a cloud layer made from each scene's SCL (100 where SCL says unusable,
    0 elsewhere) writes exactly what the SCL itself writes."""
    from resources.scenes.ingest import ingest
    from resources.scenes.sentinel import scl_clear

    region = demo_env.resources["regions"].get(TINY_REGION)
    scenes = demo_env.resources["s2_catalog"].search("s2", region.bbox, TINY_YEAR).scenes[:5]
    clouded = []
    for scene in scenes:
        with rasterio.open(scene.hrefs["SCL"]) as src:
            scl = src.read(1, masked=True)
            profile = dict(src.profile, driver="GTiff", dtype="uint8", nodata=255)
        cloud = np.where(scl.mask, 255, np.where(scl_clear(scl.filled(0)), 0, 100)).astype(np.uint8)
        path = tmp_path / f"{scene.id}_cloud.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(cloud, 1)
        hrefs = {b: h for b, h in scene.hrefs.items() if b != "SCL"} | {"CLOUD": str(path)}
        clouded.append(dataclasses.replace(scene, hrefs=hrefs))
    for name in ("scl", "cloud"):
        (tmp_path / name).mkdir()
    ingest("s2", scenes, region.grid, tmp_path / "scl")
    ingest("s2", clouded, region.grid, tmp_path / "cloud", cloud_clear_below=40)
    _same_cube(tmp_path / "scl", tmp_path / "cloud")


def test_scenes_that_cannot_be_read_are_named_and_too_many_fail_the_partition(demo_env, tmp_path, instance):
    from resources.testing.flaky_http import FlakyCogServer
    from resources.errors import SceneReadFailuresError
    from resources.scenes.ingest import ingest

    with FlakyCogServer(demo_env.catalog_root) as server:
        region, local, remote = _scenes_over_http(demo_env, server, "s2", 6)
        broken = remote[2]
        server.always_fail = {server.href(local[2].hrefs["B04"]).split("/", 3)[3]}
        (tmp_path / "out").mkdir()
        report = ingest("s2", remote, region.grid, tmp_path / "out", workers=3)
    assert [scene for scene, _ in report.lost] == [broken.id]
    assert "B04" in report.lost[0][1]
    assert not any(broken.id in o["scenes"] for o in json.loads((tmp_path / "out" / "index.json").read_text())["observations"])

    # through the asset: 1 of 6 scenes lost is above a 10% limit -> the step fails naming it, nothing is written
    from resources.scenes.stac import StacCatalog

    class OverHttp(StacCatalog):
        def search(self, sensor, bbox, year):
            found = super().search(sensor, bbox, year)
            found.scenes = remote
            return found

    instance.add_dynamic_partitions("region", [TINY_REGION])
    with FlakyCogServer(demo_env.catalog_root, always_fail=server.always_fail) as again:
        remote = [dataclasses.replace(s, hrefs={b: h.replace(server.url, again.url) for b, h in s.hrefs.items()})
                  for s in remote]
        catalog = OverHttp(url=demo_env.resources["s2_catalog"].url, provider="demo", max_lost_fraction=0.1,
                           step_retries=1, step_retry_seconds=0.1)
        result = materialize([s2_raw], partition_key=year_region_key(TINY_YEAR, TINY_REGION), instance=instance,
                             resources=dict(demo_env.resources, s2_catalog=catalog), raise_on_error=False)
    assert not result.success
    assert len(result.filter_events(lambda e: e.event_type_value == "STEP_RESTARTED")) == 1, "retried once, then final"
    error = result.get_step_failure_events()[-1].event_specific_data.error
    assert "1 of 6 sentinel-2-l2a scenes" in str(error) and broken.id in str(error)
    assert SceneReadFailuresError.__name__ in str(error)
