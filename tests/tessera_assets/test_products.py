"""The products as xarray: on the partition's grid, lazily read, and equal to what was stored."""

from __future__ import annotations

import numpy as np
import pytest

from model.quantise import dequantise
from resources.errors import PartitionNotMaterialisedError
from conftest import TINY_REGION, TINY_YEAR

pytest.importorskip("rioxarray")


def test_embeddings_open_lazily_on_their_grid(embedded_env):
    from tessera_assets.products import open_embeddings

    env, _, _, _ = embedded_env
    storage = env.resources["storage"]
    root = str(env.root / "data")
    stored = storage.open_embeddings(TINY_YEAR, TINY_REGION)
    vectors, scales = stored.read()
    ds = open_embeddings(TINY_YEAR, TINY_REGION, root=root)
    assert ds.embeddings.dims == ("dim", "y", "x") and ds.embeddings.dtype == np.int8
    assert ds.embeddings.chunks is not None  # dask: nothing read until computed
    assert ds.rio.crs == stored.grid.crs and ds.rio.transform() == stored.grid.transform
    assert np.array_equal(ds.embeddings.values, np.moveaxis(vectors, -1, 0))
    assert np.array_equal(ds.scales.values, scales, equal_nan=True)
    assert ds.attrs["encoder_id"] == stored.encoder_id
    floats = open_embeddings(TINY_YEAR, TINY_REGION, root=root, dequantise=True).embeddings
    assert floats.dtype == np.float32 and floats.dims == ("dim", "y", "x")
    expected = np.moveaxis(dequantise(vectors, scales), -1, 0)
    assert np.allclose(floats.values, expected, equal_nan=True)
    assert np.isnan(floats.values[:, ~np.isfinite(scales)]).all()


def test_a_missing_partition_is_named(embedded_env):
    from tessera_assets.products import open_embeddings, open_value_map

    env, _, _, _ = embedded_env
    with pytest.raises(PartitionNotMaterialisedError, match="no embeddings for year 1999, region 'nowhere'"):
        open_embeddings(1999, "nowhere", root=str(env.root / "data"))
    with pytest.raises(PartitionNotMaterialisedError, match="no value_map"):
        open_value_map(1999, TINY_REGION, root=str(env.root / "data"))


def test_a_similarity_map_from_the_api_is_the_similarity_of_the_stored_vectors(embedded_env):
    from model.quantise import cosine_to
    from tessera_assets.products import similarity_to

    env, _, _, _ = embedded_env
    stored = env.resources["storage"].open_embeddings(TINY_YEAR, TINY_REGION)
    vectors, scales = stored.read()
    grid = stored.grid
    row, col = grid.height // 2, grid.width // 2
    from rasterio.transform import xy
    from rasterio.warp import transform

    x, y = xy(grid.transform, row, col)
    (lon,), (lat,) = transform(grid.crs, "EPSG:4326", [x], [y])
    sim = similarity_to(lon, lat, TINY_YEAR, TINY_REGION, root=str(env.root / "data"))
    assert sim.dims == ("y", "x") and sim.chunks is not None
    expected = cosine_to(vectors, scales, dequantise(vectors[row, col], scales[row, col]))
    assert np.allclose(sim.values, expected, atol=1e-5, equal_nan=True)
    assert sim.values[row, col] == pytest.approx(1.0, abs=1e-5)
