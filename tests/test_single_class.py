"""Classifiers fitted on labels of one class: predicted as the native libraries predict them.

scikit-learn's trees and forests report one probability column of 1.0; HistGradientBoosting
and LightGBM stay binary (two columns, the second near 0); XGBoost bounds its intercept of
0 (or 1) to [1e-6, 1 - 1e-6] and predicts the column index. Their trees have no split (a
pure node is a leaf), so there is no threshold to probe: the rows are held-out, NaN, ±inf
where the model takes them, and one row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal, compare_native, tolerance
from tests.zoo import ONNX_STRATEGIES, STRATEGIES, ensemble, lightgbm, xgboost

tree = pytest.importorskip("sklearn.tree")

RNG = np.random.default_rng(0)
X_TRAIN = RNG.normal(size=(60, 4))
X_TEST = RNG.normal(size=(25, 4))
LABEL = 7


def one_class(y: Any = LABEL) -> np.ndarray:
    return np.full(len(X_TRAIN), y)


MODELS: dict[str, Callable[[], Any]] = {
    "random_forest": lambda: ensemble.RandomForestClassifier(5, random_state=0).fit(
        X_TRAIN, one_class()
    ),
    "extra_trees": lambda: ensemble.ExtraTreesClassifier(4, random_state=0).fit(
        X_TRAIN, one_class("only")
    ),
    "decision_tree_one_row": lambda: tree.DecisionTreeClassifier().fit(X_TRAIN[:1], [LABEL]),
    "hist_gradient_boosting": lambda: ensemble.HistGradientBoostingClassifier(max_iter=4).fit(
        X_TRAIN, one_class()
    ),
    "lightgbm": lambda: lightgbm.LGBMClassifier(n_estimators=4, verbose=-1).fit(
        X_TRAIN, one_class()
    ),
    "xgboost_zeros": lambda: xgboost.XGBClassifier(n_estimators=4).fit(X_TRAIN, one_class(0)),
}


def rows(model: Any, forest: treecomp.Forest) -> list[np.ndarray]:
    nan_rows = X_TEST.copy()
    nan_rows[::3, 1] = np.nan
    inf_rows = X_TEST[:4].copy()
    inf_rows[:, 2] = [np.inf, -np.inf, 1e30, -1e30]
    batches = [X_TEST, X_TEST[:1]]
    if forest.allow_nan:
        batches.append(nan_rows)
    if forest.allow_inf:
        batches.append(inf_rows)
    return batches


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_matches_native(name: str) -> None:
    model = MODELS[name]()
    assert len(np.unique(model.predict(X_TEST))) == 1
    cm = treecomp.convert(model, "numpy")
    for X in rows(model, cm.forest):
        compare_native(model, cm, X)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backend", ["torch", "torchscript"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_torch_backends_match_native(name: str, backend: str, strategy: str) -> None:
    model = MODELS[name]()
    cm = treecomp.convert(model, backend, strategy=strategy)
    for X in rows(model, cm.forest):
        compare_native(model, cm, X)


@pytest.mark.parametrize("strategy", ONNX_STRATEGIES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_backend_and_export_match_native(name: str, strategy: str) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    model = MODELS[name]()
    cm = treecomp.convert(model, "onnx", strategy=strategy)
    proto = cm.to_onnx(strategy=strategy)
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for X in rows(model, cm.forest):
        compare_native(model, cm, X)
        label, proba = session.run(["label", "probabilities"], {"input": X.astype(cm.export_dtype)})
        assert_equal(label, model.predict(X))
        assert_close(proba, model.predict_proba(X), tolerance(model))


@pytest.mark.parametrize("name", ["random_forest", "xgboost_zeros"])
def test_compiled_matches_native(name: str) -> None:
    model = MODELS[name]()
    cm = treecomp.convert(model, "torch", compile=True)
    for X in rows(model, cm.forest):
        compare_native(model, cm, X)


def test_artifact_round_trip(tmp_path: Any) -> None:
    model = MODELS["extra_trees"]()
    cm = treecomp.convert(model, "numpy")
    cm.save(tmp_path / "m.tc")
    again = treecomp.load(tmp_path / "m.tc")
    assert again.forest == cm.forest
    compare_native(model, again, X_TEST)


@pytest.mark.parametrize("base_score", [0.0, 1e-7, 1.0 - 1e-8, 1.0])
def test_xgboost_intercepts_are_bounded_like_native(base_score: float) -> None:
    """XGBoost bounds a logistic base_score to [1e-6, 1 - 1e-6] before taking its logit."""
    y = (X_TRAIN[:, 0] > 0).astype(float)
    model = xgboost.XGBRegressor(n_estimators=2, objective="binary:logistic")
    model.set_params(base_score=base_score).fit(X_TRAIN, y)
    cm = treecomp.convert(model, "numpy")
    leaves = model.get_booster().predict(xgboost.DMatrix(X_TEST), output_margin=True)
    margin = np.float32(cm.forest.base_score[0])
    assert margin == np.float32(-13.81551 if base_score < 1e-6 else 13.74516)
    assert_close(cm.predict(X_TEST), model.predict(X_TEST), tolerance(model))
    assert leaves.dtype == np.float32
