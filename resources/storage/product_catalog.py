"""A static STAC catalog of every product under the data root, so odc-stac, pystac-client, QGIS and a
team's own catalogs find our rasters without knowing our folder layout or our int8 + scale
convention.

One Item a published partition (`item.json` inside the partition folder, written by the publish
step before the folder becomes visible: an item is never ahead of or behind its data), one
Collection a product (`<product>/collection.json`), one root `catalog.json`. Every GeoTIFF of a
partition is an asset with the projection (CRS code, shape, transform, bbox), its bands (name,
description, data type, nodata) and the file's size and checksum; images are overviews, JSON and
GeoJSON are metadata. Embeddings carry the Geo-Embeddings Sprint's `emb` extension (type, dimensions,
quantisation, the encoder that made them, what they are fit for).

Asset hrefs are relative (`./embeddings.tif`), so an item stays true wherever its folder is: a local
root, or a version prefix on an object store. Collections list the published partitions' items and
are rewritten after each publish, under a lock on a local root; on an object store two publishes at
the same moment can leave one item out of the listing until the next publish of that product.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from rasterio.warp import transform_bounds

STAC_VERSION = "1.1.0"
PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v2.0.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
EMB = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
ITEM_FILE = "item.json"
COLLECTION_FILE = "collection.json"
CATALOG_FILE = "catalog.json"
LICENSE = "CC-BY-4.0"  # as the official TESSERA embeddings; the source data's own terms also apply
GEOTIFF = "image/tiff; application=geotiff; profile=cloud-optimized"
MEDIA = {".png": ("image/png", "overview"), ".json": ("application/json", "metadata"),
         ".geojson": ("application/geo+json", "metadata")}


@dataclass(frozen=True)
class Product:
    """A product of the data root: where its partitions are and how people call it."""

    parts: tuple[str, ...]
    title: str
    description: str

    @property
    def id(self) -> str:
        return "-".join(self.parts)


PRODUCTS = (
    Product(("raw", "s2"), "Sentinel-2 L2A time series",
            "10 bands in TESSERA order, SCL-masked, offset removed, one COG per date on the region's 10 m grid "
            "(listed in index.json); the item's data asset is the valid-observation count per pixel"),
    Product(("raw", "s1"), "Sentinel-1 RTC time series",
            "VV/VH backscatter in TESSERA units, one COG per date and orbit direction (listed in index.json); the "
            "item's data asset is the valid-observation count per pixel"),
    Product(("embeddings",), "TESSERA pixel embeddings",
            "One vector a 10 m pixel a year: int8 per dimension times a float32 per-pixel scale (asset 'scales', "
            "NaN where there is no data)"),
    Product(("land_cover",), "Few-shot land-cover maps",
            "Class per pixel (0: no data, else 1 + the class index in the classifier's order), the top "
            "probability, and stratified area estimates with 95% confidence intervals"),
    Product(("value_map",), "Few-shot value maps", "A continuous value per pixel predicted from labelled points"),
    Product(("change",), "Change between years",
            "Calibrated change score per pixel, changed pixels, changed patches (GeoJSON) and the raw-input "
            "baseline's changed pixels"),
    Product(("similarity",), "Similarity maps", "Cosine similarity of every pixel to each saved query"),
)


def product_of(parts: tuple[str, ...]) -> tuple[Product, int, str] | None:
    """The product, year and region of a partition's path parts (`embeddings/2022/demo`), or None
    for what is not a catalogued partition (encoders, few-shot samples)."""
    for product in PRODUCTS:
        n = len(product.parts)
        if tuple(parts[:n]) == product.parts and len(parts) == n + 2 and parts[n].isdigit():
            return product, int(parts[n]), parts[n + 1]
    return None


def _checksum(path: Path) -> str:
    """A multihash of the file's SHA2-256 (`1220` + hex), as the file extension writes it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "1220" + digest.hexdigest()


