"""The pixels a pretraining run learns from, drawn evenly over the kinds of land a region holds
instead of in proportion to their area.

Drawn uniformly, a pool holds a region's covers as the land does: a lake or a town that is 5% of
the pixels is 5% of the pool. `cluster_balanced` draws more candidates than it keeps, groups them by
k-means on their seasonal band means (no labels), and keeps the same number from each group where
the group has them. It was written to test whether that is why one labelled water pixel tells water
from the rest at F1 0.71 on the demo's embeddings against 0.99 on the raw percentiles. It did not
move the few-shot accuracy over three seeds (README, "Few-shot"), so `encoder_checkpoint` draws
uniformly unless `pool_clusters` is set.
"""

from __future__ import annotations

import numpy as np

from model.fewshot import Standardiser
from model.series import PixelSeries

SEASONS = 4  # quarters of the year: enough to tell a crop's season from another's


def seasonal_means(series: PixelSeries) -> np.ndarray:
    """(N, 4 x 12) the mean of each S2 band and S1 channel over each quarter's valid observations
    (0 where a quarter has none): what a pixel looks like through its year, in one cheap pass
    (the few-shot baseline's percentiles cost some 100 times as much)."""
    parts = []
    for values, valid, doy in ((series.s2, series.s2_valid, series.s2_doy), (series.s1, series.s1_valid, series.s1_doy)):
        season = np.clip((doy.astype(np.int32) - 1) * SEASONS // 366, 0, SEASONS - 1)
        for q in range(SEASONS):
            weight = (valid & (season == q)).astype(np.float32)
            total = np.einsum("nt,ntc->nc", weight, values.astype(np.float32))
            parts.append(total / np.maximum(weight.sum(axis=1), 1)[:, None])
    return np.concatenate(parts, axis=1)


def cluster_balanced(candidates: PixelSeries, count: int, clusters: int, rng: np.random.Generator) -> PixelSeries:
    """`count` pixels of `candidates`, as evenly as they allow over `clusters` k-means groups of
    their seasonal means: each group gives its share, and what a small group lacks the others
    give (round robin over the groups, each group's pixels in random order)."""
    from sklearn.cluster import KMeans

    if len(candidates) <= count or clusters < 2:
        return candidates.subset(rng.permutation(len(candidates))[:count])
    features = seasonal_means(candidates)
    features = Standardiser().fit(features)(features)
    groups = KMeans(n_clusters=min(clusters, len(candidates)), n_init=3,
                    random_state=int(rng.integers(2**31))).fit_predict(features)
    members, ranks, ties = [], [], []  # round robin: by rank within the group, ties broken at random
    for group in np.unique(groups):
        shuffled = rng.permutation(np.nonzero(groups == group)[0])
        members.append(shuffled)
        ranks.append(np.arange(len(shuffled)))
        ties.append(rng.random(len(shuffled)))
    order = np.lexsort((np.concatenate(ties), np.concatenate(ranks)))
    return candidates.subset(np.sort(np.concatenate(members)[order[:count]]))
