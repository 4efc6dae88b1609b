"""A small zoo of fitted models covering what the IR can express, and native comparisons.

Shared by the strategy and ONNX tests: NaN default directions, categorical splits (both
libraries' rules), LightGBM's zero-as-missing, both comparison operators, vector leaves,
multi-class, multi-output, averaging, every post-transform family.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import (
    assert_close,
    assert_equal,
    lowering_tolerance,
    probe_rows,
    special_rows,
    with_missing,
)

torch = pytest.importorskip("torch")
pd = pytest.importorskip("pandas")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
ensemble = pytest.importorskip("sklearn.ensemble")
xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")

STRATEGIES = ("gemm", "tree_traversal", "perfect_tree_traversal", "auto")
# The ONNX target adds ONNX Runtime's tree operator.
ONNX_STRATEGIES = (*STRATEGIES, "tree_ensemble")
METHODS = ("predict", "predict_proba", "decision_function", "score_samples", "apply")


def split(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(len(X))
    half = len(X) // 2
    return X[order[:half]], y[order[:half]], X[order[half:]]


def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = getattr(sklearn_datasets, f"load_{name}")(return_X_y=True)
    return split(X, y)


def categorical_data(n: int, seed: int) -> tuple[Any, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "c": pd.Categorical(rng.integers(0, 12, n), categories=list(range(12))),
            "b": np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),
        }
    )
    frame.loc[rng.random(n) < 0.1, "a"] = np.nan
    y = frame["a"].fillna(0) + (frame["c"].astype(int) % 4) - frame["b"] + rng.normal(0, 0.1, n)
    return frame, y.to_numpy()


def zoo_sklearn_rf() -> tuple[Any, Any]:
    X, y, X_test = load("wine")
    return ensemble.RandomForestClassifier(12, max_depth=6, random_state=0).fit(
        with_missing(X, fraction=0.1)[:-1], y
    ), X_test


def zoo_sklearn_gb() -> tuple[Any, Any]:
    X, y, X_test = load("breast_cancer")
    return ensemble.GradientBoostingClassifier(n_estimators=25, max_depth=3, random_state=0).fit(
        X, y
    ), X_test


def zoo_sklearn_multi_output() -> tuple[Any, Any]:
    X, y = sklearn_datasets.make_regression(300, 6, n_targets=3, random_state=0)
    X_train, y_train, X_test = split(X, y)
    return ensemble.ExtraTreesRegressor(8, max_depth=7, random_state=0).fit(
        X_train, y_train
    ), X_test


def zoo_sklearn_hgb_categorical() -> tuple[Any, Any]:
    frame, y = categorical_data(500, 0)
    model = ensemble.HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(frame, y)
    return model, categorical_data(200, 1)[0]


def zoo_sklearn_hgb_nan() -> tuple[Any, Any]:
    """NaN in training: some splits send only the missing values right (threshold +inf)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 5))
    X[rng.random(X.shape) < 0.1] = np.nan
    X[rng.random(1200) < 0.4, 3] = np.nan  # whether x3 is missing is what matters most
    y = (np.isnan(X[:, 3]) ^ (np.nan_to_num(X[:, 0]) > 0.5)).astype(int)
    model = ensemble.HistGradientBoostingClassifier(max_iter=15, random_state=0)
    return model.fit(X[:600], y[:600]), X[600:]


def zoo_sklearn_iforest() -> tuple[Any, Any]:
    X, _, X_test = load("diabetes")
    return ensemble.IsolationForest(n_estimators=15, max_features=0.7, random_state=0).fit(
        X
    ), X_test


def zoo_xgboost_binary() -> tuple[Any, Any]:
    X, y, X_test = load("breast_cancer")
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=4, learning_rate=0.3)
    return model.fit(with_missing(X, fraction=0.1)[:-1], y), X_test


def zoo_xgboost_multiclass() -> tuple[Any, Any]:
    X, y, X_test = load("iris")
    return xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(X, y), X_test


def zoo_xgboost_categorical() -> tuple[Any, Any]:
    frame, y = categorical_data(500, 0)
    model = xgboost.XGBRegressor(
        n_estimators=15, max_depth=4, enable_categorical=True, max_cat_to_onehot=1
    )
    return model.fit(frame, y), categorical_data(200, 1)[0]


