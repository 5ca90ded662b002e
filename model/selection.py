"""Which observations each pixel's sequence holds, for every TESSERA family.

v1.0 sees a fixed number of steps per pixel (`model.sampling`). v1.1 and the v2 students see every
valid observation: the count n is rounded up to a bucket (multiples of 8 up to 256), and the rank
list into the valid steps is padded or thinned to the bucket in a version-specific way. The row order
matters to v1.1 (its GRU pooling reads the sequence in order) and not to v2 (plain attention pooling),
but both are reproduced exactly: valid steps in stored order, S1 ascending before descending,
duplicates appended after the real sequence. Everything is vectorised over pixels; the rank lists
depend only on (n, bucket), so they are computed once per distinct pair.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np

from model.config import ModelConfig, Normalisation
from model.sampling import MODES, valid_first
from model.series import PixelSeries

DEFAULT_BUCKETS = tuple(range(8, 257, 8))


def buckets_up_to(largest: int) -> tuple[int, ...]:
    return tuple(b for b in DEFAULT_BUCKETS if b < largest) + (largest,)


def bucket_lengths(counts: np.ndarray, buckets: tuple[int, ...], empty: int) -> np.ndarray:
    """The smallest bucket >= n (the largest when n exceeds it), `empty` where n = 0."""
    edges = np.asarray(buckets)
    lengths = edges[np.minimum(np.searchsorted(edges, counts, side="left"), len(edges) - 1)]
    return np.where(counts == 0, empty, lengths)


def _middle_of_chunks(n: int, chunks: int) -> np.ndarray:
    """`numpy.array_split(arange(n), chunks)`, each chunk's element at floor(len / 2)."""
    big, small = divmod(n, chunks)
    sizes = np.full(chunks, big)
    sizes[:small] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return starts + sizes // 2


@functools.lru_cache(maxsize=4096)
def v1_1_ranks(n: int, length: int) -> np.ndarray:
    """v1.1: thin by chunk middles above the bucket; below, append the interior points of an evenly
    spaced grid (rounded half to even) after the real sequence."""
    if n >= length:
        return np.arange(n) if n == length else _middle_of_chunks(n, length)
    extra = length - n
    grid = np.linspace(0, n - 1, extra + 2)[1:-1]
    fill = np.clip(np.rint(grid).astype(np.int64), 0, n - 1)
    return np.concatenate([np.arange(n), fill])


@functools.lru_cache(maxsize=4096)
def v2_ranks(n: int, length: int) -> np.ndarray:
    """v2: thin by float64 linspace floors above the bucket; below, append chunk middles when the
    fill fits in the sequence, else cycle through it."""
    if n >= length:
        return np.arange(n) if n == length else np.floor(np.linspace(0, n - 1, length)).astype(np.int64)
    fill_count = length - n
    fill = _middle_of_chunks(n, fill_count) if fill_count <= n else np.arange(fill_count) % n
    return np.concatenate([np.arange(n), fill])


RANKS = {"v1.1": v1_1_ranks, "v2": v2_ranks}


def rank_table(counts: np.ndarray, length: int, family: str) -> np.ndarray:
    """(N, length) ranks into each pixel's valid steps; every pixel has n >= 1."""
    table = np.empty((len(counts), length), np.int64)
    ranks = RANKS[family]
    for n in np.unique(counts):
        table[counts == n] = ranks(int(n), length)
    return table


def z_score(values: np.ndarray, mean, std) -> np.ndarray:
    """The reference's standardisation, `(x - mean) / (std + 1e-9)` in float32."""
    mean = np.asarray(mean, np.float32)
    return (values.astype(np.float32) - mean) / (np.asarray(std, np.float32) + np.float32(1e-9))


def normalise_s1(values: np.ndarray, descending: np.ndarray, norm: Normalisation) -> np.ndarray:
    """S1 (..., 2) z-scored with its orbit direction's constants (v1.0's are the same for both)."""
    asc = z_score(values, norm.s1_asc_mean, norm.s1_asc_std)
    desc = z_score(values, norm.s1_desc_mean, norm.s1_desc_std)
    return np.where(descending[..., None], desc, asc)


@dataclass
class SequenceGroup:
    """Pixels whose sequences have the same lengths, ready for one batched forward pass:
    z-scored bands (n, L, bands) and raw DOY (n, L) per sensor."""

    index: np.ndarray
    s2: np.ndarray
    s2_doy: np.ndarray
    s1: np.ndarray
    s1_doy: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def slice(self, start: int, stop: int) -> "SequenceGroup":
        return SequenceGroup(*(getattr(self, f.name)[start:stop] for f in fields(self)))


