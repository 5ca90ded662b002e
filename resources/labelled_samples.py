"""Labelled pixels joined with their embeddings and, where raw partitions exist, raw-input baseline
features: what every few-shot head learns from. The `fewshot_samples` asset and the explorer's Train
both make their samples here, so the same labels give the same samples, the same head and the same
map either way."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from model.fewshot import baseline_features
from model.quantise import dequantise
from resources.errors import single_encoder
from resources.labels import LabelFeature, LabelsError, labelled_pixels
from resources.storage.pixel_series import read_window
from resources.regions import PartitionId
from resources.storage.data_root import EmbeddingPartition, RawPartition

COLUMNS = ("label", "value", "group", "year", "region", "row", "col", "embedding", "baseline")
UNLABELLED_COLUMNS = ("year", "region", "row", "col", "embedding", "baseline")
# about this many unlabelled pixels are drawn beside the labels, spread evenly over the blocks that
# hold labels (read for the labels anyway: no extra read): what a head with few labels a class
# self-trains on (fewer where those blocks have fewer pixels with data)
UNLABELLED_PIXELS = 2000
RawReader = Callable[[int, str], "tuple[RawPartition, RawPartition] | None"]


@dataclass
class LabelledSamples:
    """One row per labelled pixel with data; `baseline` rows are None without raw partitions, `value`
    rows None unless the labels carry a value field."""

    encoder_id: str
    columns: dict[str, list] = field(default_factory=lambda: {k: [] for k in COLUMNS})
    labels_outside: int = 0  # labels that fall in no partition
    unlabelled: dict[str, list] = field(default_factory=lambda: {k: [] for k in UNLABELLED_COLUMNS})

    @property
    def x(self) -> np.ndarray:
        return np.array(self.columns["embedding"], np.float32)

    @property
    def y(self) -> np.ndarray:
        return np.array(self.columns["label"])

    @property
    def unlabelled_x(self) -> np.ndarray | None:
        """(M, dim) embeddings of the unlabelled pixels drawn beside the labels (None: none drawn,
        as where every pixel with data is labelled)."""
        return np.array(self.unlabelled["embedding"], np.float32) if self.unlabelled["embedding"] else None

    def class_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.columns["label"], return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    def to_table(self) -> pa.Table:
        return self._table(self.columns)

    def unlabelled_table(self) -> pa.Table:
        return self._table(self.unlabelled)

    def _table(self, columns: dict[str, list]) -> pa.Table:
        table = pa.table({k: (pa.array([None if v is None else v.tolist() for v in vals], pa.list_(pa.float32()))
                              if k in ("embedding", "baseline") else pa.array(vals, pa.float64() if k == "value" else None))
                              for k, vals in columns.items()})
        return table.replace_schema_metadata({b"encoder_id": self.encoder_id.encode()})


def gather_samples(features: list[LabelFeature], partitions: dict[tuple[int, str], EmbeddingPartition],
                   default_year: int | None = None, raw: RawReader | None = None,
                   encoder_id: str | None = None) -> LabelledSamples:
    """The pixels `features` label in `partitions` ((year, region) -> embeddings), each labelled
    feature matched to the partitions of its year (`default_year` for features without one). All
    partitions used must share one encoder (`encoder_id` picks one when several made them). No
    samples (and no encoder) when no label falls in any partition."""
    missing_year = [f for f in features if (f.year or default_year) is None]
    if missing_year:
        f = missing_year[0]
        raise LabelsError(f"label {f.index} ({f.label}) has no year: set `year` in the run config")
    wanted: dict[tuple[int, str], list[tuple[int, int, LabelFeature]]] = {}
    covered = [0] * len(features)
    for (year, region), partition in partitions.items():
        of_year = [i for i, f in enumerate(features) if (f.year or default_year) == year]
        wanted[(year, region)], hits = labelled_pixels([features[i] for i in of_year], partition.grid,
                                                       str(PartitionId(year, region)))
        for i, n in zip(of_year, hits):
            covered[i] += n
    if not any(wanted.values()):
        return LabelledSamples("", labels_outside=len(features))
    encoders = {key: partitions[key].encoder_id for key, pixels in wanted.items() if pixels}
    chosen = single_encoder(set(encoders.values()), encoder_id, "the labelled embeddings partitions")
    samples = LabelledSamples(chosen, labels_outside=sum(n == 0 for n in covered))
    used = {key: _rows_cols(pixels) for key, pixels in wanted.items() if pixels and encoders[key] == chosen}
    blocks = {key: _label_blocks(partitions[key], *places) for key, places in used.items()}
    per_block = math.ceil(UNLABELLED_PIXELS / max(1, sum(len(b) for b in blocks.values())))
    # a place labelled in any year is never an unlabelled pixel of another: no test pixel is seen
    labelled = {region: np.concatenate([used[key] for key in used if key[1] == region], axis=1)
                for region in {region for _, region in used}}
    for (year, region), places in used.items():
        _add_partition(samples, year, region, partitions[(year, region)], wanted[(year, region)], places,
                       raw(year, region) if raw else None, blocks[(year, region)], per_block, labelled[region])
    return samples


def _rows_cols(pixels: list[tuple[int, int, LabelFeature]]) -> np.ndarray:
    """(2, N): the rows and columns of labelled pixels."""
    return np.array([[p[0] for p in pixels], [p[1] for p in pixels]], int).reshape(2, -1)


def _inside(window, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Which of the pixels at (rows, cols) lie in `window`."""
    r0, c0 = int(window.row_off), int(window.col_off)
    return (rows >= r0) & (rows < r0 + window.height) & (cols >= c0) & (cols < c0 + window.width)


