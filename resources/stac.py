"""STAC search for Sentinel-1/2 scenes, with each provider's asset keys mapped to our band names.

One resource serves STAC APIs (Planetary Computer, Earth Search, any other through pystac-client) and
static catalogs on disk (the demo catalog among them). Everything downstream sees `Scene`s whose
`hrefs` are keyed by TESSERA band names, and whose `offset_dn` says how much to subtract exactly once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pystac
from dagster import ConfigurableResource
from pystac_client import ItemSearch
from pystac_client.stac_api_io import StacApiIO

from resources.errors import CatalogError

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
    s2_assets: dict[str, str]  # our band name -> asset key
    s1_assets: dict[str, str]
    sign_hrefs: bool = False


_PC_S2 = {b: b for b in S2_BANDS} | {"SCL": "SCL"}
_ES_S2 = {
    "B04": "red", "B02": "blue", "B03": "green", "B08": "nir", "B8A": "nir08", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
PROVIDERS: dict[str, Provider] = {
    "planetary-computer": Provider("sentinel-2-l2a", "sentinel-1-rtc", _PC_S2, {"VV": "vv", "VH": "vh"}, True),
    # Earth Search has no RTC; its S1 GRD is uncalibrated DN, so it is not offered as an S1 source.
    "earth-search": Provider("sentinel-2-l2a", None, _ES_S2, {}),
    "demo": Provider("sentinel-2-l2a", "sentinel-1-rtc", _PC_S2, {"VV": "vv", "VH": "vh"}),
}


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


def _parse_baseline(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def s2_offset_dn(properties: dict[str, Any]) -> int:
    """The DN offset still present in the data. Baseline 04.00+ adds 1000; Earth Search's
    `sentinel-2-l2a` already removed it (`earthsearch:boa_offset_applied`), so we must not twice."""
    if properties.get("earthsearch:boa_offset_applied") is True:
        return 0
    baseline = _parse_baseline(properties.get("s2:processing_baseline"))
    return BASELINE_OFFSET_DN if baseline is not None and baseline >= 4.0 else 0


def scene_from_item(item: pystac.Item | dict[str, Any], sensor: Sensor, provider: Provider) -> Scene | str:
    """A Scene, or the reason the item cannot serve as one."""
    data = item.to_dict() if isinstance(item, pystac.Item) else item
    props = data.get("properties", {})
    assets = data.get("assets", {})
    mapping = provider.s2_assets if sensor == "s2" else provider.s1_assets
    missing = [band for band, key in mapping.items() if key not in assets]
    if not mapping:
        return f"this provider has no {sensor.upper()} asset mapping"
    if missing:
        keys = ", ".join(mapping[b] for b in missing)
        return f"missing assets {keys} ({sensor.upper()} needs {', '.join(mapping.values())})"
    when = props.get("datetime") or props.get("start_datetime")
    if when is None:
        return "no datetime"
    cloud = props.get("eo:cloud_cover")
    if sensor == "s2" and cloud is not None and float(cloud) >= MAX_CLOUD_COVER:
        return f"cloud cover {float(cloud):.1f}% >= {MAX_CLOUD_COVER:.0f}%"
    return Scene(
        id=data["id"],
        collection=data.get("collection", ""),
        datetime=dt.datetime.fromisoformat(when.replace("Z", "+00:00")),
        hrefs={band: assets[key]["href"] for band, key in mapping.items()},
        cloud_cover=None if cloud is None else float(cloud),
        offset_dn=s2_offset_dn(props) if sensor == "s2" else 0,
        orbit_state=props.get("sat:orbit_state"),
    )


def _intersects(item_bbox: list[float] | None, bbox: tuple[float, float, float, float]) -> bool:
    if not item_bbox:
        return False
    w, s, e, n = item_bbox[:4] if len(item_bbox) == 4 else (item_bbox[0], item_bbox[1], item_bbox[3], item_bbox[4])
    return not (e < bbox[0] or w > bbox[2] or n < bbox[1] or s > bbox[3])


class StacCatalog(ConfigurableResource):
    """A STAC API root URL or a static catalog.json path, and the provider whose names it uses."""

    url: str
    provider: Literal["planetary-computer", "earth-search", "demo"] = "demo"
    s2_collection: str | None = None
    s1_collection: str | None = None
    page_size: int = 100
    sign_hrefs: bool | None = None  # None: the provider's default

    @property
    def _provider(self) -> Provider:
        return PROVIDERS[self.provider]

    def collection(self, sensor: Sensor) -> str:
        chosen = (self.s2_collection or self._provider.s2_collection) if sensor == "s2" else (
            self.s1_collection or self._provider.s1_collection
        )
        if chosen is None:
            raise CatalogError(f"provider {self.provider!r} offers no {sensor.upper()} collection")
        return chosen

    def is_static(self) -> bool:
        return self.url.endswith(".json") and "://" not in self.url

    def search(self, sensor: Sensor, bbox: tuple[float, float, float, float], year: int) -> SearchResult:
        collection = self.collection(sensor)
        items = self._static_items(collection, bbox, year) if self.is_static() else self._api_items(
            sensor, collection, bbox, year
        )
        result = SearchResult()
        for item in items:
            if item.get("collection") != collection:
                result.rejected.append((item["id"], f"collection {item.get('collection')}, not the requested {collection}"))
                continue
            scene = scene_from_item(item, sensor, self._provider)
            if isinstance(scene, str):
                result.rejected.append((item["id"], scene))
            else:
                result.scenes.append(scene)
        result.scenes.sort(key=lambda s: (s.datetime, s.id))
        return result

    def _modifier(self) -> Callable[[Any], None] | None:
        sign = self._provider.sign_hrefs if self.sign_hrefs is None else self.sign_hrefs
        if not sign:
            return None
        try:
            import planetary_computer
        except ImportError as exc:  # pragma: no cover - depends on an optional extra
            raise CatalogError(
                "Planetary Computer hrefs must be signed: pip install 'tessera[planetary-computer]' "
                "or set sign_hrefs: false"
            ) from exc
        return planetary_computer.sign_inplace

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
            modifier=self._modifier(),
        )
        try:
            for page in search.pages_as_dicts():
                yield from page.get("features", [])
        except Exception as exc:
            raise CatalogError(f"STAC search at {self.url} failed for {collection} {year}: {exc}") from exc

    def _static_items(self, collection: str, bbox, year: int) -> Iterable[dict[str, Any]]:
        path = Path(self.url)
        if not path.exists():
            raise CatalogError(f"static STAC catalog not found: {path}")
        catalog = pystac.Catalog.from_file(str(path))
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
