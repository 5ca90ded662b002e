"""change_map[year, region]: how each pixel moved since the reference year (the year before, or
TESSERA_CHANGE_REFERENCE_YEAR), calibrated per region, as rasters, patches and areas; beside the
same calibration applied to a raw-input baseline (annual median NDVI and VV)."""

import json
import os
import warnings

import numpy as np
import rasterio
from dagster import (AssetDep, AssetExecutionContext, BetaWarning, Config, DimensionPartitionMapping,
                     IdentityPartitionMapping, MaterializeResult, MetadataValue, MultiPartitionMapping,
                     StaticPartitionMapping, asset)
from pydantic import Field

from model.change import (Calibration, TypicalChange, calibrate, change_vectors, combined_baseline_score,
                          flagged_patches, neighbourhood_median)
from model.errors import CalibrationError
from model.quantise import dequantise
from resources.change_search import CHANGE_INFO
from resources.errors import ConfigurationError, EncoderMismatchError, PartitionNotMaterialisedError
from resources.previews import raster_png
from resources.regions import FIRST_YEAR, PIXEL_AREA_HA, PartitionId, last_year
from resources.scenes.sentinel import tessera_units_to_db
from resources.storage.data_root import EmbeddingPartition, RawPartition, TesseraStorage
from tessera_assets.lineage import RAW_INPUTS
from tessera_assets.metadata import explorer_url, preview_metadata
from tessera_assets.partitions import year_and_region, year_region_partitions


def reference_year(year: int) -> int:
    """The year a partition's change is measured from: TESSERA_CHANGE_REFERENCE_YEAR, else the year
    before (also for the reference year's own partition, which cannot be compared with itself)."""
    fixed = os.environ.get("TESSERA_CHANGE_REFERENCE_YEAR")
    if fixed and not fixed.isdigit():
        raise ConfigurationError(f"TESSERA_CHANGE_REFERENCE_YEAR must be a year such as 2020, not {fixed!r}")
    return int(fixed) if fixed and int(fixed) != year else year - 1


def _to_reference() -> MultiPartitionMapping:
    """Each (year, region) reads its own partition and its reference year's, as declared lineage."""
    years = range(FIRST_YEAR, last_year() + 1)
    readers: dict[str, set[str]] = {str(y): {str(y)} for y in years}
    for year in years:
        if reference_year(year) in years:
            readers[str(reference_year(year))].add(str(year))
    with warnings.catch_warnings():  # multi-partition mappings are beta in Dagster 1.13: known, not the user's concern
        warnings.simplefilter("ignore", BetaWarning)
        return MultiPartitionMapping({
            "year": DimensionPartitionMapping("year", StaticPartitionMapping(readers)),
            "region": DimensionPartitionMapping("region", IdentityPartitionMapping()),
        })


class ChangeConfig(Config):
    false_alarm_rate: float = Field(1e-3, gt=0, lt=0.5, description="share of stable pixels the threshold lets through")
    min_patch_ha: float = Field(0.05, ge=0, description="changed patches smaller than this are dropped")
    neighbourhood_px: int = Field(5, ge=1, le=15, description=(
        "the score is the median over this many pixels a side (1: each pixel alone)"))


TYPICAL_CHANGE_SAMPLE = 200_000  # pixels whose change vectors set the region's typical change


def _change_blocks(before: EmbeddingPartition, after: EmbeddingPartition):
    """(window, valid mask, change vectors of the valid pixels) of each block of the grid."""
    for window in after.grid.blocks(512):
        (qa, sa), (qb, sb) = before.read(window), after.read(window)
        valid = np.isfinite(sa) & np.isfinite(sb)
        yield window, valid, change_vectors(dequantise(qa[valid], sa[valid]), dequantise(qb[valid], sb[valid]))


def change_magnitude(before: EmbeddingPartition, after: EmbeddingPartition) -> np.ndarray:
    """Every pixel's change magnitude against the region's typical change (NaN where either year has
    no embedding). A region of up to TYPICAL_CHANGE_SAMPLE pixels is read once, every pixel in the
    typical change. A larger one is read twice, so that beside the score raster only one block's
    change vectors and the sample are held: the first pass draws about TYPICAL_CHANGE_SAMPLE pixels
    over the region (each block's own seeded draw: the same pixels on every run), the second scores
    every pixel against them."""
    grid = after.grid
    share = TYPICAL_CHANGE_SAMPLE / max(1, grid.width * grid.height)
    if share >= 1:
        blocks = list(_change_blocks(before, after))
        typical = TypicalChange.of(np.concatenate([change for _, _, change in blocks]))
    else:
        sample = []
        for window, valid, change in _change_blocks(before, after):
            draw = np.random.default_rng([int(window.row_off), int(window.col_off)]).random(len(change)) < share
            sample.append(change[draw])
        typical = TypicalChange.of(np.concatenate(sample))
        blocks = _change_blocks(before, after)
    magnitude = np.full(grid.shape, np.nan, np.float32)
    for window, valid, change in blocks:
        block = np.full(valid.shape, np.nan, np.float32)
        block[valid] = typical.magnitude(change)
        magnitude[window.row_off:window.row_off + window.height, window.col_off:window.col_off + window.width] = block
    return magnitude


