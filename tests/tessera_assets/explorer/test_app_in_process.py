"""The explorer app in process (Starlette's test client) on a synthetic partition, two classes
that blend into each other across the middle columns, so the pixels worth labelling are known:
GET /api/suggestions, and the published maps of a partition as layers."""


from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import yaml

with warnings.catch_warnings():  # starlette's note about httpx2, not about this code
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from model.quantise import quantise
from resources.labels import LabelFeature, pixels_of, read_labels
from resources.regions import RegionCatalog
from resources.storage.data_root import EmbeddingWriter, TesseraStorage
from resources.table.vector_store import VectorStore
from tessera_assets.explorer.app import MAX_SUGGESTIONS, Explorer, create_app
from tessera_assets.explorer.labelling import pixel_lonlat

YEAR, REGION = 2022, "blend"
BBOX = [5.05, 51.216, 5.0586, 51.2214]  # about 60 x 60 px


@pytest.fixture()
def world(tmp_path):
    """A data root with one embeddings partition: column t in 0..1 mixes a "west" and an "east"
    vector, plus noise; the head is unsure in the middle columns."""
    (tmp_path / "regions.yaml").write_text(yaml.safe_dump({"regions": {REGION: {"bbox": BBOX}}}))
    regions = RegionCatalog(path=str(tmp_path / "regions.yaml"))
    grid = regions.get(REGION).grid
    rng = np.random.default_rng(0)
    west, east = rng.normal(size=64), rng.normal(size=64)
    t = np.linspace(0, 1, grid.width)[None, :, None]
    vectors = ((1 - t) * west + t * east + rng.normal(0, 0.3, (grid.height, grid.width, 64))).astype(np.float32)
    folder = tmp_path / "data" / "embeddings" / str(YEAR) / REGION
    folder.mkdir(parents=True)
    writer = EmbeddingWriter(folder, grid, 64)
    writer.write(rasterio.windows.Window(0, 0, grid.width, grid.height), *quantise(vectors))
    writer.close()
    (folder / "encoder.json").write_text(json.dumps({"id": "synthetic"}))
    storage = TesseraStorage(root=str(tmp_path / "data"))
    explorer = Explorer(storage, regions, VectorStore(uri=str(tmp_path / "data" / "lancedb")), "")
    with TestClient(create_app(explorer), base_url="http://127.0.0.1:8765") as client:
        yield client, grid, folder


def _train(client, grid) -> None:
    """Six labels in each outer tenth of the columns, then a logistic head."""
    rows = np.linspace(2, grid.height - 3, 6).astype(int)
    for name, col in (("west", 1), ("east", grid.width - 2)):
        for (lon, lat) in pixel_lonlat(grid, rows, np.full(6, col)):
            assert client.post("/api/labels", json={"lon": lon, "lat": lat, "label": name, "year": YEAR}).status_code == 201
    assert client.post("/api/train", json={"year": YEAR, "region": REGION, "head": "logistic"}).status_code == 200


def _suggested(client, **params) -> list[dict]:
    response = client.get("/api/suggestions", params={"year": YEAR, "region": REGION, **params})
    assert response.status_code == 200, response.text
    return response.json()["suggestions"]["features"]


def _labelled(client, grid) -> set[tuple[int, int]]:
    found = set()
    for f in client.get("/api/labels").json()["features"]:
        rows, cols = pixels_of(LabelFeature(f["properties"]["label"], f["geometry"], YEAR, 0, ""), grid)
        found |= set(zip(rows.tolist(), cols.tolist()))
    return found


