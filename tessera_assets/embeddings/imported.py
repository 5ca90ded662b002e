"""embeddings[year, region] read from official TESSERA tiles instead of computed.

The asset keeps the key `embeddings`, so the table, search, few-shot and maps downstream are the same
whichever source made a partition; only its lineage differs (the `geotessera_tiles` source instead of
the raw partitions and the encoder). Which one a code location holds is the deployment's choice
(`TESSERA_EMBEDDINGS_TILES`)."""

import json
import time

from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, asset

from resources.official.source import OfficialTiles
from resources.previews import embedding_preview
from resources.regions import RegionCatalog
from resources.storage.data_root import ENCODER_FILE, EmbeddingPartition, TesseraStorage
from tessera_assets.embeddings.assets import READBACK_CHECKS, readback_checks
from tessera_assets.metadata import explorer_url, preview_metadata
from tessera_assets.partitions import year_and_region, year_region_partitions

geotessera_tiles = AssetSpec(
    "geotessera_tiles", group_name="embeddings", kinds={"numpy"},
    description="Official TESSERA embedding tiles on local disk (geotessera's embeddings_dir): int8 vectors, "
                "float32 scales and a landmask GeoTIFF per 0.1 degree tile. Downloaded outside the platform.")


@asset(name="embeddings", partitions_def=year_region_partitions, deps=[geotessera_tiles], group_name="embeddings",
       check_specs=READBACK_CHECKS, kinds={"numpy", "geotiff"}, code_version="imported-1")
def imported_embeddings(context: AssetExecutionContext, storage: TesseraStorage, regions: RegionCatalog,
                        tiles: OfficialTiles) -> MaterializeResult:
    """The official vectors of every pixel of the region, on its grid, from the tiles that cover it
    (nearest pixel centre, as geotessera samples); water and tiles not on disk stay no data."""
    year, region_name = year_and_region(context)
    region = regions.get(region_name)
    source, dataset = tiles.open()
    started = time.perf_counter()
    parts = ("embeddings", str(year), region_name)
    with storage.publish(*parts) as tmp:
        report = source.import_into(year, region.grid, region.bbox, tmp, progress=context.log.info)
        (tmp / ENCODER_FILE).write_text(json.dumps(dataset.identity() | {
            "dimensions": report.dim, "source": f"official embeddings at {source.root}"}, indent=1))
        seconds = time.perf_counter() - started
        previews = preview_metadata("pca_preview", embedding_preview(tmp, tmp / "preview.png"),
                                    parts, "PCA of embeddings")
        checks = readback_checks(EmbeddingPartition(tmp))
    used = "\n".join(f"| {name} | {', '.join(f'{k}: {v[:16]}' for k, v in digests.items())} |"
                     for name, digests in report.used.items())
    context.log.info(f"{report.filled} of {report.pixels} pixels from {', '.join(report.used)} in {seconds:.1f} s")
    return MaterializeResult(
        metadata={
            "source": MetadataValue.path(str(source.root)), "dataset_version": dataset.version,
            "dataset_variant": dataset.variant, "encoder_id": dataset.encoder_id, "dimensions": report.dim,
            "tiles_used": MetadataValue.md("| tile or zone | identity (sha256 of each file; a store's build) |\n|---|---|\n"
                                           + used),
            "tile_digests": MetadataValue.json(report.used),
            "tiles_missing": ", ".join(report.missing) or "none",
            "pixels": report.pixels, "pixels_with_data": report.filled,
            "no_data_fraction": round(1 - report.filled / max(report.pixels, 1), 4),
            "seconds": round(seconds, 2), "pixels_per_second": round(report.pixels / max(seconds, 1e-9)),
            "path": MetadataValue.path(storage.location(*parts)),
            "explorer": MetadataValue.url(explorer_url(year, region_name)), **previews,
        },
        check_results=checks,
    )
