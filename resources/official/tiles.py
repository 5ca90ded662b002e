"""The official TESSERA tile layout (as geotessera reads it), in both directions.

Tiles are 0.1 degree cells named by their centre (`grid_{lon:.2f}_{lat:.2f}`), each on its own 10 m
UTM grid computed as geotessera computes it; vectors are int8 (H, W, D) `.npy` with float32 scales
(NaN = no data, water), and a landmask GeoTIFF carries each tile's CRS and transform
(../shared/GEOTESSERA.md).

- Import (`TileRoot`, `import_tiles`): a region's grid is filled from the tiles that cover it, each
  pixel from the tile of its centre's 0.1 degree cell at the tile pixel holding that centre: the
  nearest-pixel sampling of geotessera's own `sample_embeddings_at_points`, across tiles and UTM
  zones. Tiles are memory-mapped, so only the pixels a region needs are read.
- Export (`export_partition`, `write_registries`): the region's pixels written into the tiles it
  touches, sampled the same way in reverse; tile pixels outside the region stay no data, and a later
  export of a neighbouring region fills them in without overwriting what is there.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from affine import Affine
from rasterio.transform import rowcol
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from model.quantise import dequantise
from resources.storage.atomic import atomic_file
from resources.storage.cog import to_cog
from resources.errors import TileSourceError
from resources.regions import PIXEL_SIZE_M, RegionGrid, utm_crs_for
from resources.storage.data_root import EmbeddingPartition, EmbeddingWriter

TILE_DEGREES = 0.1
REPRESENTATION_DIR = "global_0.1_degree_representation"
LANDMASK_DIR = "global_0.1_degree_tiff_all"
METADATA_FILE = "tessera_metadata.json"
_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?$")


def tile_name(lon: float, lat: float) -> str:
    return f"grid_{lon:.2f}_{lat:.2f}"


def tile_of(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integer index (floor of tenths of a degree) of the tile holding each point."""
    return np.floor(np.asarray(lon) * 10).astype(np.int64), np.floor(np.asarray(lat) * 10).astype(np.int64)


def tile_centre(ix: int, iy: int) -> tuple[float, float]:
    return round(ix / 10 + 0.05, 2), round(iy / 10 + 0.05, 2)


