import numpy as np

from model.ann import IvfIndex


def _clustered(n=20000, dim=32, clusters=50, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    data = centres[rng.integers(0, clusters, n)] + rng.normal(scale=0.5, size=(n, dim)).astype(np.float32)
    return data, rng


def _exact(data, q, k, mask=None):
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    scores = unit @ (q / np.linalg.norm(q))
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return set(np.argsort(-scores)[:k].tolist())


def test_ivf_recall_and_exactness():
    data, rng = _clustered()
    index = IvfIndex.build(data)
    assert len(index) == len(data) and index.offsets[-1] == len(data)
    recalls = []
    for q in data[rng.choice(len(data), 30)] + rng.normal(scale=0.05, size=(30, data.shape[1])):
        rows, scores = index.search(q, 10, nprobe=16)
        assert (np.diff(scores) <= 1e-6).all(), "best first"
        recalls.append(len(set(rows.tolist()) & _exact(data, q, 10)) / 10)
        all_rows, _ = index.search(q, 10, nprobe=len(index.centroids))
        assert set(all_rows.tolist()) == _exact(data, q, 10), "probing every list is exact"
    assert np.mean(recalls) >= 0.95


def test_mask_is_never_violated_and_small_masks_are_exact():
    data, rng = _clustered(seed=1)
    index = IvfIndex.build(data, lists=100)
    q = data[7]
    narrow = np.zeros(len(data), bool)
    narrow[rng.choice(len(data), 300, replace=False)] = True
    rows, _ = index.search(q, 10, mask=narrow)
    assert narrow[rows].all() and set(rows.tolist()) == _exact(data, q, 10, narrow)
    broad = rng.random(len(data)) < 0.5
    rows, _ = index.search(q, 20, nprobe=8, mask=broad)
    assert broad[rows].all() and len(rows) == 20
    none = np.zeros(len(data), bool)
    assert len(index.search(q, 5, mask=none)[0]) == 0
