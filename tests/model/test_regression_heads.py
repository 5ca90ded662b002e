import numpy as np
import pytest

from model.regression import REGRESSION_HEADS, Regressor, class_mean_prediction, nshot_regression_curve, regression_scores


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    y = 3.0 * x[:, 0] - 2.0 * x[:, 1] + rng.normal(0, 0.3, n)
    groups = np.array([f"g{i // 3}" for i in range(n)])  # three samples a group
    return x, y, groups


@pytest.mark.parametrize("head", REGRESSION_HEADS)
def test_every_head_learns_a_linear_quantity(head):
    x, y, _ = _data()
    predicted = Regressor(head).fit(x[:200], y[:200]).predict(x[200:])
    assert regression_scores(y[200:], predicted)["r2"] > (0.9 if head == "ridge" else 0.5)


def test_scores_by_hand():
    scores = regression_scores(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert scores["r2"] == pytest.approx(1 - 4 / 2)
    assert scores["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert scores["mae"] == pytest.approx(2 / 3)


def test_curve_rises_with_labels_and_reports_class_means():
    x, y, groups = _data()
    classes = np.where(y > 0, "high", "low")
    curve = nshot_regression_curve(x, y, groups, [10, 100, "all"], draws=5, classes=classes)
    assert [p["n"] for p in curve] == [10, 100, "all"]
    assert curve[0]["r2"] < curve[-1]["r2"] and curve[-1]["r2"] > 0.95
    assert all(p["draws"] == 5 and "class_mean_r2" in p for p in curve)
    assert curve[-1]["class_mean_r2"] < curve[-1]["r2"], "a linear head beats what two classes alone know"


def test_class_mean_prediction_falls_back_to_the_training_mean():
    classes = np.array(["a", "a", "b", "c"])
    y = np.array([1.0, 3.0, 10.0, 7.0])
    predicted = class_mean_prediction(classes, y, np.array([0, 1, 2]), np.array([0, 3]))
    assert predicted.tolist() == [2.0, pytest.approx(14 / 3)]


def test_bad_heads_and_too_few_labels_are_refused():
    x, y, _ = _data(10)
    with pytest.raises(ValueError, match="unknown regression head 'svm'"):
        Regressor("svm").fit(x, y)
    with pytest.raises(ValueError, match="at least 2 labelled pixels"):
        Regressor().fit(x[:1], y[:1])
