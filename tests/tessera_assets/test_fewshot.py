"""Labels in, honest k-shot scores and class maps out, on the tiny demo region."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from dagster import materialize

from conftest import TINY_REGION, TINY_YEAR
from model.fewshot import HEADS, SELF_TRAIN_BELOW, Classifier, kshot_curve
from resources.scenes.demo_catalog import CLASS_NAMES, ground_truth_dir
from resources.labels import LabelSource, LabelsError, pixels_of, read_labels
from resources.regions import make_region
from tessera_assets.fewshot.assets import fewshot_classifier, fewshot_samples, land_cover_map
from tessera_assets.partitions import year_region_key


def _blobs(seed=0, per_class=30):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4, size=(3, 8))
    x = np.concatenate([c + rng.normal(size=(per_class, 8)) for c in centres]).astype(np.float32)
    y = np.repeat(np.array(["a", "b", "c"]), per_class)
    return x, y


@pytest.mark.parametrize("head", HEADS)
def test_every_head_separates_separable_classes(head):
    x, y = _blobs()
    model = Classifier(head).fit(x[::2], y[::2])
    assert (model.predict(x[1::2]) == y[1::2]).mean() > 0.9
    proba = model.predict_proba(x[1::2])
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_kshot_protocol_keeps_groups_apart_and_improves_with_k():
    x, y = _blobs(1, per_class=40)
    x = x + np.random.default_rng(2).normal(scale=3, size=x.shape).astype(np.float32)  # make it hard
    groups = np.arange(len(y)) // 2  # pairs of samples share a group, like pixels of one polygon
    curve = kshot_curve(x, y, groups, [1, 5, "all"], draws=10)
    assert [p["k"] for p in curve] == [1, 5, "all"] and all(p["draws"] == 10 for p in curve)
    assert curve[0]["macro_f1"] < curve[-1]["macro_f1"]
    assert set(curve[0]["per_class_f1"]) == set(curve[0]["per_class_f1_std"]) == {"a", "b", "c"}


def test_label_formats_and_their_errors(tmp_path):
    lon, lat = 5.052, 51.218
    (tmp_path / "points.csv").write_text(f"lon,lat,label,year\n{lon},{lat},maize,2022\n")
    assert read_labels(tmp_path / "points.csv")[0].year == 2022
    polygon = {"type": "Polygon", "coordinates": [[[lon, lat], [lon + 0.001, lat], [lon + 0.001, lat + 0.001],
                                                   [lon, lat + 0.001], [lon, lat]]]}
    doc = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": polygon, "properties": {"label": "forest"}}]}
    (tmp_path / "poly.geojson").write_text(json.dumps(doc))
    feature = read_labels(tmp_path / "poly.geojson")[0]
    grid = make_region("t", [5.05, 51.216, 5.0557, 51.2196], 100).grid
    rows, cols = pixels_of(feature, grid)
    assert 50 < len(rows) < 120  # about 70 m x 111 m of 10 m pixels
    import struct

    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {"encoding": "WKB"}}}
    table = pa.table({"geometry": [struct.pack("<BIdd", 1, 1, lon, lat)], "label": ["water"]})
    pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), tmp_path / "p.parquet")
    assert read_labels(tmp_path / "p.parquet")[0].label == "water"
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(LabelsError, match="empty"):
        read_labels(tmp_path / "empty.csv")
    (tmp_path / "cols.csv").write_text("x,y,label\n1,2,a\n")
    with pytest.raises(LabelsError, match="lacks the columns lat, lon"):
        read_labels(tmp_path / "cols.csv")
    line = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"label": "road"},
                                                       "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]}
    (tmp_path / "line.geojson").write_text(json.dumps(line))
    with pytest.raises(LabelsError, match="feature 0 has LineString"):
        read_labels(tmp_path / "line.geojson")
    (tmp_path / "projected.csv").write_text("lon,lat,label\n643160,5676260,a\n")
    with pytest.raises(LabelsError, match="does the file declare its CRS"):
        read_labels(tmp_path / "projected.csv")


def _write_vector(path, shapes, fields: dict, crs: str, driver: str) -> None:
    """A vector file as QGIS or Google Earth would write it (GDAL, through pyogrio)."""
    import shapely
    from pyogrio.raw import write

    names = list(fields)
    write(path, shapely.to_wkb(shapes), [np.array(fields[n], dtype=object) for n in names], fields=names,
          crs=crs, driver=driver, geometry_type="Unknown")


def test_labels_as_qgis_geojson_io_and_google_earth_write_them(tmp_path):
    """GeoPackage and Shapefile in UTM, GeoParquet with a PROJJSON CRS, KML and a GeoJSON with a
    MultiPolygon: each read, reprojected to lon/lat, its class from the chosen field; and every bad
    file refused naming the file and the feature."""
    import shapely
    import shapely.affinity
    import shapely.geometry
    import shapely.ops
    from rasterio.warp import transform as warp

    lon, lat = 5.052, 51.218
    (x,), (y,) = warp("EPSG:4326", "EPSG:32631", [lon], [lat])
    square = shapely.box(x, y, x + 70, y + 110)
    point = shapely.Point(x + 5, y + 5)
    fields = {"crop": ["maize", "wheat"], "biomass": ["4.5", "6.0"]}
    _write_vector(tmp_path / "fields.gpkg", [square, point], fields, "EPSG:32631", "GPKG")
    _write_vector(tmp_path / "fields.shp", [square, point.buffer(4)], fields, "EPSG:32631", "ESRI Shapefile")  # one type
    lonlat = shapely.ops.transform(lambda xs, ys: warp("EPSG:32631", "EPSG:4326", xs, ys), square)
    _write_vector(tmp_path / "fields.kml", [lonlat, shapely.Point(lon, lat)], fields, "EPSG:4326", "KML")
    grid = make_region("t", [5.05, 51.216, 5.0557, 51.2196], 100).grid
    for name in ("fields.gpkg", "fields.shp", "fields.kml"):
        polygon, dot = read_labels(tmp_path / name, label_field="crop", value_field="biomass")
        assert (polygon.label, dot.label, polygon.value) == ("maize", "wheat", 4.5), name
        assert polygon.geometry["type"] == "Polygon" and 50 < len(pixels_of(polygon, grid)[0]) < 120, name
        got = dot.geometry["coordinates"] if dot.geometry["type"] == "Point" else shapely.geometry.shape(
            dot.geometry).centroid.coords[0]
        assert abs(got[0] - lon) < 2e-4 and abs(got[1] - lat) < 2e-4, name  # 5 m off, as drawn
    from pyproj import CRS

    projjson = CRS.from_epsg(32631).to_json_dict()  # the CRS as GeoParquet writes it
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {"encoding": "WKB", "crs": projjson}}}
    table = pa.table({"geometry": shapely.to_wkb([square]), "crop": ["maize"]})
    pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), tmp_path / "utm.parquet")
    assert len(pixels_of(read_labels(tmp_path / "utm.parquet", label_field="crop")[0], grid)[0]) > 50
    two = shapely.MultiPolygon([lonlat, shapely.affinity.translate(lonlat, 0.002, 0)])
    doc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"crop": "rye"},
                                                      "geometry": shapely.geometry.mapping(two)}]}
    (tmp_path / "multi.geojson").write_text(json.dumps(doc))
    assert read_labels(tmp_path / "multi.geojson", label_field="crop")[0].geometry["type"] == "MultiPolygon"
    (tmp_path / "broken.gpkg").write_bytes(b"SQLite format 3\0" + b"\x00" * 200)
    with pytest.raises(LabelsError, match="broken.gpkg: cannot be read as a vector file"):
        read_labels(tmp_path / "broken.gpkg")
    with pytest.raises(LabelsError, match=r"fields.gpkg: feature 0 has no 'label' \(its fields: biomass, crop\)"):
        read_labels(tmp_path / "fields.gpkg")
    _write_vector(tmp_path / "road.gpkg", [shapely.LineString([(x, y), (x + 9, y)])], {"crop": ["road"]},
                  "EPSG:32631", "GPKG")
    with pytest.raises(LabelsError, match="road.gpkg: feature 0 has LineString"):
        read_labels(tmp_path / "road.gpkg", label_field="crop")


def test_points_may_name_their_group_and_otherwise_neighbours_share_one(tmp_path):
    import h3

    (tmp_path / "g.csv").write_text("lon,lat,label,group\n5.05,51.2,maize,field-7\n5.06,51.2,maize,field-7\n"
                                    "5.07,51.2,maize,\n5.0703,51.2002,maize,\n5.15,51.25,maize,\n")
    groups = [f.group for f in read_labels(tmp_path / "g.csv")]
    assert groups[:2] == ["field-7", "field-7"]
    assert groups[2] == groups[3] == f"h3:{h3.latlng_to_cell(51.2, 5.07, 8)}", "30 m apart: one field, one group"
    assert groups[4] != groups[2]


def test_knn_memory_is_bounded_whatever_the_counts():
    """20,000 queries against 3,000 labels of 128 dims: an (N, M, 128) array would be 30 GB."""
    import tracemalloc

    rng = np.random.default_rng(0)
    train, y = rng.normal(size=(3000, 128)).astype(np.float32), rng.integers(0, 4, 3000).astype(str)
    queries = rng.normal(size=(20000, 128)).astype(np.float32)
    head = Classifier("knn").fit(train, y)
    tracemalloc.start()
    proba = head.predict_proba(queries)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"
    xs, ts = head.scale(queries[:50]), head.scale(train)
    brute = np.argsort(((xs[:, None] - ts[None]) ** 2).sum(-1), axis=1)[:, :5]
    target = np.unique(y, return_inverse=True)[1]
    votes = np.stack([np.bincount(target[b], minlength=4) / 5 for b in brute])
    assert np.allclose(proba[:50], votes)


def test_a_class_missing_from_a_draws_test_set_is_not_scored_zero():
    x, y = _blobs(3, per_class=10)
    groups = np.where(y == "c", 0, np.arange(len(y)))  # class c is one group: it is never tested
    curve = kshot_curve(x, y, groups, [2], draws=4)
    assert np.isnan(curve[0]["per_class_f1"]["c"]) and curve[0]["macro_f1"] > 0.9


def test_demo_labels_spread_over_parcels_and_carry_them(demo_env):
    truth = ground_truth_dir(demo_env.catalog_root, TINY_REGION)
    year = ground_truth_dir(demo_env.catalog_root, TINY_REGION, TINY_YEAR)
    with rasterio.open(year / "classes.tif") as classes, rasterio.open(year / "parcels.tif") as parcels:
        class_of, parcel_of = classes.read(1), parcels.read(1)
    with rasterio.open(ground_truth_dir(demo_env.catalog_root, TINY_REGION, TINY_YEAR - 1) / "classes.tif") as before:
        stable = before.read(1) == class_of  # labels lie where the class did not change between the years
    by_class: dict[str, list[str]] = {}
    for feature in json.loads((truth / "labels.geojson").read_text())["features"]:
        props = feature["properties"]
        by_class.setdefault(props["class_id"], []).append(props["group"])
    for class_id, groups in by_class.items():
        parcels = {f"parcel-{p}" for p in np.unique(parcel_of[(class_of == class_id) & stable])}
        assert set(groups) <= parcels
        assert len(set(groups)) == min(len(groups), len(parcels))  # every parcel before any repeats


def test_with_one_label_a_class_self_training_finds_the_gap_between_the_classes():
    """Two long clusters side by side, each labelled once, off its centre in opposite directions: the
    labels alone tilt the boundary across the clusters, the unlabelled pixels show the gap between
    them. (Labels at the clusters' far ends tilt it so far that self-training confirms the wrong
    boundary: it helps where the labels are roughly right, which on the demo is most draws.)"""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([0, 0], [1, 6], (500, 2)), rng.normal([8, 0], [1, 6], (500, 2))]).astype(np.float32)
    y = np.repeat(np.array(["a", "b"]), 500)
    labelled, labels = np.array([[0.0, 3.0], [8.0, -3.0]], np.float32), np.array(["a", "b"])
    pool = x[rng.permutation(len(x))[:400]]
    alone = Classifier().fit(labelled, labels, unlabelled=None)
    taught = Classifier().fit(labelled, labels, unlabelled=pool)
    assert not alone.self_trained and taught.self_trained
    assert (taught.predict(x) == y).mean() > 0.95 > (alone.predict(x) == y).mean() + 0.15
    many = rng.choice(len(x), 2 * SELF_TRAIN_BELOW * 2, replace=False)  # every class has enough labels
    assert not Classifier().fit(x[many], y[many], unlabelled=pool).self_trained
    assert not Classifier("knn").fit(labelled, labels, unlabelled=pool).self_trained


@pytest.fixture(scope="module")
def fewshot_env(embedded_env):
    env, instance, _, _ = embedded_env
    labels = env.catalog_root / "ground_truth" / TINY_REGION / "labels.geojson"
    config = {"ops": {"fewshot_samples": {"config": {"labels_path": str(labels), "year": TINY_YEAR}},
                      "fewshot_classifier": {"config": {"ks": ["1", "5", "all"], "draws": 5}}}}
    trained = materialize([fewshot_samples, fewshot_classifier], instance=instance, resources=env.resources,
                          run_config=config)
    mapped = materialize([land_cover_map], partition_key=year_region_key(TINY_YEAR, TINY_REGION), instance=instance,
                         resources=env.resources)
    return env, instance, trained, mapped, labels


def _meta(result, asset):
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        if m.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in m.metadata.items()}


def test_samples_classifier_and_map(fewshot_env):
    env, _, trained, mapped, labels = fewshot_env
    samples = _meta(trained, "fewshot_samples")
    assert samples["samples"] == samples["labels_read"] == len(json.loads(labels.read_text())["features"])
    curves = _meta(trained, "fewshot_classifier")["curves"]
    assert [p["k"] for p in curves["embeddings"]] == [1, 5, "all"]
    assert [p["self_trained"] for p in curves["embeddings"]] == [True, False, False]
    # the unlabelled pixels: drawn beside the labels, never a labelled pixel, the same on every run
    run = trained.run_id
    pool = pq.read_table(env.resources["storage"].path("fewshot", "samples", run, "unlabelled.parquet"))
    table = pq.read_table(env.resources["storage"].path("fewshot", "samples", run, "samples.parquet"))
    assert samples["unlabelled_pixels"] == pool.num_rows > 100 and pool["baseline"].null_count == 0
    pool_pixels = set(zip(pool["row"].to_pylist(), pool["col"].to_pylist()))
    assert len(pool_pixels) == pool.num_rows
    assert not pool_pixels & set(zip(table["row"].to_pylist(), table["col"].to_pylist()))
    # 6 classes here, maize and spring cereal told apart only by timing, a 40-step encoder: chance is ~0.17
    assert curves["embeddings"][-1]["macro_f1"] > 0.5
    assert _meta(trained, "fewshot_classifier")["learning_curve"].startswith("![learning curve](data:image/png")
    meta = _meta(mapped, "land_cover_map")
    with rasterio.open(env.resources["storage"].path("land_cover", str(TINY_YEAR), TINY_REGION, "classes.tif")) as src:
        classes = src.read(1)
    with rasterio.open(ground_truth_dir(env.catalog_root, TINY_REGION, TINY_YEAR) / "classes.tif") as src:
        truth = src.read(1)
    assert sum(meta["class_area_ha"].values()) == pytest.approx((classes > 0).sum() * 0.01, abs=0.05)
    names = sorted(meta["class_area_ha"])  # map values are 1 + the index of the sorted label names
    truth_id = {name: cls for cls, name in CLASS_NAMES.items()}
    predicted = np.array([truth_id[names[c - 1]] if c else 0 for c in classes.ravel()])
    majority = np.bincount(truth.ravel()).max() / truth.size  # what a constant map would score
    assert (predicted == truth.ravel()).mean() > majority + 0.2
    # the stratified estimates share out the mapped area: they sum to it, each with an interval
    estimates = meta["area_estimate_ha"]
    assert sum(e["area_ha"] for e in estimates.values()) == pytest.approx(sum(meta["class_area_ha"].values()), abs=0.05)
    assert all(e["ci95_ha"] >= 0 for e in estimates.values()) and meta["reference_samples"] == samples["samples"]
    assert "held-out training labels of this partition" in meta["area_estimates"]
    report = json.loads(Path(meta["path"], "area_estimates.json").read_text())
    assert set(report["classes"]) == set(meta["class_area_ha"])


def test_the_unlabelled_pixels_are_the_partitions_own_and_never_a_place_labelled_in_any_year(fewshot_env):
    """Labels of one place in two years: neither year's unlabelled pixels hold a labelled place,
    each carries that pixel's own embedding, and the same labels draw the same pixels again."""
    import dataclasses

    from model.quantise import dequantise
    from resources.labelled_samples import gather_samples

    env, _, _, _, labels = fewshot_env
    storage = env.resources["storage"]
    years = (TINY_YEAR - 1, TINY_YEAR)
    partitions = {(year, TINY_REGION): storage.open_embeddings(year, TINY_REGION) for year in years}
    features = read_labels(labels)
    both = [dataclasses.replace(f, year=year) for year in years for f in features]
    samples = gather_samples(both, partitions)
    pool = samples.unlabelled
    assert set(pool["year"]) == set(years) and len(pool["row"]) > 100
    labelled = set(zip(samples.columns["row"], samples.columns["col"]))
    assert not labelled & set(zip(pool["row"], pool["col"]))
    for year in years:
        q, scales = partitions[(year, TINY_REGION)].read()
        mine = np.array(pool["year"]) == year
        rows, cols = np.array(pool["row"])[mine], np.array(pool["col"])[mine]
        assert np.allclose(samples.unlabelled_x[mine], dequantise(q[rows, cols], scales[rows, cols]))
    again = gather_samples(both, partitions).unlabelled
    assert again["row"] == pool["row"] and again["col"] == pool["col"]