def test_suggestions_are_uncertain_spaced_unlabelled_and_on_their_pixels(world):
    client, grid, _ = world
    missing = client.get("/api/suggestions", params={"year": YEAR, "region": REGION})
    assert missing.status_code == 404 and "label and train first" in missing.json()["error"]
    _train(client, grid)
    answer = client.get("/api/suggestions", params={"year": YEAR, "region": REGION, "count": 8, "spacing": 3}).json()
    features = answer["suggestions"]["features"]
    assert len(features) == 8 and answer["classes"] == ["east", "west"] and answer["candidates"] == grid.width * grid.height
    at = []
    for rank, f in enumerate(features, 1):
        pr = f["properties"]
        assert pr["rank"] == rank and 0 <= pr["uncertainty"] <= 1
        assert [c["name"] for c in pr["classes"]] in (["east", "west"], ["west", "east"])
        assert pr["classes"][0]["probability"] >= pr["classes"][1]["probability"]
        # the point is the centre of the pixel it names: a label put there labels that pixel
        rows, cols = pixels_of(LabelFeature("x", f["geometry"], YEAR, 0, ""), grid)
        assert (rows.tolist(), cols.tolist()) == ([pr["row"]], [pr["col"]])
        at.append((pr["row"], pr["col"]))
    cols = np.array([c for _, c in at])
    assert (np.abs(cols - grid.width / 2) < grid.width / 4).all(), "the unsure pixels are where the classes blend"
    assert np.mean([f["properties"]["uncertainty"] for f in features]) > 0.5
    spots = np.array(at, float)
    gaps = np.sqrt(((spots[:, None] - spots[None]) ** 2).sum(-1))
    assert gaps[~np.eye(8, dtype=bool)].min() >= 3
    labelled = np.array(sorted(_labelled(client, grid)), float)
    assert np.sqrt(((spots[:, None] - labelled[None]) ** 2).sum(-1)).min() >= 3
    assert _suggested(client, count=8, spacing=3) == features, "one seed, one answer"


def test_a_suggestion_labelled_in_one_click_becomes_a_label_and_is_not_suggested_again(world):
    client, grid, _ = world
    _train(client, grid)
    first = _suggested(client, count=5, spacing=4)[0]
    added = client.post("/api/labels", json={"geometry": first["geometry"], "label": "east", "year": YEAR})
    assert added.status_code == 201
    row, col = first["properties"]["row"], first["properties"]["col"]
    assert (row, col) in _labelled(client, grid)
    again = _suggested(client, count=5, spacing=4)
    assert all((f["properties"]["row"] - row) ** 2 + (f["properties"]["col"] - col) ** 2 >= 16 for f in again), \
        "a label made since the train keeps suggestions away"
    assert len(_suggested(client, count=MAX_SUGGESTIONS, spacing=0)) == MAX_SUGGESTIONS


@pytest.mark.parametrize("params, message", [
    ({"count": 0}, f"count must be in 1..{MAX_SUGGESTIONS}, got 0"),
    ({"count": MAX_SUGGESTIONS + 1}, f"count must be in 1..{MAX_SUGGESTIONS}"),
    ({"count": "ten"}, "count must be an integer, got 'ten'"),
    ({"count": "1e3"}, "count must be an integer"),
    ({"count": ""}, "count must be an integer"),
    ({"count": "9" * 5000}, "count must be an integer"),
    ({"spacing": -1}, "spacing must be in 0..200"),
    ({"spacing": 10 ** 9}, "spacing must be in 0..200"),
    ({"seed": -5}, "seed must be in 0.."),
    ({"year": None}, "year is required"),
    ({"year": "last"}, "year must be an integer"),
    ({"year": 2015}, "year 2015 is out of range"),
    ({"region": None}, "region is required"),
    ({"region": "../../etc"}, "bad region name"),
    ({"region": "<script>"}, "bad region name"),
    ({"cout": 5}, "unknown parameter 'cout'"),
])
def test_bad_parameters_are_400_with_a_message(world, params, message):
    client, grid, _ = world
    _train(client, grid)
    query = {k: v for k, v in ({"year": YEAR, "region": REGION} | params).items() if v is not None}
    response = client.get("/api/suggestions", params=query)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_another_partition_or_new_embeddings_are_refused(world):
    client, grid, folder = world
    _train(client, grid)
    other = client.get("/api/suggestions", params={"year": YEAR, "region": "elsewhere"})
    assert other.status_code == 404 and "label and train first" in other.json()["error"]
    (folder / "encoder.json").write_text(json.dumps({"id": "retrained"}))
    stale = client.get("/api/suggestions", params={"year": YEAR, "region": REGION})
    assert stale.status_code == 400 and "train again" in stale.json()["error"]
    foreign = client.get("/api/suggestions", params={"year": YEAR, "region": REGION}, headers={"host": "evil.example"})
    assert foreign.status_code == 403


