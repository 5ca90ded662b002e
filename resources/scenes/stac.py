"""STAC search for Sentinel-1/2 scenes, with each provider's asset keys mapped to our band names.

One resource serves STAC APIs (Planetary Computer, Earth Search, any other through pystac-client) and
static catalogs on disk (the demo catalog among them). Everything downstream sees `Scene`s whose
`hrefs` are keyed by TESSERA band names, and whose `offset_dn` says how much to subtract exactly once.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pystac
from dagster import ConfigurableResource
from pystac_client import ItemSearch
from pystac_client.stac_api_io import StacApiIO

from resources.errors import CatalogError
from resources.storage.gdal_env import endpoint_options

Sensor = Literal["s2", "s1"]

# TESSERA band order (DESIGN.md); SCL travels along for masking.
S2_BANDS: tuple[str, ...] = ("B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12")
S2_20M_BANDS = frozenset({"B8A", "B05", "B06", "B07", "B11", "B12"})
S1_BANDS: tuple[str, ...] = ("VV", "VH")
BASELINE_OFFSET_DN = 1000
MAX_CLOUD_COVER = 90.0


@dataclass(frozen=True)
class Provider:
    """How one STAC source names its collections and assets."""

    s2_collection: str
    s1_collection: str | None
    s2_assets: dict[str, str]  # our band name -> asset key (the bands and SCL)
    s1_assets: dict[str, str]
    sign_hrefs: bool = False

    def collection(self, sensor: Sensor) -> str | None:
        return self.s2_collection if sensor == "s2" else self.s1_collection

    def assets(self, sensor: Sensor) -> dict[str, str]:
        return self.s2_assets if sensor == "s2" else self.s1_assets


_PC_S2 = {b: b for b in S2_BANDS} | {"SCL": "SCL"}
_ES_S2 = {
    "B04": "red", "B02": "blue", "B03": "green", "B08": "nir", "B8A": "nir08", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
_CDSE_S2 = {b: f"{b}_{'20m' if b in S2_20M_BANDS else '10m'}" for b in S2_BANDS} | {"SCL": "SCL_20m"}
PROVIDERS: dict[str, Provider] = {
    "planetary-computer": Provider("sentinel-2-l2a", "sentinel-1-rtc", _PC_S2, {"VV": "vv", "VH": "vh"}, True),
    # Earth Search has no RTC; its S1 GRD is uncalibrated DN, so it is not offered as an S1 source.
    "earth-search": Provider("sentinel-2-l2a", None, _ES_S2, {}),
    # Earth Search v0 (`sentinel-s2-l2a-cogs`) keeps the band names as asset keys
    "earth-search-v0": Provider("sentinel-s2-l2a-cogs", None, _PC_S2, {}),
    # Copernicus Data Space: resolution-suffixed keys, JP2 on its S3 (`StacCatalog.s3_endpoint` and keys)
    "cdse": Provider("sentinel-2-l2a", None, _CDSE_S2, {}),
    "demo": Provider("sentinel-2-l2a", "sentinel-1-rtc", _PC_S2, {"VV": "vv", "VH": "vh"}),
}
# `provider: auto` knows these APIs by their URL, and any other source by its items' asset keys
KNOWN_APIS: tuple[tuple[str, str], ...] = (
    ("planetarycomputer.microsoft.com", "planetary-computer"),
    ("earth-search.aws.element84.com/v1", "earth-search"),
    ("earth-search.aws.element84.com/v0", "earth-search-v0"),
    ("dataspace.copernicus.eu", "cdse"),
)
MASKS = ("SCL", "CLOUD")


def provider_of_url(url: str) -> str | None:
    return next((name for host, name in KNOWN_APIS if host in url), None)


def detect_provider(item: dict[str, Any], sensor: Sensor) -> str | None:
    """The provider whose band asset keys the item carries, its collection breaking a tie (Planetary
    Computer and Earth Search v0 share keys); None when no provider's layout fits."""
    assets = set(item.get("assets", {}))
    fits = [name for name, p in PROVIDERS.items() if name != "demo"
            and {k for b, k in p.assets(sensor).items() if b not in MASKS} <= assets and p.assets(sensor)]
    same_collection = [name for name in fits if PROVIDERS[name].collection(sensor) == item.get("collection")]
    return (same_collection or fits or [None])[0]


