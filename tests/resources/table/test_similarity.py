"""The embedding table and similarity search on the tiny demo region, scored against its ground truth."""

from __future__ import annotations

import json

import h3
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
import rasterio
from dagster import Definitions, evaluate_automation_conditions, instance_for_test, materialize

from conftest import TINY_REGION, TINY_YEAR
from model.errors import VectorDimensionError
from resources.table.similarity import SearchError, SearchFilter, Similarity, haversine_m, search_report, write_results
from resources.table.vector_store import VectorStore
from tessera_assets.cli import main
from tessera_assets.partitions import year_region_key
from tessera_assets.vectors.assets import embedding_index, embedding_table, similarity_map

YEARS = (TINY_YEAR - 1, TINY_YEAR)


@pytest.fixture(scope="module")
def table_env(embedded_env):
    env, instance, _, _ = embedded_env
    results = {}
    for year in YEARS:
        results[year] = materialize([embedding_table], partition_key=year_region_key(year, TINY_REGION),
                                    instance=instance, resources=env.resources)
        assert results[year].success
    return env, instance, results


def _meta(result):
    m = result.get_asset_materialization_events()[0].event_specific_data.materialization
    return {k: v.value for k, v in m.metadata.items()}


def _truth(env) -> np.ndarray:
    with rasterio.open(env.catalog_root / "ground_truth" / TINY_REGION / str(TINY_YEAR) / "classes.tif") as src:
        return src.read(1)


def _labels(env) -> list[dict]:
    return json.loads((env.catalog_root / "ground_truth" / TINY_REGION / "labels.geojson").read_text())["features"]


def test_one_row_per_embedded_pixel_and_reruns_never_duplicate(table_env):
    env, instance, results = table_env
    storage = env.resources["storage"]
    embedded = int(np.isfinite(storage.open_embeddings(TINY_YEAR, TINY_REGION).read()[1]).sum())
    meta = _meta(results[TINY_YEAR])
    assert meta["rows"] == embedded
    [check] = results[TINY_YEAR].get_asset_check_evaluations()
    assert check.check_name == "rows_match_embedded_pixels" and check.passed
    assert check.metadata["rows_in_table"].value == embedded
    table = env.resources["vectors"].table()
    before = table.count_rows()
    for _ in range(2):
        materialize([embedding_table], partition_key=year_region_key(TINY_YEAR, TINY_REGION), instance=instance,
                    resources=env.resources)
    assert table.count_rows() == before
    assert table.count_rows(f"year = {TINY_YEAR - 1}") == _meta(results[TINY_YEAR - 1])["rows"], "other partition untouched"
    keys = table.search().select(["key"]).limit(None).to_arrow()["key"].to_pylist()
    assert len(keys) == len(set(keys))


def test_rows_carry_h3_cells_that_agree_with_their_coordinates(table_env):
    env, _, _ = table_env
    rows = env.resources["vectors"].table().search().limit(50).to_arrow().to_pylist()
    for row in rows:
        cell = h3.latlng_to_cell(row["lat"], row["lon"], 13)
        assert h3.str_to_int(cell) == row["h3_r13"]
        assert h3.str_to_int(h3.cell_to_parent(cell, 7)) == row["h3_r7"]
        assert row["key"] == f"{row['year']}-{row['region']}-{row['h3_r13']:x}"
        assert len(row["vector"]) == 128 and row["s2_obs"] > 0


def test_a_pixel_of_a_class_finds_mostly_that_class(table_env):
    env, _, _ = table_env
    truth = _truth(env)
    similarity = Similarity(env.resources["vectors"])
    precisions = []
    for feature in _labels(env)[::10]:
        lon, lat = feature["geometry"]["coordinates"]
        cls = feature["properties"]["class_id"]
        if (truth == cls).sum() < 60:
            continue
        query, origin = similarity.vector_at(lon, lat, TINY_YEAR)
        found = similarity.search(query, k=20, filters=SearchFilter(years=[TINY_YEAR]))
        assert found["similarity"][0].as_py() == pytest.approx(1.0, abs=1e-3)
        classes = truth[np.array(found["row"].to_pylist()), np.array(found["col"].to_pylist())]
        precisions.append((classes == cls).mean())
    assert len(precisions) >= 5
    assert np.mean(precisions) >= 0.7, precisions