@dataclass
class EncoderInputs:
    """The selected sequences of a set of pixels; pixels in no group get no embedding."""

    count: int
    groups: list[SequenceGroup]

    @property
    def index(self) -> np.ndarray:
        return np.concatenate([g.index for g in self.groups]) if self.groups else np.zeros(0, np.int64)


def select_inputs(series: PixelSeries, config: ModelConfig, norm: Normalisation, mode: str = "auto",
                  rng: np.random.Generator | None = None) -> EncoderInputs:
    """Every pixel's sequences as its family builds them. v1.0 needs both sensors; v1.1 and v2
    embed a pixel with either (the missing sensor as zero rows) and skip only pixels with none."""
    mode = resolve_mode(config, mode)
    if config.family == "v1.0":
        index = np.nonzero(series.has_both)[0]
        s2, s1, desc = series.subset(index).sampled(config.sample_steps, mode, rng)
        group = SequenceGroup(index, z_score(s2[..., :-1], norm.s2_mean, norm.s2_std), s2[..., -1],
                              normalise_s1(s1[..., :-1], desc, norm), s1[..., -1])
        return EncoderInputs(len(series), [group] if len(index) else [])
    count = len(series)
    index = np.nonzero(series.has_any)[0]
    series = series.subset(index)
    s2_valid, s1_valid = series.s2_valid.astype(bool), series.s1_valid.astype(bool)
    desc = series.descending()
    buckets = buckets_up_to(config.max_bucket)
    empty = buckets[0] if config.family == "v1.1" else 1
    n2, n1 = s2_valid.sum(1), s1_valid.sum(1)
    l2, l1 = bucket_lengths(n2, buckets, empty), bucket_lengths(n1, buckets, empty)
    order2, order1 = valid_first(s2_valid), valid_first(s1_valid, desc)

    def s2_z(rows: np.ndarray, members: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return z_score(rows, norm.s2_mean, norm.s2_std)

    def s1_z(rows: np.ndarray, members: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return normalise_s1(rows, np.take_along_axis(desc[members], steps, axis=1), norm)

    groups = []
    pairs = np.unique(np.stack([l2, l1], axis=1), axis=0)
    for length2, length1 in pairs:
        members = np.nonzero((l2 == length2) & (l1 == length1))[0]
        s2_rows, s2_days = _sequences(series.s2, series.s2_doy, order2, n2, members, int(length2), config.family, s2_z)
        s1_rows, s1_days = _sequences(series.s1, series.s1_doy, order1, n1, members, int(length1), config.family, s1_z)
        groups.append(SequenceGroup(index[members], s2_rows, s2_days, s1_rows, s1_days))
    return EncoderInputs(count, groups)


def _sequences(values: np.ndarray, doy: np.ndarray, order: np.ndarray, counts: np.ndarray, members: np.ndarray,
               length: int, family: str, normalise) -> tuple[np.ndarray, np.ndarray]:
    """z-scored (n, length, bands) rows and (n, length) DOYs of `members`; pixels without an
    observation get zero rows. Only the selected rows are converted and z-scored."""
    counts = counts[members]
    if values.shape[1] == 0:  # a sensor with no step at all in this series
        return np.zeros((len(counts), length, values.shape[2]), np.float32), np.zeros((len(counts), length), np.float32)
    ranks = np.zeros((len(counts), length), np.int64)
    present = counts > 0
    ranks[present] = rank_table(counts[present], length, family)
    steps = np.take_along_axis(order[members], ranks, axis=1)
    rows = normalise(np.take_along_axis(values[members], steps[:, :, None], axis=1), members, steps)
    days = np.take_along_axis(doy[members], steps, axis=1).astype(np.float32)
    rows[~present] = 0
    days[~present] = 0
    return rows, days


def resolve_mode(config: ModelConfig, mode: str) -> str:
    """v1.0 samples (`evenly-spaced` by default, or `random`); v1.1 and v2 feed all observations."""
    if config.family == "v1.0":
        mode = "evenly-spaced" if mode in ("auto", "", None) else mode
        if mode not in MODES:
            raise ValueError(f"unknown sampling mode {mode!r} for v1.0 weights: use one of {', '.join(MODES)}")
        return mode
    if mode not in ("auto", "", None, "all"):
        raise ValueError(f"TESSERA {config.family} sees all valid observations in buckets; sampling mode "
                         f"{mode!r} applies to v1.0 weights only (use 'auto')")
    return "all"