@dataclass(frozen=True)
class Scene:
    id: str
    collection: str
    datetime: dt.datetime
    hrefs: dict[str, str]
    cloud_cover: float | None = None
    offset_dn: int = 0
    orbit_state: str | None = None

    @property
    def date(self) -> dt.date:
        return self.datetime.date()


@dataclass
class SearchResult:
    """Scenes to use, and those rejected with the reason, so the UI can show both."""

    scenes: list[Scene] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    layouts: dict[str, int] = field(default_factory=dict)  # the item layout each item was read by: items

    def layout(self) -> str:
        """The layouts the items were read by, for people: `earth-search (64 items)`."""
        return ", ".join(f"{name} ({n} item{'s' * (n != 1)})" for name, n in sorted(self.layouts.items())) or "none"


BASELINE_04_START = dt.date(2022, 1, 25)  # first acquisitions processed with baseline 04.00 (the offset)
_PRODUCT_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")  # S2B_MSIL2A_20220315T103629_N0400_R008_...


def processing_baseline(properties: dict[str, Any]) -> float | None:
    """The processing baseline from whichever field the provider fills: `s2:processing_baseline`
    (Planetary Computer, Earth Search v1), `processing:version` (CDSE), or the `N0400` part of the
    product id (`sentinel:product_id` on Earth Search v0, `s2:product_uri`)."""
    for key in ("s2:processing_baseline", "processing:version"):
        try:
            return float(properties[key])
        except (KeyError, TypeError, ValueError):
            continue
    for key in ("sentinel:product_id", "s2:product_uri"):
        match = _PRODUCT_BASELINE.search(str(properties.get(key, "")))
        if match:
            return float(f"{match.group(1)}.{match.group(2)}")
    return None


def _raster_offset_scale(asset: dict[str, Any] | None) -> tuple[float, float] | None:
    """`raster:offset`/`raster:scale` of a band asset: on the asset (STAC 1.1, CDSE), in its first
    `raster:bands` entry (the raster extension of STAC 1.0, Earth Search v1), or in its first
    `bands` entry (STAC 1.1 band objects)."""
    if not asset:
        return None
    candidates = [(asset.get("raster:offset"), asset.get("raster:scale"))]
    candidates += [(band.get("offset"), band.get("scale")) for band in (asset.get("raster:bands") or [])[:1]]
    candidates += [(band.get("raster:offset"), band.get("raster:scale")) for band in (asset.get("bands") or [])[:1]]
    return next(((float(o), float(sc)) for o, sc in candidates if o is not None and sc), None)


def s2_offset_dn(properties: dict[str, Any], band_asset: dict[str, Any] | None = None,
                 acquired: dt.date | None = None) -> int:
    """The DN offset still present in the data, to subtract exactly once.

    Earth Search's `sentinel-2-l2a` removed it already (`earthsearch:boa_offset_applied`), though its
    band metadata still declares the offset, so the flag decides. Otherwise the band's declared
    `raster:offset`/`raster:scale` (offset -0.1 at scale 1e-4 is 1000 DN), else the processing
    baseline (04.00 and later add 1000), else the acquisition date (baseline 04.00 from 2022-01-25)."""
    if properties.get("earthsearch:boa_offset_applied") is True:
        return 0
    declared = _raster_offset_scale(band_asset)
    if declared is not None:
        offset, scale = declared
        return max(0, int(round(-offset / scale)))
    baseline = processing_baseline(properties)
    if baseline is None:
        return BASELINE_OFFSET_DN if acquired is not None and acquired >= BASELINE_04_START else 0
    return BASELINE_OFFSET_DN if baseline >= 4.0 else 0


