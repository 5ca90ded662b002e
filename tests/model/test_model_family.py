"""The TESSERA family: v1.1 and the v2 students against the reference semantics of the fact sheets
(`../shared/reference/`), their checkpoint layouts, and the encoder identity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import fixtures_dir
from model.checkpoints import matryoshka_dims, read_checkpoint
from model.config import ModelConfig, preset, preset_normalisation
from model.encoder import TesseraEncoder
from model.errors import CheckpointError
from resources.testing.reference_model import reference_embed_series, reference_ranks
from model.selection import v1_1_ranks, v2_ranks


def _listing(name: str) -> dict[str, tuple[int, ...]]:
    listing = {}
    for line in (fixtures_dir().parent / "reference" / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")[:2]
            listing[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return listing


def _shapes(encoder: TesseraEncoder) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in encoder.state_dict().items()}


MEDIUM_QK = replace(preset("tessera-v2-medium"), name="medium-qk", qk_norm=True)


@pytest.mark.parametrize("config, listing, parameters", [
    (preset("tessera-v1.1"), "tessera_v1_1_state_dict.tsv", 57_708_738),
    (preset("tessera-v2-medium"), "tessera_v2_student_state_dict.tsv", 21_028_930),
    (MEDIUM_QK, "tessera_v2_student_qknorm_state_dict.tsv", 21_029_890),
])
def test_architectures_match_the_reference_listings(config, listing, parameters):
    encoder = TesseraEncoder(config, preset_normalisation(config, "mpc"))
    assert encoder.parameter_count() == parameters
    assert _shapes(encoder) == _listing(listing)


@pytest.mark.parametrize("name, parameters", [
    ("tessera-v2-nano", 1_071_874), ("tessera-v2-small", 7_112_322),
    ("tessera-v2-medium", 21_028_930), ("tessera-v2-large", 43_831_170),
])
def test_student_presets_have_the_published_sizes(name, parameters):
    assert TesseraEncoder.from_preset(name).parameter_count() == parameters


def test_rank_lists_follow_the_fact_sheets():
    assert v1_1_ranks(3, 8).tolist() == [0, 1, 2, 0, 1, 1, 1, 2]
    assert v1_1_ranks(5, 8).tolist() == [0, 1, 2, 3, 4, 1, 2, 3]
    assert v2_ranks(5, 8).tolist() == [0, 1, 2, 3, 4, 1, 3, 4]
    assert v2_ranks(2, 8).tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert v2_ranks(12, 16).tolist() == list(range(12)) + [1, 4, 7, 10]
    # float64 linspace, not integer division: n = 295 differs at k = 85 and 170
    exact = [k * 294 // 255 for k in range(256)]
    differs = [k for k, (a, b) in enumerate(zip(v2_ranks(295, 256).tolist(), exact)) if a != b]
    assert differs == [85, 170]
    for n in range(1, 700):
        length = min(256, -(-n // 8) * 8)
        assert v1_1_ranks(n, length).tolist() == reference_ranks(n, "v1.1"), n
        assert v2_ranks(n, length).tolist() == reference_ranks(n, "v2"), n


def _randomised(config: ModelConfig, data_source: str | None = "mpc", seed: int = 0) -> TesseraEncoder:
    torch.manual_seed(seed)
    encoder = TesseraEncoder(config, preset_normalisation(config, data_source))
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return encoder.eval()


def _series(counts2, counts_asc, counts_desc, t2=310, ta=150, td=160, seed=0):
    """Pixels with exactly the given numbers of clear S2 / valid S1 steps at random positions."""
    rng = np.random.default_rng(seed)
    n = len(counts2)

    def valid(counts, t):
        mask = np.zeros((n, t), bool)
        for i, c in enumerate(counts):
            mask[i, rng.choice(t, c, replace=False)] = True
        return mask

    s2 = rng.uniform(0, 8000, (n, t2, 10)).astype(np.float32)
    masks = valid(counts2, t2).astype(np.uint8)
    asc = rng.uniform(3000, 9000, (n, ta, 2)).astype(np.float32)
    desc = rng.uniform(3000, 9000, (n, td, 2)).astype(np.float32)
    asc[~valid(counts_asc, ta)] = 0
    desc_valid = valid(counts_desc, td)
    desc[~desc_valid] = 0
    desc[desc_valid, 1] = np.where(rng.random(desc_valid.sum()) < 0.2, 0, desc[desc_valid, 1])  # VV alone still valid
    doy = lambda t: np.sort(rng.integers(1, 367, (n, t)), axis=1)  # noqa: E731
    return s2, doy(t2), masks, asc, doy(ta), desc, doy(td)


# counts at and around the bucket edges, above the largest bucket, and single-sensor pixels
COUNTS = [
    (8, 3, 5), (16, 0, 16), (256, 100, 156), (257, 150, 107), (300, 150, 160), (1, 1, 0), (7, 0, 9),
    (0, 4, 4), (12, 0, 0), (0, 0, 0), (9, 129, 128), (40, 20, 20),
]
SMALL_V11 = ModelConfig("small-v1.1", family="v1.1", latent_dim=16, layers=2, feedforward=96, output_dim=192)
SMALL_V2 = ModelConfig("small-v2", family="v2", latent_dim=16, layers=2, feedforward=96, dropout=0.0)


@pytest.mark.parametrize("config", [SMALL_V11, SMALL_V2, replace(SMALL_V2, name="small-v2-qk", qk_norm=True)],
                         ids=lambda c: c.name)
def test_embed_series_equals_the_reference_semantics(config):
    encoder = _randomised(config)
    arrays = _series(*zip(*COUNTS))
    fast = encoder.embed_series(*arrays)
    slow = reference_embed_series(encoder.state_dict(), config, encoder.normalisation, *arrays)
    no_data = np.array([c == (0, 0, 0) for c in COUNTS])
    assert np.isnan(fast[no_data]).all() and np.isnan(slow[no_data]).all()
    assert np.isfinite(fast[~no_data]).all()
    assert np.abs(fast[~no_data] - slow[~no_data]).max() < 1e-4
    if config.family == "v2":  # the final LayerNorm: zero mean, unit variance per pixel
        assert np.abs(fast[~no_data].mean(1)).max() < 1e-4


def test_v1_1_reads_rows_in_order_and_splits_orbits():
    """The GRU reads the sequence in order, so descending-before-ascending or one pooled S1 set would
    change the result: check that the selection is sensitive to both (the reference says it is)."""
    encoder = _randomised(SMALL_V11)
    s2, d2, m, asc, da, desc, dd = _series([20, 30], [10, 12], [9, 14])
    base = encoder.embed_series(s2, d2, m, asc, da, desc, dd)
    swapped = encoder.embed_series(s2, d2, m, desc, dd, asc, da)
    assert np.abs(base - swapped).max() > 1e-3
    again = encoder.embed_series(s2, d2[0], m, asc, da[0], desc, dd[0])  # shared DOYs (T,) broadcast
    assert np.isfinite(again).all()


def test_real_size_models_equal_the_reference():
    for config, source in ((preset("tessera-v1.1"), "aws"), (preset("tessera-v2-medium"), None)):
        encoder = _randomised(config, source)
        arrays = _series([8, 17, 0], [3, 0, 2], [5, 1, 0], t2=40, ta=12, td=12, seed=3)
        fast = encoder.embed_series(*arrays)
        slow = reference_embed_series(encoder.state_dict(), config, encoder.normalisation, *arrays)
        assert np.abs(fast - slow).max() < 1e-4


def test_embed_is_v1_0_only():
    encoder = TesseraEncoder.from_preset("tessera-demo")
    with pytest.raises(ValueError, match="use embed_series"):
        encoder.embed(np.zeros((1, 4, 11), np.float32), np.zeros((1, 4, 3), np.float32))


# -- checkpoint layouts ---------------------------------------------------------------------------

def _official_v1_1(encoder: TesseraEncoder, full: bool) -> dict:
    state = {f"_orig_mod.{k}": v.clone() for k, v in encoder.state_dict().items()}
    if full:  # the ~10 GB training file: projector heads, optimiser and scaler state beside the weights
        state["_orig_mod.projector.0.weight"] = torch.zeros(4, 4)
        state["_orig_mod.segmented_matryoshka_projector.0.weight"] = torch.zeros(4, 4)
        return {"model_state": state, "optimizer_state": {"lr": 1e-4}, "scaler": {}, "epoch": 3, "config": {"x": 1}}
    return {"model_state_dict": state}


@pytest.mark.parametrize("full", [False, True], ids=["encoder-only", "full"])
def test_v1_1_checkpoints_load_strictly_and_need_their_data_source(tmp_path, full):
    source = _randomised(preset("tessera-v1.1"), "mpc")
    path = tmp_path / "tessera_v1_1_mpc.pt"
    torch.save(_official_v1_1(source, full), path)
    with pytest.raises(ValueError, match="'mpc' or 'aws'"):
        TesseraEncoder.from_checkpoint(path, trusted=full)
    loaded = TesseraEncoder.from_checkpoint(path, data_source="mpc", trusted=full)
    assert loaded.config.family == "v1.1" and loaded.normalisation.name == "v1.1-mpc"
    assert loaded.identity == source.identity
    aws = TesseraEncoder.from_checkpoint(path, data_source="aws", trusted=full)
    assert aws.identity.id != loaded.identity.id  # same weights, other constants: another embedding space
    arrays = _series([8, 12], [3, 4], [2, 0], t2=20, ta=6, td=6)
    assert np.array_equal(loaded.embed_series(*arrays), source.embed_series(*arrays))
    with pytest.raises(ValueError, match="does not match this encoder's normalisation"):
        loaded.embed_series(*arrays, data_source="aws")


def test_v2_students_are_built_from_their_args(tmp_path):
    source = _randomised(preset("tessera-v2-medium"), None)
    args = {"latent_dim": 120, "num_layers": 2, "dim_feedforward": 3840, "nhead": 4, "repr_dim": 128,
            "matryoshka_dims": "16,32,64,128", "lr": 3e-4, "teacher_ckpt": "/somewhere/teacher.pt"}
    path = tmp_path / "student_medium.pt"
    torch.save({"args": args, "model": source.state_dict()}, path)
    loaded = TesseraEncoder.from_checkpoint(path)
    assert loaded.config.name == "tessera-v2-medium" and loaded.config.family == "v2"
    assert loaded.identity == source.identity
    assert matryoshka_dims(loaded.metadata, loaded.config) == (16, 32, 64, 128)
    arrays = _series([8, 0], [3, 4], [2, 0], t2=20, ta=6, td=6)
    assert np.array_equal(loaded.embed_series(*arrays), source.embed_series(*arrays))

    # no args: the reference defaults (the small student) must agree with the tensors
    small = TesseraEncoder.from_preset("tessera-v2-small")
    torch.save({"args": None, "model": small.state_dict()}, tmp_path / "small.pt")
    assert TesseraEncoder.from_checkpoint(tmp_path / "small.pt").config.name == "tessera-v2-small"
    torch.save({"args": {}, "model": source.state_dict()}, tmp_path / "no_args.pt")
    with pytest.raises(CheckpointError, match="latent_dim=64 but the tensors say 120"):
        TesseraEncoder.from_checkpoint(tmp_path / "no_args.pt")

    # QK-norm: nhead follows from q_norm's width and must agree with args
    qk = _randomised(MEDIUM_QK, None)
    torch.save({"args": dict(args, enable_qk_norm=True, nhead=8, matryoshka_dims=[16, 128]), "model": qk.state_dict()},
               tmp_path / "qk.pt")
    with pytest.raises(CheckpointError, match="nhead=8 but q_norm has width 120"):
        TesseraEncoder.from_checkpoint(tmp_path / "qk.pt")
    torch.save({"args": dict(args, enable_qk_norm=True, matryoshka_dims=[16, 128]), "model": qk.state_dict()},
               tmp_path / "qk.pt")
    loaded_qk = TesseraEncoder.from_checkpoint(tmp_path / "qk.pt")
    assert loaded_qk.config.qk_norm and matryoshka_dims(loaded_qk.metadata, loaded_qk.config) == (16, 128)

    broken = dict(source.state_dict())
    del broken["s1_backbone.attn_pool.query.bias"]
    torch.save({"args": args, "model": broken}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="missing keys: s1_backbone.attn_pool.query.bias"):
        TesseraEncoder.from_checkpoint(tmp_path / "broken.pt")


def test_the_teacher_and_v1_0_are_told_apart(tmp_path):
    torch.save({"arch": {"latent_dim": 1024}, "encoder_state_dict": {}}, tmp_path / "teacher.pt")
    with pytest.raises(CheckpointError, match="2B teacher"):
        TesseraEncoder.from_checkpoint(tmp_path / "teacher.pt")
    v1 = TesseraEncoder.from_preset("tessera-v1")
    torch.save({"model_state": v1.state_dict()}, tmp_path / "v1.pt")
    assert read_checkpoint(tmp_path / "v1.pt").config.family == "v1.0"


def test_identity_follows_the_weights_not_the_file(tmp_path):
    encoder = _randomised(preset("tessera-demo"), None)
    resaved = TesseraEncoder.from_checkpoint(encoder.save(tmp_path / "ours.pt"))
    assert resaved.identity == encoder.identity
    assert resaved.identity.id.startswith("v2-d128-l2-h4-f256-o128.v2.")
    with torch.no_grad():
        resaved.dim_reducer[0].bias.add_(1e-3)
    resaved.load_strict(resaved.state_dict())
    assert resaved.identity.id != encoder.identity.id