def test_filters_are_never_violated(table_env):
    env, _, _ = table_env
    similarity = Similarity(env.resources["vectors"])
    feature = _labels(env)[0]
    lon, lat = feature["geometry"]["coordinates"]
    query, origin = similarity.vector_at(lon, lat, TINY_YEAR)
    within = similarity.search(query, k=50, filters=SearchFilter(years=[TINY_YEAR], within_m=120, centre=(lon, lat)))
    assert 0 < within.num_rows <= 50
    assert (haversine_m(lon, lat, within["lon"].to_numpy(), within["lat"].to_numpy()) <= 120).all()
    cell9 = h3.cell_to_parent(h3.latlng_to_cell(lat, lon, 13), 9)
    in_cell = similarity.search(query, k=30, filters=SearchFilter(h3_cells=[cell9]))
    assert set(in_cell["h3_r13"].to_pylist()) and all(
        h3.cell_to_parent(h3.int_to_str(c), 9) == cell9 for c in in_cell["h3_r13"].to_pylist())
    cell11 = h3.cell_to_parent(h3.latlng_to_cell(lat, lon, 13), 11)  # finer than any filter column
    fine = similarity.search(query, k=30, filters=SearchFilter(h3_cells=[cell11]))
    assert all(h3.cell_to_parent(h3.int_to_str(c), 11) == cell11 for c in fine["h3_r13"].to_pylist())
    w, s, e, n = lon - 0.001, lat - 0.0008, lon + 0.001, lat + 0.0008
    boxed = similarity.search(query, k=40, filters=SearchFilter(bbox=(w, s, e, n), years=list(YEARS)))
    assert ((boxed["lon"].to_numpy() >= w) & (boxed["lon"].to_numpy() <= e)).all()
    assert set(boxed["year"].to_pylist()) <= set(YEARS)


def test_cross_year_query_finds_the_same_place_first(table_env):
    env, _, _ = table_env
    similarity = Similarity(env.resources["vectors"])
    truth = _truth(env)
    hits = []
    for feature in _labels(env)[::15]:
        lon, lat = feature["geometry"]["coordinates"]
        query, origin = similarity.vector_at(lon, lat, TINY_YEAR)
        other = similarity.search(query, k=10, filters=SearchFilter(years=[TINY_YEAR - 1]))
        assert set(other["year"].to_pylist()) == {TINY_YEAR - 1}
        classes = truth[np.array(other["row"].to_pylist()), np.array(other["col"].to_pylist())]
        hits.append((classes == feature["properties"]["class_id"]).mean())
    assert np.mean(hits) >= 0.6, hits


def test_examples_and_keys(table_env):
    env, _, _ = table_env
    similarity = Similarity(env.resources["vectors"])
    labels = _labels(env)
    pos = [similarity.vector_at(*f["geometry"]["coordinates"], TINY_YEAR)[0] for f in labels[:3]]
    neg = [similarity.vector_at(*labels[-1]["geometry"]["coordinates"], TINY_YEAR)[0]]
    combined = similarity.example_vector(pos, neg)
    assert combined.shape == (128,) and abs(np.linalg.norm(combined) - 1) < 1e-5
    _, origin = similarity.vector_at(*labels[0]["geometry"]["coordinates"], TINY_YEAR)
    vector, again = similarity.vector_of_key(origin["key"])
    assert again == origin


def test_bad_queries_are_named(table_env):
    env, _, _ = table_env
    similarity = Similarity(env.resources["vectors"])
    lon, lat = _labels(env)[0]["geometry"]["coordinates"]
    query, _ = similarity.vector_at(lon, lat, TINY_YEAR)
    with pytest.raises(SearchError, match="out of range"):
        similarity.vector_at(200, lat, TINY_YEAR)
    with pytest.raises(SearchError, match="outside every materialised partition"):
        similarity.vector_at(lon + 1, lat, TINY_YEAR)
    with pytest.raises(SearchError, match="year 2018 is not in the embedding table"):
        similarity.vector_at(lon, lat, 2018)
    for k in (0, -3, 10**6):
        with pytest.raises(SearchError, match="k must be"):
            similarity.search(query, k=k)
    with pytest.raises(VectorDimensionError, match="64 dimensions, the table holds 128"):
        similarity.search(np.ones(64), k=5)
    with pytest.raises(SearchError, match="bad bbox"):
        similarity.search(query, filters=SearchFilter(bbox=(1.0, 0.0, 0.0, 1.0)))
    with pytest.raises(SearchError, match="too coarse"):
        similarity.search(query, filters=SearchFilter(h3_cells=[h3.latlng_to_cell(lat, lon, 1)]))
    with pytest.raises(SearchError, match="none of the years"):
        similarity.search(query, filters=SearchFilter(years=[2019]))


def test_results_as_geojson_and_geoparquet(table_env, tmp_path):
    env, _, _ = table_env
    similarity = Similarity(env.resources["vectors"])
    query, _ = similarity.vector_at(*_labels(env)[0]["geometry"]["coordinates"], TINY_YEAR)
    found = similarity.search(query, k=5)
    collection = json.loads(open(write_results(found, str(tmp_path / "r.geojson"))).read())
    assert len(collection["features"]) == 5 and collection["features"][0]["properties"]["similarity"] > 0.99
    table = pq.read_table(write_results(found, str(tmp_path / "r.parquet")))
    assert b"geo" in table.schema.metadata and table.num_rows == 5


