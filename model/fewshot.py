"""Few-shot classification on embeddings (or on a raw-input baseline), and an honest k-shot protocol.

Heads: logistic regression (default), k nearest neighbours, a small MLP (PyTorch), and a random
forest (scikit-learn, optional). The protocol draws k labelled samples per class, trains, and scores
on held-out samples whose group (a polygon, or the point itself) was not used for training, repeated
over many draws; it reports accuracy, macro-F1 and per-class F1 with their spread.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from model.series import PixelSeries

HEADS = ("logistic", "knn", "mlp", "forest")
S2_PERCENTILES = (10, 25, 50, 75, 90)


def baseline_features(series: PixelSeries) -> np.ndarray:
    """Per-band annual percentiles of valid S2 observations and S1 median/p10/p90/std: the usual
    hand-made features of a pixel's year, to compare embeddings against."""
    def percentiles(values: np.ndarray, valid: np.ndarray, qs) -> np.ndarray:
        x = np.where(valid[:, :, None], values.astype(np.float32), np.nan)
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out = [np.nanpercentile(x, q, axis=1) for q in qs]
                if values.shape[-1] == 2:
                    out.append(np.nanstd(x, axis=1))
        return np.concatenate(out, axis=1)

    s2 = percentiles(series.s2, series.s2_valid, S2_PERCENTILES)
    s1 = percentiles(series.s1, series.s1_valid, (10, 50, 90))
    return np.concatenate([s2, s1], axis=1)


class Standardiser:
    def fit(self, x: np.ndarray) -> "Standardiser":
        self.mean = np.nanmean(x, axis=0)
        self.std = np.nanstd(x, axis=0) + 1e-6
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.nan_to_num((x - self.mean) / self.std, nan=0.0).astype(np.float32)


@dataclass
class Classifier:
    """A fitted head: `predict_proba` gives (N, classes) in the order of `classes`."""

    head: str
    classes: np.ndarray = field(default_factory=lambda: np.array([]))

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> "Classifier":
        if self.head not in HEADS:
            raise ValueError(f"unknown classifier {self.head!r}: choose one of {', '.join(HEADS)}")
        self.classes, target = np.unique(y, return_inverse=True)
        self.scale = Standardiser().fit(x)
        xs = self.scale(x)
        torch.manual_seed(seed)
        if self.head == "knn":
            self.train_x, self.train_y = xs, target
        elif self.head == "forest":
            try:
                from sklearn.ensemble import RandomForestClassifier
            except ImportError as exc:  # pragma: no cover - an optional dependency
                raise ValueError("the forest head needs scikit-learn: pip install scikit-learn") from exc
            self.model = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=-1).fit(xs, target)
        else:
            self.model = self._train_torch(torch.from_numpy(xs), torch.from_numpy(target), len(self.classes))
        return self

    def _train_torch(self, x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.nn.Module:
        if self.head == "logistic":
            model = torch.nn.Linear(x.shape[1], classes)
            optimiser = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

            def closure():
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y) + 1e-3 * model.weight.pow(2).sum()
                loss.backward()
                return loss

            optimiser.step(closure)
            return model.eval()
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                    torch.nn.Linear(64, classes))
        optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
        for _ in range(300):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
        return model.eval()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        xs = self.scale(x)
        if self.head == "knn":
            # at most 5 neighbours, and no more than the rarest class has: with 1 label per class, 1-NN
            k = int(max(1, min(5, np.bincount(self.train_y).min())))
            nearest = self._nearest(xs, k)
            votes = np.zeros((len(xs), len(self.classes)), np.float32)
            np.add.at(votes, (np.repeat(np.arange(len(xs)), k), self.train_y[nearest].ravel()), 1.0)
            return votes / k
        if self.head == "forest":
            return self.model.predict_proba(xs).astype(np.float32)
        with torch.no_grad():
            return torch.softmax(self.model(torch.from_numpy(xs)), dim=1).numpy()

    KNN_CHUNK_VALUES = 1 << 22  # distances held at once (16 MB of float32), whatever the counts

    def _nearest(self, xs: np.ndarray, k: int) -> np.ndarray:
        """Indices of the k nearest training rows of each row of xs, by |a|^2 - 2ab + |b|^2 over
        chunks of rows: memory is bounded by KNN_CHUNK_VALUES, never (N, M, dim)."""
        train = self.train_x.astype(np.float32)
        train_sq = (train ** 2).sum(1)
        rows = max(1, self.KNN_CHUNK_VALUES // max(1, len(train)))
        found = []
        for start in range(0, len(xs), rows):
            chunk = xs[start:start + rows].astype(np.float32)
            distance = (chunk ** 2).sum(1)[:, None] - 2 * chunk @ train.T + train_sq[None]
            found.append(np.argpartition(distance, k - 1, axis=1)[:, :k].copy())  # not a view of the whole
        return np.concatenate(found) if found else np.zeros((0, k), np.int64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[self.predict_proba(x).argmax(axis=1)]


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> np.ndarray:
    scores = []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return np.array(scores)


def _nan_stat(stat, rows: list[np.ndarray]) -> np.ndarray:
    """Per-class statistic over draws, ignoring draws where the class was not tested (NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class never tested stays NaN
        return stat(np.array(rows), axis=0)


def kshot_curve(x: np.ndarray, y: np.ndarray, groups: np.ndarray, ks: list[int | str], draws: int = 10,
                head: str = "logistic", seed: int = 0) -> list[dict]:
    """Scores per k (an int, or "all"): mean and std over draws of accuracy and macro-F1, and
    per-class F1 means. Training samples of a draw come from some groups; the test is every sample
    of the other groups, so a polygon never sits on both sides."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    curve = []
    for k in ks:
        accuracy, macro, per_class = [], [], []
        for draw in range(draws):
            train = []
            for c in classes:
                class_groups = np.unique(groups[y == c])
                rng.shuffle(class_groups)
                # hold out at least a third of the class's groups for testing
                available = class_groups[: max(1, (2 * len(class_groups)) // 3)]
                candidates = np.nonzero((y == c) & np.isin(groups, available))[0]
                take = len(candidates) if k == "all" else min(int(k), len(candidates))
                train.extend(rng.choice(candidates, take, replace=False))
            train = np.array(train)
            test = ~np.isin(groups, np.unique(groups[train]))
            if not test.any():
                continue
            model = Classifier(head).fit(x[train], y[train], seed=draw)
            predicted = model.predict(x[test])
            # a class with no test sample this draw has no F1 (not a zero that drags the mean down)
            f1 = np.where(np.isin(classes, y[test]), f1_scores(y[test], predicted, classes), np.nan)
            accuracy.append(float(np.mean(predicted == y[test])))
            macro.append(float(np.nanmean(f1)))
            per_class.append(f1)
        curve.append({
            "k": k, "draws": len(accuracy), "accuracy": float(np.mean(accuracy)), "accuracy_std": float(np.std(accuracy)),
            "macro_f1": float(np.mean(macro)), "macro_f1_std": float(np.std(macro)),
            "per_class_f1": {str(c): float(v) for c, v in zip(classes, _nan_stat(np.nanmean, per_class))},
            "per_class_f1_std": {str(c): float(v) for c, v in zip(classes, _nan_stat(np.nanstd, per_class))},
        })
    return curve
