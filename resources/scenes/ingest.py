"""Reads Sentinel scenes onto a region grid and writes a raw partition, one block at a time.

Each observation (a date; for S1 a date and orbit direction) becomes one GeoTIFF on the region grid:
the same-date granules mosaicked (first clear pixel wins), invalid pixels in the GDAL mask. Sources
are windowed COG reads through a WarpedVRT, so only the pixels of a block are fetched and memory
is bounded by the block size, not the region (the per-pixel count of valid observations, 2 bytes a
pixel, and a valid mask a finished observation, are the only region-sized arrays). Observations are
written by a pool of threads at once, which overlaps the latency of remote reads. A scene that
cannot be read (after GDAL's own retries of transient HTTP errors) is lost: reported, and its
observation redone without it so nothing of it is left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from resources.errors import SceneReadError
from resources.storage.gdal_env import read_environment
from resources.regions import RegionGrid
from resources.scenes.sentinel import remove_offset, s1_implausible, s1_to_linear, s1_to_tessera_units, s1_unit_of, scl_clear
from resources.scenes.stac import S1_BANDS, S2_20M_BANDS, S2_BANDS, Scene, Sensor
from resources.storage.data_root import INDEX_FILE, grid_to_json

log = logging.getLogger(__name__)

BAND_NAMES: dict[str, tuple[str, ...]] = {"s2": S2_BANDS, "s1": S1_BANDS}
DTYPES = {"s2": "uint16", "s1": "int16"}
UNITS = {
    "s2": "surface reflectance x 10000, baseline offset removed",
    "s1": "TESSERA S1 units: clip((20*log10(gamma0) + 50) * 200, 0, 32767), 0 = no data",
}


@dataclass
class Observation:
    date: str
    doy: int
    orbit: str | None
    scenes: list[Scene]

    @property
    def key(self) -> str:
        return self.date.replace("-", "") + (f"_{self.orbit[:3]}" if self.orbit else "")


@dataclass
class ValueStats:
    """Every valid value written, against the sensor's physical range: the range check sees all
    pixels of all bands at full resolution, counted while the blocks are in memory anyway."""

    low: float = -np.inf
    high: float = np.inf
    count: int = 0
    outside: int = 0
    minimum: float = np.inf
    maximum: float = -np.inf

    inputs: int = 0  # values as the provider delivered them (S1: in their unit), and of those
    inputs_implausible: int = 0  # the ones implausible for that unit (sentinel.S1_PLAUSIBLE)
    units: dict[str, str] = field(default_factory=dict)  # S1 scene id -> the unit it was delivered in

    def add(self, values: np.ndarray) -> None:
        if values.size:
            self.count += values.size
            self.outside += int(((values < self.low) | (values > self.high)).sum())
            self.minimum, self.maximum = min(self.minimum, float(values.min())), max(self.maximum, float(values.max()))

    def merge(self, other: "ValueStats") -> None:
        self.count += other.count
        self.outside += other.outside
        self.inputs += other.inputs
        self.inputs_implausible += other.inputs_implausible
        self.units |= other.units
        self.minimum, self.maximum = min(self.minimum, other.minimum), max(self.maximum, other.maximum)

    @property
    def outside_fraction(self) -> float:
        return self.outside / self.count if self.count else 0.0

    @property
    def implausible_input_fraction(self) -> float:
        return self.inputs_implausible / self.inputs if self.inputs else 0.0


@dataclass
class IngestReport:
    observations: list[dict[str, Any]] = field(default_factory=list)
    lost: list[tuple[str, str]] = field(default_factory=list)  # (scene, reason): could not be read
    unclear: list[tuple[str, str]] = field(default_factory=list)  # (scene, reason): read, nothing clear
    scenes_used: int = 0
    seconds: float = 0.0
    values: ValueStats = field(default_factory=ValueStats)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Every scene that contributed nothing, with the reason."""
        return self.lost + self.unclear


def group_observations(sensor: Sensor, scenes: list[Scene]) -> list[Observation]:
    """Same-date granules form one observation; S1 orbit directions are kept apart."""
    def key(scene: Scene) -> tuple[str, str]:
        return scene.date.isoformat(), (scene.orbit_state or "unknown") if sensor == "s1" else ""

    groups = []
    for (date, orbit), members in groupby(sorted(scenes, key=lambda s: (key(s), s.id)), key=key):
        members = list(members)
        groups.append(Observation(date, members[0].date.timetuple().tm_yday, orbit or None, members))
    return groups


