"""The embedded demo: a deterministic static STAC catalog shaped like Planetary Computer's collections.

Why synthetic and why this detailed: everything must run offline, and the raw-ingest code must meet
the same traps as with real data (asset keys, processing-baseline offsets, SCL classes, same-date
granules to mosaic, scenes too cloudy to use, 20 m bands, S1 orbit directions and speckle). The land
cover has a ground truth, so searches and few-shot maps can be scored: classes, a continuous
above-ground biomass that the series really carry (it scales the green hump and the radar's volume
scattering within a class), and real changes between years (a cleared wood, new built-up land, crop
rotation) with their polygons.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import multiprocessing
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.transform
import rasterio.warp
from affine import Affine
from rasterio.warp import transform_bounds

from resources.errors import CatalogError
from resources.regions import PIXEL_AREA_HA, Region, RegionGrid
from resources.scenes.stac import BASELINE_04_START, S2_20M_BANDS, S2_BANDS
from resources.storage.data_root import atomic_directory

DEMO_STAMP = "demo_spec.json"  # the generator's spec; its presence marks a folder the generator made

CLASS_NAMES: dict[int, str] = {
    1: "cereal", 2: "maize", 3: "forest", 4: "grassland", 5: "water", 6: "urban", 7: "bare", 8: "spring-cereal",
}
DEFAULT_YEARS: tuple[int, ...] = (2021, 2022)
PAD_PX = 16
LABELS_PER_CLASS = 40
VEGETATED = (1, 2, 3, 4, 8)
# above-ground biomass (t/ha) of a parcel of average vigour: a field at peak, a young deciduous wood
BIOMASS_T_HA: dict[int, float] = {1: 9.0, 2: 15.0, 3: 120.0, 4: 6.0, 8: 8.0}

# Reflectance endmembers in TESSERA band order (B04 B02 B03 B08 B8A B05 B06 B07 B11 B12).
_VEG = np.array([0.035, 0.030, 0.065, 0.42, 0.44, 0.10, 0.26, 0.35, 0.21, 0.10], np.float32)
_SOIL = np.array([0.20, 0.12, 0.16, 0.27, 0.29, 0.23, 0.25, 0.26, 0.36, 0.29], np.float32)
_WATER = np.array([0.025, 0.055, 0.050, 0.012, 0.010, 0.020, 0.012, 0.011, 0.006, 0.004], np.float32)
_URBAN = np.array([0.16, 0.13, 0.14, 0.21, 0.22, 0.17, 0.19, 0.20, 0.25, 0.22], np.float32)
_CLOUD = np.array([0.48, 0.50, 0.49, 0.52, 0.52, 0.50, 0.51, 0.52, 0.38, 0.30], np.float32)


@dataclass(frozen=True)
class DemoSpec:
    years: tuple[int, ...] = DEFAULT_YEARS
    s2_revisit_days: int = 5
    s1_revisit_days: int = 12


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Value noise: a coarse random grid, bilinearly upsampled; cheap and good for clouds and blobs."""
    h, w = shape
    gh, gw = h // cell + 2, w // cell + 2
    coarse = rng.random((gh, gw), dtype=np.float32)
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = coarse[y0][:, x0]
    b = coarse[y0][:, x0 + 1]
    c = coarse[y0 + 1][:, x0]
    d = coarse[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


@dataclass
class LandCover:
    """The demo's ground: classes, and the parcel (field, wood, water body, town) of every pixel
    with that parcel's own character. Fields of one crop differ as real ones do - soil colour and
    moisture, sowing date, surface roughness - so a class is a pattern in time, not one spectrum."""

    classes: np.ndarray  # (h, w) uint8 class ids
    parcel: np.ndarray  # (h, w) int32 parcel ids, from 1
    gain: np.ndarray  # (h, w) overall brightness of the parcel
    soil: np.ndarray  # (h, w) soil brightness of the parcel (colour, moisture)
    shift: np.ndarray  # (h, w) the parcel's sowing / green-up offset in days
    radar_gain: np.ndarray  # (h, w) S1 backscatter factor of the parcel (roughness, moisture)
    vigour: np.ndarray  # (h, w) growth relative to the class's average: scales green cover and VH

    @property
    def biomass(self) -> np.ndarray:
        """Above-ground biomass in t/ha: the class's biomass times the pixel's vigour (0 off vegetation)."""
        base = np.zeros(max(CLASS_NAMES) + 1, np.float32)
        for cls, value in BIOMASS_T_HA.items():
            base[cls] = value
        return base[self.classes] * self.vigour

    def replace(self, **fields) -> "LandCover":
        return LandCover(**{**self.__dict__, **fields})


def land_cover(shape: tuple[int, int], seed: int) -> LandCover:
    """Fields split recursively like a cadastre, then woods, a river, a lake and a village on top."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = shape
    classes = np.zeros(shape, np.uint8)
    parcel = np.zeros(shape, np.int32)
    field_classes = np.array([1, 2, 4, 7, 1, 2, 4, 3])
    leaf_gain: list[float] = []
    stack = [(0, 0, h, w)]
    while stack:
        r, c, hh, ww = stack.pop()
        if max(hh, ww) > 48 or (max(hh, ww) > 20 and rng.random() < 0.5):
            if hh >= ww:
                cut = int(hh * rng.uniform(0.3, 0.7))
                stack += [(r, c, cut, ww), (r + cut, c, hh - cut, ww)]
            else:
                cut = int(ww * rng.uniform(0.3, 0.7))
                stack += [(r, c, hh, cut), (r, c + cut, hh, ww - cut)]
            continue
        classes[r:r + hh, c:c + ww] = rng.choice(field_classes)
        parcel[r:r + hh, c:c + ww] = parcel.max() + 1
        leaf_gain.append(rng.uniform(0.9, 1.1))
    woods, _ = ndimage.label(_smooth_noise(rng, shape, 40) > 0.72)
    classes[woods > 0] = 3
    parcel[woods > 0] = parcel.max() + woods[woods > 0]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    river_x = w * 0.3 + 0.12 * w * np.sin(yy / max(h, 1) * 2 * np.pi * rng.uniform(0.7, 1.3))
    cy, cx, rad = rng.uniform(0.6, 0.8) * h, rng.uniform(0.6, 0.8) * w, max(3.0, min(h, w) * 0.07)
    uy, ux, urad = rng.uniform(0.15, 0.35) * h, rng.uniform(0.55, 0.85) * w, max(4.0, min(h, w) * 0.1)
    river = np.abs(xx - river_x) < max(2.0, w / 60)
    lake = (yy - cy) ** 2 + (xx - cx) ** 2 < rad**2
    town = ((yy - uy) ** 2 + (xx - ux) ** 2 < urad**2) & ~river & ~lake
    # the river in reaches and the town in quarters, so that each is several parcels to sample
    reach = (yy // 64).astype(np.int32)
    quarter = ((yy > uy) * 2 + (xx > ux)).astype(np.int32)
    for cls, mask, part in ((5, river, reach), (5, lake, 0), (6, town, quarter)):
        classes[mask] = cls
        parcel[mask] = parcel.max() + 1 + (part[mask] if isinstance(part, np.ndarray) else part)
    # the parcels' own character comes from a second generator, so the layout above stays as it was
    own = np.random.default_rng([seed, 1])
    n = parcel.max() + 1
    gain = np.concatenate([[1.0], leaf_gain, own.uniform(0.9, 1.1, n - 1 - len(leaf_gain))]).astype(np.float32)
    soil = own.uniform(0.7, 1.3, n).astype(np.float32)
    shift = np.clip(own.normal(0, 10, n), -25, 25).astype(np.float32)
    radar = (10 ** (own.normal(0, 1.0, n) / 10)).astype(np.float32)
    # a third of the maize fields are spring cereal: the same green hump, two months earlier
    spring = np.isin(parcel, np.nonzero(own.random(n) < 1 / 3)[0]) & (classes == 2)
    classes[spring] = 8
    # vigour from a fourth generator: a parcel's level (soil, management) and smooth variation within it
    growth = np.random.default_rng([seed, 2])
    vigour = growth.uniform(0.6, 1.4, n).astype(np.float32)[parcel] * (0.85 + 0.3 * _smooth_noise(growth, shape, 12))
    return LandCover(classes, parcel, gain[parcel], soil[parcel], shift[parcel], radar[parcel],
                     vigour.astype(np.float32))


@dataclass
class Change:
    """One changed patch between a year and the year before, on the padded tile grid."""

    kind: str  # clearing, built-up, rotation
    mask: np.ndarray  # (h, w) bool
    before: int  # class ids
    after: int


def _interior(shape: tuple[int, int]) -> np.ndarray:
    """The region's own pixels of the padded tile (changes must be where the region can see them)."""
    inside = np.zeros(shape, bool)
    inside[PAD_PX:-PAD_PX, PAD_PX:-PAD_PX] = True
    return inside


def _parcels_of(land: LandCover, classes: tuple[int, ...], min_px: int, inside: np.ndarray) -> list[int]:
    ids, counts = np.unique(land.parcel[np.isin(land.classes, classes) & inside], return_counts=True)
    return [int(i) for i, n in zip(ids, counts) if n >= min_px]


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def next_year(land: LandCover, seed: int) -> tuple[LandCover, list[Change]]:
    """The land a year on: a patch of a wood cleared to bare soil, part of a field nearest the town
    built up, and crop rotation on a few fields (cereal to maize and back). Small regions get what
    their land allows (no wood, no clearing)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    classes, parcel = land.classes.copy(), land.parcel.copy()
    inside = _interior(classes.shape)
    changes: list[Change] = []
    woods = _parcels_of(land, (3,), 80, inside)
    if woods:
        wood = land.parcel == rng.choice(woods)
        depth = ndimage.distance_transform_edt(wood & inside)
        centre = np.unravel_index(int(np.argmax(depth + rng.random(depth.shape))), depth.shape)
        cleared = wood & inside & _disk(classes.shape, centre, float(np.clip(np.sqrt(wood.sum()) / 3, 5, 12)))
        changes.append(Change("clearing", cleared, 3, 7))
    fields = _parcels_of(land, (1, 2, 4), 80, inside)
    if fields:
        town = land.classes == 6
        target = np.argwhere(town).mean(axis=0) if town.any() else np.array(classes.shape) / 2
        best = min(fields, key=lambda p: float(np.min(np.sum((np.argwhere(land.parcel == p) - target) ** 2, axis=1))))
        member = np.argwhere((land.parcel == best) & inside)
        nearest = tuple(member[np.argmin(np.sum((member - target) ** 2, axis=1))])
        built = (land.parcel == best) & inside & _disk(classes.shape, nearest, 8)
        changes.append(Change("built-up", built, int(np.bincount(land.classes[built]).argmax()), 6))
    taken = np.zeros(classes.shape, bool)
    for change in changes:
        taken |= change.mask
    for before, after, count in ((1, 2, 2), (2, 1, 1)):
        candidates = [p for p in _parcels_of(land, (before,), 30, inside) if not taken[land.parcel == p].any()]
        for p in rng.permutation(candidates)[:count]:
            changes.append(Change("rotation", (land.parcel == p) & ~taken, before, after))
    for change in changes:
        classes[change.mask] = change.after
        if change.kind != "rotation":  # a cleared patch or a new estate is a parcel of its own
            parcel[change.mask] = parcel.max() + 1
    return land.replace(classes=classes, parcel=parcel), changes


def _gauss(doy: np.ndarray, peak: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((doy - peak) / width) ** 2)


def vegetation_fraction(cls: int, doy: float, shift: np.ndarray) -> np.ndarray:
    """Green cover through the year, per class and pixel: the phenology that separates the crops."""
    d = doy - np.asarray(shift, np.float32)
    if cls == 1:  # winter cereal: green from autumn, peak in May, harvested mid July
        return np.where((d > 200) & (d < 280), 0.05, np.maximum(0.25, 0.9 * _gauss(d, 140, 35)))
    if cls == 2:  # maize: bare until May, peak in August
        return 0.05 + 0.85 * _gauss(d, 215, 30)
    if cls == 8:  # spring cereal: sown in March, peak in June; over a year, the same cover as maize
        return 0.05 + 0.85 * _gauss(d, 160, 30)
    if cls == 3:  # deciduous forest
        return 0.35 + 0.55 / (1 + np.exp(-(d - 120) / 8)) - 0.55 / (1 + np.exp(-(d - 295) / 8))
    if cls == 4:  # grassland, mown in June
        return 0.55 + 0.3 * _gauss(d, 130, 50) - np.where((d > 165) & (d < 185), 0.25, 0.0)
    return np.full(d.shape, 0.1 if cls == 6 else 0.03, np.float32)


def s1_backscatter(cls: int, veg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear gamma0 (VV, VH) per class; crops brighten with biomass, water is a mirror."""
    vv, vh = {
        1: (0.04 + 0.10 * veg, 0.007 + 0.030 * veg),
        2: (0.04 + 0.14 * veg, 0.007 + 0.040 * veg),
        3: (0.12, 0.035),
        4: (0.06 + 0.03 * veg, 0.012 + 0.008 * veg),
        5: (0.008, 0.0015),
        6: (0.35, 0.07),
        7: (0.05, 0.008),
        8: (0.04 + 0.10 * veg, 0.007 + 0.030 * veg),
    }[cls]
    return np.broadcast_to(vv, veg.shape), np.broadcast_to(vh, veg.shape)


def green_cover(land: LandCover, cls: int, sel: np.ndarray, doy: float, shift: float) -> np.ndarray:
    """The class's phenology at the selected pixels, its amplitude scaled by their vigour."""
    f = vegetation_fraction(cls, doy, land.shift[sel] + shift)
    return np.clip(f * land.vigour[sel], 0.02, 0.97) if cls in VEGETATED else f


def _reflectance(land: LandCover, doy: float, shift: float, rng) -> np.ndarray:
    out = np.empty((len(S2_BANDS), *land.classes.shape), np.float32)
    for cls in CLASS_NAMES:
        sel = land.classes == cls
        if not sel.any():
            continue
        f = green_cover(land, cls, sel, doy, shift)[None, :]
        if cls == 5:
            base = np.broadcast_to(_WATER[:, None], (len(S2_BANDS), int(sel.sum())))
        else:
            ground = _URBAN[:, None] if cls == 6 else _SOIL[:, None] * land.soil[sel][None, :]
            base = ground * (1 - f) + _VEG[:, None] * f
        out[:, sel] = base * land.gain[sel][None, :]
    out *= rng.normal(1.0, 0.03, out.shape).astype(np.float32)
    return out


def _s2_scene(land: LandCover, doy, shift, rng):
    """Reflectance with clouds and shadows, and the SCL that agrees with them."""
    refl = _reflectance(land, doy, shift, rng)
    classes = land.classes
    h, w = classes.shape
    kind = rng.random()
    cover = rng.uniform(0.0, 0.03) if kind < 0.4 else rng.uniform(0.1, 0.6) if kind < 0.78 else rng.uniform(0.7, 1.0)
    noise = _smooth_noise(rng, (h, w), 24)
    cloud = noise > np.quantile(noise, 1 - cover) if cover > 0.005 else np.zeros((h, w), bool)
    shadow = np.roll(cloud, (10, 14), axis=(0, 1)) & ~cloud
    scl = np.where(classes == 5, 6, np.where(refl[3] > 1.6 * refl[0] + 0.05, 4, 5)).astype(np.uint8)
    refl[:, shadow] *= 0.3
    scl[shadow] = 3
    thick = noise > np.quantile(noise, 1 - cover * 0.6) if cover > 0.005 else cloud
    refl[:, cloud] = _CLOUD[:, None] * rng.uniform(0.8, 1.1)
    scl[cloud] = np.where(thick[cloud], 9, 8)
    if rng.random() < 0.1:  # thin cirrus over clear land: counts as valid
        cirrus = (_smooth_noise(rng, (h, w), 32) > 0.8) & ~cloud & ~shadow
        refl[:, cirrus] += 0.03
        scl[cirrus] = 10
    return refl, scl, float(cloud.mean() * 100)


_SCL_SEVERITY = (9, 8, 3, 10)  # cloud high, cloud medium, shadow, cirrus: the worst in a block wins


def _scl_20m(scl: np.ndarray) -> np.ndarray:
    """The 10 m scene classes as the 20 m SCL a real product ships: each 2 x 2 block takes the most
    severe class any of its pixels has (cloud, then shadow, then cirrus), else its first pixel's.
    Why not the first pixel alone: a block whose first pixel is clear and whose others are cloud
    would let cloud reflectance through as valid data in three 10 m pixels of four, always the same
    three, which printed a 2-pixel stripe pattern into every product made from the demo."""
    blocks = scl.reshape(scl.shape[0] // 2, 2, scl.shape[1] // 2, 2)
    out = blocks[:, 0, :, 0].copy()
    for cls in reversed(_SCL_SEVERITY):
        out[(blocks == cls).any(axis=(1, 3))] = cls
    return out


def _write_cog(path: Path, data: np.ndarray, transform: Affine, crs, nodata, descriptions=None) -> None:
    bands = data if data.ndim == 3 else data[None]
    profile = dict(
        driver="COG", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
        dtype=bands.dtype.name, crs=crs, transform=transform, nodata=nodata, compress="deflate",
        blocksize=256,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)


def _footprint(transform: Affine, width: int, height: int, crs) -> tuple[list[float], dict]:
    left, top = transform.c, transform.f
    right, bottom = left + width * transform.a, top + height * transform.e
    w, s, e, n = transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
    geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    return [w, s, e, n], geometry


def _tile_grid(grid: RegionGrid) -> tuple[Affine, int, int]:
    """The demo 'satellite tile': the region plus a margin, even-sized so 20 m bands fit exactly."""
    width = grid.width + 2 * PAD_PX + (grid.width % 2)
    height = grid.height + 2 * PAD_PX + (grid.height % 2)
    return grid.transform @ Affine.translation(-PAD_PX, -PAD_PX), width, height


def _granule_columns(width: int) -> list[tuple[str, int, int]]:
    """Two overlapping granules per date, as where a region straddles two MGRS tiles."""
    split_a, split_b = (int(width * 0.6) // 2) * 2, (int(width * 0.4) // 2) * 2
    return [("A", 0, split_a), ("B", split_b, width)]


def _item(item_id, when, transform, width, height, crs, collection, properties) -> pystac.Item:
    bbox, geometry = _footprint(transform, width, height, crs)
    props = {"proj:epsg": crs.to_epsg(), "proj:shape": [height, width], "proj:transform": list(transform)[:6]}
    return pystac.Item(item_id, geometry, bbox, when, props | properties, collection=collection)


def _write_region_year(root: Path, region: Region, year: int, spec: DemoSpec, land: LandCover, s2, s1) -> None:
    grid = region.grid
    transform, width, height = _tile_grid(grid)
    rng = np.random.default_rng(_seed(region.name, year))
    shift = rng.uniform(-10, 10)
    start = dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(0, spec.s2_revisit_days)))
    day = start
    while day.year == year:
        doy = day.timetuple().tm_yday
        refl, scl, _ = _s2_scene(land, doy, shift, rng)
        baseline = "04.00" if day >= BASELINE_04_START else "03.01"
        offset = 1000 if day >= BASELINE_04_START else 0
        dn = np.clip(np.round(refl * 10000) + offset, 1, 65535).astype(np.uint16)
        when = dt.datetime(day.year, day.month, day.day, 10, 56, 21, tzinfo=dt.timezone.utc)
        for granule, c0, c1 in _granule_columns(width):
            item_id = f"S2_DEMO_{region.name}_{granule}_{day:%Y%m%d}".replace("-", "_")
            folder = root / "sentinel-2-l2a" / item_id
            folder.mkdir(parents=True)
            g_transform = transform @ Affine.translation(c0, 0)
            g_scl = scl[:, c0:c1]
            cover = float(np.isin(g_scl, (3, 8, 9)).mean() * 100)
            item = _item(item_id, when, g_transform, c1 - c0, height, grid.crs, "sentinel-2-l2a", {
                "platform": "Sentinel-2A" if day.toordinal() % 10 < 5 else "Sentinel-2B",
                "eo:cloud_cover": round(cover, 3), "s2:processing_baseline": baseline,
                "s2:mgrs_tile": f"DEMO{granule}", "sat:orbit_state": "descending",
            })
            for b, band in enumerate(S2_BANDS):
                band_dn = dn[b, :, c0:c1]
                if band in S2_20M_BANDS:
                    band_dn = band_dn.reshape(height // 2, 2, -1, 2).mean(axis=(1, 3)).astype(np.uint16)
                    t = g_transform @ Affine.scale(2)
                else:
                    t = g_transform
                _write_cog(folder / f"{band}.tif", band_dn, t, grid.crs, 0)
                item.add_asset(band, pystac.Asset(str(folder / f"{band}.tif"), media_type=pystac.MediaType.COG, roles=["data"]))
            _write_cog(folder / "SCL.tif", _scl_20m(g_scl), g_transform @ Affine.scale(2), grid.crs, 0)
            item.add_asset("SCL", pystac.Asset(str(folder / "SCL.tif"), media_type=pystac.MediaType.COG, roles=["data"]))
            s2.add_item(item)
        day += dt.timedelta(days=spec.s2_revisit_days)
    for orbit, first_day in (("ascending", 2), ("descending", 8)):
        day = dt.date(year, 1, first_day)
        gain_orbit = 1.0 if orbit == "ascending" else 1.08
        while day.year == year:
            doy = day.timetuple().tm_yday
            vv = np.empty(land.classes.shape, np.float32)
            vh = np.empty(land.classes.shape, np.float32)
            for cls in CLASS_NAMES:
                sel = land.classes == cls
                v, h = s1_backscatter(cls, green_cover(land, cls, sel, doy, shift))
                if cls in VEGETATED:  # more biomass, more volume scattering: VH most of all
                    v, h = v * np.sqrt(land.vigour[sel]), h * land.vigour[sel]
                vv[sel], vh[sel] = v * land.radar_gain[sel] * gain_orbit, h * land.radar_gain[sel] * gain_orbit
            looks = 4.4
            vv *= rng.gamma(looks, 1 / looks, vv.shape).astype(np.float32)
            vh *= rng.gamma(looks, 1 / looks, vh.shape).astype(np.float32)
            hour = 17 if orbit == "ascending" else 5
            when = dt.datetime(day.year, day.month, day.day, hour, 40, 12, tzinfo=dt.timezone.utc)
            item_id = f"S1_DEMO_{region.name}_{orbit[:3].upper()}_{day:%Y%m%d}".replace("-", "_")
            folder = root / "sentinel-1-rtc" / item_id
            folder.mkdir(parents=True)
            item = _item(item_id, when, transform, width, height, grid.crs, "sentinel-1-rtc", {
                "platform": "SENTINEL-1A", "sat:orbit_state": orbit, "sar:polarizations": ["VV", "VH"],
                "sar:product_type": "GRD", "sar:instrument_mode": "IW",
            })
            for key, data in (("vv", vv), ("vh", vh)):
                _write_cog(folder / f"{key}.tif", data, transform, grid.crs, -32768.0)
                item.add_asset(key, pystac.Asset(str(folder / f"{key}.tif"), media_type=pystac.MediaType.COG, roles=["data"]))
            s1.add_item(item)
            day += dt.timedelta(days=spec.s1_revisit_days)


def _write_ground_truth(root: Path, region: Region, lands: dict[int, LandCover],
                        changes: dict[int, list[Change]]) -> None:
    """Per year: class, parcel and biomass rasters on the region grid, and for every year after the
    first the change mask and change polygons (GeoJSON, lon/lat) since the year before. For the
    region: labelled points, to score maps, searches and regressions.

    Points lie on pixels whose class never changes, so one labels file is right for every year.
    They are spread over as many parcels as the class has, and each carries its parcel as `group`,
    as field-survey points carry their field: evaluation then never trains on one point of a field
    and tests on another point of the same field. Each also carries its `biomass` (t/ha)."""
    grid = region.grid
    window = np.s_[PAD_PX:PAD_PX + grid.height, PAD_PX:PAD_PX + grid.width]
    folder = ground_truth_dir(root, region.name)
    for year, land in lands.items():
        (folder / str(year)).mkdir(parents=True)
        rasters = (("classes.tif", land.classes, "uint8", 0), ("parcels.tif", land.parcel, "int32", 0),
                   ("biomass.tif", land.biomass, "float32", None))
        for name, data, dtype, nodata in rasters:
            with rasterio.open(folder / str(year) / name, "w", **grid.geotiff_profile(count=1, dtype=dtype, nodata=nodata)) as dst:
                dst.write(data[window].astype(dtype), 1)
                if name == "classes.tif":
                    dst.update_tags(**{f"class_{k}": v for k, v in CLASS_NAMES.items()})
    for year, found in changes.items():
        _write_changes(folder / str(year), grid, [(c.kind, c.before, c.after, c.mask[window]) for c in found])
    latest = lands[max(lands)]
    truth, parcels, biomass = latest.classes[window], latest.parcel[window], latest.biomass[window]
    stable = np.logical_and.reduce([land.classes[window] == truth for land in lands.values()])
    rng = np.random.default_rng(_seed(region.name, "labels"))
    features = []
    for cls, name in CLASS_NAMES.items():
        rows, cols = np.nonzero((truth == cls) & stable)
        if len(rows) == 0:
            continue
        order = rng.permutation(len(rows))
        owner = parcels[rows[order], cols[order]]
        # the n-th point drawn in its parcel: sorting by it visits every parcel before any repeats
        _, inverse = np.unique(owner, return_inverse=True)
        nth = np.empty(len(order), int)
        for p in range(inverse.max() + 1):
            members = np.nonzero(inverse == p)[0]
            nth[members] = np.arange(len(members))
        pick = order[np.argsort(nth, kind="stable")[:LABELS_PER_CLASS]]
        xs, ys = rasterio.transform.xy(grid.transform, rows[pick], cols[pick])
        lons, lats = rasterio.warp.transform(grid.crs, "EPSG:4326", xs, ys)
        features += [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
             "properties": {"label": name, "class_id": cls, "group": f"parcel-{parcel}", "biomass": round(value, 2)}}
            for lon, lat, parcel, value in zip(lons, lats, parcels[rows[pick], cols[pick]].tolist(),
                                               biomass[rows[pick], cols[pick]].tolist())
        ]
    (folder / "labels.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def _write_changes(folder: Path, grid: RegionGrid, changes: list[tuple[str, int, int, np.ndarray]]) -> None:
    """change.tif (1 = changed since the year before) and changes.geojson, one (multi)polygon per change."""
    changed = np.zeros(grid.shape, np.uint8)
    features = []
    for kind, before, after, mask in changes:
        changed[mask] = 1
        geometry = grid.polygons(mask.astype(np.uint8)).get(1)
        if geometry is None:
            continue
        features.append({"type": "Feature", "geometry": geometry,
                         "properties": {"kind": kind, "from": CLASS_NAMES[before], "to": CLASS_NAMES[after],
                                        "area_ha": round(float(mask.sum()) * PIXEL_AREA_HA, 2)}})
    with rasterio.open(folder / "change.tif", "w", **grid.geotiff_profile(count=1, dtype="uint8", nodata=None)) as dst:
        dst.write(changed, 1)
    (folder / "changes.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def _spec_stamp(regions: list[Region], spec: DemoSpec) -> str:
    """What the catalog was made from; `version` rises whenever the scenes written change (5: the 20 m
    SCL takes each block's most severe class), so an existing catalog is made again."""
    payload = {"regions": [[r.name, list(r.bbox)] for r in regions], "spec": spec.__dict__, "version": 5}
    return json.dumps(payload, sort_keys=True, default=list)


def ensure_demo_catalog(root: Path, regions: list[Region], spec: DemoSpec = DemoSpec()) -> Path:
    """Generate the catalog unless an identical one is already there; returns catalog.json.

    Written under a temporary name and moved into place, so a crash leaves the old catalog whole.
    It only ever replaces a folder it made itself (the spec stamp marks it): a catalog of the
    user's own, configured with `provider: demo` by mistake, is refused, never overwritten."""
    root = Path(root).resolve()  # pystac resolves a relative root against the wrong folder
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(f".{root.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel steps (s2_raw, s1_raw) wait for one generator
        stamp_file = root / DEMO_STAMP
        if root.exists() and any(root.iterdir()) and not stamp_file.exists():
            raise CatalogError(
                f"{root} holds files the demo generator did not write, so it will not replace them: the demo "
                f"catalog only goes into a new folder or one it made itself (marked by {DEMO_STAMP}). If this is "
                f"your own catalog, configure its real provider (planetary-computer, earth-search), not 'demo'")
        if not (stamp_file.exists() and stamp_file.read_text() == _spec_stamp(regions, spec)):
            _generate(root, regions, spec)
    return root / "catalog.json"


def _lands(region: Region, spec: DemoSpec) -> tuple[dict[int, LandCover], dict[int, list[Change]]]:
    """The region's land cover each year and its changes since the year before (deterministic)."""
    _, width, height = _tile_grid(region.grid)
    lands = {spec.years[0]: land_cover((height, width), _seed(region.name))}
    changes: dict[int, list[Change]] = {}
    for before, year in zip(spec.years, spec.years[1:]):
        lands[year], changes[year] = next_year(lands[before], _seed(region.name, "change", year))
    return lands, changes


class _Items(list):
    """Collects a region-year's items in a worker process, as dictionaries to send back."""

    def add_item(self, item: pystac.Item) -> None:
        self.append(item.to_dict())


def _scenes_of(root: Path, region: Region, year: int, spec: DemoSpec, land: LandCover) -> tuple[list[dict], list[dict]]:
    """One region-year's scenes written under `root`; its S2 and S1 items (a worker's task)."""
    s2, s1 = _Items(), _Items()
    _write_region_year(root, region, year, spec, land, s2, s1)
    return s2, s1


def _generate(root: Path, regions: list[Region], spec: DemoSpec) -> None:
    """The region-years' scenes are independent (each draws from its own seed), so they are written
    by one process per CPU at once; the items join the collections in region, year order, so the
    catalog is the same whatever the number of processes."""
    with atomic_directory(root) as tmp:
        catalog = pystac.Catalog("tessera-demo", "Synthetic Sentinel-1/2 scenes for the tessera demo")
        extent = pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]]))
        s2 = pystac.Collection("sentinel-2-l2a", "Demo Sentinel-2 L2A (Planetary Computer layout)", extent)
        s1 = pystac.Collection("sentinel-1-rtc", "Demo Sentinel-1 RTC (Planetary Computer layout)", extent)
        catalog.add_children([s2, s1])
        history = {region.name: _lands(region, spec) for region in regions}
        tasks = [(region, year) for region in regions for year in spec.years]
        processes = max(1, min(len(tasks), len(os.sched_getaffinity(0))))
        # spawned, not forked: the caller may be a Dagster step process with threads running
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            scenes = [pool.submit(_scenes_of, tmp, region, year, spec, history[region.name][0][year])
                      for region, year in tasks]
            for region in regions:
                _write_ground_truth(tmp, region, *history[region.name])
            for future in scenes:
                s2_items, s1_items = future.result()
                s2.add_items([pystac.Item.from_dict(d) for d in s2_items])
                s1.add_items([pystac.Item.from_dict(d) for d in s1_items])
        catalog.normalize_hrefs(str(tmp))
        catalog.make_all_asset_hrefs_relative()
        catalog.save(pystac.CatalogType.SELF_CONTAINED)
        (tmp / DEMO_STAMP).write_text(_spec_stamp(regions, spec))


def ground_truth_dir(catalog_root: Path, region: str, year: int | None = None) -> Path:
    """The region's ground truth (labels.geojson), or that of one year (classes, parcels, biomass,
    and change since the year before)."""
    folder = Path(catalog_root) / "ground_truth" / region
    return folder / str(year) if year is not None else folder