def _nodata(value: float | None) -> float | str | None:
    if value is None:
        return None
    return "nan" if value != value else value


def raster_asset(path: Path, href: str) -> tuple[dict[str, Any], tuple[float, ...]]:
    """A GeoTIFF's asset object, and its lon/lat bbox."""
    with rasterio.open(path) as src:
        descriptions = src.descriptions
        bands = [{"name": f"b{i + 1}" if src.count > 1 else path.stem,
                  **({"description": descriptions[i]} if descriptions[i] else {}),
                  "data_type": src.dtypes[i], **({"nodata": _nodata(src.nodata)} if src.nodata is not None else {}),
                  "raster:spatial_resolution": abs(src.transform.a)} for i in range(src.count)]
        bbox = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        asset = {
            "href": href, "type": GEOTIFF, "roles": ["data"],
            "proj:code": src.crs.to_string(), "proj:shape": [src.height, src.width],
            "proj:transform": list(src.transform)[:6], "proj:bbox": list(src.bounds), "bands": bands,
            "file:size": path.stat().st_size, "file:checksum": _checksum(path),
        }
    return asset, tuple(bbox)


def _embedding_fields(folder: Path, assets: dict[str, dict]) -> dict[str, Any]:
    """The `emb` properties of an embeddings partition: how its vectors were made and stored."""
    encoder = json.loads((folder / "encoder.json").read_text()) if (folder / "encoder.json").exists() else {}
    vectors = assets.get("embeddings", {})
    for i, band in enumerate(vectors.get("bands", [])):
        band["name"] = f"dim_{i:03d}"
    return {
        "emb:type": "pixel", "emb:dimensions": len(vectors.get("bands", [])), "data_type": "int8", "gsd": 10,
        "emb:temporal_resolution": "P1Y",
        "emb:fit_for_use": ["classification", "regression", "retrieval", "change_detection"],
        "emb:quantization": {
            "method": "symmetric int8 with a per-pixel scale: value = q * scale, where scale (asset 'scales') is "
                      "the pixel's max |value| / 127; NaN scale: no data",
            "original_dtype": "float32", "quantized_dtype": "int8"},
        "emb:runtime_parameters": {k: v for k, v in encoder.items() if k != "weights_sha256"},
        "tessera:encoder_id": encoder.get("id", "unknown"),
    }


def partition_item(folder: Path, parts: tuple[str, ...],
                   locate: Callable[..., str | None] = lambda *parts: "/".join(parts)) -> dict[str, Any] | None:
    """The STAC Item of a partition folder (its files as assets), or None if `parts` is not a
    catalogued product. `folder` is the finished local folder about to be published; `locate`
    gives the key under the data root where another published folder is (with its version on an
    object store), or None."""
    found = product_of(parts)
    if found is None:
        return None
    product, year, region = found
    assets: dict[str, dict] = {}
    bboxes = []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.name == ITEM_FILE:
            continue
        if path.suffix.lower() in (".tif", ".tiff"):
            assets[path.stem], bbox = raster_asset(path, f"./{path.name}")
            bboxes.append(bbox)
        elif path.suffix.lower() in MEDIA:
            media, role = MEDIA[path.suffix.lower()]
            assets[path.stem if path.stem not in assets else path.name] = {
                "href": f"./{path.name}", "type": media, "roles": [role], "file:size": path.stat().st_size}
    if not bboxes:
        return None
    west, south = min(b[0] for b in bboxes), min(b[1] for b in bboxes)
    east, north = max(b[2] for b in bboxes), max(b[3] for b in bboxes)
    extensions = [PROJ, RASTER, FILE]
    properties: dict[str, Any] = {
        "datetime": f"{year}-01-01T00:00:00Z", "start_datetime": f"{year}-01-01T00:00:00Z",
        "end_datetime": f"{year}-12-31T23:59:59Z", "tessera:year": year, "tessera:region": region,
        "processing:datetime": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    links = []
    if product.parts == ("embeddings",):
        extensions.append(EMB)
        properties |= _embedding_fields(Path(folder), assets)
        # the model card beside the encoder's checkpoint (models/<id>/), relative to the data root
        model = locate("models", properties["tessera:encoder_id"])
        if model:
            links.append({"rel": "emb:model", "href": f"{model}/MODEL_CARD.md", "type": "text/markdown",
                          "title": "the encoder's model card"})
    return {
        "type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": extensions,
        "id": f"{product.id}-{year}-{region}", "collection": product.id,
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north], [west, north],
                                                         [west, south]]]},
        "bbox": [west, south, east, north], "properties": properties, "assets": assets, "links": links,
    }


