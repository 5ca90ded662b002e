"""encoder_checkpoint and embeddings materialised on the tiny demo partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from dagster import materialize

from conftest import TINY_REGION, TINY_YEAR
from model.encoder import TesseraEncoder
from model.quantise import dequantise
from resources.compute import ComputeDevice
from resources.storage.data_root import TesseraStorage
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
    assert meta["preset"] == "tessera-demo" and meta["family"] == "v2" and meta["steps"] == 40 and meta["partitions"] == 2
    assert meta["loss_curve"].startswith("![loss curve](data:image/png;base64,")
    storage = env.resources["storage"]
    encoder = storage.load_encoder()
    assert encoder.identity.id == meta["encoder_id"] == storage.current_encoder_id()
    assert encoder.metadata["partitions"] == [f"{TINY_REGION}|{TINY_YEAR - 1}", f"{TINY_REGION}|{TINY_YEAR}"]
    assert encoder.metadata["matryoshka_dims"] == [16, 32, 64, 128]  # v2: every prefix trained to work alone
    event = trained.get_asset_materialization_events()[0].event_specific_data.materialization
    assert event.tags["dagster/data_version"] == meta["encoder_id"]


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
    assert meta["encoder_id"] == partition.encoder_id == storage.current_encoder_id()
    assert meta["sampling"] == "all" and meta["dimensions"] == 128
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
    folder = env.resources["storage"].path("embeddings", str(TINY_YEAR), TINY_REGION)
    before = {name: (folder / name).read_bytes() for name in ("embeddings.tif", "scales.tif")}
    key = year_region_key(TINY_YEAR, TINY_REGION)
    assert materialize([embeddings], partition_key=key, instance=instance, resources=env.resources).success
    assert {name: (folder / name).read_bytes() for name in before} == before


def test_blocks_read_ahead_on_several_threads_give_the_same_bytes(embedded):
    env, instance, _, _ = embedded
    folder = env.resources["storage"].path("embeddings", str(TINY_YEAR), TINY_REGION)
    key = year_region_key(TINY_YEAR, TINY_REGION)
    written = []
    for readers in (1, 3):
        resources = dict(env.resources, compute=ComputeDevice(block_size=16, readers=readers))  # 9 blocks
        assert materialize([embeddings], partition_key=key, instance=instance, resources=resources).success
        written.append({name: (folder / name).read_bytes() for name in ("embeddings.tif", "scales.tif")})
    assert written[0] == written[1]
    assert materialize([embeddings], partition_key=key, instance=instance, resources=env.resources).success


def test_v1_0_random_sampling_is_seeded_and_differs_from_evenly_spaced(embedded):
    env, instance, _, _ = embedded
    storage = env.resources["storage"]
    key = year_region_key(TINY_YEAR, TINY_REGION)
    small = TesseraEncoder.from_preset("tessera-small")
    storage.keep_encoder(small)  # kept, not made current
    v1 = small.identity.id

    def run(**config):
        run_config = {"ops": {"embeddings": {"config": {"encoder_id": v1, **config}}}}
        result = materialize([embeddings], partition_key=key, instance=instance, resources=env.resources,
                             run_config=run_config)
        assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()}["reproducible"]
        return storage.open_embeddings(TINY_YEAR, TINY_REGION)

    evenly = run()
    assert evenly.encoder_id == v1 and evenly.encoder["sampling"] == "evenly-spaced"
    q_even, _ = evenly.read()
    q_random, _ = run(sampling="random", seed=3).read()
    assert not np.array_equal(q_even, q_random)
    refused = materialize([embeddings], partition_key=key, instance=instance, resources=env.resources,
                          run_config={"ops": {"embeddings": {"config": {"sampling": "random"}}}}, raise_on_error=False)
    message = refused.get_step_failure_events()[0].event_specific_data.error.cause.message
    assert "applies to v1.0 weights only" in message
    assert materialize([embeddings], partition_key=key, instance=instance, resources=env.resources).success


def test_matryoshka_prefix_is_stored_alone(embedded):
    env, instance, _, _ = embedded
    storage = env.resources["storage"]
    key = year_region_key(TINY_YEAR, TINY_REGION)
    full_q, full_scales = storage.open_embeddings(TINY_YEAR, TINY_REGION).read()
    config = {"ops": {"embeddings": {"config": {"dimensions": 32}}}}
    assert materialize([embeddings], partition_key=key, instance=instance, resources=env.resources,
                       run_config=config).success
    prefix = storage.open_embeddings(TINY_YEAR, TINY_REGION)
    q, scales = prefix.read()
    assert prefix.dim == 32 and prefix.encoder["dimensions"] == 32
    valid = np.isfinite(scales)
    full = dequantise(full_q[valid], full_scales[valid])[:, :32]
    short = dequantise(q[valid], scales[valid])
    assert (np.abs(short - full) <= full_scales[valid, None] + scales[valid, None]).all()
    assert (np.abs(q[valid]).max(axis=1) == 127).all()  # quantised over the prefix's own range
    small = TesseraEncoder.from_preset("tessera-small")
    storage.keep_encoder(small)
    v1 = small.identity.id
    config = {"ops": {"embeddings": {"config": {"dimensions": 32, "encoder_id": v1}}}}
    refused = materialize([embeddings], partition_key=key, instance=instance, resources=env.resources,
                          run_config=config, raise_on_error=False)
    assert "needs a Matryoshka-trained v2 encoder" in \
        refused.get_step_failure_events()[0].event_specific_data.error.cause.message
    assert materialize([embeddings], partition_key=key, instance=instance, resources=env.resources).success


def test_checkpoint_path_loads_instead_of_training(embedded, tmp_path):
    env, instance, _, _ = embedded
    path = TesseraEncoder.from_preset("tessera-small").save(tmp_path / "mine.pt", training={"note": "test"})
    config = {"ops": {"encoder_checkpoint": {"config": {"checkpoint_path": str(path)}}}}
    resources = dict(env.resources, storage=TesseraStorage(root=str(tmp_path / "data")))  # keep the trained one
    result = materialize([encoder_checkpoint], instance=instance, resources=resources, run_config=config)
    meta = _metadata(result, "encoder_checkpoint")
    assert meta["source"] == str(path) and meta["family"] == "v1.0"
    assert resources["storage"].current_encoder_id() == meta["encoder_id"]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    config = {"ops": {"encoder_checkpoint": {"config": {"checkpoint_path": str(bad)}}}}
    failed = materialize([encoder_checkpoint], instance=instance, resources=resources, run_config=config,
                         raise_on_error=False)
    assert "cannot read checkpoint" in failed.get_step_failure_events()[0].event_specific_data.error.cause.message


def test_a_new_encoder_marks_embeddings_stale(embedded, tmp_path):
    """The encoder's identity is its data version: the UI marks partitions of another encoder stale."""
    from dagster import AssetKey
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from tessera_assets.raw.assets import s1_raw, s2_raw

    env, instance, _, _ = embedded
    storage = env.resources["storage"]
    current = storage.encoder_checkpoint(storage.current_encoder_id())
    other = TesseraEncoder.from_preset("tessera-demo").save(tmp_path / "other.pt")
    key = year_region_key(TINY_YEAR, TINY_REGION)

    def load(path) -> StaleStatus:
        config = {"ops": {"encoder_checkpoint": {"config": {"checkpoint_path": str(path)}}}}
        assert materialize([encoder_checkpoint], instance=instance, resources=env.resources, run_config=config).success
        resolver = get_stale_status_resolver(instance, [s2_raw, s1_raw, encoder_checkpoint, embeddings])
        return resolver.get_status(AssetKey("embeddings"), key)

    assert load(current) == StaleStatus.FRESH  # the same weights again: the same identity
    assert load(other) == StaleStatus.STALE
    assert TesseraEncoder.from_checkpoint(other).identity.id in storage.kept_encoders()
    assert current.exists(), "the earlier encoder is kept"
    assert load(current) == StaleStatus.FRESH


