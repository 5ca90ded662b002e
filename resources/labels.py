"""Labelled points and polygons from the files people draw them in (GeoJSON, GeoPackage, Shapefile,
KML, FlatGeobuf, GeoParquet, CSV), located on region grids.

Geometries in a declared CRS are reprojected to WGS84 lon/lat; coordinates outside the lon/lat range
(a projected file that declares no CRS) are refused rather than silently misplaced. A polygon contributes every pixel
whose centre it contains, and all of them share one group, so evaluation can keep a polygon on one
side of the train/test split. Points may name their group (a `group` property or column, such as
the field a survey point was taken in); otherwise a point's group is its H3 cell at resolution 8
(about 0.7 km2), so neighbouring points, likely of one field, never land on both sides of a split.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h3
import numpy as np
from rasterio.features import rasterize
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_geom

from dagster import ConfigurableResource
from pydantic import Field

from resources.errors import LabelsError
from resources.storage.object_store import ObjectRoot, is_object_uri
from resources.regions import RegionGrid

if TYPE_CHECKING:
    from resources.storage.data_root import TesseraStorage

WGS84_NAMES = {"EPSG:4326", "OGC:CRS84", "urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:EPSG::4326"}


@dataclass
class LabelFeature:
    label: str
    geometry: dict  # GeoJSON geometry in lon/lat
    year: int | None
    index: int  # position in the file, for messages
    group: str  # features of one group stay on one side of a train/test split
    value: float | None = None  # the quantity a regression learns (the labels source's `value_field`)


GEOMETRY_TYPES = ("Point", "Polygon", "MultiPolygon")
# what people draw labels in: QGIS (GeoPackage, Shapefile), geojson.io (GeoJSON), Google Earth (KML)
OGR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".kml", ".fgb")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".geoparquet")


@dataclass
class _Row:
    """One feature as a reader found it: its geometry in the file's CRS, and its fields."""

    geometry: dict | None
    fields: dict


def _ogr_rows(path: Path) -> tuple[str | None, list[_Row]]:
    """The features of any file GDAL reads as vectors (pyogrio): the file's CRS and its rows."""
    import pyogrio
    import shapely

    try:
        meta, table = pyogrio.read_arrow(path)
    except Exception as exc:  # pyogrio's DataSourceError and friends: the file is not what it says
        raise LabelsError(f"{path}: cannot be read as a vector file ({exc})") from None
    geometry = meta.get("geometry_name") or "wkb_geometry"
    if geometry not in table.column_names:
        raise LabelsError(f"{path}: has no geometry column")
    shapes = shapely.from_wkb(table[geometry].to_numpy(zero_copy_only=False))
    fields = table.drop_columns([geometry]).to_pylist()
    return meta.get("crs"), [_Row(shapely.geometry.mapping(g) if g is not None else None, f)
                             for g, f in zip(shapes, fields)]


def _parquet_rows(path: Path) -> tuple[str | None, list[_Row]]:
    """The features of a GeoParquet file (WKB geometries, its CRS in the `geo` metadata)."""
    import pyarrow.parquet as pq
    import shapely

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise LabelsError(f"{path}: cannot be read as Parquet ({exc})") from None
    geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}") or b"{}")
    column = geo.get("primary_column", "geometry")
    if column not in table.column_names:
        raise LabelsError(f"{path}: GeoParquet needs a {column!r} geometry column")
    crs = (geo.get("columns", {}).get(column, {}) or {}).get("crs", "EPSG:4326")  # GeoParquet's default: lon/lat
    crs = json.dumps(crs) if isinstance(crs, dict) else crs
    try:
        shapes = shapely.from_wkb(table[column].to_numpy(zero_copy_only=False))
    except shapely.errors.GEOSException as exc:
        raise LabelsError(f"{path}: its {column!r} column is not WKB geometry ({exc})") from None
    fields = table.drop_columns([column]).to_pylist()
    return crs, [_Row(shapely.geometry.mapping(g) if g is not None else None, f) for g, f in zip(shapes, fields)]