class _SceneReader:
    """The bands of one scene warped onto the grid, and the grid window the scene covers."""

    def __init__(self, scene: Scene, grid: RegionGrid, stack: contextlib.ExitStack,
                 sign: Callable[[str], str] | None = None):
        self.scene = scene
        self.unit: str | None = None  # S1: "linear" or "db", told from the first block with enough values
        self.vrts: dict[str, WarpedVRT] = {}
        self.footprint: Window | None = None
        for band, href in scene.hrefs.items():
            try:
                src = stack.enter_context(rasterio.open(sign(href) if sign else href))
            except RasterioError as exc:
                raise SceneReadError(scene, f"unreadable {band} at {href}: {exc}") from exc
            resampling = Resampling.bilinear if band in S2_20M_BANDS else Resampling.nearest
            self.vrts[band] = stack.enter_context(WarpedVRT(
                src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=resampling,
            ))
            if self.footprint is None:
                bounds = transform_bounds(src.crs, grid.crs, *src.bounds)
                self.footprint = from_bounds(*bounds, transform=grid.transform)

    def covers(self, window: Window) -> bool:
        fp = self.footprint
        return fp is not None and not (
            fp.col_off >= window.col_off + window.width or fp.col_off + fp.width <= window.col_off
            or fp.row_off >= window.row_off + window.height or fp.row_off + fp.height <= window.row_off
        )

    def read(self, band: str, window: Window) -> np.ma.MaskedArray:
        try:
            return self.vrts[band].read(1, window=window, masked=True)
        except RasterioError as exc:
            raise SceneReadError(self.scene, f"corrupt or truncated {band}: {exc}") from exc


