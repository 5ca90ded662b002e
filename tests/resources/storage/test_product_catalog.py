"""The data root's STAC catalog, read by real clients (pystac-client, odc-stac), gives back exactly
the arrays we stored, and lists every published partition."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from resources.storage.data_root import TesseraStorage
from conftest import TINY_REGION, TINY_YEAR

cogeo = pytest.importorskip("rio_cogeo.cogeo")


def _products(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tif") if "demo_catalog" not in p.parts and not any(
        part.startswith(".") for part in p.parts)]


def test_every_published_geotiff_is_a_cog(embedded_env):
    env, _, _, _ = embedded_env
    paths = _products(env.root / "data")
    assert {p.name for p in paths} >= {"embeddings.tif", "scales.tif", "valid_count.tif"}
    assert any(p.parent.name == "obs" for p in paths)  # the raw observations too
    invalid = [str(p) for p in paths if not cogeo.cog_validate(str(p), strict=True)[0]]
    assert not invalid


def test_pystac_client_walks_the_catalog_to_every_partition(embedded_env):
    pystac_client = pytest.importorskip("pystac_client")
    env, _, _, _ = embedded_env
    storage = env.resources["storage"]
    client = pystac_client.Client.open(str(env.root / "data" / "catalog.json"))
    collections = {c.id: c for c in client.get_collections()}
    assert {"raw-s2", "raw-s1", "embeddings"} <= set(collections)
    items = {item.id: item for item in collections["embeddings"].get_items()}
    assert set(items) == {f"embeddings-{y}-{r}" for y, r in storage.partitions("embeddings")}
    item = items[f"embeddings-{TINY_YEAR}-{TINY_REGION}"]
    asset = item.assets["embeddings"]
    with rasterio.open(storage.path("embeddings", str(TINY_YEAR), TINY_REGION, "embeddings.tif")) as src:
        assert asset.extra_fields["proj:code"] == src.crs.to_string()
        assert asset.extra_fields["proj:shape"] == [src.height, src.width]
        assert asset.extra_fields["proj:transform"] == list(src.transform)[:6]
        assert len(asset.extra_fields["bands"]) == src.count
    assert {b["data_type"] for b in asset.extra_fields["bands"]} == {"int8"}
    assert item.assets["scales"].extra_fields["bands"][0]["nodata"] == "nan"
    assert asset.extra_fields["file:checksum"].startswith("1220")
    properties = item.properties
    assert properties["emb:dimensions"] == 128 and properties["emb:quantization"]["quantized_dtype"] == "int8"
    assert properties["tessera:encoder_id"] == json.loads(
        storage.path("embeddings", str(TINY_YEAR), TINY_REGION, "encoder.json").read_text())["id"]
    west, south, east, north = item.bbox
    region = env.resources["regions"].get(TINY_REGION).bbox
    assert west <= region[0] + 1e-3 and east >= region[2] - 1e-3 and south <= region[1] + 1e-3


def test_odc_stac_loads_exactly_the_stored_arrays(embedded_env):
    odc_stac = pytest.importorskip("odc.stac")
    pystac = pytest.importorskip("pystac")
    env, _, _, _ = embedded_env
    folder = env.root / "data" / "embeddings" / str(TINY_YEAR) / TINY_REGION
    item = pystac.Item.from_file(str(folder / "item.json"))
    loaded = odc_stac.load([item], bands=["scales", "embeddings.1", "embeddings.128"], chunks={})
    with rasterio.open(folder / "scales.tif") as src:
        scales = src.read(1)
    with rasterio.open(folder / "embeddings.tif") as src:
        first, last = src.read(1), src.read(128)
    assert np.array_equal(loaded["scales"].values[0], scales, equal_nan=True)
    assert np.array_equal(loaded["embeddings.1"].values[0], first)
    assert np.array_equal(loaded["embeddings.128"].values[0], last)
    raw = pystac.Item.from_file(str(env.root / "data" / "raw" / "s2" / str(TINY_YEAR) / TINY_REGION / "item.json"))
    counts = odc_stac.load([raw], bands=["valid_count"]).valid_count.values[0]
    with rasterio.open(env.root / "data" / "raw" / "s2" / str(TINY_YEAR) / TINY_REGION / "valid_count.tif") as src:
        assert np.array_equal(counts, src.read(1))


def test_a_collection_follows_publishes_and_deletes(tmp_path):
    from rasterio.transform import from_origin

    storage = TesseraStorage(root=str(tmp_path / "data"))
    for region in ("a", "b"):
        with storage.publish("value_map", 2022, region) as tmp:
            with rasterio.open(tmp / "values.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                               crs="EPSG:32631", transform=from_origin(300000, 5790000, 10, 10)) as dst:
                dst.write(np.ones((1, 8, 8), np.float32))
    with storage.publish("fewshot", "samples", "run-1") as tmp:  # not a catalogued product: no item
        (tmp / "samples.parquet").write_bytes(b"")
    assert not (tmp_path / "data" / "fewshot" / "samples" / "run-1" / "item.json").exists()
    collection = json.loads((tmp_path / "data" / "value_map" / "collection.json").read_text())
    assert sorted(l["href"] for l in collection["links"] if l["rel"] == "item") == \
        ["./2022/a/item.json", "./2022/b/item.json"]
    catalog = json.loads((tmp_path / "data" / "catalog.json").read_text())
    assert [l["href"] for l in catalog["links"] if l["rel"] == "child"] == ["./value_map/collection.json"]
    item = json.loads((tmp_path / "data" / "value_map" / "2022" / "a" / "item.json").read_text())
    assert {l["rel"]: l["href"] for l in item["links"]}["collection"] == "../../../value_map/collection.json"
    assert storage.delete_region("a") == 1
    collection = json.loads((tmp_path / "data" / "value_map" / "collection.json").read_text())
    assert [l["href"] for l in collection["links"] if l["rel"] == "item"] == ["./2022/b/item.json"]


def test_embeddings_link_the_model_card_of_their_encoder(embedded_env):
    env, _, _, _ = embedded_env
    folder = env.root / "data" / "embeddings" / str(TINY_YEAR) / TINY_REGION
    item = json.loads((folder / "item.json").read_text())
    link = next(link for link in item["links"] if link["rel"] == "emb:model")
    card = (folder / link["href"]).resolve()
    encoder_id = item["properties"]["tessera:encoder_id"]
    assert card == (env.root / "data" / "models" / encoder_id / "MODEL_CARD.md").resolve()
    text = card.read_text()
    assert text.startswith(f"# Model card: {encoder_id}") and "## Training" in text and "Barlow Twins" in text
    assert "## Limitations" in text and "arXiv:2506.20380" in text