def test_raw_partitions_feed_the_family_call(embedded):
    """A stored v2 partition equals `embed_series` on the raw files read directly: the S2 clear mask
    and the two S1 orbit directions reach the encoder as the reference call takes them."""
    env, _, _, _ = embedded
    storage = env.resources["storage"]
    s2, s1 = storage.open_raw("s2", TINY_YEAR, TINY_REGION), storage.open_raw("s1", TINY_YEAR, TINY_REGION)
    window = s2.grid.blocks(24)[0]
    s2_values, s2_clear = s2.read_block(window)
    s1_values, _ = s1.read_block(window)
    orbits = np.array([o["orbit"] for o in s1.observations])
    assert set(orbits) == {"ascending", "descending"}

    def per_pixel(values):  # (T, C, h, w) -> (N, T, C)
        t, c = values.shape[:2]
        return values.reshape(t, c, -1).transpose(2, 0, 1)

    encoder = storage.load_encoder()
    expected = encoder.embed_series(
        per_pixel(s2_values), s2.doy, s2_clear.reshape(len(s2.doy), -1).T,
        per_pixel(s1_values[orbits == "ascending"]), s1.doy[orbits == "ascending"],
        per_pixel(s1_values[orbits == "descending"]), s1.doy[orbits == "descending"])
    q, scales = storage.open_embeddings(TINY_YEAR, TINY_REGION).read(window)
    stored = dequantise(q.reshape(-1, q.shape[-1]), scales.ravel())
    assert np.array_equal(np.isnan(stored).all(1), np.isnan(expected).all(1))
    ok = np.isfinite(scales.ravel())
    assert np.abs(stored[ok] - expected[ok]).max() <= scales.ravel()[ok].max() / 2 + 1e-5


def test_sources_without_orbit_direction_are_refused_by_v1_1_and_v2():
    from model.series import PixelSeries

    n, t = 3, 5
    series = PixelSeries(np.ones((n, t, 10), np.uint16), np.ones((n, t), bool), np.tile(np.arange(1, t + 1), (n, 1)),
                         np.ones((n, t, 2), np.int16), np.ones((n, t), bool), np.tile(np.arange(1, t + 1), (n, 1)))
    from model.inference import embed_series

    with pytest.raises(ValueError, match="no orbit direction"):
        embed_series(TesseraEncoder.from_preset("tessera-demo"), series)
    assert np.isfinite(embed_series(TesseraEncoder.from_preset("tessera-small"), series)).all()  # v1.0 merges them


def test_a_pool_balanced_over_kinds_of_land_takes_its_share_of_each_partition(embedded, tmp_path):
    """`pool_clusters`: each partition's pixels drawn from four times as many candidates, evenly over
    k-means groups, still `pixels_per_partition` of them (the encoder goes to a storage of its own)."""
    env, instance, _, _ = embedded
    root = tmp_path / "data"
    root.mkdir()
    (root / "raw").symlink_to(Path(env.resources["storage"].root) / "raw")
    resources = dict(env.resources, storage=TesseraStorage(root=str(root)))
    config = {"ops": {"encoder_checkpoint": {"config": {
        "steps": 2, "batch_size": 32, "pixels_per_partition": 150, "pool_clusters": 4}}}}
    meta = _metadata(materialize([encoder_checkpoint], instance=instance, resources=resources, run_config=config),
                     "encoder_checkpoint")
    assert meta["partitions"] == 2 and meta["pixels"] == 2 * 150 and meta["steps"] == 2
