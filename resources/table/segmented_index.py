"""The vector index built in segments, on as many machines as there are segments: Lance's own
distributed index path (pylance's `create_index_uncommitted` / `commit_existing_index_segments`).

Why segments: building the IVF-RaBitQ index costs rows x lists, and past about 1e8 rows a year
(`docs/scale.md`) one machine takes hours. Lance splits the build by fragments. A driver trains
the shared model once, on a sample: the IVF centroids, and one RaBitQ rotation (`build_rq_model`),
so that every segment assigns and encodes vectors alike. Each worker then encodes only its own
fragments into one uncommitted segment under `_indices/`. The driver merges the segments into one
physical index (cheap: lists are concatenated, nothing is re-encoded) and commits it in one
manifest update, so readers see the old index or the new one, never a mix. A query then probes
one index, as if it had been built on one machine.

In the pipeline, each worker is a step of `embedding_index` (`tessera_assets.vectors.assets`):
Dagster's dynamic outputs fan the segments out, and under an executor that runs steps in their
own pods each segment is built on its own machine. `TableStore.refresh_index` runs the same steps
one after another where there is no Dagster (benches, notebooks).

pylance is imported here only: a search never needs it. Its Rust log goes to stderr at WARN by
default, a line per empty IVF list; `LANCE_LOG` is set to `error` unless the user set it, so a
terminal shows what failed, not what k-means noticed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRIC = "cosine"
KMEANS_SAMPLE_PER_LIST = 64  # rows a list that k-means trains on
KMEANS_ITERATIONS = 20
os.environ.setdefault("LANCE_LOG", "error")  # read once, when lance is first imported (module doc)


@dataclass(frozen=True)
class IndexModel:
    """What every segment of one index shares; small and picklable (it travels between steps)."""

    name: str  # the index's name once committed (it records the size it was trained for)
    lists: int
    num_bits: int
    centroids: np.ndarray  # (lists, dim) float32
    rotation: str  # the RaBitQ rotation, as Lance's JSON


@dataclass(frozen=True)
class SegmentPlan:
    """A trained model, the table version it was planned on (every worker builds on that snapshot),
    and the fragment groups, one segment (one worker) each."""

    model: IndexModel
    version: int
    groups: list[list[int]] = field(default_factory=list)


def open_dataset(uri: str, storage_options: dict[str, str] | None = None, version: int | None = None):
    """The table's Lance dataset, opened by pylance (the same folder or object prefix lancedb writes)."""
    import lance

    return lance.dataset(uri, version=version, storage_options=storage_options or None)


def train_model(dataset, column: str, name: str, lists: int, num_bits: int) -> IndexModel:
    """The shared model: k-means centroids on a sample of the whole table, and one RaBitQ rotation."""
    from lance.indices import IndicesBuilder
    from lance.lance import indices

    ivf = IndicesBuilder(dataset, column).train_ivf(num_partitions=lists, distance_type=METRIC,
                                                    sample_rate=KMEANS_SAMPLE_PER_LIST,
                                                    max_iters=KMEANS_ITERATIONS)
    centroids = ivf.centroids.values.to_numpy(zero_copy_only=False).astype(np.float32)
    dim = ivf.centroids.type.list_size
    return IndexModel(name=name, lists=ivf.num_partitions, num_bits=num_bits,
                      centroids=centroids.reshape(-1, dim),
                      rotation=indices.build_rq_model(dimension=dim, num_bits=num_bits))


def fragment_groups(dataset, segments: int) -> list[list[int]]:
    """The table's fragments in at most `segments` groups of about equal rows (greedy, largest first)."""
    fragments = sorted(((f.count_rows(), f.fragment_id) for f in dataset.get_fragments()), reverse=True)
    groups: list[tuple[int, list[int]]] = [(0, []) for _ in range(max(1, min(segments, len(fragments))))]
    for rows, fragment_id in fragments:
        groups.sort(key=lambda g: g[0])
        groups[0] = (groups[0][0] + rows, groups[0][1] + [fragment_id])
    return [sorted(ids) for _, ids in groups if ids]


def build_segment(dataset, column: str, model: IndexModel, fragment_ids: list[int]) -> Any:
    """One worker's share: its fragments encoded with the shared model into one uncommitted segment
    (Lance's `Index` metadata, picklable, for `commit`)."""
    return dataset.create_index_uncommitted(
        column, "IVF_RQ", metric=METRIC, num_partitions=model.lists, num_bits=model.num_bits,
        ivf_centroids=model.centroids, rabitq_model=model.rotation, fragment_ids=list(fragment_ids))


def commit(dataset, column: str, model: IndexModel, segments: list[Any], replaces: str | None) -> None:
    """Merge the workers' segments into one index, publish it, and drop the index it replaces."""
    if not segments:
        raise ValueError(f"no segments to commit for index {model.name}: every worker's segment is needed")
    merged = dataset.merge_existing_index_segments(list(segments)) if len(segments) > 1 else segments[0]
    dataset = dataset.commit_existing_index_segments(model.name, column, [merged])
    if replaces is not None and replaces != model.name:
        dataset.drop_index(replaces)
