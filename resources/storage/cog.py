"""Every GeoTIFF product as a Cloud-Optimised GeoTIFF, so QGIS, GDAL and tile servers stream it
from an object store by range requests instead of downloading it.

Writers keep writing ordinary tiled GeoTIFFs block by block (GDAL's COG driver can only copy a
finished raster, never write one window at a time); the publish step rewrites each one with that
driver before the partition becomes visible (`TesseraStorage.publish`), so no product is ever
published in another layout. The rewrite keeps what the writer chose (data type, band
descriptions, nodata, the valid-data mask, compression predictor and pixel interleave) and adds
internal overviews, ordered ahead of the full-resolution tiles as the COG layout requires.

Overviews are sampled, never averaged: an overview pixel of an embedding is then a real stored
vector with its own per-pixel scale, a class map's overview holds only real classes, and the
scales and vectors of one partition stay paired at every level. GDAL 3.10 samples the overviews of
a pixel-interleaved source one band at a time, decompressing every band for each (a 267 x 267 px,
128-band embeddings partition took 3.2-5.0 s); from a band-interleaved copy the same COG takes 0.3 s,
so many-band sources go through one, uncompressed, first.
"""

from __future__ import annotations

import os
from pathlib import Path

import rasterio
import rasterio.shutil

BLOCK = 256  # the grid's tile size (RegionGrid.geotiff_profile), kept in the COG


def cog_options(structure: dict[str, str]) -> dict[str, str]:
    """The COG creation options that keep a GeoTIFF's own layout choices (its IMAGE_STRUCTURE)."""
    options = {"BLOCKSIZE": str(BLOCK), "COMPRESS": structure.get("COMPRESSION", "DEFLATE"),
               "INTERLEAVE": structure.get("INTERLEAVE", "PIXEL"),
               "OVERVIEWS": "AUTO", "OVERVIEW_RESAMPLING": "NEAREST", "RESAMPLING": "NEAREST",
               "BIGTIFF": "IF_SAFER"}
    if "PREDICTOR" in structure:
        options["PREDICTOR"] = structure["PREDICTOR"]
    return options


def to_cog(path: Path) -> None:
    """Rewrite one GeoTIFF in place as a COG (through a hidden sibling, then one rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}-cog{path.suffix}")
    by_band = path.with_name(f".{path.stem}-bands{path.suffix}")
    with rasterio.open(path) as src:
        structure, bands = src.tags(ns="IMAGE_STRUCTURE"), src.count
    if structure.get("LAYOUT") == "COG":  # already one (a partition republished with a file added)
        return
    try:
        source = path
        if bands > 1 and structure.get("INTERLEAVE", "PIXEL") == "PIXEL":  # module doc: sampled overviews
            rasterio.shutil.copy(str(path), str(by_band), driver="GTiff", INTERLEAVE="BAND", TILED="YES",
                                 BLOCKXSIZE=str(BLOCK), BLOCKYSIZE=str(BLOCK), BIGTIFF="IF_SAFER")
            source = by_band
        rasterio.shutil.copy(str(source), str(tmp), driver="COG", **cog_options(structure))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        by_band.unlink(missing_ok=True)


def cogs_in(folder: Path) -> int:
    """Every GeoTIFF under `folder` rewritten as a COG; returns how many."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".tif", ".tiff") and p.is_file()
                   and not p.name.startswith("."))
    for path in paths:
        to_cog(path)
    return len(paths)
