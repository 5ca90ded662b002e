"""The official TESSERA Zarr store (the layout geotessera 0.11 reads), in both directions.

One Zarr v3 store with consolidated metadata; one `utmNN` group per UTM zone on that zone's 10 m grid
(`proj:code` EPSG:326NN for both hemispheres, so southern northings are stored minus 10,000,000;
`spatial:transform` the grid's affine), holding `embeddings` int8 (time, band, y, x) and `scales`
float32 (time, y, x; NaN water, +inf never written) with coordinate arrays `time` (years), `x` and
`y` (pixel centres, y descending). Root attributes `geoemb:*` describe the vectors.

Each zone group spans the whole zone (eastings 160 km to 840 km, northings 84 N to 80 S), chunked,
so only written chunks take space and any region, exported now or later, lands on the same grid.
A region grid is aligned to it (both are 10 m multiples), so export and import copy pixels exactly.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import zarr
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from resources.errors import TileSourceError
from resources.official.tiles import Dataset, ImportReport, fill_region
from resources.regions import PIXEL_SIZE_M, RegionGrid, utm_zone
from resources.storage.data_root import EmbeddingPartition

ZONE_X = (160_000.0, 840_000.0)  # eastings every zone group spans
ZONE_Y = (9_400_000.0, -10_000_000.0)  # northings, top to bottom (southern ones minus 10,000,000)
CHUNK = 1024
SOUTH_OFFSET = 10_000_000.0
NOT_WRITTEN = np.float32(np.inf)


def is_zarr_store(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix == ".zarr" or (path / "zarr.json").exists()


def _zone_shape() -> tuple[int, int]:
    return int(round((ZONE_Y[0] - ZONE_Y[1]) / PIXEL_SIZE_M)), int(round((ZONE_X[1] - ZONE_X[0]) / PIXEL_SIZE_M))


def _zone_of_grid(grid: RegionGrid) -> tuple[int, float]:
    """The zone of a region grid's UTM CRS, and what to add to its northings to store them."""
    epsg = grid.crs.to_epsg() or 0
    if 32601 <= epsg <= 32660:
        return epsg - 32600, 0.0
    if 32701 <= epsg <= 32760:
        return epsg - 32700, -SOUTH_OFFSET
    raise TileSourceError(f"a Zarr store holds UTM grids; this region's grid is {grid.crs}")


