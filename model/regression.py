"""Few-shot regression on embeddings (or the raw-input baseline): a continuous quantity per pixel
(canopy height, biomass, yield) from a handful of labelled pixels, with the same honest protocol as
classification: n labels drawn from at most two thirds of the groups, scored on every sample of the
groups not drawn, repeated over many draws.

Heads are scikit-learn's: ridge (default; its penalty chosen by leave-one-out on the training
labels, which suits a few labels and 128 dimensions), k nearest neighbours, a random forest and a
small MLP. Features are standardised on the training rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from model.fewshot import Standardiser, grouped_split

REGRESSION_HEADS = ("ridge", "knn", "forest", "mlp")
DEFAULT_REGRESSION_HEAD = "ridge"


@dataclass
class Regressor:
    """A fitted head; `predict` gives one value per row."""

    head: str = DEFAULT_REGRESSION_HEAD

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> "Regressor":
        if self.head not in REGRESSION_HEADS:
            raise ValueError(f"unknown regression head {self.head!r}: choose one of {', '.join(REGRESSION_HEADS)}")
        if len(y) < 2:
            raise ValueError(f"a regression needs at least 2 labelled pixels, not {len(y)}")
        self.scale = Standardiser().fit(x)
        # the target standardised too, so the MLP's and ridge's defaults mean the same whatever its unit
        self.offset, self.spread = float(np.mean(y)), float(np.std(y)) or 1.0
        self.model = self._estimator(len(y), seed).fit(self.scale(x), (np.asarray(y, np.float64) - self.offset) / self.spread)
        return self

    def _estimator(self, n: int, seed: int):
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.linear_model import RidgeCV
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.neural_network import MLPRegressor

        if self.head == "ridge":
            return RidgeCV(alphas=np.logspace(-2, 4, 13))
        if self.head == "knn":
            return KNeighborsRegressor(n_neighbors=min(5, n), weights="distance")
        if self.head == "forest":
            return RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed, n_jobs=1)
        return MLPRegressor(hidden_layer_sizes=(64,), alpha=1e-2, learning_rate_init=3e-3, max_iter=500, random_state=seed)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (self.model.predict(self.scale(x)) * self.spread + self.offset).astype(np.float32)


def regression_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """R² (1 - SSE/SST about the test mean), RMSE and MAE."""
    error = predicted - truth
    total = float(np.sum((truth - truth.mean()) ** 2))
    return {"r2": 1.0 - float(np.sum(error**2)) / total if total > 0 else float("nan"),
            "rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}


def class_mean_prediction(classes: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Each test sample's prediction from its class alone: the mean value of the training samples
    of its class (the training mean where the class has none). What a map of classes knows of the
    quantity; a head that beats it has learned the variation within classes."""
    means = {c: float(y[train][classes[train] == c].mean()) for c in np.unique(classes[train])}
    fallback = float(y[train].mean())
    return np.array([means.get(c, fallback) for c in classes[test]], np.float32)


def nshot_regression_curve(x: np.ndarray, y: np.ndarray, groups: np.ndarray, ns: list[int | str], draws: int = 10,
                           head: str = DEFAULT_REGRESSION_HEAD, seed: int = 0,
                           classes: np.ndarray | None = None) -> list[dict]:
    """Per n (an int, or "all"): R², RMSE and MAE, mean and std over draws; with `classes`, the same
    draws scored by each sample's class mean as well (`class_mean_r2`)."""
    rng = np.random.default_rng(seed)
    strata = np.zeros(len(y), int)
    curve = []
    for n in ns:
        scores, by_class = [], []
        for draw in range(draws):
            train, test = grouped_split(rng, strata, groups, n)
            if test.sum() < 2 or len(train) < 2:
                continue
            predicted = Regressor(head).fit(x[train], y[train], seed=draw).predict(x[test])
            scores.append(regression_scores(y[test], predicted))
            if classes is not None:
                by_class.append(regression_scores(y[test], class_mean_prediction(classes, y, train, test))["r2"])
        point: dict = {"n": n, "draws": len(scores), "head": head}
        with warnings.catch_warnings():  # no draw, or a test set of one value (R² undefined): NaN, said as such
            warnings.simplefilter("ignore", RuntimeWarning)
            for metric in ("r2", "rmse", "mae"):
                values = [s[metric] for s in scores]
                point[metric], point[f"{metric}_std"] = float(np.nanmean(values)), float(np.nanstd(values))
            if by_class:
                point["class_mean_r2"], point["class_mean_r2_std"] = float(np.nanmean(by_class)), float(np.nanstd(by_class))
        curve.append(point)
    return curve
