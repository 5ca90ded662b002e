"""An in-memory inverted-file index for cosine search, for processes that query many times.

Vectors are normalised and stored float32, sorted by their k-means list so that probing a list is a
contiguous slice: a query scores the centroids, scans the best `nprobe` lists exactly, and takes the
top k. Scores are exact cosines, so recall depends only on how many lists are probed. A boolean mask
(the prefilter) restricts rows; when it keeps few rows they are scanned directly, which is exact and
faster than probing lists that hold almost none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

EXACT_SCAN_MAX_ROWS = 50_000


def normalise(x: np.ndarray) -> np.ndarray:
    """Unit length along the last axis (zero vectors stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def kmeans(vectors: np.ndarray, lists: int, iterations: int = 10, sample: int = 256, seed: int = 0) -> np.ndarray:
    """Spherical k-means centroids (lists, dim) on a sample of at most `sample` points per list."""
    rng = np.random.default_rng(seed)
    points = torch.from_numpy(vectors[rng.choice(len(vectors), min(len(vectors), lists * sample), replace=False)])
    centroids = points[torch.from_numpy(rng.choice(len(points), lists, replace=False))].clone()
    for _ in range(iterations):
        assign = (points @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        empty = torch.bincount(assign, minlength=lists) == 0
        sums[empty] = points[torch.from_numpy(rng.choice(len(points), int(empty.sum()), replace=False))]
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids.numpy()


@dataclass
class IvfIndex:
    centroids: np.ndarray  # (lists, dim)
    vectors: np.ndarray  # (n, dim) normalised, sorted by list
    order: np.ndarray  # (n,) original row of each sorted vector
    offsets: np.ndarray  # (lists + 1,) start of each list in the sorted arrays

    @classmethod
    def build(cls, vectors: np.ndarray, lists: int | None = None, seed: int = 0) -> "IvfIndex":
        """`lists` defaults to sqrt(n), the usual balance of centroid scoring against list scans."""
        data = normalise(np.asarray(vectors, np.float32))
        lists = lists or max(1, int(round(math.sqrt(len(data)))))
        lists = min(lists, len(data))
        centroids = kmeans(data, lists, seed=seed)
        assign = np.empty(len(data), np.int64)
        c = torch.from_numpy(centroids)
        for start in range(0, len(data), 65536):  # bounded memory for the (rows x lists) scores
            assign[start:start + 65536] = (torch.from_numpy(data[start:start + 65536]) @ c.T).argmax(dim=1).numpy()
        order = np.argsort(assign, kind="stable")
        offsets = np.searchsorted(assign[order], np.arange(lists + 1))
        return cls(centroids, np.ascontiguousarray(data[order]), order, offsets)

    def __len__(self) -> int:
        return len(self.order)

    def search(self, query: np.ndarray, k: int, nprobe: int = 32, mask: np.ndarray | None = None,
               index_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and cosine similarities of the best k (fewer if the mask keeps fewer).

        Rows are original row ids, and `mask` is indexed by them; with `index_order` both are
        positions in the index's list order (`order[position]` is the original row), which callers
        that keep their own columns in that order use to skip two gathers."""
        q = normalise(np.asarray(query, np.float32))
        sorted_mask = mask if mask is None or index_order else mask[self.order]
        if sorted_mask is not None and sorted_mask.sum() <= EXACT_SCAN_MAX_ROWS:
            rows = np.nonzero(sorted_mask)[0]
            scores = self.vectors[rows] @ q
            return self._top(rows, scores, k, index_order)
        probe = np.argpartition(-(self.centroids @ q), min(nprobe, len(self.centroids)) - 1)[:nprobe]
        rows_parts, score_parts = [], []
        for lst in probe:
            a, b = self.offsets[lst], self.offsets[lst + 1]
            if a == b:
                continue
            scores = self.vectors[a:b] @ q
            rows = np.arange(a, b)
            if sorted_mask is not None:
                keep = sorted_mask[a:b]
                scores, rows = scores[keep], rows[keep]
            rows_parts.append(rows)
            score_parts.append(scores)
        if not rows_parts:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        return self._top(np.concatenate(rows_parts), np.concatenate(score_parts), k, index_order)

    def _top(self, rows: np.ndarray, scores: np.ndarray, k: int, index_order: bool) -> tuple[np.ndarray, np.ndarray]:
        if len(rows) > k:
            best = np.argpartition(-scores, k - 1)[:k]
            rows, scores = rows[best], scores[best]
        ranked = np.argsort(-scores, kind="stable")
        rows = rows[ranked]
        return (rows if index_order else self.order[rows]), scores[ranked]