def _csv_rows(path: Path, needed: set[str]) -> tuple[str, list[_Row]]:
    """Points of a CSV file with lon and lat columns (WGS84 by definition)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = {"lon", "lat", *needed} - set(reader.fieldnames or [])
            if missing:
                raise LabelsError(f"{path}: CSV lacks the columns {', '.join(sorted(missing))} "
                                  f"(need lon, lat, {', '.join(sorted(needed))})")
            rows = []
            for i, row in enumerate(reader):
                try:
                    lon, lat = float(row["lon"]), float(row["lat"])
                except (TypeError, ValueError):  # a short row gives None
                    raise LabelsError(f"{path}: row {i + 2} has a missing or non-numeric lon/lat") from None
                rows.append(_Row({"type": "Point", "coordinates": [lon, lat]}, row))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"{path}: not a UTF-8 CSV file ({exc})") from None
    return "EPSG:4326", rows


def _is_wgs84(crs: str | None, path: Path) -> bool:
    """Whether the file's declared CRS is lon/lat already; a CRS that PROJ cannot read is refused."""
    if crs is None or crs in WGS84_NAMES:
        return True
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return CRS.from_user_input(crs) == CRS.from_epsg(4326)
    except CRSError:
        raise LabelsError(f"{path}: declares the CRS {crs[:80]!r}, which PROJ does not know: save it in a known "
                          "CRS (e.g. EPSG:4326)") from None


def _value(raw: object, path: Path, index: int, value_field: str | None) -> float | None:
    """The feature's numeric value, when a value field is asked for: every feature must carry one."""
    if value_field is None:
        return None
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise LabelsError(f"{path}: feature {index} has no numeric {value_field!r} (found {raw!r})")
    return value


def _year(raw: object, path: Path, index: int) -> int | None:
    if raw in (None, ""):
        return None
    try:
        return int(float(raw))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LabelsError(f"{path}: feature {index} has a year that is no number ({raw!r})") from None


def read_labels(path: str | Path, label_field: str = "label", value_field: str | None = None) -> list[LabelFeature]:
    """The features of a labels file, each with its class (`label_field`) and, when `value_field`
    names one, the number a regression learns (canopy height, biomass, yield). GeoJSON, GeoPackage,
    Shapefile, KML and FlatGeobuf are read by GDAL (pyogrio), GeoParquet by pyarrow, CSV points by
    their lon/lat columns; geometries in any CRS the file declares are reprojected to lon/lat."""
    path = Path(path)
    features: list[LabelFeature] = []
    for i, (geometry, fields) in enumerate(_features_in_lonlat(path, {label_field, *([value_field] if value_field else [])},
                                                               GEOMETRY_TYPES, "labels must be Points or (Multi)Polygons")):
        if label_field not in fields or fields[label_field] in (None, ""):
            raise LabelsError(f"{path}: feature {i} has no {label_field!r} "
                              f"(its fields: {', '.join(sorted(fields)) or 'none'})")
        features.append(LabelFeature(str(fields[label_field]), geometry, _year(fields.get("year"), path, i), i,
                                     _group(fields.get("group")), _value(fields.get(value_field), path, i, value_field)))
    for f in features:
        if not f.group:
            f.group = spatial_group(f)
    return features


def read_points(path: str | Path) -> list[tuple[float, float]]:
    """The (lon, lat) of every Point of a file, in the formats and CRSs `read_labels` takes: the
    query points of a batched search."""
    path = Path(path)
    return [tuple(geometry["coordinates"][:2]) for geometry, _ in
            _features_in_lonlat(path, set(), ("Point",), "query points must be Points", "points file")]


