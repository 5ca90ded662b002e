"""s2_raw and s1_raw: the Sentinel time series of a (year, region) on the region's 10 m grid."""

import resource
import time
from pathlib import Path

import numpy as np
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    RetryRequested,
    asset,
)

from resources.scenes.demo_catalog import ensure_demo_catalog
from resources.errors import CatalogError, NoScenesFoundError, SceneReadFailuresError
from resources.previews import s1_composite, s2_true_colour
from resources.scenes.ingest import ingest
from resources.regions import RegionCatalog
from resources.scenes.stac import Sensor, StacCatalog
from resources.storage.data_root import RawPartition, TesseraStorage
from tessera_assets.metadata import preview_metadata
from tessera_assets.partitions import year_and_region, year_region_partitions

# Most of the region must have this many valid observations for an embedding worth having.
MIN_OBSERVATIONS = {"s2": 5, "s1": 5}
MIN_COVERED_FRACTION = 0.9
# Physical ranges of valid values: reflectance x 1e4 up to 2.0 (bright clouds and snow stay below);
# S1 units are 20*log10 of power gamma0, so +10 dB of backscatter is units 14000 and the noise floor
# clips to 0. Values beyond are errors in the source or in our scaling.
PHYSICAL_RANGE = {"s2": (0, 20000), "s1": (0, 14000)}
MAX_OUT_OF_RANGE_FRACTION = 0.001


def demo_catalog_folder(catalog: StacCatalog) -> Path:
    """Where the demo generator writes: the folder of the catalog's catalog.json, on local disk."""
    root = catalog.static_root()
    if root is None or "://" in root:
        raise CatalogError(f"the demo provider reads a static catalog on local disk, not {catalog.url}")
    return Path(root).parent


def units_metadata(units: dict[str, str]) -> dict[str, int]:
    """S1: how many scenes came in linear power and how many in dB (converted)."""
    if not units:
        return {}
    return {"s1_scenes_linear": sum(u == "linear" for u in units.values()),
            "s1_scenes_db": sum(u == "db" for u in units.values())}


# Raised when what a raw partition holds changes for the same scenes (masks, units, mosaicking), so
# the UI marks partitions written by older code as stale.
RAW_CODE_VERSION = "raw-4"


def _checks(sensor: Sensor) -> list[AssetCheckSpec]:
    asset_key = f"{sensor}_raw"
    return [
        AssetCheckSpec("enough_observations", asset=asset_key,
                       description=f"at least {MIN_OBSERVATIONS[sensor]} valid observations over "
                                   f"{MIN_COVERED_FRACTION:.0%} of the region"),
        AssetCheckSpec("physical_range", asset=asset_key, blocking=True,  # implausible values must not be embedded
                       description=f"valid values within {PHYSICAL_RANGE[sensor]}"
                       + (", and delivered backscatter plausible for its unit (linear or dB)" if sensor == "s1" else "")),
    ]


def materialize_raw(sensor: Sensor, context: AssetExecutionContext, storage: TesseraStorage,
                    regions: RegionCatalog, catalog: StacCatalog) -> MaterializeResult:
    """The partition, retried as a fresh step (`catalog.step_retries` times, minutes apart) when too
    many scenes could not be read: those failures are transient far more often than not (5xx,
    expired URLs); every other failure is final."""
    try:
        return _materialize_raw(sensor, context, storage, regions, catalog)
    except SceneReadFailuresError as exc:
        if context.retry_number >= catalog.step_retries:
            raise
        wait = catalog.step_retry_seconds * 2 ** context.retry_number
        context.log.warning(f"{exc}; retrying in {wait:.0f} s")
        raise RetryRequested(max_retries=catalog.step_retries, seconds_to_wait=wait) from exc


