"""The bad-input catalogue: every way a user can get input wrong that we know of, across the CLI,
resource config, regions, labels, checkpoints, STAC items, official tiles, the explorer and search
calls. Each must end in a clear error that names the problem, and leave nothing behind: the data
root and the regions file are byte for byte what they were."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from model.errors import ModelError
from resources.errors import TesseraError
from resources.testing.synthetic_table import clustered, synthetic_rows
from tessera_assets.cli import main


@dataclass
class Env:
    root: Path
    data: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A data root with a regions file (region `fens`), a labels folder and an embedding table."""
    from resources.table.vector_store import VectorStore

    root = tmp_path_factory.mktemp("bad")
    (root / "regions.yaml").write_text(yaml.safe_dump({"regions": {"fens": {"bbox": [0.2, 52.3, 0.25, 52.33]}}}))
    store = VectorStore(uri=str(root / "home" / "data" / "lancedb"))
    rows = synthetic_rows(clustered(500, np.random.default_rng(0)), year=2022, region="fens")
    store.write_partition(2022, "fens", rows.to_batches(), 128)
    labels = root / "labels"
    labels.mkdir()
    (labels / "projected.csv").write_text("lon,lat,label\n450000,5780000,maize\n")
    (labels / "empty.geojson").write_text("")
    (labels / "columns.csv").write_text("x,y,label\n0.2,52.3,maize\n")
    (labels / "line.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0.2, 52.3], [0.21, 52.31]]},
         "properties": {"label": "hedge"}}]}))
    (labels / "broken.gpkg").write_bytes(b"SQLite format 3\0" + bytes(200))  # a GeoPackage cut short
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    import torch

    torch.save({"weights": {}}, root / "unknown.pt")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"TESSERA_HOME": root / "home", "TESSERA_REGIONS": root / "regions.yaml",
                            "DAGSTER_HOME": root / "dagster", "TESSERA_DEPLOYMENT": "local"}.items():
            patch.setenv(name, str(value))
        patch.delenv("TESSERA_EMBEDDINGS_TILES", raising=False)
        (root / "dagster").mkdir()
        yield Env(root, root / "home" / "data")


