"""Regions: a name plus a WGS84 bbox, resolved to the 10 m UTM grid every per-region product shares.

`regions.yaml` is the one source of regions. Validation happens here, before any work starts,
so that a typo in a bbox fails in milliseconds rather than after an hour of downloads.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from affine import Affine
from dagster import ConfigurableResource
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from resources.errors import (
    ConfigurationError,
    InvalidBBoxError,
    InvalidRegionNameError,
    RegionTooLargeError,
    UnknownRegionError,
    YearOutOfRangeError,
)
from resources.storage.atomic import atomic_file
from resources.storage.object_store import ObjectRoot, is_object_uri

FIRST_YEAR = 2017
PIXEL_SIZE_M = 10.0
PIXEL_AREA_HA = PIXEL_SIZE_M * PIXEL_SIZE_M / 10_000
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def last_year() -> int:
    return dt.date.today().year


def validate_year(year: int | str) -> int:
    """The years TESSERA covers: Sentinel-2 L2A is global from 2017; nothing exists after this year."""
    try:
        value = int(year)
    except (TypeError, ValueError):
        raise YearOutOfRangeError(f"year {year!r} is not an integer") from None
    if not FIRST_YEAR <= value <= last_year():
        raise YearOutOfRangeError(
            f"year {value} is out of range: choose one of {FIRST_YEAR}..{last_year()}"
        )
    return value


def validate_bbox(bbox: tuple[float, float, float, float] | list[float]) -> tuple[float, float, float, float]:
    """West, south, east, north in degrees; UTM only spans 80 S .. 84 N, so neither do we."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise InvalidBBoxError(f"bbox must be 4 numbers W S E N, got {str(bbox)[:80]}")
    try:
        west, south, east, north = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InvalidBBoxError(f"bbox must be numbers W S E N, got {list(bbox)}") from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise InvalidBBoxError(f"bbox has a non-finite coordinate: {list(bbox)}")
    if not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0):
        raise InvalidBBoxError(f"bbox longitude out of range [-180, 180]: W={west}, E={east}")
    if not (-80.0 <= south <= 84.0 and -80.0 <= north <= 84.0):
        raise InvalidBBoxError(
            f"bbox latitude out of the UTM range [-80, 84]: S={south}, N={north}"
        )
    if west >= east:
        raise InvalidBBoxError(
            f"bbox is inverted or empty in longitude: W={west} must be less than E={east} "
            "(bboxes crossing the antimeridian are not supported)"
        )
    if south >= north:
        raise InvalidBBoxError(f"bbox is inverted or empty in latitude: S={south} must be less than N={north}")
    return west, south, east, north


def validate_region_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise InvalidRegionNameError(
            f"bad region name {name!r}: use 1-63 characters of a-z, 0-9, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, order=True)
class PartitionId:
    """One year of one region: the unit every per-region product is made in. Written as Dagster's
    multi-partition key prints it (dimensions sorted by name, so region first): `demo|2022`."""

    year: int
    region: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "year", validate_year(self.year))
        object.__setattr__(self, "region", validate_region_name(self.region))

    def __str__(self) -> str:
        return f"{self.region}|{self.year}"

    @classmethod
    def parse(cls, key: str) -> "PartitionId":
        """From `region|year`; anything else is an error naming the key."""
        region, sep, year = str(key).partition("|")
        if not sep:
            raise InvalidRegionNameError(f"partition key {key!r} is not region|year (e.g. demo|2022)")
        return cls(year, region)


