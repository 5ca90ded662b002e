import pytest
import yaml

from resources.errors import (
    InvalidBBoxError,
    InvalidRegionNameError,
    RegionTooLargeError,
    UnknownRegionError,
    YearOutOfRangeError,
)
from resources.regions import RegionCatalog, last_year, make_region, region_grid, validate_year


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([1.0, 52.0, 0.5, 52.1], "inverted"),
        ([0.5, 52.1, 0.6, 52.0], "inverted"),
        ([0.5, 52.0, 0.5, 52.1], "inverted or empty in longitude"),
        ([190.0, 52.0, 191.0, 52.1], "longitude out of range"),
        ([0.5, 85.0, 0.6, 85.5], "latitude out of the UTM range"),
        ([0.5, 52.0, 0.6], "4 numbers"),
        ([0.5, float("nan"), 0.6, 52.1], "non-finite"),
    ],
)
def test_bad_bboxes_are_named(bbox, message):
    with pytest.raises(InvalidBBoxError, match=message):
        region_grid(bbox)


def test_grid_is_utm_10m_and_snapped():
    grid = region_grid((0.08, 52.19, 0.1175, 52.213))
    assert grid.crs.to_epsg() == 32631
    assert grid.transform.a == 10 and grid.transform.e == -10
    assert grid.transform.c % 10 == 0 and grid.transform.f % 10 == 0
    assert 255 <= grid.width <= 275


def test_southern_region_uses_a_south_zone():
    assert region_grid((18.85, -33.95, 18.86, -33.94)).crs.to_epsg() == 32734


def test_zone_boundary_is_decided_by_the_centre_deterministically():
    # straddles the 6 E boundary between zones 31 and 32; the centre (5.99) is in 31
    assert region_grid((5.97, 51.0, 6.01, 51.01)).crs.to_epsg() == 32631
    assert region_grid((5.99, 51.0, 6.03, 51.01)).crs.to_epsg() == 32632


def test_blocks_tile_the_grid_exactly():
    grid = region_grid((0.08, 52.19, 0.1175, 52.213))
    blocks = grid.blocks(100)
    assert sum(b.width * b.height for b in blocks) == grid.width * grid.height


def test_year_range():
    assert validate_year("2020") == 2020
    for bad in (2016, last_year() + 1, "20x0"):
        with pytest.raises(YearOutOfRangeError):
            validate_year(bad)


@pytest.mark.parametrize("name", ["Demo", "a|b", "", "-x", "x" * 70, "a b"])
def test_bad_region_names(name):
    with pytest.raises(InvalidRegionNameError):
        make_region(name, [0.0, 50.0, 0.01, 50.01], 100)


def test_region_too_large():
    with pytest.raises(RegionTooLargeError, match="km2"):
        make_region("big", [0.0, 50.0, 2.0, 52.0], 2500)


def test_catalog_add_list_and_unknown(tmp_path):
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump({"regions": {"demo": {"bbox": [0.0, 50.0, 0.01, 50.01], "demo": True}}}))
    catalog = RegionCatalog(path=str(path))
    catalog.add("fens", [0.2, 52.3, 0.25, 52.33])
    names = {r.name: r for r in catalog.all()}
    assert set(names) == {"demo", "fens"}
    assert names["demo"].demo and not names["fens"].demo
    assert not list(tmp_path.glob(".regions.yaml.*")), "no temporary file left behind"
    with pytest.raises(UnknownRegionError, match="unknown region 'nope'.*demo, fens"):
        catalog.get("nope")
    with pytest.raises(InvalidBBoxError):
        catalog.add("broken", [1.0, 1.0, 0.0, 2.0])
    assert set(r.name for r in catalog.all()) == {"demo", "fens"}, "a rejected add changes nothing"


def _add_in_process(path: str, name: str, west: float) -> None:
    RegionCatalog(path=path).add(name, [west, 52.3, west + 0.01, 52.31])


def test_region_edits_keep_comments_and_survive_concurrent_writers(tmp_path):
    import multiprocessing

    path = tmp_path / "regions.yaml"
    path.write_text("# our study areas\nregions:\n  demo:  # the demo\n    bbox: [0.0, 50.0, 0.01, 50.01]\n"
                    "    demo: true\n")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_in_process, args=(str(path), f"site-{i}", 0.1 + i * 0.02))
               for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    catalog = RegionCatalog(path=str(path))
    assert {r.name for r in catalog.all()} == {"demo"} | {f"site-{i}" for i in range(6)}, "no edit lost"
    text = path.read_text()
    assert text.startswith("# our study areas\nregions:\n  demo:  # the demo\n    bbox: [0.0, 50.0, 0.01, 50.01]\n")
    assert "  site-0:\n    bbox: [0.1, 52.3, 0.11, 52.31]\n" in text
    catalog.remove("site-3")
    assert "site-3" not in path.read_text() and "# the demo" in path.read_text()
    with pytest.raises(UnknownRegionError):
        catalog.remove("site-3")
    with pytest.raises(InvalidRegionNameError, match="already exists"):
        catalog.add("site-1", [0.5, 52.3, 0.51, 52.31])


def test_the_sensor_adds_regions_says_so_and_names_orphan_partitions(tmp_path):
    from dagster import DagsterInstance, build_sensor_context

    from tessera_assets.sensors import region_partitions_sensor

    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump({"regions": {"fens": {"bbox": [0.2, 52.3, 0.25, 52.33]}}}))
    catalog = RegionCatalog(path=str(path))
    with DagsterInstance.ephemeral() as instance:
        tick = region_partitions_sensor(build_sensor_context(instance=instance, resources={"regions": catalog}))
        assert tick.skip_message == "added region partitions: fens"
        assert instance.get_dynamic_partitions("region") == ["fens"]
        instance.add_dynamic_partitions("region", ["typo"])  # the UI's "Add a partition" dialog
        with pytest.raises(UnknownRegionError, match="region partitions typo have no entry in .*tessera regions add"):
            region_partitions_sensor(build_sensor_context(instance=instance, resources={"regions": catalog}))
