"""Which pixels to label next: batch-mode active learning on a fitted few-shot head (numpy only).

`suggest` picks `count` candidate pixels by four rules:

1. **uncertainty**: the head's margin (1 - (p1 - p2), or normalised entropy) ranks the candidates,
   and only the most uncertain few times `count` (the pool) are considered;
2. **diversity in embedding space**: from the pool, greedily, each next pick maximises its
   uncertainty times its cosine distance to the nearest pixel already picked or labelled (a
   weighted k-center step), so a pick that nearly duplicates an earlier one scores nearly zero;
3. **spread over space**: no pick lies within `min_spacing_px` of a label or of another pick;
4. **no class starved**: given the labels of each class so far, a class short of `min_per_class`
   gets picks of its own (its likeliest pixels, the one least like the labels), up to half a batch.

Why the mix: pure uncertainty sampling fails in batches. The most uncertain pixels of a map sit
together, along one class boundary, often in one field, with near-identical embeddings; a batch of
them teaches the head what one of them would, and the labeller clicks one spot ten times. Pure
diversity (k-center over all embeddings) ignores the head and spends labels on pixels it already
gets right. Neighbouring pixels are near-duplicates even where noise separates their embeddings,
hence the spacing, which also makes a batch a tour of several places rather than one zoomed patch.
And uncertainty never asks about a class the head already separates, which then keeps its first
label for ever: on the demo (`bench/active_learning.py`) urban and water stayed at 1-3 labels,
too few for a head to place their boundary with the classes it has not yet met.
"""

from __future__ import annotations

import numpy as np

from model.quantise import unit_rows

MEASURES = ("margin", "entropy")
SPACING_CHUNK_VALUES = 1 << 22  # candidate x label distances held at once (16 MB of float32)
# labels of every class worth making sure of: enough for a class mean and a boundary on each side
MIN_PER_CLASS = 5