def _features_in_lonlat(path: Path, needed: set[str], kinds: tuple[str, ...], rule: str,
                        what: str = "labels file") -> list[tuple[dict, dict]]:
    """(geometry in lon/lat, fields) of each feature of a vector file, which must be of `kinds`."""
    if not path.exists():
        raise LabelsError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise LabelsError(f"{what} is empty: {path}")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        crs, rows = _csv_rows(path, needed)
    elif suffix in PARQUET_SUFFIXES:
        crs, rows = _parquet_rows(path)
    elif suffix in OGR_SUFFIXES:
        crs, rows = _ogr_rows(path)
    else:
        raise LabelsError(f"{path}: unknown {what} format {suffix!r}: use {', '.join(LABEL_SUFFIXES)}")
    reproject = not _is_wgs84(crs, path)
    found = []
    for i, row in enumerate(rows):
        geometry = row.geometry
        if not geometry or geometry.get("type") not in kinds:
            kind = geometry.get("type") if geometry else "no geometry"
            raise LabelsError(f"{path}: feature {i} has {kind}; {rule}")
        if reproject:
            geometry = transform_geom(crs, "EPSG:4326", geometry)
        for lon, lat in coordinates(geometry):
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                raise LabelsError(f"{path}: feature {i} has coordinates ({lon}, {lat}) outside lon/lat range; "
                                  "does the file declare its CRS?")
        found.append((geometry, row.fields))
    if not found:
        raise LabelsError(f"{what} has no features: {path}")
    return found


GROUP_H3_RESOLUTION = 8


def spatial_group(feature: LabelFeature) -> str:
    """The group of a feature that names none: a point's H3 cell, a polygon its own."""
    if feature.geometry["type"] == "Point":
        lon, lat = feature.geometry["coordinates"][:2]
        return f"h3:{h3.latlng_to_cell(lat, lon, GROUP_H3_RESOLUTION)}"
    return f"#{feature.index}"


def _group(value: object) -> str:
    """A group the file names, or "" (`spatial_group` fills it in)."""
    return "" if value is None else str(value)


def coordinates(geometry: dict):
    """Every vertex of a Point, Polygon or MultiPolygon."""
    coords = geometry["coordinates"]
    if geometry["type"] == "Point":
        yield coords
    elif geometry["type"] == "Polygon":
        for ring in coords:
            yield from ring
    else:
        for polygon in coords:
            for ring in polygon:
                yield from ring


