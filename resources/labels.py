"""Labelled points and polygons from GeoJSON, GeoParquet or CSV, located on region grids.

Coordinates must be WGS84 longitude/latitude (GeoJSON's and GeoParquet's default); a file that
declares another CRS is refused rather than silently misplaced. A polygon contributes every pixel
whose centre it contains, and all of them share one group, so evaluation can keep a polygon on one
side of the train/test split. Points may name their group (a `group` property or column, such as
the field a survey point was taken in); otherwise a point's group is its H3 cell at resolution 8
(about 0.7 km2), so neighbouring points, likely of one field, never land on both sides of a split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import struct
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


def _check_geojson_crs(document: dict, path: Path) -> None:
    crs = (document.get("crs") or {}).get("properties", {}).get("name")
    if crs and crs not in WGS84_NAMES:
        raise LabelsError(f"{path}: labels are in CRS {crs}; reproject them to WGS84 lon/lat (EPSG:4326)")


def _point_from_wkb(blob: bytes) -> dict:
    order = "<" if blob[0] == 1 else ">"
    kind = struct.unpack(order + "I", blob[1:5])[0]
    if kind != 1:
        raise LabelsError(f"GeoParquet geometry type {kind} is not supported: use points, or GeoJSON for polygons")
    x, y = struct.unpack(order + "dd", blob[5:21])
    return {"type": "Point", "coordinates": [x, y]}


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


def read_labels(path: str | Path, label_field: str = "label", value_field: str | None = None) -> list[LabelFeature]:
    """The features of a labels file, each with its class (`label_field`) and, when `value_field`
    names one, the number a regression learns (canopy height, biomass, yield)."""
    path = Path(path)
    if not path.exists():
        raise LabelsError(f"labels file not found: {path}")
    if path.stat().st_size == 0:
        raise LabelsError(f"labels file is empty: {path}")
    features: list[LabelFeature] = []
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        document = json.loads(path.read_text())
        _check_geojson_crs(document, path)
        for i, feature in enumerate(document.get("features") or []):
            props = feature.get("properties") or {}
            geometry = feature.get("geometry")
            if not geometry or geometry.get("type") not in ("Point", "Polygon", "MultiPolygon"):
                kind = geometry.get("type") if geometry else "no geometry"
                raise LabelsError(f"{path}: feature {i} has {kind}; labels must be Points or (Multi)Polygons")
            if label_field not in props:
                raise LabelsError(f"{path}: feature {i} has no {label_field!r} property")
            year = props.get("year")
            features.append(LabelFeature(str(props[label_field]), geometry, int(year) if year else None, i,
                                         _group(props.get("group")), _value(props.get(value_field), path, i, value_field)))
    elif suffix == ".csv":
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"lon", "lat", label_field, *([value_field] if value_field else [])} - set(reader.fieldnames or [])
            if missing:
                raise LabelsError(f"{path}: CSV lacks the columns {', '.join(sorted(missing))} (need lon, lat, {label_field})")
            for i, row in enumerate(reader):
                try:
                    lon, lat = float(row["lon"]), float(row["lat"])
                except ValueError:
                    raise LabelsError(f"{path}: row {i + 2} has a non-numeric lon/lat") from None
                year = row.get("year")
                features.append(LabelFeature(row[label_field], {"type": "Point", "coordinates": [lon, lat]},
                                             int(year) if year else None, i, _group(row.get("group")),
                                             _value(row.get(value_field), path, i + 2, value_field)))
    elif suffix in (".parquet", ".geoparquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}") or b"{}")
        column = geo.get("primary_column", "geometry")
        crs = (geo.get("columns", {}).get(column, {}) or {}).get("crs")
        if crs is not None:
            code = crs if isinstance(crs, str) else f"{crs.get('id', {}).get('authority')}:{crs.get('id', {}).get('code')}"
            if code not in WGS84_NAMES:
                raise LabelsError(f"{path}: labels are in CRS {code}; reproject them to WGS84 lon/lat (EPSG:4326)")
        if column not in table.column_names or label_field not in table.column_names:
            raise LabelsError(f"{path}: GeoParquet needs a {column!r} geometry and a {label_field!r} column")
        if value_field and value_field not in table.column_names:
            raise LabelsError(f"{path}: GeoParquet has no {value_field!r} column")
        def optional(name: str) -> list:
            return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows

        rows = zip(table[column].to_pylist(), table[label_field].to_pylist(), optional("year"), optional("group"),
                   optional(value_field) if value_field else [None] * table.num_rows)
        for i, (blob, label, year, group, value) in enumerate(rows):
            features.append(LabelFeature(str(label), _point_from_wkb(blob), int(year) if year else None, i,
                                         _group(group), _value(value, path, i, value_field)))
    else:
        raise LabelsError(f"{path}: unknown labels format {suffix!r}: use .geojson, .csv or .parquet")
    if not features:
        raise LabelsError(f"labels file has no features: {path}")
    for f in features:
        for lon, lat in coordinates(f.geometry):
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                raise LabelsError(f"{path}: feature {f.index} has coordinates ({lon}, {lat}) outside lon/lat range; "
                                  "is it in a projected CRS?")
        if not f.group:
            f.group = spatial_group(f)
    return features


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


LABEL_SUFFIXES = (".geojson", ".json", ".csv", ".parquet", ".geoparquet")


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
            raise LabelsError(f"no labels at {path}: a labels file or folder (.geojson, .csv, .parquet)")
        files = [p for p in target.iterdir() if p.suffix.lower() in LABEL_SUFFIXES] if target.is_dir() else [target]
    if not files:
        raise LabelsError(f"no labels files (.geojson, .csv, .parquet) in {path}")
    return sorted(files)


def labels_digest(files: list[Path]) -> str:
    """sha256 over every file's name and bytes: changes whenever a file is edited, added or removed."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()