def uncertainty(probabilities: np.ndarray, measure: str = "margin") -> np.ndarray:
    """Per row of (N, C) class probabilities, in [0, 1], 1 most uncertain: the margin between the
    two likeliest classes (1 - (p1 - p2)), or the entropy over log C."""
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities are (N, classes), got shape {p.shape}")
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty {measure!r}: choose one of {', '.join(MEASURES)}")
    if p.shape[1] < 2:
        return np.zeros(len(p))
    if measure == "margin":
        top = np.sort(p, axis=1)[:, -2:]
        return np.clip(1.0 - (top[:, 1] - top[:, 0]), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return np.clip(terms.sum(1) / np.log(p.shape[1]), 0.0, 1.0)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, NaN taken as 0 (zero rows stay zero)."""
    return unit_rows(np.nan_to_num(np.asarray(x, np.float32)))


def _far_from(rows: np.ndarray, cols: np.ndarray, labelled: np.ndarray, spacing: float) -> np.ndarray:
    """Whether each (row, col) is at least `spacing` pixels from every labelled (row, col), and
    never on one; by chunks of candidates, so memory stays bounded by SPACING_CHUNK_VALUES."""
    far = np.ones(len(rows), bool)
    if len(labelled) == 0 or len(rows) == 0:
        return far
    lr, lc = labelled[:, 0].astype(np.float32), labelled[:, 1].astype(np.float32)
    limit = max(float(spacing), 1e-3) ** 2  # spacing 0 still keeps picks off labelled pixels
    step = max(1, SPACING_CHUNK_VALUES // len(labelled))
    for start in range(0, len(rows), step):
        r = rows[start:start + step, None].astype(np.float32)
        c = cols[start:start + step, None].astype(np.float32)
        far[start:start + step] = ((r - lr) ** 2 + (c - lc) ** 2).min(1) >= limit
    return far


def _pool(order: np.ndarray, rows: np.ndarray, cols: np.ndarray, labelled: np.ndarray, spacing: float,
          size: int) -> np.ndarray:
    """The first `size` candidates of `order` (most uncertain first) far enough from the labels,
    testing them a few pools at a time: a map's labels are tested against its top candidates only."""
    kept: list[np.ndarray] = []
    found, step = 0, max(4 * size, 256)
    for start in range(0, len(order), step):
        chunk = order[start:start + step]
        chunk = chunk[_far_from(rows[chunk], cols[chunk], labelled, spacing)]
        kept.append(chunk[:size - found])
        found += len(kept[-1])
        if found >= size:
            break
    return np.concatenate(kept) if kept else np.zeros(0, np.int64)


def suggest(probabilities: np.ndarray, embeddings: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int,
            labelled: np.ndarray | None = None, exclude: np.ndarray | None = None,
            labelled_embeddings: np.ndarray | None = None, min_spacing_px: float = 3.0, pool_factor: int = 10,
            class_counts: np.ndarray | None = None, min_per_class: int = 0, measure: str = "margin",
            seed: int = 0) -> np.ndarray:
    """Indices of at most `count` candidates to label next, in the order picked (see the module).

    probabilities (N, C): the head's `predict_proba` of the candidates; embeddings (N, D) their
    vectors; rows, cols (N,) their pixel positions on the partition grid. `labelled` (M, 2): the
    (row, col) of labelled pixels, which no pick comes within `min_spacing_px` of; `exclude` (N,)
    bool: candidates never to pick (already labelled, no data); `labelled_embeddings` (M, D): the
    labels' vectors, so picks are also far in embedding space from what is labelled. The pool is
    the `pool_factor * count` most uncertain eligible candidates. `class_counts` (C,): labels of
    each class (column) so far; a class with fewer than `min_per_class` gets picks of its own (see
    `_quota`). Fewer than `count` come back when the spacing leaves no more room. Ties are broken
    by `seed`: one seed, one answer."""
    p = np.asarray(probabilities)
    n = len(p)
    if not (len(embeddings) == len(rows) == len(cols) == n):
        raise ValueError(f"probabilities, embeddings, rows and cols differ in length "
                         f"({n}, {len(embeddings)}, {len(rows)}, {len(cols)})")
    if count < 0 or pool_factor < 1 or min_spacing_px < 0:
        raise ValueError("count >= 0, pool_factor >= 1 and min_spacing_px >= 0")
    if class_counts is not None and len(class_counts) != p.shape[1]:
        raise ValueError(f"class_counts has {len(class_counts)} classes, the probabilities {p.shape[1]}")
    rows, cols = np.asarray(rows), np.asarray(cols)
    labelled = np.zeros((0, 2)) if labelled is None else np.asarray(labelled).reshape(-1, 2)
    if count == 0 or n == 0:
        return np.zeros(0, np.int64)
    u = uncertainty(p, measure)
    eligible = np.isfinite(p).all(1) if exclude is None else np.isfinite(p).all(1) & ~np.asarray(exclude, bool)
    tie_break = np.random.default_rng(seed).random(n)
    ranked = np.lexsort((tie_break, -u))  # most uncertain first; equal ones in the seed's order
    ranked = ranked[eligible[ranked]]
    general = _pool(ranked, rows, cols, labelled, min_spacing_px, pool_factor * count)
    wanted = _quota(class_counts, min_per_class, count)
    own = {c: _pool(_likeliest(p, ranked, c, tie_break), rows, cols, labelled, min_spacing_px,
                    pool_factor * wanted.count(c)) for c in set(wanted)}
    union = np.unique(np.concatenate([general, *own.values()])).astype(np.int64)
    in_general = np.isin(union, general)
    # a class's own pick: the likeliest pixels of the class, the one least like the labels and picks;
    # the others: uncertainty x that distance over the general pool
    steps = [(np.isin(union, own[c]), np.ones(len(union))) for c in wanted]
    steps += [(in_general, u[union])] * (count - len(wanted))
    return _greedy(union, _unit(embeddings[union]), rows[union].astype(np.float64),
                   cols[union].astype(np.float64), steps, (in_general, u[union]), min_spacing_px,
                   None if labelled_embeddings is None or len(labelled_embeddings) == 0 else _unit(labelled_embeddings))


def _quota(class_counts: np.ndarray | None, min_per_class: int, count: int) -> list[int]:
    """The classes owed a pick of their own this batch, one entry a pick, in turn from the class
    with fewest labels: each class short of `min_per_class` labels, up to half the batch.

    Why: uncertainty starves the classes a head already separates well, and they keep their
    first label for ever; but a head needs a few labels of every class. The rest of the batch stays
    with uncertainty, so a batch never goes wholly to classes the head already gets right."""
    if class_counts is None or min_per_class <= 0:
        return []
    need = np.maximum(0, min_per_class - np.asarray(class_counts, np.int64))
    budget = min(int(need.sum()), count // 2)
    wanted: list[int] = []
    while len(wanted) < budget:
        for c in np.argsort(np.asarray(class_counts), kind="stable"):  # fewest first, ties by index
            if need[c] > 0 and len(wanted) < budget:
                wanted.append(int(c))
                need[c] -= 1
    return wanted


def _likeliest(p: np.ndarray, ranked: np.ndarray, c: int, tie_break: np.ndarray) -> np.ndarray:
    """Eligible candidates for a pick of class c, likeliest c first: a class owed a label needs a
    pixel that is c (the most uncertain ones the head calls c mostly are not)."""
    return ranked[np.lexsort((tie_break[ranked], -p[ranked, c]))]


def _greedy(pool: np.ndarray, z: np.ndarray, rows: np.ndarray, cols: np.ndarray,
            steps: list[tuple[np.ndarray, np.ndarray]], general: tuple[np.ndarray, np.ndarray], spacing: float,
            labelled_z: np.ndarray | None) -> np.ndarray:
    """Weighted k-center over the pool. Each step is (the part of the pool it picks from, weights):
    its pick maximises weight x cosine distance to the nearest pick or label (1 before any), then
    rules out the pool within `spacing` of it. A step whose part is used up picks as `general`."""
    distance = np.ones(len(pool))
    if labelled_z is not None:
        distance = np.clip(1.0 - (z @ labelled_z.T).max(1), 0.0, 2.0)
    alive = np.ones(len(pool), bool)
    picks: list[int] = []
    for part, weight in steps:
        if not (alive & part).any():
            part, weight = general
        allowed = alive & part
        if not allowed.any():
            break
        score = np.where(allowed, weight * (distance + 1e-6), -np.inf)  # the epsilon: duplicates rank by weight
        i = int(np.argmax(score))
        picks.append(int(pool[i]))
        alive &= (rows - rows[i]) ** 2 + (cols - cols[i]) ** 2 >= max(spacing, 1e-3) ** 2
        distance = np.minimum(distance, np.clip(1.0 - z @ z[i], 0.0, 2.0))
    return np.array(picks, np.int64)