def _label_blocks(embeddings: EmbeddingPartition, rows: np.ndarray, cols: np.ndarray) -> list:
    """(window, indices of the labelled pixels inside it) of each 512-pixel block that holds labels."""
    found = []
    for window in embeddings.grid.blocks(512):
        inside = np.nonzero(_inside(window, rows, cols))[0]
        if len(inside):
            found.append((window, inside))
    return found


def _add_partition(samples: LabelledSamples, year: int, region: str, embeddings: EmbeddingPartition,
                   pixels: list[tuple[int, int, LabelFeature]], places: np.ndarray, raw, blocks: list,
                   per_block: int, labelled: np.ndarray) -> None:
    """The labelled pixels of one partition (`places`: their rows and columns) and `per_block`
    unlabelled pixels beside them (drawn the same on every run, none of the region's `labelled`
    places, of any year), one read per block that holds labels."""
    columns = samples.columns
    rows, cols = places
    for window, inside in blocks:
        r0, c0 = int(window.row_off), int(window.col_off)
        q, scales = embeddings.read(window)
        rr, cc = rows[inside] - r0, cols[inside] - c0
        ok = np.isfinite(scales[rr, cc])
        inside, rr, cc = inside[ok], rr[ok], cc[ok]
        width = int(window.width)
        here = _inside(window, *labelled)
        taken = (labelled[0][here] - r0) * width + (labelled[1][here] - c0)
        with_data = np.setdiff1d(np.flatnonzero(np.isfinite(scales)), taken)
        draw = np.random.default_rng([year, r0, c0, zlib.crc32(region.encode())]).choice(
            with_data, min(per_block, len(with_data)), replace=False)
        ur, uc = np.divmod(np.sort(draw), width)
        vectors = dequantise(q[rr, cc], scales[rr, cc])
        base = base_unlabelled = None
        if raw:
            series = read_window(*raw, window)
            base = baseline_features(series.subset(rr * width + cc))
            base_unlabelled = baseline_features(series.subset(ur * width + uc))
        _add_unlabelled(samples, year, region, r0 + ur, c0 + uc, dequantise(q[ur, uc], scales[ur, uc]), base_unlabelled)
        for i, j in enumerate(inside):
            feature = pixels[j][2]
            columns["label"].append(feature.label)
            columns["value"].append(feature.value)
            columns["group"].append(f"{year}:{feature.group}")
            columns["year"].append(year)
            columns["region"].append(region)
            columns["row"].append(int(rows[j]))
            columns["col"].append(int(cols[j]))
            columns["embedding"].append(vectors[i])
            columns["baseline"].append(None if base is None else base[i])


def _add_unlabelled(samples: LabelledSamples, year: int, region: str, rows: np.ndarray, cols: np.ndarray,
                    vectors: np.ndarray, base: np.ndarray | None) -> None:
    columns, count = samples.unlabelled, len(rows)
    columns["year"].extend([year] * count)
    columns["region"].extend([region] * count)
    columns["row"].extend(int(r) for r in rows)
    columns["col"].extend(int(c) for c in cols)
    columns["embedding"].extend(vectors)
    columns["baseline"].extend([None] * count if base is None else base)
