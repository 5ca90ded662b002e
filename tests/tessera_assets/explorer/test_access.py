"""A shared explorer lets no one in without a token, keeps each user's labels apart, and never
puts a token where a browser would leak it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import yaml
from starlette.testclient import TestClient

from model.quantise import quantise
from resources.errors import ConfigurationError
from resources.regions import RegionCatalog
from resources.storage.data_root import EmbeddingWriter, TesseraStorage
from resources.table.vector_store import VectorStore
from tessera_assets.explorer.access import COOKIE, Access, check_exposure, load_tokens
from tessera_assets.explorer.app import Explorer, create_app

YEAR, REGION = 2022, "shared"
ALICE, BOB = "alice-token-0123456789abcdefXYZ", "bob-token-0123456789abcdefXYZ"


@pytest.fixture()
def shared(tmp_path):
    (tmp_path / "regions.yaml").write_text(yaml.safe_dump({"regions": {REGION: {"bbox": [5.05, 51.216, 5.054, 51.219]}}}))
    regions = RegionCatalog(path=str(tmp_path / "regions.yaml"))
    grid = regions.get(REGION).grid
    folder = tmp_path / "data" / "embeddings" / str(YEAR) / REGION
    folder.mkdir(parents=True)
    writer = EmbeddingWriter(folder, grid, 16)
    vectors = np.random.default_rng(0).normal(size=(grid.height, grid.width, 16)).astype(np.float32)
    writer.write(rasterio.windows.Window(0, 0, grid.width, grid.height), *quantise(vectors))
    writer.close()
    (folder / "encoder.json").write_text(json.dumps({"id": "synthetic"}))
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump({"alice": ALICE, "bob": BOB}))
    storage = TesseraStorage(root=str(tmp_path / "data"))
    explorer = Explorer(storage, regions, VectorStore(uri=str(tmp_path / "data" / "lancedb")), "")
    access = check_exposure("0.0.0.0", str(tmp_path / "tokens.yaml"), read_only=False)
    with TestClient(create_app(explorer, "0.0.0.0", access), base_url="http://tessera.example:8765") as client:
        yield client, storage, tmp_path


def _label(client, name: str, **headers):
    return client.post("/api/labels", json={"lon": 5.051, "lat": 51.217, "label": name, "year": YEAR},
                       headers={"origin": "http://tessera.example:8765", **headers})


def test_every_request_needs_a_known_token(shared):
    client, _, _ = shared
    assert client.get("/").status_code == 200, "the page itself is public: it asks for the token"
    for path in ("/api/partitions", "/api/labels", f"/tiles/pca/{YEAR}/{REGION}/0/0/0.png", "/api/labels.geojson",
                 f"/files/embeddings/{YEAR}/{REGION}/preview.png"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"authorization": "Bearer wrong-token-0123456789abcdef"}).status_code == 401
        assert client.get(path, headers={"authorization": f"Basic {ALICE}"}).status_code == 401, "only Bearer"
    assert client.get("/api/partitions", headers={"authorization": f"Bearer {ALICE}"}).status_code == 200
    assert _label(client, "maize").status_code == 401


def test_login_sets_an_httponly_cookie_and_never_echoes_the_token(shared):
    client, _, _ = shared
    origin = {"origin": "http://tessera.example:8765"}
    assert client.post("/api/login", json={"token": "nope"}, headers=origin).status_code == 401
    assert client.post("/api/login", json={"token": ALICE}, headers={"origin": "http://evil.example"}).status_code == 403
    response = client.post("/api/login", json={"token": ALICE}, headers=origin)
    assert response.status_code == 200 and response.json() == {"user": "alice", "read_only": False}
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith(f"{COOKIE}=") and "httponly" in cookie and "samesite=strict" in cookie
    assert ALICE not in response.text
    assert client.get("/api/partitions").status_code == 200, "the cookie now signs every request"


def test_each_user_labels_in_their_own_file_and_sees_only_their_own(shared):
    client, storage, _ = shared
    assert _label(client, "maize", authorization=f"Bearer {ALICE}").status_code == 201
    assert _label(client, "wheat", authorization=f"Bearer {BOB}").status_code == 201
    mine = client.get("/api/labels", headers={"authorization": f"Bearer {ALICE}"}).json()["features"]
    theirs = client.get("/api/labels", headers={"authorization": f"Bearer {BOB}"}).json()["features"]
    assert [f["properties"]["label"] for f in mine] == ["maize"] and [f["properties"]["label"] for f in theirs] == ["wheat"]
    assert sorted(p.name for p in (storage.local("explorer")).glob("labels*.geojson")) == \
        ["labels-alice.geojson", "labels-bob.geojson"]
    # bob cannot delete alice's labels: in his session they do not exist
    second = _label(client, "rye", authorization=f"Bearer {ALICE}").json()["id"]
    assert client.delete(f"/api/labels/{second}", headers={"authorization": f"Bearer {BOB}",
                                                           "origin": "http://tessera.example:8765"}).status_code == 400
    assert len(client.get("/api/labels", headers={"authorization": f"Bearer {ALICE}"}).json()["features"]) == 2


@pytest.mark.parametrize("name", ["../../etc/passwd", "<script>alert(1)</script>", "a\x00b", "x" * 65, "   "])
def test_a_hostile_label_name_is_refused_or_stored_as_plain_text(shared, name):
    client, storage, tmp_path = shared
    response = _label(client, name, authorization=f"Bearer {ALICE}")
    assert response.status_code in (201, 400)
    if response.status_code == 201:
        stored = json.loads((storage.local("explorer") / "labels-alice.geojson").read_text())
        assert stored["features"][-1]["properties"]["label"] == name.strip()
    assert sorted(p.name for p in storage.local("explorer").iterdir() if p.is_file()) in ([], ["labels-alice.geojson"])
    assert not (tmp_path / "etc").exists()


def test_read_only_shares_search_and_maps_but_not_labelling(tmp_path, shared):
    _, storage, _ = shared
    regions = RegionCatalog(path=str(tmp_path / "regions.yaml"))
    explorer = Explorer(storage, regions, VectorStore(uri=str(tmp_path / "data" / "lancedb")), "")
    app = create_app(explorer, "0.0.0.0", check_exposure("0.0.0.0", None, read_only=True))
    with TestClient(app, base_url="http://tessera.example:8765") as client:
        assert client.get("/api/partitions").status_code == 200
        refused = _label(client, "maize")
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]


def test_an_exposed_explorer_refuses_to_start_without_tokens_or_read_only(tmp_path):
    with pytest.raises(ConfigurationError, match="--tokens FILE .* or --read-only"):
        check_exposure("0.0.0.0", None, read_only=False)
    assert check_exposure("127.0.0.1", None, read_only=False) == Access()
    for bad, message in [({"Alice!": "x" * 30}, "user name"), ({"alice": "short"}, "at least 24"),
                         ({"a": "t" * 30, "b": "t" * 30}, "same token"), ([], "must map")]:
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigurationError, match=message):
            load_tokens(tmp_path / "t.yaml")