def annual_medians(s2: RawPartition, s1: RawPartition) -> tuple[np.ndarray, np.ndarray]:
    """Median NDVI of the clear S2 observations and median VV (dB) of the S1 ones, per pixel."""
    grid = s2.grid
    ndvi, vv = np.full(grid.shape, np.nan, np.float32), np.full(grid.shape, np.nan, np.float32)
    for window in grid.blocks(256):
        rows = slice(window.row_off, window.row_off + window.height)
        cols = slice(window.col_off, window.col_off + window.width)
        values, valid = s2.read_block(window)
        red, nir = values[:, 0].astype(np.float32), values[:, 3].astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a pixel never seen stays NaN
            index = np.where(valid, (nir - red) / (nir + red), np.nan)
            ndvi[rows, cols] = np.nanmedian(index, axis=0) if len(index) else np.nan
            radar, seen = s1.read_block(window)
            db = np.where(seen, tessera_units_to_db(radar[:, 0]), np.nan)
            vv[rows, cols] = np.nanmedian(db, axis=0) if len(radar) else np.nan
    return ndvi, vv


def _baseline_score(storage: TesseraStorage, years: tuple[int, int], region: str, rate: float,
                    neighbourhood: int) -> tuple[np.ndarray, float] | str:
    """The baseline's calibrated score and threshold, or why there is none."""
    try:
        pairs = [annual_medians(storage.open_raw("s2", y, region), storage.open_raw("s1", y, region)) for y in years]
    except PartitionNotMaterialisedError:  # embeddings imported from official tiles: no raw inputs
        return "no raw partitions"
    scores, threshold = [], float("nan")
    for name, before, after in zip(("NDVI", "VV"), *pairs):
        difference = neighbourhood_median(np.abs(after - before), neighbourhood)
        try:
            calibration = calibrate(difference, rate / 2)  # two features: half the rate each
        except CalibrationError as exc:
            return f"{name}: {exc}"
        scores.append(calibration.score(difference))
        threshold = calibration.threshold
    return combined_baseline_score(*scores), threshold


def _patch_features(patch_ids: np.ndarray, score: np.ndarray, grid) -> list[dict]:
    """Each changed patch as one GeoJSON (multi)polygon in lon/lat with its area and scores."""
    from scipy import ndimage

    geometries = grid.polygons(patch_ids)
    index = list(geometries)
    sizes = np.bincount(patch_ids.ravel(), minlength=max(index, default=0) + 1)
    means, highs = ndimage.mean(score, patch_ids, index), ndimage.maximum(score, patch_ids, index)
    features = []
    for patch, mean, high in zip(index, np.atleast_1d(means), np.atleast_1d(highs)):
        features.append({"type": "Feature", "geometry": geometries[patch],
                         "properties": {"patch": patch, "area_ha": round(float(sizes[patch]) * PIXEL_AREA_HA, 2),
                                        "mean_score": round(float(mean), 2), "max_score": round(float(high), 2)}})
    return features


def _write(path, grid, data: np.ndarray, dtype: str, nodata, description: str) -> None:
    with rasterio.open(path, "w", **grid.geotiff_profile(count=1, dtype=dtype, nodata=nodata)) as dst:
        dst.write(data.astype(dtype), 1)
        dst.set_band_description(1, description)


@asset(partitions_def=year_region_partitions,
       deps=[AssetDep("embeddings", partition_mapping=_to_reference()),
             *(AssetDep(raw, partition_mapping=_to_reference()) for raw in RAW_INPUTS)],
       group_name="change", kinds={"geotiff", "geojson"}, code_version="change-2")
