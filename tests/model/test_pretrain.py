"""A short pretraining run on the tiny demo partition: the loss falls, and training resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dagster import instance_for_test, materialize

from conftest import TINY_REGION, TINY_YEAR
from model.config import preset
from model.pretrain import PretrainConfig, barlow_twins_loss, cross_correlation, pretrain
from resources.storage.pixel_series import sample_pixels
from tessera_assets.partitions import year_region_key
from tessera_assets.raw.assets import s1_raw, s2_raw


@pytest.fixture(scope="module")
def pool(demo_env):
    storage = demo_env.resources["storage"]
    if storage.folder("raw", "s2", TINY_YEAR, TINY_REGION) is None:
        with instance_for_test() as instance:
            instance.add_dynamic_partitions("region", [TINY_REGION])
            materialize([s2_raw, s1_raw], partition_key=year_region_key(TINY_YEAR, TINY_REGION),
                        instance=instance, resources=demo_env.resources)
    s2 = storage.open_raw("s2", TINY_YEAR, TINY_REGION)
    s1 = storage.open_raw("s1", TINY_YEAR, TINY_REGION)
    return sample_pixels(s2, s1, 1200, np.random.default_rng(0))


def test_barlow_twins_loss_is_zero_for_perfectly_decorrelated_identical_views():
    z = torch.linalg.qr(torch.randn(512, 16))[0] * 512 ** 0.5
    z = z - z.mean(0)
    c = cross_correlation(z, z)
    assert barlow_twins_loss(c, 5e-3) < 0.05
    assert barlow_twins_loss(cross_correlation(z, torch.randn(512, 16)), 5e-3) > 10


def test_short_pretraining_lowers_the_loss_and_resumes(pool, tmp_path):
    assert len(pool) == 1200 and pool.has_both.all()
    config = PretrainConfig(steps=30, batch_size=96, warmup_steps=4, checkpoint_every=15, learning_rate=2e-3)
    state = tmp_path / "state.pt"
    encoder = pretrain(pool, preset("tessera-small"), config, state)
    losses = encoder.metadata["losses"]
    assert len(losses) == 30
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    # resuming from the saved final state does no more steps and gives the same weights
    again = pretrain(pool, preset("tessera-small"), config, state)
    assert again.metadata["steps"] == 30
    for a, b in zip(encoder.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_an_interrupted_run_resumes_from_its_last_checkpoint(pool, tmp_path):
    state = tmp_path / "state.pt"
    config = PretrainConfig(steps=12, batch_size=96, warmup_steps=2, checkpoint_every=5)
    seen = []

    def crash_at_7(step, loss):
        seen.append(loss)
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(pool, preset("tessera-small"), config, state, progress=crash_at_7)
    assert torch.load(state, weights_only=False)["step"] == 5
    resumed_steps = []
    encoder = pretrain(pool, preset("tessera-small"), config, state, progress=lambda s, _: resumed_steps.append(s))
    assert resumed_steps == list(range(6, 13)), "picks up after the step-5 checkpoint"
    assert encoder.metadata["steps"] == 12
    assert encoder.metadata["losses"][:5] == seen[:5]