class ZarrStore:
    """A local Zarr store in the official layout, read-only."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        try:
            group = zarr.open_group(str(self.root), mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as exc:
            raise TileSourceError(f"{self.root} is not a Zarr v3 store: {exc}") from exc
        if group.metadata.consolidated_metadata is None:
            raise TileSourceError(f"the Zarr store {self.root} has no consolidated metadata (geotessera needs it): "
                                  "run zarr.consolidate_metadata on it")
        self.group = group

    def dataset(self, version: str | None = None, variant: str | None = None) -> Dataset:
        """The store's dataset from the attributes we write (`tessera:dataset`), which must agree
        with a version asked for; an official store names its model only loosely, so its version
        must be given."""
        recorded = self.group.attrs.get("tessera:dataset")
        if recorded:
            found = Dataset.parse(recorded["version"], recorded.get("variant"), recorded.get("encoder"))
            if version is not None and Dataset.parse(version, None).version != found.version:
                raise TileSourceError(f"the Zarr store {self.root} holds dataset version {found.version}, "
                                      f"not the {Dataset.parse(version, None).version} asked for")
            return found
        if version is None:
            model = self.group.attrs.get("geoemb:model", "unnamed")
            raise TileSourceError(f"the Zarr store {self.root} (model {model!r}) does not say its dataset version "
                                  "in a form we can check: name it (e.g. 1.1)")
        return Dataset.parse(version, variant or str(self.group.attrs.get("geoemb:build_version") or None))

    def zone(self, number: int) -> zarr.Group | None:
        name = f"utm{number:02d}"
        return self.group[name] if name in self.group else None

    def import_into(self, year: int, grid: RegionGrid, bbox: tuple[float, float, float, float], folder: Path,
                    progress=None, block: int = 512) -> ImportReport:
        """Fill a region grid from the store, nearest pixel centre in the zone of each pixel's
        longitude (as the store's own reader routes points); never-written pixels and zones the
        store lacks stay no data."""
        report = ImportReport(dim=int(self.group.attrs.get("geoemb:dimensions", 128)))
        zones: dict[int, tuple[zarr.Group, int] | None] = {}

        def fill_block(lon: np.ndarray, lat: np.ndarray, vectors: np.ndarray, scales: np.ndarray) -> None:
            point_zones = utm_zone(lon)
            for number in np.unique(point_zones).tolist():
                if number not in zones:
                    zones[number] = self._zone_year(number, year, report)
                if zones[number] is None:
                    continue
                group, t = zones[number]
                sel = np.nonzero(point_zones == number)
                e, nn = warp_transform("EPSG:4326", CRS.from_epsg(32600 + number), lon[sel], lat[sel])
                xi = np.rint((np.asarray(e) - ZONE_X[0]) / PIXEL_SIZE_M - 0.5).astype(np.int64)
                yi = np.rint((ZONE_Y[0] - np.asarray(nn)) / PIXEL_SIZE_M - 0.5).astype(np.int64)
                y0, y1, x0, x1 = yi.min(), yi.max() + 1, xi.min(), xi.max() + 1
                zone_scales = group["scales"][t, y0:y1, x0:x1]
                zone_vectors = group["embeddings"][t, :, y0:y1, x0:x1]
                got = zone_scales[yi - y0, xi - x0]
                keep = np.isfinite(got)  # NaN water and +inf never written stay no data
                r, c = sel[0][keep], sel[1][keep]
                vectors[r, c] = zone_vectors[:, yi[keep] - y0, xi[keep] - x0].T
                scales[r, c] = got[keep]

        fill_region(grid, folder, report, fill_block, block, progress)
        if not report.used:
            raise TileSourceError(f"the Zarr store {self.root} holds no zone with {year} over the region "
                                  f"(looked for {', '.join(report.missing)})")
        return report

    def _zone_year(self, number: int, year: int, report: ImportReport) -> tuple[zarr.Group, int] | None:
        group = self.zone(number)
        years = [] if group is None else [int(v) for v in group["time"][:]]
        if year not in years:
            report.missing.append(f"utm{number:02d} {year}")
            return None
        report.used[f"utm{number:02d}"] = {"build": str(self.group.attrs.get("geoemb:build_version", "")),
                                           "year": str(year)}
        return group, years.index(year)


def export_zarr(partition: EmbeddingPartition, year: int, path: Path) -> int:
    """Write (or fill in) a partition's pixels into the store's zone group; pixels another export
    wrote stay as they are. Returns the pixels written."""
    dataset = Dataset.of_encoder(partition.encoder)
    grid = partition.grid
    number, shift = _zone_of_grid(grid)
    root = zarr.open_group(str(path), mode="a", zarr_format=3)
    held = root.attrs.get("tessera:dataset")
    if held and (held["version"], held.get("variant")) != (dataset.version, dataset.variant):
        raise TileSourceError(f"{path} holds dataset {held['version']} {held.get('variant')!r}; these vectors are "
                              f"{dataset.version} {dataset.variant!r}: export them to another store")
    root.attrs.update({"geoemb:dimensions": partition.dim, "geoemb:dtype": "int8", "geoemb:gsd": PIXEL_SIZE_M,
                       "geoemb:quantisation": "per-pixel scale: value = int8 * scale",
                       "geoemb:model": f"tessera-{dataset.family}", "geoemb:build_version": dataset.variant,
                       "tessera:dataset": {"version": dataset.version, "variant": dataset.variant,
                                           "encoder": dataset.identity()}})
    group, t = _zone_group(root, number, year, partition.dim)
    col0 = (grid.transform.c - ZONE_X[0]) / PIXEL_SIZE_M
    row0 = (ZONE_Y[0] - (grid.transform.f + shift)) / PIXEL_SIZE_M
    if not (float(col0).is_integer() and float(row0).is_integer()):
        raise TileSourceError(f"the region grid's origin ({grid.transform.c}, {grid.transform.f}) is not on the "
                              "zone's 10 m grid")
    written = 0
    for window in grid.blocks(CHUNK):
        vectors, scales = partition.read(window)
        y0, x0 = int(row0) + int(window.row_off), int(col0) + int(window.col_off)
        ys, xs = slice(y0, y0 + int(window.height)), slice(x0, x0 + int(window.width))
        held_scales = group["scales"][t, ys, xs]
        fill = np.isfinite(scales) & (held_scales == NOT_WRITTEN)  # never overwrite another export
        if not fill.any():
            continue
        held_vectors = group["embeddings"][t, :, ys, xs]
        held_vectors[:, fill] = vectors[fill].T
        held_scales[fill] = scales[fill]
        group["embeddings"][t, :, ys, xs] = held_vectors
        group["scales"][t, ys, xs] = held_scales
        written += int(fill.sum())
    with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec": geotessera requires it
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(str(path))
    return written


def _zone_group(root: zarr.Group, number: int, year: int, dim: int) -> tuple[zarr.Group, int]:
    """The zone's group, created on first use, with `year` on its time axis."""
    name = f"utm{number:02d}"
    height, width = _zone_shape()
    if name not in root:
        group = root.create_group(name, attributes={
            "proj:code": f"EPSG:{32600 + number}",
            "spatial:transform": [PIXEL_SIZE_M, 0.0, ZONE_X[0], 0.0, -PIXEL_SIZE_M, ZONE_Y[0]]})
        group.create_array("embeddings", shape=(0, dim, height, width), chunks=(1, dim, CHUNK, CHUNK), dtype="int8",
                           fill_value=0, dimension_names=("time", "band", "y", "x"))
        group.create_array("scales", shape=(0, height, width), chunks=(1, CHUNK, CHUNK), dtype="float32",
                           fill_value=NOT_WRITTEN, dimension_names=("time", "y", "x"))
        group.create_array("time", shape=(0,), chunks=(64,), dtype="int32", dimension_names=("time",))
        group.create_array("x", data=ZONE_X[0] + (np.arange(width) + 0.5) * PIXEL_SIZE_M, chunks=(width,),
                           dimension_names=("x",))
        group.create_array("y", data=ZONE_Y[0] - (np.arange(height) + 0.5) * PIXEL_SIZE_M,
                           chunks=(math.ceil(height / 8),), dimension_names=("y",))
    group = root[name]
    years = [int(v) for v in group["time"][:]]
    if year not in years:
        t = len(years)
        group["time"].resize((t + 1,))
        group["time"][t] = year
        group["embeddings"].resize((t + 1, dim, height, width))
        group["scales"].resize((t + 1, height, width))
        return group, t
    return group, years.index(year)