def test_embedding_index_trains_then_tops_up_and_search_agrees_with_exact(table_env, tmp_path):
    env, instance, _ = table_env
    # always through the index here (it is what is tested); built in two segments, so in two steps
    store = VectorStore(uri=str(tmp_path / "lancedb"), ann_min_rows=2000, rows_per_partition=256,
                        exact_scan_max_rows=0, index_segments=2, rows_per_fragment=1000)
    resources = dict(env.resources, vectors=store)
    key = year_region_key(TINY_YEAR, TINY_REGION)
    materialize([embedding_table], partition_key=key, instance=instance, resources=resources)
    first = _meta(materialize([embedding_index], instance=instance, resources=resources))
    assert first["index_type"] == "none (exact search)" and first["action"] == "none"  # too few rows for IVF
    materialize([embedding_table], partition_key=year_region_key(TINY_YEAR - 1, TINY_REGION), instance=instance,
                resources=resources)
    run = materialize([embedding_index], instance=instance, resources=resources)
    trained = _meta(run)
    assert trained["index_type"] == "IVF_RQ 4-bit (cosine)" and trained["action"] == "trained"
    built = [e.step_key for e in run.get_step_success_events() if e.step_key.startswith("embedding_index.build_index_segment")]
    assert len(built) == 2 and trained["segments_built"] == 2 and trained["index"]["segments_built"] == 2
    assert [ix.num_segments for ix in store.table().list_indices() if ix.columns == ["vector"]] == [1], \
        "the segments are published as one index"
    assert trained["unindexed_rows"] == 0 and trained["indexed_rows"] == trained["table_rows"]
    assert "| 2022 | tiny |" in trained["rows_by_partition"]
    again = _meta(materialize([embedding_index], instance=instance, resources=resources))
    assert again["action"] == "folded in new rows" and again["index"]["name"] == trained["index"]["name"]

    similarity = Similarity(store)
    for feature in _labels(env)[:40:8]:
        query, _ = similarity.vector_at(*feature["geometry"]["coordinates"], TINY_YEAR)
        approx = similarity.search(query, k=10)
        assert search_report(approx)["index"] == trained["index"]["name"]
        exact = similarity.search(query, k=10, exact=True)
        assert search_report(exact)["index"] == "none (exact scan)"
        assert len(set(approx["key"].to_pylist()) & set(exact["key"].to_pylist())) >= 8


def test_embedding_index_runs_by_itself_after_partition_writes(embedded_env, tmp_path):
    env, _, _, _ = embedded_env
    resources = dict(env.resources, vectors=VectorStore(uri=str(tmp_path / "lancedb")))
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("region", [TINY_REGION])
        assets = Definitions(assets=[embedding_table, embedding_index], resources=resources)
        tick = evaluate_automation_conditions(defs=assets, instance=instance)
        assert tick.get_num_requested(embedding_index.key) == 0, "nothing to index before the first write"
        materialize([embedding_table], partition_key=year_region_key(TINY_YEAR, TINY_REGION), instance=instance,
                    resources=resources)
        tick = evaluate_automation_conditions(defs=assets, instance=instance, cursor=tick.cursor)
        assert tick.get_num_requested(embedding_index.key) == 1
        materialize([embedding_index], instance=instance, resources=resources)
        tick = evaluate_automation_conditions(defs=assets, instance=instance, cursor=tick.cursor)
        assert tick.get_num_requested(embedding_index.key) == 0, "indexed: nothing new"


