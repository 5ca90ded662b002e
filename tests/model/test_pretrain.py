"""A short pretraining run on the tiny demo partition: the loss falls, and training resumes; the fast
step (Gram-form loss, encoder workers) computes what the plain one does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dagster import instance_for_test, materialize

from conftest import TINY_REGION, TINY_YEAR
import model.pretrain as pretraining
from model.config import preset, preset_normalisation
from model.encoder import TesseraEncoder
from model.pretrain import PretrainConfig, Projectors, barlow_twins_loss, cross_correlation, pretrain
from resources.storage.pixel_series import sample_pixels
from resources.testing.reference_model import reference_pretrain_loss
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


def test_the_gram_form_of_the_loss_equals_the_cross_correlation_form():
    generator = torch.Generator().manual_seed(3)
    za, zb, zm = (torch.randn(128, 512, generator=generator, dtype=torch.float64) for _ in range(3))
    zb = zb + 0.5 * za  # correlated views, as training makes them
    perm = torch.randperm(128, generator=generator)
    config = PretrainConfig()
    for alpha in (0.0, 0.3, 1.0):
        expected = reference_pretrain_loss(za, zb, zm, alpha, perm, config.barlow_lambda, config.mixup_weight)
        got = pretraining._loss(za, zb, zm, alpha, perm, config)
        assert torch.allclose(got, expected, rtol=1e-10), (alpha, float(got), float(expected))
    assert torch.allclose(pretraining._loss(za, zb, None, 0.5, perm, config),
                          barlow_twins_loss(cross_correlation(za, zb), config.barlow_lambda), rtol=1e-10)


def _step_loss_and_grads(encoder, head, views, workers):
    config = PretrainConfig()
    perm = torch.from_numpy(np.random.default_rng(1).permutation(len(views[0])))
    encoder.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    loss = pretraining._batch_loss(encoder, head, views, 0.4, perm, config, torch.autocast("cpu", enabled=False), workers)
    loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}


def test_encoder_workers_give_the_same_loss_and_gradients_as_one_thread(pool):
    model_config = preset("tessera-demo")
    torch.manual_seed(0)
    encoder = TesseraEncoder(model_config, preset_normalisation(model_config, "mpc")).train()
    head = Projectors(model_config).train()
    index = np.arange(96)
    views = pretraining._views(pool, index, model_config.sample_steps, np.random.default_rng(0),
                               encoder.normalisation, torch.device("cpu"))
    alone, alone_grads = _step_loss_and_grads(encoder, head, views, None)
    workers = pretraining.EncoderWorkers(2, 1)
    try:
        shared, shared_grads = _step_loss_and_grads(encoder, head, views, workers)
    finally:
        workers.close()
    assert shared == pytest.approx(alone, rel=1e-5)
    assert alone_grads.keys() == shared_grads.keys() and alone_grads
    for name, grad in alone_grads.items():
        # summed in another order: float rounding apart over the whole tensor (the attention pooling's
        # query bias has a gradient of zero in exact arithmetic, the softmax being shift-invariant)
        assert float((shared_grads[name] - grad).norm()) < 1e-4 * float(grad.norm()) + 1e-5, name


def test_workers_are_used_only_where_a_run_stays_deterministic():
    demo = preset("tessera-demo")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        workers = pretraining.training_workers(torch.device("cpu"), demo, bf16=False)
        assert workers is not None and workers.threads == 1
        workers.close()
        assert pretraining.training_workers(torch.device("cpu"), demo, bf16=True) is None
        assert pretraining.training_workers(torch.device("cpu"), preset("tessera-v1"), bf16=False) is None  # dropout 0.1
        torch.set_num_threads(1)
        assert pretraining.training_workers(torch.device("cpu"), demo, bf16=False) is None
    finally:
        torch.set_num_threads(threads)
