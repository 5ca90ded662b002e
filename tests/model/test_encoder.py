"""The encoder: architecture, strict checkpoint loading, equivalence to the reference semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import fixtures_dir
from model.config import preset
from model import dense as dense_module
from model.dense import dense, onednn_packing_available, pack_for_cpu
from model.encoder import TesseraEncoder
from model.errors import CheckpointError
from model.inference import best_precision, prepare_for_inference
from resources.testing.reference_model import reference_embed


def _randomised(name: str, seed: int = 0) -> TesseraEncoder:
    """Default init leaves biases at 0 and norms at 1; perturb everything so every tensor matters."""
    torch.manual_seed(seed)
    encoder = TesseraEncoder.from_preset(name)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return encoder.eval()


def _inputs(batch: int, steps: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s2 = np.concatenate([rng.uniform(0, 6000, (batch, steps, 10)),
                         np.sort(rng.integers(1, 366, (batch, steps, 1)), axis=1)], axis=2).astype(np.float32)
    s1 = np.concatenate([rng.uniform(2000, 9000, (batch, steps, 2)),
                         np.sort(rng.integers(1, 366, (batch, steps, 1)), axis=1)], axis=2).astype(np.float32)
    return s2, s1


def test_v1_architecture_matches_the_official_checkpoint_listing():
    encoder = TesseraEncoder.from_preset("tessera-v1")
    assert encoder.parameter_count() == 45_828_226
    listing = {}
    for line in (fixtures_dir().parent / "reference" / "tessera_v1_state_dict.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            listing[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    assert {k: tuple(v.shape) for k, v in encoder.state_dict().items()} == listing


@pytest.mark.parametrize("name", ["tessera-v1", "tessera-small"])
def test_fast_encoder_equals_reference_semantics(name):
    encoder = _randomised(name)
    s2, s1 = _inputs(6, 40)
    fast = encoder.embed(s2, s1)
    slow = reference_embed(encoder.state_dict(), encoder.config, torch.from_numpy(s2), torch.from_numpy(s1), encoder.normalisation).numpy()
    assert fast.shape == (6, 128) and fast.dtype == np.float32
    assert np.abs(fast - slow).max() < 1e-4


def test_embed_runs_on_exactly_the_given_steps():
    encoder = _randomised("tessera-small")
    s2, s1 = _inputs(3, 40)
    short = encoder.embed(s2[:, :17], s1[:, :9])
    slow = reference_embed(encoder.state_dict(), encoder.config, torch.from_numpy(s2[:, :17]), torch.from_numpy(s1[:, :9]), encoder.normalisation)
    assert np.abs(short - slow.numpy()).max() < 1e-4


def test_bf16_stays_close_to_fp32():
    encoder = _randomised("tessera-small")
    s2, s1 = _inputs(64, 40)
    fp32 = encoder.embed(s2, s1)
    bf16 = encoder.to(torch.bfloat16).embed(s2, s1, precision="bf16")
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.999


def test_embed_rejects_wrong_shapes():
    encoder = TesseraEncoder.from_preset("tessera-small")
    s2, s1 = _inputs(2, 5)
    with pytest.raises(ValueError, match=r"s2 must be \(B, T, 11\)"):
        encoder.embed(s2[..., :10], s1)
    with pytest.raises(ValueError, match=r"s1 must be \(B, T, 3\)"):
        encoder.embed(s2, s1[:1])


def _official_layout(encoder: TesseraEncoder, key: str, wrap: str = "") -> dict:
    state = {f"{wrap}{k}": v for k, v in encoder.state_dict().items()}
    state[f"{wrap}projector.0.weight"] = torch.zeros(4, 4)  # the training projector is ignored
    return {key: state, "epoch": 3}


@pytest.mark.parametrize(("key", "wrap"), [("model_state", ""), ("model_state_dict", "_orig_mod.")])
def test_official_checkpoint_layouts_load(tmp_path, key, wrap):
    source = _randomised("tessera-v1")
    path = tmp_path / "official.pt"
    torch.save(_official_layout(source, key, wrap), path)
    loaded = TesseraEncoder.from_checkpoint(path)
    s2, s1 = _inputs(2, 40)
    assert np.array_equal(loaded.embed(s2, s1), source.embed(s2, s1))


def test_strict_loading_names_the_problem(tmp_path):
    source = TesseraEncoder.from_preset("tessera-v1")
    payload = _official_layout(source, "model_state")
    state = payload["model_state"]
    del state["s1_backbone.attn_pool.query.bias"]
    state["s2_backbone.extra.weight"] = torch.zeros(1)
    state["dim_reducer.0.weight"] = torch.zeros(64, 1024)
    path = tmp_path / "broken.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        TesseraEncoder.from_checkpoint(path)
    message = str(info.value)
    assert "missing keys: s1_backbone.attn_pool.query.bias" in message
    assert "unexpected keys: s2_backbone.extra.weight" in message
    assert "dim_reducer.0.weight (64, 1024) (expected (128, 1024))" in message


def test_unreadable_or_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        TesseraEncoder.from_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        TesseraEncoder.from_checkpoint(tmp_path / "garbage.pt")
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "no_model.pt")
    with pytest.raises(CheckpointError, match="no model_state, model_state_dict"):
        TesseraEncoder.from_checkpoint(tmp_path / "no_model.pt")


def test_own_checkpoint_round_trip_keeps_preset_and_metadata(tmp_path):
    source = _randomised("tessera-small")
    path = source.save(tmp_path / "small.pt", training={"steps": 12, "loss": [3.0, 2.0]})
    loaded = TesseraEncoder.from_checkpoint(path)
    assert loaded.config == preset("tessera-small")
    assert loaded.metadata["steps"] == 12
    s2, s1 = _inputs(2, 40)
    assert np.array_equal(loaded.embed(s2, s1), source.embed(s2, s1))


def test_bf16_autocast_over_fp32_weights_stays_close_to_fp32():
    """The path taken when weights were not cast (`prepare_for_inference` skipped): autocast."""
    encoder = _randomised("tessera-small")
    s2, s1 = _inputs(64, 40)
    fp32 = encoder.embed(s2, s1)
    autocast = encoder.embed(s2, s1, precision="bf16")
    cosine = (fp32 * autocast).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(autocast, axis=1)
    assert cosine.min() > 0.999


def _packed_bf16_layers_equal_plain_ones_and_stay_close_to_fp32(packing: bool):
    """With oneDNN's bf16 kernels, weights are packed once and give the plain kernels' result; without
    them (AVX2-only CPUs), nothing is packed and bf16 runs on the plain kernels, never crashing."""
    layer = torch.nn.Linear(64, 256).to(torch.bfloat16)
    x = torch.randn(40, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        plain = dense(x, layer.weight, layer.bias, relu=True)
        assert pack_for_cpu(layer, 40) == (1 if packing else 0)
        assert torch.equal(dense(x, layer.weight, layer.bias, relu=True), plain)
        layer.weight.mul_(2)  # a changed weight must not be served from its stale packed copy
        assert torch.equal(dense(x, layer.weight, layer.bias), torch.nn.functional.linear(x, layer.weight, layer.bias))
    encoder = _randomised("tessera-small")
    s2, s1 = _inputs(64, 40)
    fp32 = encoder.embed(s2, s1)
    packed = prepare_for_inference(_randomised("tessera-small"), torch.device("cpu"), "bf16").embed(s2, s1, precision="bf16")
    cosine = (fp32 * packed).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(packed, axis=1)
    assert cosine.min() > 0.999


def test_auto_precision_is_fp32_on_every_cpu_and_bf16_only_when_asked():
    assert best_precision(torch.device("cpu")) == "fp32"
    assert best_precision(torch.device("cpu"), "bf16") == "bf16"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        best_precision(torch.device("cpu"), "fp16")


def test_bf16_layers_on_this_cpu():
    """Whichever kind of CPU this is: packed where oneDNN has bf16 kernels for it, plain elsewhere."""
    _packed_bf16_layers_equal_plain_ones_and_stay_close_to_fp32(onednn_packing_available())


def test_bf16_layers_without_onednn_bf16_kernels(monkeypatch):
    """The AVX2-only path, run on any CPU: explicit bf16 packs nothing and still embeds."""
    monkeypatch.setattr(dense_module, "cpu_bf16_kernels", lambda: False)
    assert not onednn_packing_available()
    _packed_bf16_layers_equal_plain_ones_and_stay_close_to_fp32(False)


def _openmp_runtime():
    """The OpenMP runtime PyTorch loaded (read from the process's memory map), or None."""
    import ctypes
    from pathlib import Path

    maps = Path("/proc/self/maps")
    paths = sorted({line.split()[-1] for line in maps.read_text().splitlines()
                    if "libgomp" in line or "libiomp" in line}) if maps.exists() else []
    return ctypes.CDLL(paths[0]) if paths else None


def test_each_embedding_worker_runs_its_slices_on_one_thread_from_its_first_operation(monkeypatch):
    """The workers' slices are embedded single-threaded from the first: a thread PyTorch did not
    start keeps OpenMP's default team (every core) until its first parallel region, so without its
    own setting an operation before that region could run on several threads and round otherwise."""
    from concurrent.futures import ThreadPoolExecutor

    omp = _openmp_runtime()
    if omp is None:
        pytest.skip("no OpenMP runtime in this PyTorch build")
    with ThreadPoolExecutor(1) as fresh:
        default_team = fresh.submit(omp.omp_get_max_threads).result()
    if default_team < 2:
        pytest.skip("OpenMP's default team is one thread here: nothing to tell apart")
    encoder = _randomised("tessera-demo")
    encoder.cpu_workers = 2
    teams = []
    forward = encoder._forward
    monkeypatch.setattr(encoder, "_forward", lambda part, precision: (teams.append(omp.omp_get_max_threads()),
                                                                      forward(part, precision))[1])
    s2, s1 = _inputs(64, 12)
    series = encoder.embed_series(s2[..., :10], s2[..., 10], None, s1[..., :2], s1[..., 2], s1[..., :2], s1[..., 2])
    assert np.isfinite(series).all() and len(teams) == 8
    assert set(teams) == {1}, teams