def snapshot(env: Env) -> dict[str, tuple[int, int]]:
    """Every file of the data root and the regions file, with size and modification time."""
    files = [p for p in (env.root / "home").rglob("*") if p.is_file()] + [env.root / "regions.yaml"]
    return {str(p.relative_to(env.root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def cli(*argv: str) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    assert code == 2, f"tessera {' '.join(argv)} exited {code}, not 2"
    return err.getvalue()


def raises(call) -> str:
    try:
        call()
    except (TesseraError, ModelError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("no error was raised")


def with_env(name: str, value: str, call):
    def run():
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(name, value)
            return call()
    return run


def similarity():
    from resources.table.similarity import Similarity
    from tessera_assets.resources_by_deployment import vector_store

    return Similarity(vector_store())


def catalog(**fields):
    from resources.scenes.stac import StacCatalog

    return StacCatalog(url="/nowhere/catalog.json", **fields)


def search(vector, **kwargs):
    return lambda: similarity().search(np.asarray(vector, np.float32), **kwargs)


def labels(env_root: Path, name: str):
    from resources.labels import read_labels

    return lambda: read_labels(env_root / "labels" / name)


def explorer_request(method: str, path: str, **kwargs) -> str:
    """The explorer app in process (the HTTP tests run it as a server): the error it answers."""
    import warnings

    with warnings.catch_warnings():  # starlette would rather have httpx2 than httpx: either serves here
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from tessera_assets.explorer.app import Explorer, create_app
    from tessera_assets.resources_by_deployment import build_resources

    resources = build_resources()
    app = create_app(Explorer(resources["storage"], resources["regions"], resources["vectors"], "http://x"))
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        response = client.request(method, path, **kwargs)
    assert response.status_code in (400, 404), response.status_code
    return response.json()["error"]


def custom_deployment(**env) -> str:
    from tessera_assets.resources_by_deployment import scene_catalogs

    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"TESSERA_DEPLOYMENT": "custom", "TESSERA_S2_CATALOG": "x", "TESSERA_S1_CATALOG": "y",
                            **env}.items():
            patch.setenv(name, value)
        return raises(scene_catalogs)


def checkpoint(path: Path) -> str:
    from model import TesseraEncoder

    return raises(lambda: TesseraEncoder.from_checkpoint(path))


def item_without_bands() -> str:
    from resources.scenes.stac import PROVIDERS, scene_from_item

    item = {"id": "x", "properties": {"datetime": "2022-05-01T00:00:00Z"}, "assets": {"B04": {"href": "b04.tif"}}}
    return scene_from_item(item, "s2", PROVIDERS["planetary-computer"])


def tile_root(path: Path) -> str:
    from resources.official.source import OfficialTiles

    return raises(lambda: OfficialTiles(root=str(path)).open())


def bad_h3_filter() -> str:
    from resources.table.similarity import SearchFilter

    return raises(search(np.ones(128), filters=SearchFilter(h3_cells=["nope"])))


BBOX = (0.2, 52.3, 0.25, 52.33)
CASES = [
    # the CLI
    ("cli: inverted bbox", lambda e: cli("regions", "add", "x", "--bbox", "0.3", "52.3", "0.25", "52.33"), "inverted"),
    ("cli: bbox off the globe", lambda e: cli("regions", "add", "x", "--bbox", "190", "52.3", "191", "52.33"), "bbox"),
    ("cli: region name with /", lambda e: cli("regions", "add", "a/b", "--bbox", "0.2", "52.3", "0.25", "52.33"),
     "bad region name 'a/b'"),
    ("cli: region name ..", lambda e: cli("regions", "add", "..", "--bbox", "0.2", "52.3", "0.25", "52.33"),
     "bad region name '..'"),
    ("cli: duplicate region", lambda e: cli("regions", "add", "fens", "--bbox", "0.2", "52.3", "0.25", "52.33"),
     "region 'fens' already exists"),
    ("cli: region too large", lambda e: cli("regions", "add", "big", "--bbox", "0", "50", "2", "52"),
     "more than the limit"),
    ("cli: remove an unknown region", lambda e: cli("regions", "remove", "nowhere"), "unknown region 'nowhere'"),
    ("cli: year out of range", lambda e: cli("demo", "--years", "2015"), "year 2015 is out of range"),
    ("cli: run an unknown region", lambda e: cli("run", "--region", "atlantis", "--years", "2022"),
     "unknown region 'atlantis'"),
    ("cli: classify without embeddings", lambda e: cli("classify", str(e.root / "labels" / "columns.csv"), "--year",
                                                       "2022", "--region", "fens"), "are not materialised"),
    ("cli: export without embeddings", lambda e: cli("export", "--year", "2022", "--region", "fens", "--out",
                                                     str(e.data / "out")), "are not materialised"),
    ("cli: search outside the table", lambda e: cli("search", "--lon", "10", "--lat", "45", "--year", "2022"),
     "outside every materialised partition"),
    ("cli: search a year not in the table", lambda e: cli("search", "--lon", "0.1", "--lat", "52.2", "--year", "2019"),
     "year 2019 is not in the embedding table"),
    # deployment and resource config
    ("config: unknown deployment", lambda e: custom_deployment(TESSERA_DEPLOYMENT="aws"),
     "unknown TESSERA_DEPLOYMENT 'aws'"),
    ("config: unknown provider", lambda e: custom_deployment(TESSERA_S2_PROVIDER="sentinelhub"),
     "unknown TESSERA_S2_PROVIDER 'sentinelhub'"),
    ("config: malformed asset keys", lambda e: custom_deployment(TESSERA_S2_ASSET_KEYS="B04"),
     "TESSERA_S2_ASSET_KEYS must read BAND=key"),
    ("config: unknown S2 mask", lambda e: custom_deployment(TESSERA_S2_MASK="clouds"), "s2_mask: Input should be"),
    ("config: asset keys of unknown bands", lambda e: raises(lambda: catalog(asset_keys={"B4": "red"}).search(
        "s2", BBOX, 2022)), "asset_keys names unknown bands B4"),
    ("config: s3 key without secret", lambda e: raises(lambda: catalog(s3_access_key_id="AK").gdal_options()),
     "s3_access_key_id is set without s3_secret_access_key"),
    ("config: cloud mask without its asset", lambda e: raises(
        lambda: catalog(provider="cdse", s2_mask="cloud").provider_for({"assets": {}}, "s2")), "asset_keys CLOUD"),
    # STAC
    ("stac: static catalog not found", lambda e: raises(lambda: catalog().search("s2", BBOX, 2022)),
     "static STAC catalog not found"),
    ("stac: an item without the bands", lambda e: item_without_bands(), "missing assets B02"),
    # labels
    ("labels: projected coordinates", lambda e: raises(labels(e.root, "projected.csv")), "outside lon/lat range; does the file declare its CRS"),
    ("labels: empty file", lambda e: raises(labels(e.root, "empty.geojson")), "labels file is empty"),
    ("labels: missing columns", lambda e: raises(labels(e.root, "columns.csv")), "CSV lacks the columns lat, lon"),
    ("labels: lines", lambda e: raises(labels(e.root, "line.geojson")), "labels must be Points or (Multi)Polygons"),
    ("labels: a broken GeoPackage", lambda e: raises(labels(e.root, "broken.gpkg")), "cannot be read as a vector file"),
    # checkpoints
    ("checkpoint: missing file", lambda e: checkpoint(e.root / "missing.pt"), "checkpoint not found"),
    ("checkpoint: not a checkpoint", lambda e: checkpoint(e.root / "garbage.pt"), "cannot read checkpoint"),
    ("checkpoint: unknown layout", lambda e: checkpoint(e.root / "unknown.pt"), "has no model_state"),
    # official tiles
    ("tiles: not a tile root", lambda e: tile_root(e.root / "labels"), "is not a geotessera tile root"),
    # search calls
    ("search: wrong vector dimension", lambda e: raises(search(np.ones(64))), "query vector has 64 dimensions"),
    ("search: zero vector", lambda e: raises(search(np.zeros(128))), "must be finite and non-zero"),
    ("search: k of 0", lambda e: raises(search(np.ones(128), k=0)), "k must be an integer in 1..10000"),
    ("search: a bad H3 cell", lambda e: bad_h3_filter(), "nope"),
    # the explorer
    ("explorer: unknown layer", lambda e: explorer_request("GET", "/tiles/ndvi/2022/fens/1/0/0.png"), "unknown layer"),
    ("explorer: region name with ..", lambda e: explorer_request("GET", "/tiles/pca/2022/a..b/1/0/0.png"),
     "bad region name"),
    ("explorer: label off the globe", lambda e: explorer_request("POST", "/api/labels", json={
        "lon": 500, "lat": 0, "label": "x"}), "not lon/lat"),
]


@pytest.mark.parametrize("name, action, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_leaves_nothing_behind(env, name, action, message):
    before = snapshot(env)
    text = action(env)
    assert message in text, text
    assert snapshot(env) == before, "a bad input changed stored data"


def test_the_catalogue_is_broad():
    assert len(CASES) >= 25
    assert {c[0].split(":")[0] for c in CASES} >= {"cli", "config", "stac", "labels", "checkpoint", "tiles", "search",
                                                   "explorer"}
