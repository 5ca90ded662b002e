"""Suggested labels: uncertain pixels, spread over the map and over the embedding space."""

from __future__ import annotations

import numpy as np
import pytest

import model.suggest as suggest_module
from model.suggest import suggest, uncertainty


def _grid(size: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.divmod(np.arange(size * size), size)
    return rows, cols


def _probabilities(margin_uncertainty: np.ndarray) -> np.ndarray:
    """Two-class probabilities whose margin uncertainty is the given one."""
    top = 0.5 + (1.0 - margin_uncertainty) / 2
    return np.stack([top, 1.0 - top], axis=1)


def _scene(seed: int = 0):
    """3600 pixels on a 60 x 60 grid, random embeddings, random uncertainties."""
    rng = np.random.default_rng(seed)
    rows, cols = _grid()
    u = rng.random(len(rows))
    return _probabilities(u), rng.normal(size=(len(rows), 16)).astype(np.float32), rows, cols, u


def test_uncertainty_measures():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    assert uncertainty(p, "margin") == pytest.approx([0.0, 1.0, 1.0, 0.7])
    assert uncertainty(p, "entropy") == pytest.approx([0.0, np.log(2) / np.log(3), 1.0,
                                                       -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1))
                                                       / np.log(3)])
    assert (uncertainty(np.ones((4, 1))) == 0).all(), "one class: nothing to be unsure about"
    with pytest.raises(ValueError, match="unknown uncertainty"):
        uncertainty(p, "variance")


def test_suggestions_are_among_the_most_uncertain():
    p, x, rows, cols, u = _scene()
    picked = suggest(p, x, rows, cols, 10, min_spacing_px=2, pool_factor=5)
    assert len(picked) == 10 and len(set(picked.tolist())) == 10
    # the pool is the 50 most uncertain (the spacing can only push it a little further down)
    assert u[picked].min() > np.quantile(u, 0.95)
    assert u[picked].mean() > np.quantile(u, 0.97)


def test_suggestions_are_spaced_from_each_other_and_from_labels():
    p, x, rows, cols, _ = _scene(1)
    labelled = np.array([[r, c] for r in range(0, 60, 6) for c in range(0, 60, 6)])  # 100 labels on a lattice
    picked = suggest(p, x, rows, cols, 20, labelled=labelled, min_spacing_px=4)
    assert len(picked) == 20
    at = np.stack([rows[picked], cols[picked]], 1).astype(float)
    between = np.sqrt(((at[:, None] - at[None]) ** 2).sum(-1))
    assert between[~np.eye(len(at), dtype=bool)].min() >= 4
    assert np.sqrt(((at[:, None] - labelled[None]) ** 2).sum(-1)).min() >= 4
    # without a spacing the same scene puts some picks next to each other or next to a label
    tight = suggest(p, x, rows, cols, 20, min_spacing_px=0, pool_factor=50)
    at = np.stack([rows[tight], cols[tight]], 1).astype(float)
    assert np.sqrt(((at[:, None] - labelled[None]) ** 2).sum(-1)).min() < 4


def test_labelled_and_excluded_pixels_are_never_suggested():
    p, x, rows, cols, u = _scene(2)
    most = np.argsort(-u)[:30]  # the 30 most uncertain: labelled or excluded, so off limits
    labelled = np.stack([rows[most[:15]], cols[most[:15]]], 1)
    exclude = np.zeros(len(u), bool)
    exclude[most[15:]] = True
    picked = suggest(p, x, rows, cols, 10, labelled=labelled, exclude=exclude, min_spacing_px=0)
    assert len(picked) == 10 and not set(picked.tolist()) & set(most.tolist())


def test_near_duplicates_at_one_boundary_are_not_all_suggested():
    """40 pixels share one embedding and are the most uncertain of all (one boundary, one kind of
    pixel, spread over the map so spacing alone does not split them); 40 others, each its own kind,
    are a little less uncertain. Pure uncertainty takes the duplicates; suggest takes one of them."""
    rng = np.random.default_rng(3)
    rows, cols = _grid()
    u = rng.random(len(rows)) * 0.5
    duplicates = rng.choice(len(rows), 40, replace=False)
    distinct = rng.choice(np.setdiff1d(np.arange(len(rows)), duplicates), 40, replace=False)
    u[duplicates], u[distinct] = 0.99, 0.95
    x = rng.normal(size=(len(rows), 32)).astype(np.float32)
    x[duplicates] = x[duplicates[0]] + rng.normal(0, 0.01, (40, 32))
    p = _probabilities(u)
    picked = suggest(p, x, rows, cols, 10, min_spacing_px=1, pool_factor=8)
    pure = np.argsort(-u, kind="stable")[:10]
    assert np.isin(pure, duplicates).all(), "the scene is one where uncertainty alone picks duplicates"
    assert np.isin(picked, duplicates).sum() == 1 and np.isin(picked, distinct).sum() == 9
    z = x[picked] / np.linalg.norm(x[picked], axis=1, keepdims=True)
    assert (z @ z.T)[~np.eye(10, dtype=bool)].max() < 0.9, "every pair of suggestions differs"


