"""Every GeoTIFF the publish step lets out is a valid COG holding exactly what its writer wrote."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from resources.storage.cog import to_cog
from resources.storage.data_root import TesseraStorage

cogeo = pytest.importorskip("rio_cogeo.cogeo")


def _write(path, array: np.ndarray, **options) -> None:
    bands, height, width = array.shape
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=array.dtype.name,
                   crs=CRS.from_epsg(32631), transform=from_origin(300000, 5790000, 10, 10), tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate") | options
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
        dst.set_band_description(1, "first")


@pytest.mark.parametrize("dtype, bands, interleave", [("int8", 16, "pixel"), ("float32", 1, "band"),
                                                      ("uint16", 3, "pixel")])
def test_a_geotiff_becomes_a_cog_with_the_same_pixels(tmp_path, dtype, bands, interleave):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(bands, 700, 600)) * 50).astype(dtype)
    path = tmp_path / "product.tif"
    _write(path, array, interleave=interleave, **({"nodata": float("nan")} if dtype == "float32" else {}))
    assert not cogeo.cog_validate(str(path), strict=True)[0]  # a plain tiled GeoTIFF of this size is no COG
    to_cog(path)
    valid, errors, warnings = cogeo.cog_validate(str(path), strict=True)
    assert valid and not errors and not warnings
    with rasterio.open(path) as src:
        assert np.array_equal(src.read(), array, equal_nan=True)
        assert src.overviews(1) == [2, 4] and src.descriptions[0] == "first"  # down to under one 256 px tile
        assert src.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == interleave.upper()
        # sampled overviews: every overview value is a stored value, never an average of several
        overview = src.read(1, out_shape=(350, 300))
    assert np.isin(overview, array[0]).all()


def test_a_valid_data_mask_survives(tmp_path):
    array = np.arange(300 * 300, dtype=np.uint16).reshape(1, 300, 300)
    path = tmp_path / "obs.tif"
    _write(path, array)
    with rasterio.open(path, "r+") as dst:
        mask = np.zeros((300, 300), np.uint8)
        mask[50:200, 20:280] = 255
        dst.write_mask(mask)
    to_cog(path)
    assert cogeo.cog_validate(str(path), strict=True)[0]
    with rasterio.open(path) as src:
        assert np.array_equal(src.read_masks(1) > 0, mask > 0)


def test_published_partitions_hold_cogs_and_a_failed_write_publishes_nothing(tmp_path):
    storage = TesseraStorage(root=str(tmp_path / "data"))
    with storage.publish("value_map", 2022, "demo") as tmp:
        _write(tmp / "values.tif", np.ones((1, 600, 600), np.float32))
    published = storage.path("value_map", "2022", "demo", "values.tif")
    assert cogeo.cog_validate(str(published), strict=True)[0]
    with pytest.raises(RuntimeError):
        with storage.publish("value_map", 2022, "demo") as tmp:
            _write(tmp / "values.tif", np.zeros((1, 600, 600), np.float32))
            raise RuntimeError("the writer failed")
    with rasterio.open(published) as src:
        assert src.read(1).min() == 1  # the old partition stays whole
