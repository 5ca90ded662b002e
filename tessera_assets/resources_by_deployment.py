"""Resources chosen by deployment, in one place. TESSERA_DEPLOYMENT names where scenes come from:

| deployment | Sentinel-2 | Sentinel-1 |
|---|---|---|
| `local` (default) | the embedded demo catalog | the demo catalog |
| `planetary-computer` (alias `cloud`) | Planetary Computer `sentinel-2-l2a` | Planetary Computer `sentinel-1-rtc` |
| `earth-search` | Earth Search v1 `sentinel-2-l2a` | Planetary Computer (Earth Search has no RTC) |
| `cdse` | Copernicus Data Space `sentinel-2-l2a` | Planetary Computer (CDSE serves GRD, not RTC) |
| `custom` | TESSERA_S2_CATALOG, TESSERA_S2_PROVIDER | TESSERA_S1_CATALOG, TESSERA_S1_PROVIDER |

A catalog is a STAC API root or a static catalog (see `StacCatalog.static_root`); a custom one's
provider defaults to `auto` (told from the URL or the items' asset keys). TESSERA_S2_COLLECTION and
TESSERA_S1_COLLECTION override the provider's collection names, TESSERA_S2_ASSET_KEYS and
TESSERA_S1_ASSET_KEYS (`B04=red,SCL=scl`) its asset keys; TESSERA_S2_MASK=cloud or none ingests items
that carry no SCL. s3:// hrefs are read through TESSERA_S2_S3_ENDPOINT / TESSERA_S1_S3_ENDPOINT (CDSE's
is preset) with the keys in TESSERA_S3_ACCESS_KEY_ID and TESSERA_S3_SECRET_ACCESS_KEY, passed as
Dagster EnvVars: resolved when a run starts, never written into run config. The same fields show in
the Dagster launchpad under `s2_catalog` and `s1_catalog`. TESSERA_HOME moves the local state (the
demo catalog, the Dagster home, caches); TESSERA_DATA_URI puts every product (raw, embeddings,
checkpoints, maps, few-shot outputs, and the embedding table unless TESSERA_LANCEDB_URI says
otherwise) in another folder or on an object store (`s3://bucket/prefix`, with the AWS_* variables
that obstore, LanceDB and GDAL read: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and
AWS_ENDPOINT_URL plus AWS_ALLOW_HTTP=true for MinIO); TESSERA_REGIONS the regions file;
TESSERA_LABELS the labels file or folder the `labels` asset observes (default `labels`).

The other resources are imported where they are built: a one-off `tessera search` needs only the
embedding table (`table_store`, no Dagster), and importing the raster and model stack would triple
its start-up."""

from __future__ import annotations

import os
from typing import Any

from typing import TYPE_CHECKING

from resources.errors import ConfigurationError

if TYPE_CHECKING:
    from resources.table.store import TableStore
    from resources.table.vector_store import VectorStore

PLANETARY_COMPUTER_API = "https://planetarycomputer.microsoft.com/api/stac/v1"
EARTH_SEARCH_API = "https://earth-search.aws.element84.com/v1"
CDSE_API = "https://stac.dataspace.copernicus.eu/v1"
CDSE_S3 = "https://eodata.dataspace.copernicus.eu"  # where CDSE's s3://eodata/... hrefs are read
PLANETARY_COMPUTER = (PLANETARY_COMPUTER_API, "planetary-computer", None)
# deployment -> (S2 source, S1 source), each (catalog, provider, S3 endpoint of its hrefs)
DEPLOYMENTS: dict[str, tuple[tuple[str, str, str | None], tuple[str, str, str | None]]] = {
    "planetary-computer": (PLANETARY_COMPUTER, PLANETARY_COMPUTER),
    "earth-search": ((EARTH_SEARCH_API, "earth-search", None), PLANETARY_COMPUTER),
    "cdse": ((CDSE_API, "cdse", CDSE_S3), PLANETARY_COMPUTER),
}
ALIASES = {"cloud": "planetary-computer"}


def tessera_home() -> str:
    return os.environ.get("TESSERA_HOME", ".tessera")


def data_uri() -> str:
    """Where every product lives: TESSERA_DATA_URI (a folder or `s3://bucket/prefix`), by default
    the data folder under TESSERA_HOME."""
    return os.environ.get("TESSERA_DATA_URI", f"{tessera_home()}/data").rstrip("/")


def lancedb_uri() -> str:
    """The embedding table's database: TESSERA_LANCEDB_URI, by default the lancedb folder of the data root."""
    return os.environ.get("TESSERA_LANCEDB_URI", f"{data_uri()}/lancedb")