def _layers(client) -> list[str]:
    return next(p for p in client.get("/api/partitions").json() if p["region"] == REGION)["layers"]


def test_published_maps_become_layers_of_their_partition(world):
    client, grid, folder = world
    assert _layers(client) == ["pca"], "no value or change map yet"
    storage = TesseraStorage(root=str(folder.parents[2]))
    values = np.tile(np.linspace(0, 100, grid.width, dtype=np.float32), (grid.height, 1))
    with storage.publish("value_map", str(YEAR), REGION) as tmp:
        with rasterio.open(tmp / "values.tif", "w", **grid.geotiff_profile(count=1, dtype="float32", nodata=float("nan"))) as dst:
            dst.write(values, 1)
    assert _layers(client) == ["pca", "values"]
    tile = client.get(f"/tiles/values/{YEAR}/{REGION}/0/0/0.png")
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    assert client.get(f"/tiles/change/{YEAR}/{REGION}/0/0/0.png").status_code == 404, "no change map: not found"
    assert client.get(f"/tiles/height/{YEAR}/{REGION}/0/0/0.png").status_code == 400


def test_labels_export_in_every_format_and_read_back(world, tmp_path):
    client, grid, _ = world
    assert client.get("/api/labels.kml").status_code == 400, "no labels yet"
    _train(client, grid)
    square = {"type": "Polygon", "coordinates": [[[5.051, 51.217], [5.052, 51.217], [5.052, 51.218], [5.051, 51.218],
                                                  [5.051, 51.217]]]}
    assert client.post("/api/labels", json={"geometry": square, "label": 'odd "name"', "year": YEAR}).status_code == 201
    sent = client.get("/api/labels").json()["features"]
    for suffix in ("geojson", "gpkg", "kml", "csv"):
        response = client.get(f"/api/labels.{suffix}")
        assert response.status_code == 200, response.text
        assert f'filename="labels.{suffix}"' in response.headers["content-disposition"]
        (tmp_path / f"back.{suffix}").write_bytes(response.content)
        back = read_labels(tmp_path / f"back.{suffix}")
        assert [f.label for f in back] == [f["properties"]["label"] for f in sent], suffix
        assert {f.year for f in back} == {YEAR}, suffix
        kinds = {f.geometry["type"] for f in back}
        assert kinds == ({"Point"} if suffix == "csv" else {"Point", "Polygon"}), suffix
    assert client.get("/api/labels.shp").status_code == 400


def test_maps_download_as_geotiffs_and_nothing_else_does(world):
    client, grid, folder = world
    storage = TesseraStorage(root=str(folder.parents[2]))
    with storage.publish("value_map", str(YEAR), REGION) as tmp:
        with rasterio.open(tmp / "values.tif", "w", **grid.geotiff_profile(count=1, dtype="float32", nodata=float("nan"))) as dst:
            dst.write(np.ones((grid.height, grid.width), np.float32), 1)
    response = client.get(f"/api/maps/value_map/{YEAR}/{REGION}/values.tif")
    assert response.status_code == 200 and response.headers["content-type"] == "image/tiff"
    with rasterio.MemoryFile(response.content) as memory, memory.open() as src:
        assert src.crs == grid.crs and src.read(1).min() == 1.0
    for bad in (f"embeddings/{YEAR}/{REGION}/embeddings.tif", f"value_map/{YEAR}/{REGION}/item.json",
                f"value_map/{YEAR}/../../regions.yaml", f"value_map/{YEAR}/{REGION}/.hidden.tif"):
        assert client.get(f"/api/maps/{bad}").status_code in (400, 404), bad