def tile_centres(bbox: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """Centres (x.x5) of every tile a WGS84 bbox touches."""
    west, south, east, north = bbox
    return [tile_centre(ix, iy) for iy in range(math.floor(south * 10), math.ceil(north * 10))
            for ix in range(math.floor(west * 10), math.ceil(east * 10))]


def tile_grid(lon: float, lat: float) -> RegionGrid:
    """geotessera's georeference of a tile: the UTM zone of its centre, origin at the west-most
    easting and north-most northing of the projected box, 10 m pixels covering its south and east."""
    crs = utm_crs_for(lon, lat)
    half = TILE_DEGREES / 2
    corners_lon = [lon - half, lon + half, lon - half, lon + half]
    corners_lat = [lat + half, lat + half, lat - half, lat - half]  # NW, NE, SW, SE
    xs, ys = warp_transform("EPSG:4326", crs, corners_lon, corners_lat)
    origin_e = min(xs[0], xs[2])
    origin_n = max(ys[0], ys[1])
    height = int(round((origin_n - min(ys[2], ys[3])) / PIXEL_SIZE_M))
    width = int(round((max(xs[1], xs[3]) - origin_e) / PIXEL_SIZE_M))
    return RegionGrid(crs, Affine(PIXEL_SIZE_M, 0, origin_e, 0, -PIXEL_SIZE_M, origin_n), width, height)


@dataclass(frozen=True)
class Dataset:
    """Which official embeddings these are: geotessera's dataset version ("1.1") and variant
    ("cambridge", "2B-L~beta1"). Vectors of different datasets are different embedding spaces."""

    version: str
    variant: str
    encoder: dict[str, Any] | None = None  # tiles `tessera export` wrote: the encoder that made them

    @classmethod
    def parse(cls, version: str, variant: str | None, encoder: dict[str, Any] | None = None) -> "Dataset":
        match = _VERSION.match(str(version).strip())
        if not match:
            raise TileSourceError(f"dataset version {version!r} is not a TESSERA version such as 1.1 or v2")
        return cls(f"{match.group(1)}.{match.group(2) or '0'}", variant or "default", encoder)

    @property
    def family(self) -> str:
        """The model family, named as our encoders name theirs (v1.0, v1.1, v2)."""
        return "v2" if self.version.startswith("2.") else f"v{self.version}"

    @property
    def encoder_id(self) -> str:
        """The identity rows of this dataset carry: the official dataset's, never equal to a
        self-computed encoder's; tiles we exported keep the identity of the encoder that made them."""
        return self.encoder["id"] if self.encoder else f"official.tessera-{self.family}.{self.variant}"

    def identity(self) -> dict[str, Any]:
        if self.encoder:
            return dict(self.encoder)
        return {"id": self.encoder_id, "family": self.family, "architecture": "official (precomputed)",
                "normalisation": self.variant, "weights_sha256": "", "dataset_version": self.version,
                "dataset_variant": self.variant}

    @classmethod
    def of_encoder(cls, identity: dict[str, Any]) -> "Dataset":
        """What an export declares: official vectors pass through as their own dataset; our own are
        the version of the encoder's family, with the encoder's id as the variant and its identity."""
        if "dataset_version" in identity:
            return cls.parse(identity["dataset_version"], identity.get("dataset_variant"))
        return cls.parse(str(identity.get("family", "v1.0")).lstrip("v"), identity["id"], identity)


@dataclass
class Tile:
    """One tile: its grid (from the landmask), memory-mapped vectors and scales, and file digests."""

    lon: float
    lat: float
    grid: RegionGrid
    vectors: np.ndarray  # (H, W, D) int8, memory-mapped
    scales: np.ndarray  # (H, W) float32
    files: tuple[Path, Path]

    @cached_property
    def sha256(self) -> dict[str, str]:
        digests = {}
        for path in self.files:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
            digests[path.name] = digest.hexdigest()
        return digests


class TileRoot:
    """A local geotessera tile root (`embeddings_dir`), read-only."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / REPRESENTATION_DIR).is_dir() or not (self.root / LANDMASK_DIR).is_dir():
            raise TileSourceError(f"{self.root} is not a geotessera tile root: it needs {REPRESENTATION_DIR}/ "
                                  f"(the .npy tiles) and {LANDMASK_DIR}/ (their landmask GeoTIFFs)")
        self._tiles: dict[tuple[int, int, int], Tile | None] = {}

    def import_into(self, year: int, grid: RegionGrid, bbox: tuple[float, float, float, float], folder: Path,
                    progress=None) -> "ImportReport":
        return import_tiles(self, year, grid, bbox, folder, progress=progress)

    def dataset(self, version: str | None = None, variant: str | None = None) -> Dataset:
        """The root's dataset from its `tessera_metadata.json`, which must agree with a version
        (and variant) asked for; without that file, the version must be given."""
        path = self.root / METADATA_FILE
        if path.exists():
            try:
                recorded = json.loads(path.read_text())
                found = Dataset.parse(recorded["dataset_version"], recorded.get("dataset_variant"), recorded.get("encoder"))
            except (ValueError, KeyError) as exc:
                raise TileSourceError(f"{path} does not name a dataset_version: {exc}") from exc
            if version is not None and Dataset.parse(version, None).version != found.version:
                raise TileSourceError(f"{path} says these tiles are dataset version {found.version}, "
                                      f"not the {Dataset.parse(version, None).version} asked for")
            if variant is not None and variant != found.variant:
                raise TileSourceError(f"{path} says these tiles are variant {found.variant!r}, not {variant!r}")
            return found
        if version is None:
            raise TileSourceError(f"{self.root} has no {METADATA_FILE}: name the dataset version of its tiles "
                                  "(e.g. 1.1 for today's official embeddings), so they are never mixed with others")
        return Dataset.parse(version, variant)

    def tile(self, year: int, ix: int, iy: int) -> Tile | None:
        """The tile of index (ix, iy) in `year`, or None where the root has none (a tile not
        downloaded, or not published: no data)."""
        key = (year, ix, iy)
        if key not in self._tiles:
            self._tiles[key] = self._open(year, *tile_centre(ix, iy))
        return self._tiles[key]

    def _open(self, year: int, lon: float, lat: float) -> Tile | None:
        name = tile_name(lon, lat)
        folder = self.root / REPRESENTATION_DIR / str(year) / name
        vec_path, scale_path = folder / f"{name}.npy", folder / f"{name}_scales.npy"
        if not vec_path.exists():
            return None
        landmask = self.root / LANDMASK_DIR / f"{name}.tiff"
        if not scale_path.exists() or not landmask.exists():
            missing = scale_path if not scale_path.exists() else landmask
            raise TileSourceError(f"tile {name} of {year} is incomplete: {missing} is missing")
        try:
            vectors = np.load(vec_path, mmap_mode="r")
            scales = np.load(scale_path)
            with rasterio.open(landmask) as src:
                grid = RegionGrid(src.crs, src.transform, src.width, src.height)
        except (OSError, ValueError, rasterio.errors.RasterioError) as exc:
            raise TileSourceError(f"tile {name} of {year} cannot be read: {exc}") from exc
        if vectors.dtype != np.int8 or vectors.ndim != 3 or scales.shape != vectors.shape[:2]:
            raise TileSourceError(f"tile {name} of {year}: vectors {vectors.dtype} {vectors.shape} and scales "
                                  f"{scales.shape} are not int8 (H, W, D) and (H, W)")
        if vectors.shape[:2] != grid.shape:
            raise TileSourceError(f"tile {name} of {year}: vectors are {vectors.shape[0]} x {vectors.shape[1]} but "
                                  f"its landmask {landmask.name} is {grid.height} x {grid.width}")
        if (scales[np.isfinite(scales)] < 0).any():
            raise TileSourceError(f"tile {name} of {year}: {scale_path.name} holds negative scales")
        return Tile(lon, lat, grid, vectors, scales.astype(np.float32, copy=False), (vec_path, scale_path))


@dataclass
class ImportReport:
    tiles: list[Tile] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # tiles (or zones) over the region the source does not hold
    pixels: int = 0
    filled: int = 0
    dim: int = 0
    used: dict[str, dict[str, str]] = field(default_factory=dict)  # tile or zone -> what identifies its bytes


def _pixel_lonlat(grid: RegionGrid, window: Window) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[int(window.row_off):int(window.row_off + window.height),
                          int(window.col_off):int(window.col_off + window.width)]
    xs = grid.transform.c + (cols + 0.5) * grid.transform.a
    ys = grid.transform.f + (rows + 0.5) * grid.transform.e
    lon, lat = warp_transform(grid.crs, "EPSG:4326", xs.ravel(), ys.ravel())
    return np.asarray(lon).reshape(xs.shape), np.asarray(lat).reshape(xs.shape)


def covering_tiles(source: TileRoot, year: int, bbox: tuple[float, float, float, float]) -> ImportReport:
    """The tiles a region's bbox touches that the root holds (one vector width among them), and
    those it lacks; no tile at all is an error naming the tiles looked for."""
    report = ImportReport()
    for lon, lat in tile_centres(bbox):
        tile = source.tile(year, *tile_of(lon, lat))
        if tile is None:
            report.missing.append(tile_name(lon, lat))
        else:
            report.tiles.append(tile)
    if not report.tiles:
        raise TileSourceError(f"no tile of {year} under {source.root} covers the region: looked for "
                              f"{', '.join(report.missing)}")
    dims = {tile.vectors.shape[-1] for tile in report.tiles}
    if len(dims) > 1:
        raise TileSourceError(f"tiles of {year} over the region hold vectors of different widths {sorted(dims)}")
    report.dim = dims.pop()
    return report


def fill_region(grid: RegionGrid, folder: Path, report: ImportReport, fill_block, block: int,
                progress=None) -> None:
    """The block loop of every import: for each block of the region grid, `fill_block(lon, lat,
    vectors, scales)` writes what the source holds at the pixel centres (lon/lat arrays) into
    no-data-initialised arrays, which go into an embeddings partition folder; the report counts
    pixels and those with data. Memory is one block, whatever the region's size."""
    writer = EmbeddingWriter(folder, grid, report.dim)
    try:
        blocks = grid.blocks(block)
        for n, window in enumerate(blocks, start=1):
            h, w = int(window.height), int(window.width)
            vectors = np.zeros((h, w, report.dim), np.int8)
            scales = np.full((h, w), np.nan, np.float32)
            fill_block(*_pixel_lonlat(grid, window), vectors, scales)
            writer.write(window, vectors, scales)
            report.pixels += h * w
            report.filled += int(np.isfinite(scales).sum())
            if progress and (n % 10 == 0 or n == len(blocks)):
                progress(f"imported {n}/{len(blocks)} blocks")
    finally:
        writer.close()


def import_tiles(source: TileRoot, year: int, grid: RegionGrid, bbox: tuple[float, float, float, float],
                 writer_folder: Path, block: int = 1024, progress=None) -> ImportReport:
    """Fill a region grid from the tiles, block by block, into an embeddings partition folder."""
    report = covering_tiles(source, year, bbox)
    by_index = {tuple(int(v) for v in tile_of(t.lon, t.lat)): t for t in report.tiles}

    def fill_block(lon: np.ndarray, lat: np.ndarray, vectors: np.ndarray, scales: np.ndarray) -> None:
        ix, iy = tile_of(lon, lat)
        for key in set(zip(ix.ravel().tolist(), iy.ravel().tolist())):
            tile = by_index.get(key)
            if tile is None:
                continue
            sel = np.nonzero((ix == key[0]) & (iy == key[1]))
            tx, ty = warp_transform("EPSG:4326", tile.grid.crs, lon[sel], lat[sel])
            tr, tc = rowcol(tile.grid.transform, tx, ty, op=math.floor)
            tr, tc = np.asarray(tr), np.asarray(tc)
            inside = (tr >= 0) & (tr < tile.grid.height) & (tc >= 0) & (tc < tile.grid.width)
            rows, cols = sel[0][inside], sel[1][inside]
            order = np.lexsort((tc[inside], tr[inside]))  # memory-mapped reads in file order
            vectors[rows[order], cols[order]] = tile.vectors[tr[inside][order], tc[inside][order]]
            scales[rows, cols] = tile.scales[tr[inside], tc[inside]]

    fill_region(grid, writer_folder, report, fill_block, block, progress)
    report.used = {t.files[0].parent.name: t.sha256 for t in report.tiles}
    return report


# --- export ---------------------------------------------------------------------------------------

def export_region(partition: EmbeddingPartition, year: int, bbox: tuple[float, float, float, float], root: Path,
                  registry_dir: Path) -> tuple[list[Path], dict[str, int]]:
    """A region's vectors into a tile root, and the registries over everything the root holds. A
    root that already holds another dataset is refused: one root, one embedding space."""
    dataset = Dataset.of_encoder(partition.encoder)
    if (root / METADATA_FILE).exists():
        held = TileRoot(root).dataset()
        if (held.version, held.variant) != (dataset.version, dataset.variant):
            raise TileSourceError(f"{root} holds dataset {held.version} {held.variant!r}; these vectors are "
                                  f"{dataset.version} {dataset.variant!r}: export them to another root")
    written = export_partition(partition, year, bbox, root)
    return written, write_registries(root, registry_dir, dataset)


def _region_indices(tile: RegionGrid, region: RegionGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each tile pixel, the region row and col of its centre, and whether it falls inside."""
    rows, cols = np.mgrid[0:tile.height, 0:tile.width]
    xs = tile.transform.c + (cols + 0.5) * PIXEL_SIZE_M
    ys = tile.transform.f - (rows + 0.5) * PIXEL_SIZE_M
    if tile.crs != region.crs:
        flat_x, flat_y = warp_transform(tile.crs, region.crs, xs.ravel(), ys.ravel())
        xs, ys = np.asarray(flat_x).reshape(xs.shape), np.asarray(flat_y).reshape(ys.shape)
    r, c = rowcol(region.transform, xs.ravel(), ys.ravel(), op=math.floor)
    r, c = np.asarray(r).reshape(xs.shape), np.asarray(c).reshape(xs.shape)
    inside = (r >= 0) & (r < region.height) & (c >= 0) & (c < region.width)
    return r, c, inside


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as tmp:
        np.save(tmp, array)


@dataclass
class TileFill:
    """What a region gives one tile: the tile's grid, and for each tile pixel inside the region
    the region's int8 vector and scale (`inside`: (H, W) bool; `vectors`, `scales`: those pixels)."""

    lon: float
    lat: float
    tile: RegionGrid
    inside: np.ndarray
    vectors: np.ndarray
    scales: np.ndarray

    @property
    def name(self) -> str:
        return tile_name(self.lon, self.lat)

    def where(self, tile_has: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tile pixels to fill, (H, W), and which of the region's pixels go there: where the
        region has a vector and the tile has none yet (`tile_has`), never overwriting what another
        region's export put there."""
        fill = np.zeros(self.inside.shape, bool)
        fill[self.inside] = np.isfinite(self.scales)
        fill &= ~tile_has
        return fill, fill[self.inside]


def tile_fills(partition: EmbeddingPartition, bbox: tuple[float, float, float, float]) -> Iterator[TileFill]:
    """The region's pixels on each geotessera tile it touches, one tile at a time."""
    region = partition.grid
    for lon, lat in tile_centres(bbox):
        tile = tile_grid(lon, lat)
        r, c, inside = _region_indices(tile, region)
        if not inside.any():
            continue
        window = Window(int(c[inside].min()), int(r[inside].min()),
                        int(c[inside].max() - c[inside].min() + 1), int(r[inside].max() - r[inside].min() + 1))
        vectors, scales = partition.read(window)
        rr, cc = r[inside] - window.row_off, c[inside] - window.col_off
        yield TileFill(lon, lat, tile, inside, vectors[rr, cc], scales[rr, cc])


def export_partition(partition: EmbeddingPartition, year: int, bbox: tuple[float, float, float, float],
                     root: Path) -> list[Path]:
    """Write (or fill in) every tile the region touches as geotessera's .npy pair; returns the
    tiles' vector files."""
    written = []
    for fill in tile_fills(partition, bbox):
        folder = root / REPRESENTATION_DIR / str(year) / fill.name
        folder.mkdir(parents=True, exist_ok=True)
        vec_path, scale_path = folder / f"{fill.name}.npy", folder / f"{fill.name}_scales.npy"
        if vec_path.exists():
            tile_vectors, tile_scales = np.load(vec_path), np.load(scale_path)
        else:
            tile_vectors = np.zeros((fill.tile.height, fill.tile.width, fill.vectors.shape[-1]), np.int8)
            tile_scales = np.full((fill.tile.height, fill.tile.width), np.nan, np.float32)
        target, take = fill.where(np.isfinite(tile_scales))
        tile_vectors[target], tile_scales[target] = fill.vectors[take], fill.scales[take]
        _save_npy(vec_path, tile_vectors)
        _save_npy(scale_path, tile_scales)
        _write_landmask(root / LANDMASK_DIR / f"{fill.name}.tiff", fill.tile)
        written.append(vec_path)
    return written


def tiff_name(lon: float, lat: float, year: int) -> str:
    """geotessera's GeoTIFF tile name, the one TorchGeo's `TesseraEmbeddings` parses
    (`grid_<lon>_<lat>_<year>.tiff`)."""
    return f"{tile_name(lon, lat)}_{year}.tiff"


def export_tiffs(partition: EmbeddingPartition, year: int, bbox: tuple[float, float, float, float],
                 root: Path) -> list[Path]:
    """Every tile the region touches as geotessera's GeoTIFF: float32, one band a dimension, NaN
    where there is no vector, on the tile's UTM grid, a COG; under
    `global_0.1_degree_representation/<year>/grid_<lon>_<lat>/`. A tile another region already
    filled is filled in, never overwritten. Returns the files."""
    written = []
    for fill in tile_fills(partition, bbox):
        path = root / REPRESENTATION_DIR / str(year) / fill.name / tiff_name(fill.lon, fill.lat, year)
        dim = fill.vectors.shape[-1]
        if path.exists():
            with rasterio.open(path) as src:
                values = src.read()
        else:
            values = np.full((dim, fill.tile.height, fill.tile.width), np.nan, np.float32)
        target, take = fill.where(np.isfinite(values[0]))
        values[:, target] = dequantise(fill.vectors[take], fill.scales[take]).T
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            with rasterio.open(tmp, "w", **fill.tile.geotiff_profile(count=dim, dtype="float32", nodata=float("nan"),
                                                                      predictor=3)) as dst:
                dst.write(values)
                dst.descriptions = tuple(f"dim_{i:03d}" for i in range(dim))
            to_cog(tmp)
        written.append(path)
    return written


def _write_landmask(path: Path, tile: RegionGrid) -> None:
    """The georeference geotessera reads for the tile; we know of no water, so every pixel is land (1)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **tile.geotiff_profile(count=1, dtype="uint8")) as dst:
        dst.write(np.ones((1, tile.height, tile.width), np.uint8))


def _point_wkb(lon: float, lat: float) -> bytes:
    return struct.pack("<BIdd", 1, 1, lon, lat)


def _write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def write_registries(root: Path, registry_dir: Path, dataset: Dataset) -> dict[str, int]:
    """The registry files geotessera reads for a local root, listing every tile under it:
    `manifest.parquet` (0.11), `registry.parquet` (0.7.5, GeoParquet of points with hashes) and
    `landmasks.parquet` (both), and the root's `tessera_metadata.json` naming the dataset."""
    registry_dir.mkdir(parents=True, exist_ok=True)
    tiles, landmasks = [], []
    for vec_path in sorted((root / REPRESENTATION_DIR).glob("*/grid_*/grid_*[0-9].npy")):
        lon, lat = (float(v) for v in vec_path.stem.split("_")[1:3])
        scale_path = vec_path.with_name(f"{vec_path.stem}_scales.npy")
        digest = hashlib.sha256(vec_path.read_bytes()).hexdigest()
        tiles.append({"year": int(vec_path.parent.parent.name), "lon": lon, "lat": lat, "hash": digest,
                      "file_size": vec_path.stat().st_size, "grid_size": vec_path.stat().st_size,
                      "scales_size": scale_path.stat().st_size})
    for mask in sorted((root / LANDMASK_DIR).glob("grid_*.tiff")):
        lon, lat = (float(v) for v in mask.stem.split("_")[1:3])
        landmasks.append({"lon": lon, "lat": lat, "hash": hashlib.sha256(mask.read_bytes()).hexdigest(),
                          "file_size": mask.stat().st_size})
    version, variant = dataset.version, dataset.variant
    column = lambda rows, key, kind: pa.array([row[key] for row in rows], kind)  # noqa: E731
    _write_parquet(registry_dir / "manifest.parquet", pa.table({
        "year": column(tiles, "year", pa.int32()), "lon": column(tiles, "lon", pa.float64()),
        "lat": column(tiles, "lat", pa.float64()), "grid_size": column(tiles, "grid_size", pa.int64()),
        "scales_size": column(tiles, "scales_size", pa.int64()),
        "version": pa.array([version] * len(tiles)), "variant": pa.array([variant] * len(tiles))}))
    geo = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": {
        "encoding": "WKB", "geometry_types": ["Point"], "crs": None}}}
    registry = pa.table({
        "year": column(tiles, "year", pa.int32()), "lon": column(tiles, "lon", pa.float64()),
        "lat": column(tiles, "lat", pa.float64()), "hash": column(tiles, "hash", pa.string()),
        "file_size": column(tiles, "file_size", pa.int64()),
        "geometry": pa.array([_point_wkb(t["lon"], t["lat"]) for t in tiles], pa.binary())})
    _write_parquet(registry_dir / "registry.parquet", registry.replace_schema_metadata({b"geo": json.dumps(geo).encode()}))
    _write_parquet(registry_dir / "landmasks.parquet", pa.table({
        "lon": column(landmasks, "lon", pa.float64()), "lat": column(landmasks, "lat", pa.float64()),
        "hash": column(landmasks, "hash", pa.string()), "file_size": column(landmasks, "file_size", pa.int64())}))
    (root / METADATA_FILE).write_text(json.dumps({
        "dataset_version": version, "dataset_variant": variant, "encoder": dataset.identity(),
        "embeddings_subdir": REPRESENTATION_DIR, "written_by": "tessera export"}, indent=2))
    return {"tiles": len(tiles), "landmasks": len(landmasks)}
