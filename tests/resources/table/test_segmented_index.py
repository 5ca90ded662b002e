"""The vector index built in segments (Lance's distributed path): workers in separate processes, each
on its own fragments, published as one index that searches like one built in one piece."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from resources.table.segmented_index import fragment_groups
from resources.table.similarity import Similarity, search_report
from resources.table.store import TableStore
from resources.testing.synthetic_table import clustered, synthetic_rows

ROWS = 2000  # a partition; three of them make about a dozen fragments of 500 rows


def _store(uri: str, segments: int) -> TableStore:
    return TableStore(uri=uri, ann_min_rows=1000, rows_per_partition=100, rows_per_fragment=500,
                      index_segments=segments, exact_scan_max_rows=0)


def _write(store: TableStore, seed: int) -> np.ndarray:
    vectors = clustered(3 * ROWS, np.random.default_rng(seed))
    for i, region in enumerate("abc"):
        store.write_partition(2022, region, synthetic_rows(vectors[i * ROWS:(i + 1) * ROWS], region=region).to_batches(), 128)
    return vectors


def _build_apart(uri: str, plan, group: list[int]):
    """One worker: its own process, its own connection, only the plan it was handed."""
    return _store(uri, 3).build_index_segment(plan, group)


def _recall(store: TableStore, vectors: np.ndarray) -> float:
    similarity = Similarity(store)
    hits = []
    for q in vectors[::397][:12]:
        approx = similarity.search(q, k=10)
        assert search_report(approx)["index"].startswith("vector_ivfrq")
        exact = similarity.search(q, k=10, exact=True)
        hits.append(len(set(approx["key"].to_pylist()) & set(exact["key"].to_pylist())) / 10)
    return float(np.mean(hits))


def test_segments_built_in_other_processes_publish_one_index_as_good_as_one_piece(tmp_path):
    store = _store(str(tmp_path / "db"), 3)
    vectors = _write(store, 0)
    plan = store.plan_index()
    assert plan.action == "trained" and len(plan.groups) == 3
    fragments = [f.fragment_id for f in store.dataset(plan.segments.version).get_fragments()]
    assert sorted(sum(plan.groups, [])) == sorted(fragments), "every fragment in exactly one segment"
    plan = pickle.loads(pickle.dumps(plan))  # what the workers are sent
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:  # lance runs threads: no fork
        segments = list(pool.map(_build_apart, [store.uri] * 3, [plan] * 3, plan.groups))
    report = store.publish_index(plan, segments)
    assert report.action == "trained" and report.unindexed_rows == 0 and report.indexed_rows == 3 * ROWS
    assert report.parameters["segments_built"] == 3
    (index,) = [ix for ix in store.table().list_indices() if ix.columns == ["vector"]]
    assert index.name == plan.segments.model.name and index.num_segments == 1

    whole = _store(str(tmp_path / "whole"), 1)
    _write(whole, 0)
    assert whole.refresh_index().parameters["segments_built"] == 1
    segmented, one_piece = _recall(store, vectors), _recall(whole, vectors)
    assert segmented >= 0.9 and one_piece >= 0.9 and abs(segmented - one_piece) <= 0.1, (segmented, one_piece)


def test_a_partition_rewritten_while_segments_build_is_still_found(tmp_path):
    store = _store(str(tmp_path / "db"), 2)
    _write(store, 1)
    plan = store.plan_index()
    segments = [store.build_index_segment(plan, group) for group in plan.groups]
    fresh = clustered(ROWS, np.random.default_rng(9))
    store.write_partition(2022, "b", synthetic_rows(fresh, region="b").to_batches(), 128)  # after the plan's snapshot
    store.publish_index(plan, segments)
    found = Similarity(store).search(fresh[7], k=1)
    assert found["region"][0].as_py() == "b" and found["similarity"][0].as_py() > 0.999
    assert store.table().count_rows() == 3 * ROWS, "no row lost or doubled"
    assert store.refresh_index().unindexed_rows == 0


def test_fragments_are_shared_out_evenly_and_none_twice():
    class Fragment:
        def __init__(self, fragment_id: int, rows: int):
            self.fragment_id, self.rows = fragment_id, rows

        def count_rows(self) -> int:
            return self.rows

    class Dataset:
        def get_fragments(self):
            return [Fragment(i, rows) for i, rows in enumerate([900, 100, 500, 500, 400, 600, 1000])]

    groups = fragment_groups(Dataset(), 3)
    assert sorted(sum(groups, [])) == list(range(7))
    sizes = sorted(sum([900, 100, 500, 500, 400, 600, 1000][i] for i in g) for g in groups)
    assert max(sizes) == 1400, sizes  # the best split's largest (sums are 100s adding up to 4000)
    assert sorted(fragment_groups(Dataset(), 20)) == [[i] for i in range(7)], "never more segments than fragments"


def test_publishing_no_segment_of_a_trained_plan_is_refused(tmp_path):
    store = _store(str(tmp_path / "db"), 2)
    _write(store, 2)
    plan = store.plan_index()
    with pytest.raises(ValueError, match="every worker's segment"):
        store.publish_index(plan, [])
    assert not [ix for ix in store.table().list_indices() if ix.columns == ["vector"]], "nothing half-published"