def item_links(item: dict[str, Any], item_key: str, product: Product) -> dict[str, Any]:
    """The item with its links to the root catalog and its collection, relative to where it is
    published (`item_key`: its folder's key under the data root, with any version prefix)."""
    up = "../" * len(item_key.split("/"))
    collection = f"{up}{'/'.join(product.parts)}/{COLLECTION_FILE}"
    own = [dict(link, href=up + link["href"]) for link in item.get("links", [])]  # written from the data root
    item["links"] = [{"rel": "root", "href": f"{up}{CATALOG_FILE}", "type": "application/json"},
                     {"rel": "collection", "href": collection, "type": "application/json"},
                     {"rel": "parent", "href": collection, "type": "application/json"}, *own]
    return item


def collection_document(product: Product, items: list[tuple[str, dict]]) -> dict[str, Any]:
    """A product's Collection listing its items (`(key under the data root, item)` each)."""
    depth = "../" * len(product.parts)
    boxes = [item["bbox"] for _, item in items] or [[-180, -90, 180, 90]]
    years = sorted({item["properties"]["tessera:year"] for _, item in items})
    interval = [[f"{years[0]}-01-01T00:00:00Z", f"{years[-1]}-12-31T23:59:59Z"]] if years else [[None, None]]
    prefix = "/".join(product.parts) + "/"
    collection: dict[str, Any] = {
        "type": "Collection", "stac_version": STAC_VERSION, "id": product.id, "title": product.title,
        "description": product.description, "license": LICENSE,
        "extent": {"spatial": {"bbox": [[min(b[0] for b in boxes), min(b[1] for b in boxes),
                                         max(b[2] for b in boxes), max(b[3] for b in boxes)]]},
                   "temporal": {"interval": interval}},
        "links": [{"rel": "root", "href": f"{depth}{CATALOG_FILE}", "type": "application/json"},
                  {"rel": "parent", "href": f"{depth}{CATALOG_FILE}", "type": "application/json"},
                  *({"rel": "item", "href": f"./{key[len(prefix):]}/{ITEM_FILE}", "type": "application/geo+json"}
                    for key, _ in items)],
    }
    if product.parts == ("embeddings",) and items:
        first = items[-1][1]["properties"]
        collection["stac_extensions"] = [EMB]
        collection |= {k: first[k] for k in ("emb:type", "emb:dimensions", "data_type", "gsd",
                                             "emb:temporal_resolution", "emb:fit_for_use")}
        collection["links"].append({"rel": "emb:source-data", "href": "../raw/s2/collection.json",
                                    "type": "application/json"})
    return collection


def catalog_document(products: list[Product]) -> dict[str, Any]:
    """The root catalog, linking each product that has a collection."""
    return {
        "type": "Catalog", "stac_version": STAC_VERSION, "id": "tessera-products",
        "description": "Every product of this tessera data root: raw time series, embeddings and maps",
        "links": [{"rel": "root", "href": f"./{CATALOG_FILE}", "type": "application/json"},
                  *({"rel": "child", "href": f"./{'/'.join(p.parts)}/{COLLECTION_FILE}", "type": "application/json",
                     "title": p.title} for p in products)],
    }