def _mosaic_s2(readers: list[_SceneReader], window: Window, seen: ValueStats,
               cloud_clear_below: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Clear pixels by SCL, or by the cloud asset of the catalog's `s2_mask: cloud` (clear below
    `cloud_clear_below`), or every valid pixel (`s2_mask: none`)."""
    h, w = int(window.height), int(window.width)
    values = np.zeros((len(S2_BANDS), h, w), np.uint16)
    filled = np.zeros((h, w), bool)
    for reader in readers:
        if not reader.covers(window):
            continue
        if "SCL" in reader.vrts:
            scl = reader.read("SCL", window)
            take = ~np.ma.getmaskarray(scl) & scl_clear(scl.filled(0)) & ~filled
        elif "CLOUD" in reader.vrts:
            cloud = reader.read("CLOUD", window)
            take = ~np.ma.getmaskarray(cloud) & (cloud.filled(255) < cloud_clear_below) & ~filled
        else:
            take = ~filled
        if not take.any():
            continue
        bands = [reader.read(band, window) for band in S2_BANDS]
        for band in bands:
            take &= ~np.ma.getmaskarray(band)
        for b, band in enumerate(bands):
            values[b][take] = remove_offset(band.data[take], reader.scene.offset_dn)
        filled |= take
    return values, filled


def _mosaic_s1(readers: list[_SceneReader], window: Window, seen: ValueStats) -> tuple[np.ndarray, np.ndarray]:
    """Backscatter in linear power or in dB (told apart per scene: a dB product would otherwise
    become almost all no data), converted to TESSERA's units; values implausible for their unit are
    counted for the `physical_range` check."""
    h, w = int(window.height), int(window.width)
    values = np.zeros((len(S1_BANDS), h, w), np.int16)
    filled = np.zeros((h, w), bool)
    for reader in readers:
        if not reader.covers(window):
            continue
        delivered = [reader.read(band, window).filled(np.nan) for band in S1_BANDS]
        reader.unit = reader.unit or s1_unit_of(np.stack(delivered))
        unit = reader.unit or "linear"
        for band in delivered:
            checked, implausible = s1_implausible(band, unit)
            seen.inputs += checked
            seen.inputs_implausible += implausible
        seen.units[reader.scene.id] = unit
        units = [s1_to_tessera_units(s1_to_linear(band, unit)) for band in delivered]
        take = ((units[0] != 0) | (units[1] != 0)) & ~filled
        for b in range(len(S1_BANDS)):
            values[b][take] = units[b][take]
        filled |= take
    return values, filled


def _write_observation(sensor: Sensor, obs: Observation, grid: RegionGrid, path: Path, block: int,
                       values_seen: ValueStats, sign: Callable[[str], str] | None,
                       cloud_clear_below: float) -> np.ndarray:
    """Write one observation; returns its valid pixels (none valid: nothing written)."""
    mosaic = partial(_mosaic_s2, cloud_clear_below=cloud_clear_below) if sensor == "s2" else _mosaic_s1
    profile = grid.geotiff_profile(count=len(BAND_NAMES[sensor]), dtype=DTYPES[sensor], predictor=2)
    obs_valid = np.zeros(grid.shape, bool)
    with contextlib.ExitStack() as stack:
        readers = [_SceneReader(scene, grid, stack, sign) for scene in obs.scenes]
        stack.enter_context(rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True))
        dst = stack.enter_context(rasterio.open(path, "w", **profile))
        for i, name in enumerate(BAND_NAMES[sensor], start=1):
            dst.set_band_description(i, name)
        dst.update_tags(date=obs.date, doy=obs.doy, orbit=obs.orbit or "", scenes=",".join(s.id for s in obs.scenes))
        for window in grid.blocks(block):
            values, valid = mosaic(readers, window, values_seen)
            dst.write(values, window=window)
            dst.write_mask(valid.astype(np.uint8) * 255, window=window)
            values_seen.add(values[:, valid])
            r, c = int(window.row_off), int(window.col_off)
            obs_valid[r:r + valid.shape[0], c:c + valid.shape[1]] = valid
    if not obs_valid.any():
        path.unlink()
    return obs_valid


def _in_order(pool: ThreadPoolExecutor, fn: Callable, items: list, ahead: int):
    """`pool.map` with at most `ahead` tasks in flight, so finished results waiting for a slow
    earlier one never pile up (each holds a region-sized mask)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def ingest(sensor: Sensor, scenes: list[Scene], grid: RegionGrid, out_dir: Path, block: int = 512,
           progress: Callable[[str], None] | None = None,
           valid_range: tuple[float, float] = (-np.inf, np.inf), workers: int = 1,
           sign: Callable[[str], str] | None = None, gdal_options: dict[str, str] | None = None,
           cloud_clear_below: float = 40.0) -> IngestReport:
    """Write every observation of `scenes` into `out_dir` (a fresh folder) and its index; the report
    counts the written values outside `valid_range`.

    Observations are written by `workers` threads at once (GDAL reads release the GIL, so remote
    reads overlap their latency; memory is `workers` blocks). `sign` turns an href into a readable
    URL right before it is opened, so signed URLs never expire during a long ingest; `gdal_options`
    and `cloud_clear_below` come from the catalog (`StacCatalog`)."""
    start = time.perf_counter()
    report = IngestReport(values=ValueStats(*valid_range))
    (out_dir / "obs").mkdir()
    counts = np.zeros(grid.shape, np.uint16)
    observations = group_observations(sensor, scenes)
    done = 0

    def write(obs: Observation) -> tuple[Observation, np.ndarray | None, ValueStats, list[tuple[str, str]]]:
        path = out_dir / "obs" / f"{obs.key}.tif"
        lost = []
        with read_environment(gdal_options):
            while obs.scenes:
                seen = ValueStats(*valid_range)  # kept only if the observation is written whole
                try:
                    valid = _write_observation(sensor, obs, grid, path, block, seen, sign, cloud_clear_below)
                    return obs, valid, seen, lost
                except SceneReadError as exc:
                    lost.append((exc.scene.id, exc.reason))
                    obs.scenes = [s for s in obs.scenes if s.id != exc.scene.id]
                    path.unlink(missing_ok=True)
        return obs, None, ValueStats(*valid_range), lost

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for obs, valid, seen, lost in _in_order(pool, write, observations, ahead=2 * max(1, workers)):
            done += 1
            report.lost += lost
            if valid is None:
                continue
            n_valid = int(valid.sum())
            if n_valid == 0:
                report.unclear += [(s.id, "no clear pixels over the region") for s in obs.scenes]
                continue
            counts += valid
            report.scenes_used += len(obs.scenes)
            report.values.merge(seen)
            report.observations.append({
                "date": obs.date, "doy": obs.doy, "orbit": obs.orbit, "file": f"obs/{obs.key}.tif",
                "scenes": [s.id for s in obs.scenes], "valid_fraction": round(n_valid / counts.size, 4),
                **({"units": sorted({seen.units.get(s.id, "linear") for s in obs.scenes})} if sensor == "s1" else {}),
            })
            if progress and (done % 10 == 0 or done == len(observations)):
                progress(f"{sensor}: {done}/{len(observations)} observations written")
    with rasterio.open(out_dir / "valid_count.tif", "w", **grid.geotiff_profile(count=1, dtype="uint16")) as dst:
        dst.write(counts, 1)
        dst.set_band_description(1, "valid observations")
    report.seconds = time.perf_counter() - start
    index = {
        "sensor": sensor, "grid": grid_to_json(grid), "bands": list(BAND_NAMES[sensor]), "dtype": DTYPES[sensor],
        "units": UNITS[sensor], "observations": report.observations,
        "skipped": [{"id": i, "reason": r} for i, r in report.skipped],
    }
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return report