def scene_from_item(item: pystac.Item | dict[str, Any], sensor: Sensor, provider: Provider) -> Scene | str:
    """A Scene, or the reason the item cannot serve as one."""
    data = item.to_dict() if isinstance(item, pystac.Item) else item
    props = data.get("properties", {})
    assets = data.get("assets", {})
    mapping = provider.assets(sensor)
    missing = [band for band, key in mapping.items() if key not in assets]
    if not mapping:
        return f"this provider has no {sensor.upper()} asset mapping"
    if missing:
        keys = ", ".join(mapping[b] for b in missing)
        hint = "; for items without SCL set s2_mask to cloud or none" if "SCL" in missing else ""
        return f"missing assets {keys} ({sensor.upper()} needs {', '.join(mapping.values())}{hint})"
    when = props.get("datetime") or props.get("start_datetime")
    if when is None:
        return "no datetime"
    cloud = props.get("eo:cloud_cover")
    if sensor == "s2" and cloud is not None and float(cloud) >= MAX_CLOUD_COVER:
        return f"cloud cover {float(cloud):.1f}% >= {MAX_CLOUD_COVER:.0f}%"
    acquired = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    return Scene(
        id=data["id"],
        collection=data.get("collection", ""),
        datetime=acquired,
        hrefs={band: assets[key]["href"] for band, key in mapping.items()},
        cloud_cover=None if cloud is None else float(cloud),
        offset_dn=s2_offset_dn(props, assets[mapping["B04"]], acquired.date()) if sensor == "s2" else 0,
        orbit_state=props.get("sat:orbit_state"),
    )


def _intersects(item_bbox: list[float] | None, bbox: tuple[float, float, float, float]) -> bool:
    if not item_bbox:
        return False
    w, s, e, n = item_bbox[:4] if len(item_bbox) == 4 else (item_bbox[0], item_bbox[1], item_bbox[3], item_bbox[4])
    return not (e < bbox[0] or w > bbox[2] or n < bbox[1] or s > bbox[3])