def table_store() -> TableStore:
    """The embedding table without Dagster: what a one-off `tessera search` opens."""
    from resources.table.store import TableStore

    return TableStore(uri=lancedb_uri())


def vector_store() -> VectorStore:
    """The same table as the assets' `vectors` resource (imports Dagster)."""
    from resources.table.vector_store import VectorStore

    return VectorStore(uri=lancedb_uri())


def official_tiles():
    """The `OfficialTiles` resource when TESSERA_EMBEDDINGS_TILES is set, else None (embeddings are
    computed by our encoder)."""
    root = os.environ.get("TESSERA_EMBEDDINGS_TILES")
    if not root:
        return None
    from resources.official.source import OfficialTiles

    return OfficialTiles(root=root, dataset_version=os.environ.get("TESSERA_TILES_VERSION"),
                         dataset_variant=os.environ.get("TESSERA_TILES_VARIANT"))


def build_resources(deployment: str | None = None) -> dict[str, Any]:
    from resources.compute import ComputeDevice
    from resources.labels import LabelSource
    from resources.storage.object_store import is_object_uri
    from resources.regions import RegionCatalog
    from resources.storage.data_root import TesseraStorage

    home = tessera_home()
    data = data_uri()
    storage = TesseraStorage(root=data, cache=f"{home}/cache" if is_object_uri(data) else None)
    regions = RegionCatalog(path=os.environ.get("TESSERA_REGIONS", "regions.yaml"))
    catalogs = {f"{sensor}_catalog": catalog for sensor, catalog in zip(("s2", "s1"), scene_catalogs(deployment))}
    tiles = official_tiles()
    return {"storage": storage, "regions": regions, "compute": ComputeDevice(), "vectors": vector_store(), **catalogs,
            "label_source": LabelSource(path=os.environ.get("TESSERA_LABELS", "labels")),
            **({"tiles": tiles} if tiles else {})}


def scene_catalogs(deployment: str | None = None):
    """The S2 and S1 `StacCatalog`s of a deployment (module doc); a bad name or value is a
    ConfigurationError naming the variable and what it may be."""
    from dagster import EnvVar
    from pydantic import ValidationError

    from resources.scenes.stac import PROVIDERS, StacCatalog

    name = deployment or os.environ.get("TESSERA_DEPLOYMENT", "local")
    name = ALIASES.get(name, name)
    if name == "local":
        sources = [(f"{tessera_home()}/data/demo_catalog/catalog.json", "demo", None)] * 2
    elif name == "custom":
        sources = []
        for sensor in ("S2", "S1"):
            url = os.environ.get(f"TESSERA_{sensor}_CATALOG")
            if not url:
                raise ConfigurationError(f"TESSERA_DEPLOYMENT=custom needs TESSERA_{sensor}_CATALOG: a STAC API root, or "
                                         f"a static catalog (path, folder, file:// or https://.../catalog.json)")
            sources.append((url, os.environ.get(f"TESSERA_{sensor}_PROVIDER", "auto"),
                            os.environ.get(f"TESSERA_{sensor}_S3_ENDPOINT")))
    elif name in DEPLOYMENTS:
        sources = list(DEPLOYMENTS[name])
    else:
        known = ", ".join(["local", *DEPLOYMENTS, "custom", *ALIASES])
        raise ConfigurationError(f"unknown TESSERA_DEPLOYMENT {name!r}: use one of {known}")
    catalogs = []
    for sensor, (url, provider, s3_endpoint) in zip(("S2", "S1"), sources):
        if provider not in ("auto", *PROVIDERS):
            raise ConfigurationError(f"unknown TESSERA_{sensor}_PROVIDER {provider!r}: use one of auto, "
                                     f"{', '.join(PROVIDERS)}")
        s3 = {"s3_endpoint": s3_endpoint, "s3_access_key_id": EnvVar("TESSERA_S3_ACCESS_KEY_ID"),
              "s3_secret_access_key": EnvVar("TESSERA_S3_SECRET_ACCESS_KEY")} if s3_endpoint else {}
        collection = os.environ.get(f"TESSERA_{sensor}_COLLECTION")
        pairs = [p.split("=", 1) for p in os.environ.get(f"TESSERA_{sensor}_ASSET_KEYS", "").split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ConfigurationError(f"TESSERA_{sensor}_ASSET_KEYS must read BAND=key,BAND=key (e.g. B04=red,SCL=scl)")
        try:
            catalogs.append(StacCatalog(url=url, provider=provider, asset_keys={b.strip(): k.strip() for b, k in pairs},
                                        s2_mask=os.environ.get("TESSERA_S2_MASK", "scl"), **s3,
                                        **{f"{sensor.lower()}_collection": collection}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigurationError(f"bad {sensor} catalog settings: {problems}") from exc
    return catalogs