def change_map(context: AssetExecutionContext, config: ChangeConfig, storage: TesseraStorage) -> MaterializeResult:
    """Calibrated change score of every pixel since the reference year (`score.tif`), the changed
    pixels (`changed.tif`), changed patches (`patches.geojson`), and the baseline's changed pixels."""
    year, region = year_and_region(context)
    before_year = reference_year(year)
    if before_year < FIRST_YEAR:
        raise PartitionNotMaterialisedError(
            f"change_map {PartitionId(year, region)} measures change since {before_year}, before the first year "
            f"of the partitions ({FIRST_YEAR}): there is nothing to compare it with")
    try:
        before = storage.open_embeddings(before_year, region)
    except PartitionNotMaterialisedError as exc:
        raise PartitionNotMaterialisedError(
            f"change_map {PartitionId(year, region)} measures change since {before_year}, whose embeddings are not "
            f"materialised: materialise embeddings {PartitionId(before_year, region)} first") from exc
    after = storage.open_embeddings(year, region)
    if before.encoder_id != after.encoder_id:
        raise EncoderMismatchError(
            f"{PartitionId(before_year, region)} was embedded by {before.encoder_id} and {PartitionId(year, region)} by "
            f"{after.encoder_id}: change is only meaningful between embeddings of one encoder; re-embed one of them")
    grid = after.grid
    if before.grid != grid:
        raise PartitionNotMaterialisedError(
            f"{PartitionId(before_year, region)} and {PartitionId(year, region)} lie on different grids (was the "
            f"region's bbox changed?): re-materialise the embeddings of {before_year}")
    magnitude = neighbourhood_median(change_magnitude(before, after), config.neighbourhood_px)
    calibration: Calibration = calibrate(magnitude, config.false_alarm_rate)
    score = calibration.score(magnitude)
    min_pixels = max(1, int(round(config.min_patch_ha / PIXEL_AREA_HA)))
    patch_ids, count = flagged_patches(score, calibration.threshold, min_pixels)
    baseline = _baseline_score(storage, (before_year, year), region, config.false_alarm_rate, config.neighbourhood_px)
    parts = ("change", str(year), region)
    valid = np.isfinite(score)
    metadata: dict = {}
    info = {"year": year, "reference_year": before_year, "threshold_score": calibration.threshold,
            "false_alarm_rate": config.false_alarm_rate, "log_magnitude_centre": calibration.centre,
            "log_magnitude_spread": calibration.spread, "encoder_id": after.encoder_id}
    with storage.publish(*parts) as tmp:
        _write(tmp / "score.tif", grid, score, "float32", float("nan"), f"change score since {before_year} (robust z)")
        _write(tmp / "changed.tif", grid, np.where(valid, patch_ids > 0, 255), "uint8", 255, f"changed since {before_year}")
        _write(tmp / "patch_ids.tif", grid, patch_ids, "int32", None, "changed patch id (patches.geojson), 0 none")
        features = _patch_features(patch_ids, score, grid)
        (tmp / "patches.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        (tmp / CHANGE_INFO).write_text(json.dumps(info, indent=1))
        if isinstance(baseline, str):
            metadata["baseline"] = f"not made: {baseline}"
        else:
            base_ids, base_count = flagged_patches(baseline[0], baseline[1], min_pixels)
            _write(tmp / "baseline_changed.tif", grid, np.where(np.isfinite(baseline[0]), base_ids > 0, 255), "uint8", 255,
                   f"changed since {before_year}, median NDVI and VV baseline")
            metadata |= {"baseline_changed_area_ha": round(float((base_ids > 0).sum()) * PIXEL_AREA_HA, 2),
                         "baseline_patches": base_count}
        png = raster_png(tmp / "score.tif", tmp / "score.png", "inferno", "change score (robust z)", 0.0,
                         max(2 * calibration.threshold, 1.0), outline=patch_ids > 0)
        previews = preview_metadata("map", png, parts, f"change since {before_year}")
    return MaterializeResult(metadata={
        "reference_year": before_year, "changed_area_ha": round(float((patch_ids > 0).sum()) * PIXEL_AREA_HA, 2),
        "changed_share": round(float((patch_ids > 0).sum()) / max(1, int(valid.sum())), 5), "patches": count,
        "threshold_score": round(calibration.threshold, 3), "false_alarm_rate": config.false_alarm_rate,
        "median_change_magnitude": round(float(np.exp(calibration.centre)), 4), "min_patch_ha": config.min_patch_ha,
        "neighbourhood_px": config.neighbourhood_px,
        "encoder_id": after.encoder_id, **metadata, **previews,
        "path": MetadataValue.path(storage.location(*parts)), "explorer": MetadataValue.url(explorer_url(year, region)),
    })
