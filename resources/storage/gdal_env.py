"""How GDAL reads remote rasters: HTTP retries and caching for cloud-hosted COGs, and object-store
settings (an S3-compatible endpoint, keys) handed over per reading thread."""

from __future__ import annotations

from typing import Any

import rasterio
from rasterio.session import Session


# GDAL's HTTP behaviour for cloud-hosted COGs: transient errors (429, 5xx) retried with back-off,
# bounded waits, no directory listings, and a block cache so a COG's header is fetched once.
GDAL_HTTP_ENV = {
    "GDAL_HTTP_MAX_RETRY": 5, "GDAL_HTTP_RETRY_DELAY": 0.5, "GDAL_HTTP_TIMEOUT": 60, "GDAL_HTTP_CONNECTTIMEOUT": 10,
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.jp2,.JP2",
    "VSI_CACHE": True, "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES", "GDAL_HTTP_MULTIPLEX": "YES",
}
_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


class _GivenKeys(Session):
    """Object-store keys handed to GDAL as they are. Rasterio refuses AWS keys as plain GDAL options
    and its own AWSSession needs boto3; a session that returns the keys it was given needs neither."""

    def __init__(self, keys: dict[str, str]):
        self._keys = keys

    @property
    def credentials(self) -> dict[str, str]:
        return self._keys

    def get_credential_options(self) -> dict[str, str]:
        return dict(self._keys)

    @classmethod
    def hascreds(cls, config: dict[str, Any]) -> bool:
        return True


def read_environment(gdal_options: dict[str, str] | None = None) -> rasterio.Env:
    """GDAL's HTTP settings with the catalog's own options (`StacCatalog.gdal_options`: an S3
    endpoint and its keys) over them. One per reading thread: rasterio's environment is per thread."""
    options = dict(gdal_options or {})
    keys = {k: options.pop(k) for k in _KEYS if k in options}
    return rasterio.Env(session=_GivenKeys(keys) if keys else None, **(GDAL_HTTP_ENV | options))


def endpoint_options(endpoint: str) -> dict[str, str]:
    """GDAL's settings for an S3-compatible endpoint given as `host`, `https://host` or `http://host:port`."""
    scheme, _, host = endpoint.rpartition("://")
    return {"AWS_S3_ENDPOINT": host.rstrip("/"), "AWS_HTTPS": "NO" if scheme == "http" else "YES",
            "AWS_VIRTUAL_HOSTING": "FALSE"}