def test_cli_search_says_what_it_searched(table_env, monkeypatch, capsys, tmp_path):
    env, _, _ = table_env
    monkeypatch.setenv("TESSERA_LANCEDB_URI", env.resources["vectors"].uri)
    lon, lat = _labels(env)[0]["geometry"]["coordinates"]
    out = tmp_path / "hits.geojson"
    assert main(["search", "--lon", str(lon), "--lat", str(lat), "--year", str(TINY_YEAR), "-k", "7",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = env.resources["vectors"].table().count_rows()
    year_rows = env.resources["vectors"].table().count_rows(f"year = {TINY_YEAR}")
    assert f"searched {year_rows:,} of {rows:,} rows with none (exact scan)" in printed
    assert len(json.loads(out.read_text())["features"]) == 7
    assert main(["search", "--lon", str(lon), "--lat", str(lat), "--year", "2019"]) == 2
    assert "year 2019 is not in the embedding table" in capsys.readouterr().err


def test_similarity_map_for_saved_queries(table_env, tmp_path):
    env, instance, _ = table_env
    lon, lat = _labels(env)[0]["geometry"]["coordinates"]
    queries = tmp_path / "queries.yaml"
    queries.write_text(f"queries:\n  probe: {{lon: {lon}, lat: {lat}, year: {TINY_YEAR}}}\n")
    result = materialize([similarity_map], partition_key=year_region_key(TINY_YEAR, TINY_REGION), instance=instance,
                         resources=env.resources,
                         run_config={"ops": {"similarity_map": {"config": {"queries_path": str(queries)}}}})
    meta = _meta(result)
    assert meta["probe_map"].startswith("![similarity to probe](data:image/png;base64,")
    raster = env.resources["storage"].path("similarity", str(TINY_YEAR), TINY_REGION, "probe.tif")
    with rasterio.open(raster) as src:
        sim = src.read(1)
    truth = _truth(env)
    cls = _labels(env)[0]["properties"]["class_id"]
    assert np.nanmax(sim) == pytest.approx(1.0, abs=1e-3)
    # the query's class ranks above the others (AUC; chance is 0.5), whatever the anisotropy of a space
    # trained 40 steps on fields whose vigour varies (0.79 measured)
    same, other = sim[(truth == cls) & np.isfinite(sim)], sim[(truth != cls) & np.isfinite(sim)]
    ranks = np.argsort(np.argsort(np.concatenate([same, other]))) + 1
    auc = (ranks[:len(same)].sum() - len(same) * (len(same) + 1) / 2) / (len(same) * len(other))
    assert auc > 0.75


def test_a_batch_of_queries_answers_as_each_query_alone(table_env):
    """`search_many`: one LanceDB query for many vectors gives, query by query, what `search` gives."""
    env, _, _ = table_env
    similarity = Similarity(env.resources["vectors"])
    points = [tuple(f["geometry"]["coordinates"]) for f in _labels(env)[:12]]
    queries = similarity.vectors_at(points, TINY_YEAR)
    assert np.array_equal(queries[3], similarity.vector_at(*points[3], TINY_YEAR)[0])
    filters = SearchFilter(years=[TINY_YEAR])
    batch = similarity.search_many(queries, k=5, filters=filters)
    assert batch.column_names[0] == "query" and batch.num_rows == 12 * 5
    for i, query in enumerate(queries):
        alone = similarity.search(query, k=5, filters=filters)
        mine = batch.filter(pa.compute.equal(batch["query"], i))
        assert mine["key"].to_pylist() == alone["key"].to_pylist()
        assert np.allclose(mine["similarity"].to_numpy(), alone["similarity"].to_numpy(), atol=1e-6)
    assert search_report(batch)["rows_searched"] == search_report(alone)["rows_searched"]
    with pytest.raises(SearchError, match="2-d array"):
        similarity.search_many(queries[0], k=5)
    with pytest.raises(SearchError, match="radius"):
        similarity.search_many(queries, filters=SearchFilter(within_m=100, centre=points[0]))
    with pytest.raises(SearchError, match=r"1 of 2 points are outside every materialised partition of 2022: 1 \(10.0, 45.0\)"):
        similarity.vectors_at([points[0], (10.0, 45.0)], TINY_YEAR)


def test_cli_searches_a_file_of_points_in_one_batch(table_env, monkeypatch, capsys, tmp_path):
    env, _, _ = table_env
    monkeypatch.setenv("TESSERA_LANCEDB_URI", env.resources["vectors"].uri)
    points = [f["geometry"]["coordinates"] for f in _labels(env)[:6]]
    csv_file = tmp_path / "points.csv"
    csv_file.write_text("lon,lat\n" + "".join(f"{lon},{lat}\n" for lon, lat in points))
    out = tmp_path / "hits.parquet"
    assert main(["search", "--points", str(csv_file), "--year", str(TINY_YEAR), "-k", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 queries in one batch" in printed and "queries/s" in printed
    hits = pq.read_table(out)
    assert sorted(set(hits["query"].to_pylist())) == list(range(6)) and hits.num_rows == 18
    geojson = tmp_path / "points.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[5.05, 51.2], [5.06, 51.2], [5.05, 51.21], [5.05, 51.2]]]},
         "properties": {}}]}))
    assert main(["search", "--points", str(geojson), "--year", str(TINY_YEAR)]) == 2
    assert "feature 0 has Polygon; query points must be Points" in capsys.readouterr().err
    assert main(["search", "--points", str(csv_file), "--lon", "5.05", "--lat", "51.2", "--year", str(TINY_YEAR)]) == 2
    assert "not both" in capsys.readouterr().err