def test_suggestions_avoid_what_the_labels_already_show():
    """The most uncertain pixels look like a labelled pixel (its embedding): with the labels'
    vectors given, the picks go to pixels unlike anything labelled."""
    rng = np.random.default_rng(4)
    rows, cols = _grid()
    x = rng.normal(size=(len(rows), 32)).astype(np.float32)
    u = np.full(len(rows), 0.5)
    like_label = rng.choice(len(rows), 30, replace=False)
    known = rng.normal(size=32).astype(np.float32)
    x[like_label] = known + rng.normal(0, 0.01, (30, 32))
    u[like_label] = 0.9
    picked = suggest(_probabilities(u), x, rows, cols, 5, labelled_embeddings=known[None], pool_factor=20)
    assert not np.isin(picked, like_label).any()
    assert np.isin(suggest(_probabilities(u), x, rows, cols, 5, pool_factor=20), like_label).any()


def test_a_cluster_in_space_gives_one_suggestion_per_spacing():
    """All uncertainty in one 6 x 6 patch of distinct pixels: with a spacing of 4 only a few fit."""
    rng = np.random.default_rng(5)
    rows, cols = _grid()
    patch = (rows < 6) & (cols < 6)
    u = np.where(patch, 0.99, rng.random(len(rows)) * 0.3)
    picked = suggest(_probabilities(u), rng.normal(size=(len(rows), 8)), rows, cols, 10, min_spacing_px=4)
    assert patch[picked].sum() <= 4 and len(picked) == 10


def test_one_seed_one_answer_and_ties_follow_the_seed():
    p, x, rows, cols, _ = _scene(6)
    assert (suggest(p, x, rows, cols, 12, seed=7) == suggest(p, x, rows, cols, 12, seed=7)).all()
    flat = np.full((len(rows), 2), 0.5)  # every pixel equally uncertain: the seed decides
    answers = {tuple(suggest(flat, x, rows, cols, 5, seed=s, pool_factor=2).tolist()) for s in range(4)}
    assert len(answers) > 1


def test_fewer_when_the_spacing_leaves_no_room_and_edge_cases():
    rows, cols = _grid(10)
    p, x = _probabilities(np.linspace(0, 1, 100)), np.eye(100)
    picked = suggest(p, x, rows, cols, 50, min_spacing_px=5, pool_factor=10)
    assert 0 < len(picked) <= 9  # a 10 x 10 grid holds few points 5 px apart
    assert len(suggest(p, x, rows, cols, 0)) == 0
    assert len(suggest(p[:0], x[:0], rows[:0], cols[:0], 5)) == 0
    assert len(suggest(p, x, rows, cols, 5, exclude=np.ones(100, bool))) == 0
    with pytest.raises(ValueError, match="differ in length"):
        suggest(p, x[:5], rows, cols, 5)
    with pytest.raises(ValueError, match="count >= 0"):
        suggest(p, x, rows, cols, -1)


def test_spacing_from_many_labels_is_computed_in_bounded_chunks(monkeypatch):
    p, x, rows, cols, _ = _scene(8)
    labelled = np.stack(np.divmod(np.random.default_rng(8).choice(3600, 400, replace=False), 60), 1)
    whole = suggest(p, x, rows, cols, 15, labelled=labelled, min_spacing_px=3)
    monkeypatch.setattr(suggest_module, "SPACING_CHUNK_VALUES", 1000)
    assert (suggest(p, x, rows, cols, 15, labelled=labelled, min_spacing_px=3) == whole).all()


def test_a_class_short_of_labels_gets_picks_of_its_likeliest_pixels_up_to_half_a_batch():
    """Class 2 is never uncertain (the head separates it) and has one label: uncertainty alone
    never asks about it; with the labels per class, up to half the batch goes to pixels likeliest
    class 2, and the rest stays with uncertainty."""
    rng = np.random.default_rng(9)
    rows, cols = _grid()
    n = len(rows)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    p = np.zeros((n, 3))
    easy = rng.random(n) < 0.1  # confidently class 2
    p[easy] = [0.01, 0.01, 0.98]
    split = rng.random(n)  # the others between classes 0 and 1
    p[~easy, 0], p[~easy, 1] = split[~easy], 1 - split[~easy]
    plain = suggest(p, x, rows, cols, 8, min_spacing_px=1)
    assert not easy[plain].any()
    counts = np.array([10, 10, 1])
    balanced = suggest(p, x, rows, cols, 8, min_spacing_px=1, class_counts=counts, min_per_class=5)
    assert easy[balanced].sum() == 4 and len(balanced) == 8, "4 owed, at most half of 8"
    assert easy[suggest(p, x, rows, cols, 8, min_spacing_px=1, class_counts=np.array([10, 10, 3]),
                        min_per_class=5)].sum() == 2
    assert not easy[suggest(p, x, rows, cols, 8, min_spacing_px=1, class_counts=np.array([10, 10, 5]),
                            min_per_class=5)].any(), "a class with enough labels is owed nothing"
    u = uncertainty(p)
    assert u[balanced[~easy[balanced]]].min() > np.quantile(u[~easy], 0.9), "the rest: the most uncertain"
    with pytest.raises(ValueError, match="class_counts has 2 classes"):
        suggest(p, x, rows, cols, 8, class_counts=np.array([1, 2]), min_per_class=5)