def test_label_problems_are_named(fewshot_env, tmp_path):
    env, instance, _, _, labels = fewshot_env
    far = tmp_path / "far.csv"
    far.write_text("lon,lat,label\n10.0,45.0,a\n10.001,45.0,b\n")
    result = materialize([fewshot_samples], instance=instance, resources=env.resources, raise_on_error=False,
                         run_config={"ops": {"fewshot_samples": {"config": {"labels_path": str(far), "year": TINY_YEAR}}}})
    assert "none of the 2 labels falls in a materialised embeddings partition" in \
        result.get_step_failure_events()[0].event_specific_data.error.cause.message
    features = json.loads(labels.read_text())["features"]
    twice = tmp_path / "twice.geojson"
    twice.write_text(json.dumps({"type": "FeatureCollection", "features": features[:10] + features[:2]}))
    result = materialize([fewshot_samples], instance=instance, resources=env.resources,
                         run_config={"ops": {"fewshot_samples": {"config": {"labels_path": str(twice), "year": TINY_YEAR}}}})
    assert _meta(result, "fewshot_samples")["samples"] == 10, "a pixel labelled twice counts once"
    conflict = dict(features[0], properties=dict(features[0]["properties"], label="orchard"))
    twice.write_text(json.dumps({"type": "FeatureCollection", "features": features[:10] + [conflict]}))
    result = materialize([fewshot_samples], instance=instance, resources=env.resources, raise_on_error=False,
                         run_config={"ops": {"fewshot_samples": {"config": {"labels_path": str(twice), "year": TINY_YEAR}}}})
    message = result.get_step_failure_events()[0].event_specific_data.error.cause.message
    assert f"of {TINY_REGION}|{TINY_YEAR} is labelled both" in message and "'orchard' (feature 10)" in message
    lonely = dict(features[10], properties={"label": "orchard"})
    one = tmp_path / "one.geojson"
    one.write_text(json.dumps({"type": "FeatureCollection", "features": features[:10] + [lonely]}))
    result = materialize([fewshot_samples], instance=instance, resources=env.resources, raise_on_error=False,
                         run_config={"ops": {"fewshot_samples": {"config": {"labels_path": str(one), "year": TINY_YEAR}}}})
    assert "fewer than 2 labelled pixels: orchard (1)" in \
        result.get_step_failure_events()[0].event_specific_data.error.cause.message