class StacCatalog(ConfigurableResource):
    """A STAC API root URL or a static catalog (`static_root`), the provider whose names it uses,
    and how its scenes are read (workers, the share that may be lost, step retries, credentials)."""

    url: str
    # "auto": a known API by its URL (KNOWN_APIS), any other source item by item from its asset keys
    provider: Literal["auto", "planetary-computer", "earth-search", "earth-search-v0", "cdse", "demo"] = "demo"
    s2_collection: str | None = None
    s1_collection: str | None = None
    page_size: int = 100
    sign_hrefs: bool | None = None  # None: the provider's default
    # our band name (B04 ... B12, SCL, CLOUD, VV, VH) -> this catalog's asset key, over the provider's
    # names: for a catalog whose layout no provider matches
    asset_keys: dict[str, str] = {}
    # "scl": clear pixels by the scene classification (TESSERA's rule; items without SCL are refused);
    # "cloud": clear where the item's cloud mask or probability asset (asset_keys CLOUD=<key>: an
    # s2cloudless or Sen2Cor MSK_CLDPRB layer) is below `cloud_clear_below`; "none": every valid pixel
    # counts as clear. The last two are opt-ins for catalogs without SCL (clouds the mask misses reach
    # the encoder), named in the partition metadata.
    s2_mask: Literal["scl", "cloud", "none"] = "scl"
    cloud_clear_below: float = 40.0  # a cloud probability in percent; 1 for a 0 (clear) / 1 (cloud) mask
    read_workers: int = 8  # observations read at once: overlaps the latency of remote COG reads
    max_lost_fraction: float = 0.1  # a partition fails when more of its scenes than this cannot be read
    step_retries: int = 2  # ... and is retried this many times, a fresh step each time, ...
    step_retry_seconds: float = 60.0  # ... this long after the first failure, doubling each time
    # s3:// hrefs (CDSE's eodata, a MinIO): the S3-compatible endpoint (`host`, `https://host` or
    # `http://host:port`) and keys; give the keys as Dagster EnvVars so they never show in run config
    s3_endpoint: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None

    def _named_provider(self) -> str | None:
        return provider_of_url(self.url) if self.provider == "auto" else self.provider

    def layout_of(self, item: dict[str, Any], sensor: Sensor) -> str | None:
        """The name of the provider layout an item is read by: the named provider, or with `auto`
        the one a known API's URL or the item's own asset keys say; None when none fits."""
        name = self._named_provider() or detect_provider(item, sensor)
        if name is None and self.asset_keys:
            return "planetary-computer"  # its keys are our band names, the user's map goes over them
        return name

    def provider_for(self, item: dict[str, Any], sensor: Sensor) -> Provider | str:
        """The asset names to read an item by (the provider's, with the mask chosen and the user's
        `asset_keys` over them), or the reason none fits."""
        name = self.layout_of(item, sensor)
        if name is None:
            return "its asset keys fit no known provider: name the provider, or map the keys with asset_keys"
        return self._mapped(name, sensor)

    def _check_asset_keys(self) -> None:
        unknown = sorted(set(self.asset_keys) - {*S2_BANDS, *MASKS, *S1_BANDS})
        if unknown:
            raise CatalogError(f"asset_keys names unknown bands {', '.join(unknown)}: use "
                               f"{', '.join((*S2_BANDS, *MASKS, *S1_BANDS))}")

    def _mapped(self, name: str, sensor: Sensor) -> Provider:
        self._check_asset_keys()
        base = PROVIDERS[name]
        if sensor == "s1":
            return replace(base, s1_assets={b: self.asset_keys.get(b, k) for b, k in base.s1_assets.items()})
        s2 = {b: k for b, k in base.s2_assets.items() if b not in MASKS}
        if self.s2_mask == "scl":
            s2["SCL"] = base.s2_assets["SCL"]
        elif self.s2_mask == "cloud":
            if "CLOUD" not in self.asset_keys:
                raise CatalogError("s2_mask 'cloud' needs the asset key of the items' cloud mask: "
                                   "asset_keys CLOUD=<key> (TESSERA_S2_ASSET_KEYS=CLOUD=<key>)")
            s2["CLOUD"] = self.asset_keys["CLOUD"]
        return replace(base, s2_assets={b: self.asset_keys.get(b, k) for b, k in s2.items()})

    def collection(self, sensor: Sensor) -> str:
        chosen = self.s2_collection if sensor == "s2" else self.s1_collection
        chosen = chosen or PROVIDERS[self._named_provider() or "planetary-computer"].collection(sensor)
        if chosen is None:
            raise CatalogError(f"provider {self.provider!r} offers no {sensor.upper()} collection")
        return chosen

    def gdal_options(self) -> dict[str, str]:
        """The GDAL settings this catalog's hrefs need to be read: an S3-compatible endpoint and its
        keys (without keys, requests go unsigned)."""
        if not (self.s3_endpoint or self.s3_access_key_id):
            return {}
        options = {"AWS_NO_SIGN_REQUEST": "YES"}
        if self.s3_access_key_id:
            if not self.s3_secret_access_key:
                raise CatalogError("s3_access_key_id is set without s3_secret_access_key")
            options = {"AWS_ACCESS_KEY_ID": self.s3_access_key_id, "AWS_SECRET_ACCESS_KEY": self.s3_secret_access_key}
        if self.s3_endpoint:
            options |= endpoint_options(self.s3_endpoint)
        return options

    def static_root(self) -> str | None:
        """The catalog.json of a static catalog, or None for a STAC API. A static catalog is a local
        path or `file://` URL of catalog.json or of the folder holding it, or any URL ending in .json
        (`https://.../catalog.json`); every other URL is an API root."""
        url = self.url
        if url.startswith("file://"):
            url = url[len("file://"):]
        elif "://" in url:
            return url if url.endswith(".json") else None
        path = Path(url)
        return str(path / "catalog.json" if path.is_dir() or not url.endswith(".json") else path)

    def search(self, sensor: Sensor, bbox: tuple[float, float, float, float], year: int) -> SearchResult:
        self._check_asset_keys()  # before any request: a typo costs no search
        collection = self.collection(sensor)
        root = self.static_root()
        items = self._static_items(root, collection, bbox, year) if root else self._api_items(
            sensor, collection, bbox, year
        )
        result = SearchResult()
        for item in items:
            if item.get("collection") != collection:
                result.rejected.append((item["id"], f"collection {item.get('collection')}, not the requested {collection}"))
                continue
            provider = self.provider_for(item, sensor)
            scene = provider if isinstance(provider, str) else scene_from_item(item, sensor, provider)
            if isinstance(scene, str):
                result.rejected.append((item["id"], scene))
            else:
                result.scenes.append(scene)
                layout = self.layout_of(item, sensor) + (" (asset_keys over it)" if self.asset_keys else "")
                layout = layout if self.provider != "auto" else f"auto: {layout}"
                result.layouts[layout] = result.layouts.get(layout, 0) + 1
        result.scenes.sort(key=lambda s: (s.datetime, s.id))
        return result

    def signer(self) -> Callable[[str], str] | None:
        """What makes an href readable right before it is opened (Planetary Computer: a SAS token),
        so a token never expires during a long ingest; None when hrefs are read as they are."""
        name = self._named_provider()
        sign = (name is not None and PROVIDERS[name].sign_hrefs) if self.sign_hrefs is None else self.sign_hrefs
        if not sign:
            return None
        try:
            import planetary_computer
        except ImportError as exc:  # pragma: no cover - depends on an optional extra
            raise CatalogError(
                "Planetary Computer hrefs must be signed: pip install 'tessera[planetary-computer]' "
                "or set sign_hrefs: false"
            ) from exc
        return planetary_computer.sign

    def _api_items(self, sensor: Sensor, collection: str, bbox, year: int) -> Iterable[dict[str, Any]]:
        query = {"eo:cloud_cover": {"lt": MAX_CLOUD_COVER}} if sensor == "s2" else None
        search = ItemSearch(
            url=self.url.rstrip("/") + "/search",
            method="POST",
            stac_io=StacApiIO(),
            collections=[collection],
            bbox=list(bbox),
            datetime=f"{year}-01-01T00:00:00Z/{year}-12-31T23:59:59Z",
            query=query,
            limit=self.page_size,
        )
        try:
            for page in search.pages_as_dicts():
                yield from page.get("features", [])
        except Exception as exc:
            raise CatalogError(f"STAC search at {self.url} failed for {collection} {year}: {exc}") from exc

    def _static_items(self, root: str, collection: str, bbox, year: int) -> Iterable[dict[str, Any]]:
        if "://" not in root and not Path(root).exists():
            raise CatalogError(f"static STAC catalog not found: {root}")
        try:
            catalog = pystac.Catalog.from_file(root)
        except Exception as exc:  # pystac raises whatever its reader met: HTTP, JSON, STAC errors
            raise CatalogError(f"cannot read the static STAC catalog {root}: {exc}") from exc
        # A catalog that groups items by collection lets us skip the other sensor's items unread.
        source = catalog.get_child(collection) or catalog
        for item in source.get_items(recursive=True):
            if item.collection_id != collection or item.datetime is None or item.datetime.year != year:
                continue
            if _intersects(item.bbox, bbox):
                data = item.to_dict(transform_hrefs=False)
                for key, asset in item.assets.items():
                    data["assets"][key]["href"] = asset.get_absolute_href()
                yield data
