"""The products as xarray, for notebooks and scripts: one call a product, lazily read.

    from tessera_assets.products import open_embeddings, open_class_map
    emb = open_embeddings(2022, "demo", dequantise=True)    # float32 (dim, y, x), NaN: no data
    emb.embeddings.sel(dim=slice(0, 3)).mean(["x", "y"]).compute()
    open_class_map(2022, "demo").classes.plot()
    search(0.1046, 52.2065, 2022, k=10).to_pandas()         # the pixels most like one pixel
    similarity_to(0.1046, 52.2065, 2022, "demo").plot()     # ... and the map of how like it each is

Each function returns an `xarray.Dataset` on the partition's own grid: dims `(dim|band, y, x)` with
x/y coordinates in the grid's CRS, the CRS and transform attached (rioxarray: `ds.rio.crs`,
`ds.rio.transform()`), and dask arrays, so a large region is read a chunk at a time when computed,
never at open. The data root is the deployment's (`TESSERA_DATA_URI`, by default `.tessera/data`)
or `root=`: a folder or an `s3://` prefix. For an object-store root, GDAL's endpoint and keys are
set process-wide, since dask reads the chunks later, in threads of its own.

Embeddings are stored as TESSERA stores them, int8 per dimension and one float32 scale per pixel;
`dequantise=True` gives the float32 vectors (q x scale, NaN where there is no data), computed
lazily chunk by chunk.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa
    import xarray as xr

    from resources.storage.data_root import Folder, TesseraStorage

CHUNK = 512  # pixels a side of a dask chunk: 32 MB of int8 embeddings, 128 MB dequantised


def data_root(root: str | None = None) -> "TesseraStorage":
    """The data root the products are read from (`root`, or the deployment's)."""
    from resources.storage.data_root import TesseraStorage
    from tessera_assets.resources_by_deployment import data_uri

    storage = TesseraStorage(root=(root or data_uri()).rstrip("/"))
    if storage.remote is not None:
        import rasterio.env

        for key, value in storage.remote.gdal_options().items():
            rasterio.env.set_gdal_config(key, value)
    return storage


def _partition(storage: "TesseraStorage", product: str, year: int, region: str, needs: str) -> "Folder":
    from resources.errors import PartitionNotMaterialisedError

    folder = storage.folder(product, year, region)
    if folder is None or not folder.exists(needs):
        raise PartitionNotMaterialisedError(
            f"no {product} for year {year}, region {region!r} under {storage.root} (materialise it first: "
            f"tessera run --regions {region} --years {year}, or from the Dagster UI)")
    return folder


def _raster(folder: "Folder", name: str, chunks: int) -> "xr.DataArray":
    """One GeoTIFF of a partition as a lazy (band, y, x) DataArray with its CRS and transform."""
    import rioxarray

    array = rioxarray.open_rasterio(folder / name, chunks={"band": -1, "y": chunks, "x": chunks}, lock=False,
                                    mask_and_scale=False)
    return array


def _single(folder: "Folder", name: str, chunks: int) -> "xr.DataArray":
    array = _raster(folder, name, chunks).squeeze("band", drop=True)
    description = array.attrs.pop("long_name", None)
    if description:
        array.attrs["description"] = description if isinstance(description, str) else description[0]
    return array


def open_embeddings(year: int, region: str, *, dequantise: bool = False, root: str | None = None,
                    chunks: int = CHUNK) -> "xr.Dataset":
    """A partition's embeddings: `embeddings` (dim, y, x) int8 and `scales` (y, x) float32 as
    stored, or with `dequantise` `embeddings` float32 with NaN where there is no data. The attrs
    name the encoder that made them and the storage convention."""
    import numpy as np
    import xarray as xr

    from resources.storage.data_root import EMBEDDINGS_FILE, ENCODER_FILE, SCALES_FILE

    storage = data_root(root)
    folder = _partition(storage, "embeddings", year, region, SCALES_FILE)
    vectors = _raster(folder, EMBEDDINGS_FILE, chunks).rename(band="dim")
    vectors = vectors.assign_coords(dim=np.arange(vectors.sizes["dim"]))
    vectors.attrs.pop("long_name", None)
    scales = _single(folder, SCALES_FILE, chunks)
    encoder = json.loads(folder.read_bytes(ENCODER_FILE) or b'{"id": "unknown"}')
    attrs = {"year": year, "region": region, "encoder_id": encoder.get("id", "unknown"),
             "encoder": json.dumps(encoder), "source": str(folder)}
    if dequantise:
        values = (vectors.astype(np.float32) * scales.astype(np.float32)).transpose("dim", "y", "x")
        values.attrs = {"description": "embedding value (int8 x per-pixel scale); NaN: no data"}
        return xr.Dataset({"embeddings": values}, attrs=attrs | {"quantisation": "dequantised to float32"})
    vectors.attrs = {"description": "int8 embedding; the value is q x scales"}
    return xr.Dataset({"embeddings": vectors, "scales": scales},
                      attrs=attrs | {"quantisation": "int8 x per-pixel float32 scale (scales NaN: no data)"})


def open_class_map(year: int, region: str, *, root: str | None = None, chunks: int = CHUNK) -> "xr.Dataset":
    """A land-cover map: `classes` (y, x) uint8, 0 where there is no data and else 1 + the index
    into the `class_names` attr; `confidence` (y, x), the classifier's top probability; and the
    area estimates (Olofsson et al. 2014) in the `area_estimates` attr (JSON)."""
    import xarray as xr

    folder = _partition(data_root(root), "land_cover", year, region, "classes.tif")
    classes = _single(folder, "classes.tif", chunks)
    names = json.loads(classes.attrs.pop("class_names", "[]"))
    estimates = folder.read_bytes("area_estimates.json")
    return xr.Dataset({"classes": classes, "confidence": _single(folder, "confidence.tif", chunks)},
                      attrs={"year": year, "region": region, "class_names": names, "source": str(folder),
                             **({"area_estimates": estimates.decode()} if estimates else {})})


def open_value_map(year: int, region: str, *, root: str | None = None, chunks: int = CHUNK) -> "xr.Dataset":
    """A few-shot value map: `values` (y, x) float32, NaN where there is no data."""
    import xarray as xr

    folder = _partition(data_root(root), "value_map", year, region, "values.tif")
    return xr.Dataset({"values": _single(folder, "values.tif", chunks)},
                      attrs={"year": year, "region": region, "source": str(folder)})


CHANGE_LAYERS = ("score", "changed", "patch_ids", "baseline_changed")


def open_change_map(year: int, region: str, *, root: str | None = None, chunks: int = CHUNK) -> "xr.Dataset":
    """A change map since its reference year: `score` (calibrated, comparable across regions),
    `changed`, `patch_ids` (the patches of patches.geojson) and `baseline_changed` (the raw-input
    baseline), each (y, x); the calibration in the attrs."""
    import xarray as xr

    folder = _partition(data_root(root), "change", year, region, "score.tif")
    calibration = json.loads(folder.read_bytes("change.json") or b"{}")
    layers = {name: _single(folder, f"{name}.tif", chunks) for name in CHANGE_LAYERS if folder.exists(f"{name}.tif")}
    return xr.Dataset(layers, attrs={"region": region, "source": str(folder), "patches": str(folder / "patches.geojson"),
                                     **{k: v for k, v in calibration.items() if isinstance(v, (int, float, str))}})


def open_similarity_map(year: int, region: str, query: str, *, root: str | None = None,
                        chunks: int = CHUNK) -> "xr.Dataset":
    """The similarity of every pixel to a saved query (queries.yaml): `similarity` (y, x), NaN
    where there is no data."""
    import xarray as xr

    folder = _partition(data_root(root), "similarity", year, region, f"{query}.tif")
    return xr.Dataset({"similarity": _single(folder, f"{query}.tif", chunks)},
                      attrs={"year": year, "region": region, "query": query, "source": str(folder)})


def search(lon: float, lat: float, year: int, *, k: int = 10, years: list[int] | None = None,
           regions: list[str] | None = None, root: str | None = None) -> "pa.Table":
    """The k pixels most like the pixel at (lon, lat) in `year` (cosine), best first, from the
    embedding table (`<root>/lancedb`, or the deployment's): columns key, lon, lat, year, region,
    h3 cells and similarity. `years` / `regions` limit where to look (default: the query's year).
    `.to_pandas()` gives a DataFrame."""
    from resources.table.similarity import SearchFilter, Similarity
    from resources.table.store import TableStore
    from tessera_assets.resources_by_deployment import lancedb_uri

    store = TableStore(uri=f"{root.rstrip('/')}/lancedb" if root else lancedb_uri())
    similarity = Similarity(store)
    query, _ = similarity.vector_at(lon, lat, year)
    return similarity.search(query, k=k, filters=SearchFilter(years=years or [year], regions=regions))


def search_many(points: list[tuple[float, float]], year: int, *, k: int = 10, years: list[int] | None = None,
                regions: list[str] | None = None, root: str | None = None) -> "pa.Table":
    """`search` for many query points at once, answered by one batched LanceDB query: a `query`
    column (the index of the point in `points`) then the columns of `search`, best first within each
    query. Much faster than one `search` a point when there are many (bench/search.py: `batched`)."""
    from resources.table.similarity import SearchFilter, Similarity
    from resources.table.store import TableStore
    from tessera_assets.resources_by_deployment import lancedb_uri

    similarity = Similarity(TableStore(uri=f"{root.rstrip('/')}/lancedb" if root else lancedb_uri()))
    queries = similarity.vectors_at(list(points), year)
    return similarity.search_many(queries, k=k, filters=SearchFilter(years=years or [year], regions=regions))


def similarity_to(lon: float, lat: float, year: int, region: str, *, query_year: int | None = None,
                  root: str | None = None, chunks: int = CHUNK) -> "xr.DataArray":
    """How like the pixel at (lon, lat) of `query_year` (default `year`) every pixel of a
    partition is: cosine similarity (y, x), NaN where there is no data, computed lazily from the
    stored int8 vectors (the per-pixel scale cancels in a cosine)."""
    import numpy as np
    from rasterio.warp import transform

    query = open_embeddings(query_year or year, region, root=root, chunks=chunks, dequantise=True).embeddings
    (x,), (y,) = transform("EPSG:4326", query.rio.crs, [lon], [lat])
    vector = query.sel(x=x, y=y, method="nearest").values.astype(np.float32)
    if not np.isfinite(vector).all():
        from resources.errors import PartitionNotMaterialisedError

        raise PartitionNotMaterialisedError(f"({lon}, {lat}) has no embedding in {region} {query_year or year}")
    stored = open_embeddings(year, region, root=root, chunks=chunks)
    vectors, scales = stored.embeddings.astype(np.float32), stored.scales
    unit = vector / np.linalg.norm(vector)
    cosine = (vectors * unit[:, None, None]).sum("dim") / np.sqrt((vectors ** 2).sum("dim"))
    cosine = cosine.where(np.isfinite(scales))
    cosine.attrs = {"description": f"cosine similarity to ({lon}, {lat}) of {query_year or year}"}
    return cosine.rename("similarity")


def product_catalog(root: str | None = None) -> str:
    """Where the STAC catalog of every product is (catalog.json), for pystac-client or odc-stac."""
    from resources.storage.product_catalog import CATALOG_FILE

    return data_root(root).location_of(CATALOG_FILE)