def test_each_run_keeps_its_own_samples_and_classifier(fewshot_env, tmp_path):
    """Two few-shot runs write their own files: a classifier trained in a run reads that run's
    samples, and one trained alone reads the latest samples; nothing is overwritten."""
    env, instance, trained, _, labels = fewshot_env
    first = {k: v.value for k, v in trained.get_asset_materialization_events()[0]
             .event_specific_data.materialization.metadata.items()}
    features = json.loads(labels.read_text())["features"]
    fewer = tmp_path / "fewer.geojson"
    fewer.write_text(json.dumps({"type": "FeatureCollection", "features": features[: len(features) // 2]}))
    config = {"ops": {"fewshot_samples": {"config": {"labels_path": str(fewer), "year": TINY_YEAR}},
                      "fewshot_classifier": {"config": {"ks": ["1", "all"], "draws": 2}}}}
    again = materialize([fewshot_samples], instance=instance, resources=env.resources,
                        run_config={"ops": {"fewshot_samples": config["ops"]["fewshot_samples"]}})
    second = _meta(again, "fewshot_samples")
    assert second["path"] != first["path"] and Path(first["path"]).exists(), "the first run's samples are kept"
    alone = materialize([fewshot_classifier], instance=instance, resources=env.resources,
                        run_config={"ops": {"fewshot_classifier": config["ops"]["fewshot_classifier"]}})
    assert _meta(alone, "fewshot_classifier")["samples"] == second["samples"], "alone, it reads the latest samples"
    assert Path(_meta(alone, "fewshot_classifier")["path"]).parent.name == alone.run_id


def test_the_explorers_train_is_the_assets_pipeline(fewshot_env, tmp_path):
    """The same labels trained in the explorer and by the few-shot assets give the same samples,
    the same head and the same class map, pixel for pixel."""
    import shutil

    from tessera_assets.explorer.labelling import LabelSession

    env, _, trained, _, labels = fewshot_env
    shutil.copyfile(labels, tmp_path / "labels.geojson")
    made = LabelSession(tmp_path / "labels.geojson").train(env.resources["storage"], TINY_YEAR, TINY_REGION, "logistic")
    assert made.samples == _meta(trained, "fewshot_samples")["classes"]
    with rasterio.open(made.folder / "classes.tif") as src:
        explorer_map = src.read(1)
    with rasterio.open(env.resources["storage"].path("land_cover", str(TINY_YEAR), TINY_REGION, "classes.tif")) as src:
        asset_map = src.read(1)
    assert (explorer_map > 0).sum() > 100 and np.array_equal(explorer_map, asset_map)


def test_an_edited_labels_file_marks_fewshot_samples_stale(fewshot_env, tmp_path):
    """`labels` is observed with the files' content hash as its data version: samples made from
    one version of the labels are stale once a file changes, and fresh again when re-made."""
    import shutil

    from dagster import AssetKey, Definitions
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.definitions.observe import observe
    from dagster._core.loader import LoadingContextForTest

    from tessera_assets.fewshot.labels import labels as labels_asset

    env, instance, _, _, labels = fewshot_env
    folder = tmp_path / "labels"
    folder.mkdir()
    shutil.copyfile(labels, folder / "fields.geojson")
    resources = env.resources | {"label_source": LabelSource(path=str(folder))}
    defs = Definitions(assets=[labels_asset, fewshot_samples, fewshot_classifier], resources=resources)
    graph = defs.get_repository_def().asset_graph

    def observe_and_status() -> tuple[str, StaleStatus]:
        assert observe([labels_asset], instance=instance, resources=resources).success
        version = instance.get_latest_data_version_record(AssetKey("labels"), is_source=True).asset_observation.data_version
        return version, CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance)).get_status(AssetKey("fewshot_samples"))

    first, _ = observe_and_status()
    assert materialize([fewshot_samples], instance=instance, resources=resources,
                       run_config={"ops": {"fewshot_samples": {"config": {"year": TINY_YEAR}}}}).success
    again, status = observe_and_status()
    assert again == first and status == StaleStatus.FRESH
    edited = json.loads((folder / "fields.geojson").read_text())
    edited["features"] = edited["features"][:-1]
    (folder / "fields.geojson").write_text(json.dumps(edited))
    changed, status = observe_and_status()
    assert changed != first and status == StaleStatus.STALE, "an edited labels file marks the samples stale"


def test_the_class_map_opens_in_xarray_with_its_class_names(fewshot_env):
    pytest.importorskip("rioxarray")
    from tessera_assets.products import open_class_map

    env, _, _, mapped, _ = fewshot_env
    ds = open_class_map(TINY_YEAR, TINY_REGION, root=str(env.root / "data"))
    meta = _meta(mapped, "land_cover_map")
    assert ds.attrs["class_names"] == sorted(meta["class_area_ha"])
    counts = np.bincount(ds.classes.values.ravel(), minlength=len(ds.attrs["class_names"]) + 1)[1:]
    assert {n: round(c * 0.01, 2) for n, c in zip(ds.attrs["class_names"], counts)} == meta["class_area_ha"]
    assert set(json.loads(ds.attrs["area_estimates"])["classes"]) == set(meta["class_area_ha"])
    assert float(ds.confidence.max()) <= 1.0