def pixels_of(feature: LabelFeature, grid: RegionGrid) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the pixels a feature covers on a grid (empty if it misses the grid)."""
    if feature.geometry["type"] == "Point":
        lon, lat = feature.geometry["coordinates"]
        (x,), (y,) = warp_transform("EPSG:4326", grid.crs, [lon], [lat])
        col = int(np.floor((x - grid.transform.c) / grid.transform.a))
        row = int(np.floor((y - grid.transform.f) / grid.transform.e))
        if 0 <= row < grid.height and 0 <= col < grid.width:
            return np.array([row]), np.array([col])
        return np.array([], int), np.array([], int)
    shape = transform_geom("EPSG:4326", grid.crs, feature.geometry)
    mask = rasterize([(shape, 1)], out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8")
    return np.nonzero(mask)


def labelled_pixels(features: list[LabelFeature], grid: RegionGrid, where: str) -> tuple[list[tuple[int, int, LabelFeature]], list[int]]:
    """The pixels the features cover on a grid, as (row, col, feature), and how many each
    feature covers. A pixel labelled twice with one label counts once (its first feature's group);
    two labels on one pixel are an error naming it (`where` says which partition)."""
    first: dict[tuple[int, int], LabelFeature] = {}
    pixels, hits = [], []
    for f in features:
        rows, cols = pixels_of(f, grid)
        hits.append(len(rows))
        for r, c in zip(rows.tolist(), cols.tolist()):
            seen = first.setdefault((r, c), f)
            if seen.label != f.label:
                raise LabelsError(f"pixel row {r}, col {c} of {where} is labelled both {seen.label!r} "
                                  f"(feature {seen.index}) and {f.label!r} (feature {f.index})")
            if seen is f:
                pixels.append((r, c, f))
    return pixels, hits


LABEL_SUFFIXES = (*OGR_SUFFIXES, *CSV_SUFFIXES, *PARQUET_SUFFIXES)


class LabelSource(ConfigurableResource):
    """Where the labels are: a file or a folder of them, local or on the object store (`s3://...`,
    read with the data root's settings). TESSERA_LABELS sets it for a deployment; the launchpad can
    point one run elsewhere."""

    path: str = Field("labels", description="a labels file, or a folder of them (local, or s3://...)")
    label_field: str = Field("label", description="the property or column that holds each label's class")
    value_field: str | None = Field(None, description=(
        "the numeric property or column a regression learns (canopy height, biomass, yield); none: no regression"))

    def read(self, file: Path) -> list[LabelFeature]:
        return read_labels(file, self.label_field, self.value_field)

    def files(self, storage: "TesseraStorage", path: str | None = None) -> list[Path]:
        """The labels files at `path` (default: this source's), as local files."""
        return label_files(path or self.path, storage)


def label_files(path: str, storage: "TesseraStorage") -> list[Path]:
    """The labels files at a path or folder, local or on the object store."""
    if is_object_uri(path):
        parent, _, name = path.rstrip("/").rpartition("/")
        cache = storage.local("downloads", "labels", hashlib.sha1(path.encode()).hexdigest()[:16])
        files = [p for p in ObjectRoot(parent, storage.storage_options).fetch_all(name, cache)
                 if p.suffix.lower() in LABEL_SUFFIXES]
    else:
        target = Path(path)
        if not target.exists():
            raise LabelsError(f"no labels at {path}: a labels file or folder ({', '.join(LABEL_SUFFIXES)})")
        files = [p for p in target.iterdir() if p.suffix.lower() in LABEL_SUFFIXES] if target.is_dir() else [target]
    if not files:
        raise LabelsError(f"no labels files ({', '.join(LABEL_SUFFIXES)}) in {path}")
    return sorted(files)


def labels_digest(files: list[Path]) -> str:
    """sha256 over every file's name and bytes: changes whenever a file is edited, added or removed."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


# labels out, for the tools people draw and check them in: suffix -> (GDAL driver, media type)
EXPORT_FORMATS = {".geojson": ("GeoJSON", "application/geo+json"),
                  ".gpkg": ("GPKG", "application/geopackage+sqlite3"),
                  ".kml": ("KML", "application/vnd.google-earth.kml+xml"),
                  ".csv": (None, "text/csv")}


def export_labels(features: list[dict], suffix: str) -> bytes:
    """GeoJSON features (lon/lat, a `label` property, maybe a `year`) as a file of another format:
    GeoJSON, GeoPackage and KML written by GDAL (pyogrio), in EPSG:4326; CSV as `lon,lat,label,year,wkt`
    (a polygon's lon/lat is its centroid; its shape is in `wkt`), which `read_labels` reads back as
    points."""
    import tempfile

    import shapely
    import shapely.geometry

    if suffix not in EXPORT_FORMATS:
        raise LabelsError(f"labels export as {', '.join(EXPORT_FORMATS)}, not {suffix!r}")
    if not features:
        raise LabelsError("there are no labels to export")
    shapes = [shapely.geometry.shape(f["geometry"]) for f in features]
    labels = [str(f["properties"]["label"]) for f in features]
    years = [f["properties"].get("year") for f in features]
    driver, _ = EXPORT_FORMATS[suffix]
    if driver is None:
        rows = ["lon,lat,label,year,wkt"]
        for shape, label, year in zip(shapes, labels, years):
            point = shape if shape.geom_type == "Point" else shape.centroid
            quoted = '"' + label.replace('"', '""') + '"'
            rows.append(f'{point.x:.7f},{point.y:.7f},{quoted},{year or ""},"{shape.wkt}"')
        return ("\n".join(rows) + "\n").encode()
    from pyogrio.raw import write

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"labels{suffix}"
        write(path, shapely.to_wkb(shapes), [np.array(labels, dtype=object), np.array(
            [int(y) if y else None for y in years], dtype=object)], fields=["label", "year"], crs="EPSG:4326",
            driver=driver, geometry_type="Unknown")
        return path.read_bytes()