@dataclass(frozen=True)
class RegionGrid:
    """The 10 m pixel grid of a region in its UTM zone; every raster of the region lives on it."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return left, top - self.height * PIXEL_SIZE_M, left + self.width * PIXEL_SIZE_M, top

    def blocks(self, size: int) -> list[Window]:
        """Square windows tiling the grid, the unit that bounds memory in every streaming step."""
        return [
            Window(col, row, min(size, self.width - col), min(size, self.height - row))
            for row in range(0, self.height, size)
            for col in range(0, self.width, size)
        ]

    def geotiff_profile(self, **options) -> dict:
        """The one GeoTIFF layout of every raster on the grid: tiled 256 x 256, deflate; `options`
        add the band count, dtype, nodata and any predictor."""
        return dict(driver="GTiff", width=self.width, height=self.height, crs=self.crs, transform=self.transform,
                    tiled=True, blockxsize=256, blockysize=256, compress="deflate") | options

    def polygons(self, ids: np.ndarray) -> dict[int, dict]:
        """The lon/lat GeoJSON Polygon (or MultiPolygon, for several parts) of the pixels of each
        nonzero id of a raster on the grid; pixels touching at a corner join, as 8-connected
        patches do."""
        from rasterio.features import shapes
        from rasterio.warp import transform_geom

        parts: dict[int, list] = {}
        for geometry, value in shapes(ids, mask=ids > 0, transform=self.transform, connectivity=8):
            parts.setdefault(int(value), []).append(geometry["coordinates"])
        return {value: transform_geom(self.crs, "EPSG:4326", {"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1
                                      else {"type": "MultiPolygon", "coordinates": rings})
                for value, rings in sorted(parts.items())}

    def window_transform(self, window: Window) -> Affine:
        return self.transform @ Affine.translation(window.col_off, window.row_off)


def utm_zone(lon):
    """The UTM zone (1..60) of a longitude, or of every longitude of an array (lon 180 is zone 60)."""
    zones = np.clip(np.floor((np.asarray(lon, dtype=np.float64) + 180.0) / 6.0).astype(np.int64) + 1, 1, 60)
    return int(zones) if zones.ndim == 0 else zones


def utm_crs_for(lon: float, lat: float) -> CRS:
    """The UTM zone of a point; north zones are EPSG 326zz, south 327zz."""
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + utm_zone(lon))


def region_grid(bbox: tuple[float, float, float, float]) -> RegionGrid:
    """The grid of a bbox: UTM zone of its centre (deterministic at zone boundaries), 10 m pixels
    snapped to multiples of 10 m so that grids of overlapping regions line up pixel for pixel."""
    west, south, east, north = validate_bbox(bbox)
    crs = utm_crs_for((west + east) / 2.0, (south + north) / 2.0)
    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", crs, west, south, east, north, densify_pts=21)
    left = math.floor(minx / PIXEL_SIZE_M) * PIXEL_SIZE_M
    bottom = math.floor(miny / PIXEL_SIZE_M) * PIXEL_SIZE_M
    right = math.ceil(maxx / PIXEL_SIZE_M) * PIXEL_SIZE_M
    top = math.ceil(maxy / PIXEL_SIZE_M) * PIXEL_SIZE_M
    width = int(round((right - left) / PIXEL_SIZE_M))
    height = int(round((top - bottom) / PIXEL_SIZE_M))
    return RegionGrid(
        crs=crs,
        transform=Affine(PIXEL_SIZE_M, 0.0, left, 0.0, -PIXEL_SIZE_M, top),
        width=width,
        height=height,
    )


@dataclass(frozen=True)
class Region:
    name: str
    bbox: tuple[float, float, float, float]
    demo: bool = False

    @property
    def grid(self) -> RegionGrid:
        return region_grid(self.bbox)

    def area_km2(self) -> float:
        grid = self.grid
        return grid.width * grid.height * (PIXEL_SIZE_M / 1000.0) ** 2


def make_region(name: str, bbox: list[float] | tuple[float, ...], max_area_km2: float, demo: bool = False) -> Region:
    region = Region(validate_region_name(name), validate_bbox(bbox), demo)
    area = region.area_km2()
    if area > max_area_km2:
        raise RegionTooLargeError(
            f"region {name!r} covers {area:,.0f} km2, more than the limit of {max_area_km2:,.0f} km2: "
            "split it into several regions or raise max_area_km2"
        )
    return region


class RegionCatalog(ConfigurableResource):
    """Regions defined in a YAML file (`regions: {name: {bbox: [W, S, E, N], demo: bool}}`): a local
    file, or an object on the store (`s3://bucket/regions.yaml`) that every pod of a deployment reads."""

    path: str = "regions.yaml"
    max_area_km2: float = 2500.0

    def _object(self) -> tuple[ObjectRoot, str] | None:
        """(the store holding it, its name) for an object-store path; None for a local file."""
        if not is_object_uri(self.path):
            return None
        parent, _, name = self.path.rpartition("/")
        return ObjectRoot(parent), name

    def _text(self) -> tuple[str | None, str | None]:
        """The file's text (None when missing) and, on an object store, its ETag."""
        remote = self._object()
        if remote is not None:
            data, etag = remote[0].read_versioned(remote[1])
            return (data.decode() if data is not None else None), etag
        path = Path(self.path)
        return (path.read_text() if path.exists() else None), None

    def _read(self) -> dict[str, dict]:
        """The `regions` mapping, each entry a mapping with a `bbox`; a file of another shape (not
        YAML, no mapping, an entry without a bbox) is a ConfigurationError naming the file."""
        text, _ = self._text()
        try:
            document = yaml.safe_load(text or "") or {}
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"regions file {self.path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        regions = document.get("regions") if isinstance(document, dict) else None
        if regions is None and not document:
            return {}
        if not isinstance(regions, dict):
            raise ConfigurationError(f"regions file {self.path} must hold `regions:` mapping names to "
                                     "{bbox: [W, S, E, N]}")
        for name, spec in regions.items():
            if not isinstance(spec, dict) or "bbox" not in spec:
                raise ConfigurationError(f"regions file {self.path}: region {str(name)[:40]!r} needs a bbox: [W, S, E, N]")
        return {str(name): spec for name, spec in regions.items()}

    def _region(self, name: str, spec: dict) -> Region:
        return make_region(name, spec["bbox"], self.max_area_km2, spec.get("demo") is True)

    def all(self) -> list[Region]:
        return [self._region(name, spec) for name, spec in sorted(self._read().items())]

    def get(self, name: str) -> Region:
        spec = self._read().get(name)
        if spec is None:
            known = ", ".join(sorted(self._read())) or "none"
            raise UnknownRegionError(
                f"unknown region {name!r} (known: {known}); add it with `tessera regions add`"
            )
        return self._region(name, spec)

    def add(self, name: str, bbox: list[float] | tuple[float, ...]) -> Region:
        """Validate, then add the region to the file (see `_edit`)."""
        region = make_region(name, bbox, self.max_area_km2)

        def add_entry(regions) -> None:
            if name in regions:
                raise InvalidRegionNameError(f"region {name!r} already exists; remove it first to change its bbox")
            entry = CommentedMap(bbox=[round(v, 7) for v in region.bbox])
            entry["bbox"] = _flow(entry["bbox"])
            regions[name] = entry

        self._edit(add_entry)
        return region

    def remove(self, name: str) -> Region:
        """Take the region out of the file (see `_edit`); its data is the caller's to keep or purge."""
        region = self.get(name)
        self._edit(lambda regions: regions.pop(name))
        return region

    def _edit(self, change) -> None:
        """Read, change and rewrite the file so concurrent edits (the CLI, a second terminal, another
        machine) never lose one another: locally under an exclusive lock, replaced atomically; on an
        object store by a conditional write, retried on the new text when another edit came first.
        Comments, order and layout are kept (round-trip YAML)."""
        remote = self._object()
        if remote is not None:
            store, name = remote
            while True:
                text, etag = self._text()
                if store.replace_if(name, _changed(text, change).encode(), etag):
                    return
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}-lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            text = _changed(path.read_text() if path.exists() else None, change)
            with atomic_file(path) as tmp:
                tmp.write_text(text)


def _changed(text: str | None, change) -> str:
    """The regions document with `change` applied to its `regions` mapping, layout kept."""
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    document = (yaml_rt.load(text) if text else None) or CommentedMap()
    if document.get("regions") is None:
        document["regions"] = CommentedMap()
    change(document["regions"])
    out = io.StringIO()
    yaml_rt.dump(document, out)
    return out.getvalue()


def _flow(values: list[float]):
    """A bbox written on one line, `[W, S, E, N]`, as the file's own entries are."""
    seq = CommentedSeq(values)
    seq.fa.set_flow_style()
    return seq
