"""encoder_checkpoint and embeddings materialised on the tiny demo partition."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from dagster import materialize

from conftest import TINY_REGION, TINY_YEAR
from model.encoder import TesseraEncoder
from model.quantise import dequantise
from resources.compute import ComputeDevice
from resources.storage import TesseraStorage
from tessera_assets.embeddings.assets import embeddings, encoder_checkpoint
from tessera_assets.partitions import year_region_key

@pytest.fixture(scope="module")
def embedded(embedded_env):
    return embedded_env


def _metadata(result, asset):
    for event in result.get_asset_materialization_events():
        m = event.event_specific_data.materialization
        if m.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in m.metadata.items()}
    raise KeyError(asset)


def test_encoder_checkpoint_is_pretrained_and_reported(embedded):
    env, _, trained, _ = embedded
    meta = _metadata(trained, "encoder_checkpoint")
    assert meta["preset"] == "tessera-small" and meta["steps"] == 40 and meta["partitions"] == 2
    assert meta["loss_curve"].startswith("![loss curve](data:image/png;base64,")
    encoder = TesseraEncoder.from_checkpoint(env.resources["storage"].model_path())
    assert encoder.metadata["partitions"] == [f"{TINY_REGION}|{TINY_YEAR - 1}", f"{TINY_REGION}|{TINY_YEAR}"]


def test_embeddings_are_georeferenced_int8_with_scales(embedded):
    env, _, _, result = embedded
    storage = env.resources["storage"]
    partition = storage.open_embeddings(TINY_YEAR, TINY_REGION)
    grid = env.resources["regions"].get(TINY_REGION).grid
    assert partition.grid == grid
    q, scales = partition.read()
    assert q.shape == (grid.height, grid.width, 128) and q.dtype == np.int8
    valid = np.isfinite(scales)
    assert valid.mean() > 0.95
    vectors = dequantise(q[valid], scales[valid])
    assert np.isfinite(vectors).all() and (scales[valid] > 0).all()
    assert (np.abs(q[valid]).max(axis=1) == 127).all()
    with rasterio.open(partition.folder / "embeddings.tif") as src:
        assert src.count == 128 and src.crs == grid.crs
    meta = _metadata(result, "embeddings")
    assert meta["pixels"] == grid.width * grid.height
    assert meta["pixels_embedded"] == int(valid.sum())
    assert meta["pca_preview"].startswith("![PCA of embeddings](data:image/png;base64,")
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"finite_where_valid": True, "positive_scales": True, "reproducible": True}


def test_pixels_without_data_have_no_embedding(embedded):
    env, _, _, _ = embedded
    storage = env.resources["storage"]
    s2 = storage.open_raw("s2", TINY_YEAR, TINY_REGION)
    counts = s2.valid_count()
    _, scales = storage.open_embeddings(TINY_YEAR, TINY_REGION).read()
    assert np.isnan(scales[counts == 0]).all()


def test_rematerialising_gives_identical_bytes(embedded):
    env, instance, _, _ = embedded
    folder = env.resources["storage"].embeddings_dir(TINY_YEAR, TINY_REGION)
    before = {name: (folder / name).read_bytes() for name in ("embeddings.tif", "scales.tif")}
    key = year_region_key(TINY_YEAR, TINY_REGION)
    assert materialize([embeddings], partition_key=key, instance=instance, resources=env.resources).success
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_blocks_read_ahead_on_several_threads_give_the_same_bytes(embedded):
    env, instance, _, _ = embedded
    folder = env.resources["storage"].embeddings_dir(TINY_YEAR, TINY_REGION)
    key = year_region_key(TINY_YEAR, TINY_REGION)
    written = []
    for readers in (1, 3):
        resources = dict(env.resources, compute=ComputeDevice(block_size=16, readers=readers))  # 9 blocks
        assert materialize([embeddings], partition_key=key, instance=instance, resources=resources).success
        written.append({name: (folder / name).read_bytes() for name in ("embeddings.tif", "scales.tif")})
    assert written[0] == written[1]
    assert materialize([embeddings], partition_key=key, instance=instance, resources=env.resources).success


def test_random_sampling_is_seeded_and_differs_from_deterministic(embedded):
    env, instance, _, _ = embedded
    storage = env.resources["storage"]
    q_det, _ = storage.open_embeddings(TINY_YEAR, TINY_REGION).read()
    key = year_region_key(TINY_YEAR, TINY_REGION)
    config = {"ops": {"embeddings": {"config": {"sampling": "random", "seed": 3}}}}
    result = materialize([embeddings], partition_key=key, instance=instance, resources=env.resources, run_config=config)
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()}["reproducible"]
    q_random, _ = storage.open_embeddings(TINY_YEAR, TINY_REGION).read()
    assert not np.array_equal(q_det, q_random)
    assert materialize([embeddings], partition_key=key, instance=instance, resources=env.resources).success


def test_checkpoint_path_loads_instead_of_training(embedded, tmp_path):
    env, instance, _, _ = embedded
    path = TesseraEncoder.from_preset("tessera-small").save(tmp_path / "mine.pt", training={"note": "test"})
    config = {"ops": {"encoder_checkpoint": {"config": {"checkpoint_path": str(path)}}}}
    resources = dict(env.resources, storage=TesseraStorage(root=str(tmp_path / "data")))  # keep the trained one
    result = materialize([encoder_checkpoint], instance=instance, resources=resources, run_config=config)
    assert _metadata(result, "encoder_checkpoint")["source"] == str(path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    config = {"ops": {"encoder_checkpoint": {"config": {"checkpoint_path": str(bad)}}}}
    failed = materialize([encoder_checkpoint], instance=instance, resources=resources, run_config=config,
                         raise_on_error=False)
    assert "cannot read checkpoint" in failed.get_step_failure_events()[0].event_specific_data.error.cause.message