def _materialize_raw(sensor: Sensor, context: AssetExecutionContext, storage: TesseraStorage,
                     regions: RegionCatalog, catalog: StacCatalog) -> MaterializeResult:
    year, region_name = year_and_region(context)
    region = regions.get(region_name)
    grid = region.grid
    demo_regions = [r for r in regions.all() if r.demo]
    if catalog.provider == "demo":
        ensure_demo_catalog(demo_catalog_folder(catalog), demo_regions)
    started = time.perf_counter()
    found = catalog.search(sensor, region.bbox, year)
    collection = catalog.collection(sensor)
    context.log.info(f"{len(found.scenes)} {collection} scenes for {region_name} {year}, "
                     f"{len(found.rejected)} rejected; item layout {found.layout()}")
    if not found.scenes:
        reasons = "; ".join(f"{i}: {r}" for i, r in found.rejected[:5])
        raise NoScenesFoundError(
            f"no usable {collection} scenes for region {region_name!r} in {year} at {catalog.url}"
            + (f" ({len(found.rejected)} rejected: {reasons})" if found.rejected else "")
            + ("; the demo catalog covers only the demo regions: "
               + ", ".join(f"{r.name} ({', '.join(f'{v:.4f}' for v in r.bbox)})" for r in demo_regions)
               if catalog.provider == "demo" else "")
        )
    parts = ("raw", sensor, str(year), region_name)
    with storage.publish(*parts) as tmp:
        report = ingest(sensor, found.scenes, grid, tmp, progress=context.log.info, valid_range=PHYSICAL_RANGE[sensor],
                        workers=catalog.read_workers, sign=catalog.signer(), gdal_options=catalog.gdal_options(),
                        cloud_clear_below=catalog.cloud_clear_below)
        if len(report.lost) > catalog.max_lost_fraction * len(found.scenes):
            lost = "; ".join(f"{i}: {r}" for i, r in report.lost[:10])
            raise SceneReadFailuresError(
                f"{len(report.lost)} of {len(found.scenes)} {collection} scenes for {region_name} {year} could not be "
                f"read (more than max_lost_fraction {catalog.max_lost_fraction:.0%}; the partition is left as it "
                f"was): {lost}")
        partition = RawPartition(tmp)
        preview = (s2_true_colour if sensor == "s2" else s1_composite)(partition, tmp / "preview.png")
        previews = preview_metadata("preview", preview, parts, f"{sensor} composite")
        counts = partition.valid_count()
    need = MIN_OBSERVATIONS[sensor]
    covered = float((counts >= need).mean())
    skipped = found.rejected + report.skipped
    skipped_md = "\n".join(f"| {i} | {r} |" for i, r in skipped[:50])
    metadata = {
        "catalog_layout": found.layout(),  # which provider's asset names the items were read by
        "scenes_found": len(found.scenes) + len(found.rejected),
        "scenes_used": report.scenes_used,
        "scenes_skipped": len(skipped),
        "scenes_lost": len(report.lost),
        "skipped_reasons": MetadataValue.md("| scene | reason |\n|---|---|\n" + skipped_md) if skipped else "none",
        "observations": len(report.observations),
        "valid_obs_per_pixel_min": int(counts.min()),
        "valid_obs_per_pixel_median": float(np.median(counts)),
        "valid_obs_per_pixel_max": int(counts.max()),
        "coverage_any_valid": round(float((counts > 0).mean()), 4),
        f"coverage_at_least_{need}": round(covered, 4),
        "grid": f"{grid.crs.to_string()} {grid.width} x {grid.height} px at 10 m",
        "ingest_seconds": round(report.seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        **units_metadata(report.values.units),
        **({"s2_mask": catalog.s2_mask + (f" (clear below {catalog.cloud_clear_below:g})"
                                          if catalog.s2_mask == "cloud" else "")} if sensor == "s2" else {}),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "path": MetadataValue.path(storage.location(*parts)), **previews,
    }
    severity = AssetCheckSeverity.WARN
    return MaterializeResult(
        metadata=metadata,
        check_results=[
            AssetCheckResult(
                check_name="enough_observations", passed=covered >= MIN_COVERED_FRACTION, severity=severity,
                metadata={"covered_fraction": covered, "min_observations": need},
            ),
            AssetCheckResult(
                check_name="physical_range", severity=AssetCheckSeverity.ERROR,
                passed=max(report.values.outside_fraction, report.values.implausible_input_fraction)
                <= MAX_OUT_OF_RANGE_FRACTION,
                metadata={"out_of_range_fraction": report.values.outside_fraction, "values_checked": report.values.count,
                          "min_value": report.values.minimum, "max_value": report.values.maximum,
                          "implausible_input_fraction": report.values.implausible_input_fraction,
                          **units_metadata(report.values.units)},
            ),
        ],
    )


@asset(partitions_def=year_region_partitions, group_name="raw", check_specs=_checks("s2"),
       kinds={"python", "geotiff"}, code_version=RAW_CODE_VERSION)
def s2_raw(context: AssetExecutionContext, storage: TesseraStorage, regions: RegionCatalog,
           s2_catalog: StacCatalog) -> MaterializeResult:
    """Sentinel-2 L2A: 10 bands in TESSERA order, SCL-masked, offset removed, one GeoTIFF per date."""
    return materialize_raw("s2", context, storage, regions, s2_catalog)


@asset(partitions_def=year_region_partitions, group_name="raw", check_specs=_checks("s1"),
       kinds={"python", "geotiff"}, code_version=RAW_CODE_VERSION)
def s1_raw(context: AssetExecutionContext, storage: TesseraStorage, regions: RegionCatalog,
           s1_catalog: StacCatalog) -> MaterializeResult:
    """Sentinel-1 RTC VV/VH in TESSERA units, one GeoTIFF per date and orbit direction."""
    return materialize_raw("s1", context, storage, regions, s1_catalog)