def zoo_lightgbm_multiclass() -> tuple[Any, Any]:
    X, y, X_test = load("iris")
    model = lightgbm.LGBMClassifier(n_estimators=10, num_leaves=8, verbose=-1, n_jobs=1)
    return model.fit(X, y), X_test


def zoo_lightgbm_categorical_zero() -> tuple[Any, Any]:
    frame, y = categorical_data(500, 0)
    model = lightgbm.LGBMRegressor(
        n_estimators=15,
        num_leaves=12,
        zero_as_missing=True,
        min_child_samples=5,
        verbose=-1,
        n_jobs=1,
    )
    return model.fit(frame, y), categorical_data(200, 1)[0]


def zoo_lightgbm_binary_nan() -> tuple[Any, Any]:
    X, y, X_test = load("breast_cancer")
    model = lightgbm.LGBMClassifier(n_estimators=15, num_leaves=16, verbose=-1, n_jobs=1)
    return model.fit(with_missing(X, fraction=0.1)[:-1], y), X_test


def small_pipeline(encoder: str) -> tuple[Any, Any]:
    """A fitted Pipeline of the common shape and held-out rows of its columns (NaN, and a
    category never seen in fit, included): a ColumnTransformer (a StandardScaler on the
    numbers ``a`` and ``b``, ``encoder`` on the strings ``s``) before a small forest.

    ``encoder`` is ``"onehot"`` (then a RandomForest) or ``"ordinal"`` (then a
    HistGradientBoosting). Not in :data:`ZOO`, whose models read numbers only.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    def rows(n: int, seed: int) -> Any:
        rng = np.random.default_rng(seed)
        strings = rng.choice(["p", "q", "r"], n).astype(object)
        return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "s": strings})

    train = rows(600, 0)
    y = ((train["a"] > 0) ^ (train["s"] == "q")).astype(int)
    if encoder == "onehot":
        strings: Any = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        forest: Any = ensemble.RandomForestClassifier(8, max_depth=5, random_state=0)
    else:
        strings = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
        forest = ensemble.HistGradientBoostingClassifier(max_iter=10, random_state=0)
    columns = ColumnTransformer(
        [("numbers", StandardScaler(), ["a", "b"]), ("strings", strings, ["s"])]
    )
    pipeline = Pipeline([("columns", columns), ("forest", forest)]).fit(train, y)
    test = rows(2000, 1)
    test.loc[::7, "a"] = np.nan
    test.loc[::11, "s"] = "unseen"
    return pipeline, test


ZOO: dict[str, Callable[[], tuple[Any, Any]]] = {
    name.removeprefix("zoo_"): fn for name, fn in dict(globals()).items() if name.startswith("zoo_")
}


@cache
def fitted(name: str) -> tuple[Any, Any]:
    """The zoo model and its held-out rows, shared by every test: the rows are read-only,
    so a test that writes NaN into them fails instead of changing what later tests see."""
    model, X_test = ZOO[name]()
    if isinstance(X_test, np.ndarray):
        X_test.flags.writeable = False
    return model, X_test


def inputs(model: Any, X_test: Any, forest: treecomp.Forest) -> list[Any]:
    """Held-out rows (as float32 numbers), threshold probes, NaN and special rows, 1 row."""
    if isinstance(X_test, pd.DataFrame):
        nan_rows = X_test.copy()
        nan_rows.loc[::3, "b"] = np.nan
        nan_rows.loc[::4, "c"] = np.nan
        return [X_test, nan_rows, X_test.iloc[:1]]
    X = np.asarray(X_test, dtype=np.float32).astype(np.float64)
    batches = [X, probe_rows(forest, X, "float32", limit=150), X[:1]]
    if forest.allow_nan:
        batches.append(with_missing(X, fraction=0.3, seed=3))
    special = special_rows(X.shape[1])
    batches.append(special if forest.allow_inf else special[:2])
    return batches


def compare_reference(cm: treecomp.CompiledModel, ref: treecomp.CompiledModel, X: Any) -> None:
    """A lowered model against the reference evaluator of the same forest: leaves exactly,
    scores within the lowering tolerance."""
    if hasattr(cm, "apply"):
        assert_equal(cm.apply(X), ref.apply(X))
    for method in ("predict_proba", "decision_function", "score_samples", "predict"):
        if hasattr(cm, method):
            expected = getattr(ref, method)(X)
            if np.asarray(expected).dtype.kind == "f":
                assert_close(getattr(cm, method)(X), expected, lowering_tolerance(cm.forest))
