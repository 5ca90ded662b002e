"""Resources chosen by deployment, in one place: `local` (the embedded demo catalog, the default)
or `cloud` (Planetary Computer for both sensors). Set TESSERA_DEPLOYMENT to choose; TESSERA_HOME
moves the data root, TESSERA_REGIONS the regions file, TESSERA_LANCEDB_URI the embedding table.

The other resources are imported where they are built: a one-off `tessera search` needs only the
vector store, and importing the raster and model stack would triple its start-up."""

from __future__ import annotations

import os
from typing import Any

from resources.vector_store import VectorStore

PLANETARY_COMPUTER_API = "https://planetarycomputer.microsoft.com/api/stac/v1"


def tessera_home() -> str:
    return os.environ.get("TESSERA_HOME", ".tessera")


def vector_store() -> VectorStore:
    return VectorStore(uri=os.environ.get("TESSERA_LANCEDB_URI", f"{tessera_home()}/data/lancedb"))


def build_resources(deployment: str | None = None) -> dict[str, Any]:
    from resources.compute import ComputeDevice
    from resources.regions import RegionCatalog
    from resources.stac import StacCatalog
    from resources.storage import TesseraStorage

    deployment = deployment or os.environ.get("TESSERA_DEPLOYMENT", "local")
    home = tessera_home()
    storage = TesseraStorage(root=f"{home}/data")
    regions = RegionCatalog(path=os.environ.get("TESSERA_REGIONS", "regions.yaml"))
    if deployment == "local":
        demo = StacCatalog(url=f"{home}/data/demo_catalog/catalog.json", provider="demo")
        catalogs = {"s2_catalog": demo, "s1_catalog": demo}
    elif deployment == "cloud":
        pc = StacCatalog(url=PLANETARY_COMPUTER_API, provider="planetary-computer")
        catalogs = {"s2_catalog": pc, "s1_catalog": pc}
    else:
        raise ValueError(f"unknown TESSERA_DEPLOYMENT {deployment!r}: use 'local' or 'cloud'")
    return {"storage": storage, "regions": regions, "compute": ComputeDevice(), "vectors": vector_store(), **catalogs}
