"""A CompiledModel follows scikit-learn's conventions: tags, fitted attributes, Pipelines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal
from tests.zoo import fitted, pd, small_pipeline

sklearn_base = pytest.importorskip("sklearn.base")
frozen = pytest.importorskip("sklearn.frozen")
pipeline = pytest.importorskip("sklearn.pipeline")
preprocessing = pytest.importorskip("sklearn.preprocessing")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sklearn_rf", "classifier"),
        ("xgboost_multiclass", "classifier"),
        ("lightgbm_categorical_zero", "regressor"),
        ("sklearn_multi_output", "regressor"),
        ("sklearn_iforest", "outlier_detector"),
    ],
)
def test_tags_and_fitted_attributes(name: str, kind: str) -> None:
    model, _ = fitted(name)
    cm = treecomp.convert(model, "numpy")
    assert sklearn_base.is_classifier(cm) == (kind == "classifier")
    assert sklearn_base.is_regressor(cm) == (kind == "regressor")
    assert sklearn_base.is_outlier_detector(cm) == (kind == "outlier_detector")
    assert sklearn_base.is_classifier(cm) == sklearn_base.is_classifier(model)
    assert cm.n_features_in_ == model.n_features_in_
    if kind == "classifier":
        assert_equal(cm.classes_, model.classes_)
    else:
        assert not hasattr(cm, "classes_")
    if hasattr(model, "feature_names_in_"):
        assert_equal(cm.feature_names_in_, model.feature_names_in_)
    else:
        assert not hasattr(cm, "feature_names_in_")


def test_refit_is_refused() -> None:
    cm = treecomp.convert(fitted("sklearn_rf")[0], "numpy")
    with pytest.raises(TypeError, match="cannot be refitted"):
        cm.fit(np.zeros((2, 13)), [0, 1])


def test_stands_in_a_pipeline_when_frozen() -> None:
    """A scaler in front of a compiled forest, through FrozenEstimator: the pipeline fits
    the scaler only, and predicts exactly as the native model behind the same scaler."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = make_classification(600, 5, random_state=0)
    scaler = preprocessing.StandardScaler().fit(X)
    native = HistGradientBoostingClassifier(max_iter=10, random_state=0)
    native.fit(scaler.transform(X), y)
    cm = treecomp.convert(native, "numpy")
    pipe = pipeline.make_pipeline(preprocessing.StandardScaler(), frozen.FrozenEstimator(cm))
    pipe.fit(X, y)
    assert sklearn_base.is_classifier(pipe)
    assert_equal(pipe.predict(X), native.predict(scaler.transform(X)))
    assert_close(pipe.predict_proba(X), native.predict_proba(scaler.transform(X)), "float64")
    assert_equal(pipe.classes_, native.classes_)


def test_feature_names_follow_the_frame() -> None:
    model, frame = fitted("xgboost_categorical")
    cm = treecomp.convert(model, "numpy")
    assert isinstance(frame, pd.DataFrame)
    assert list(cm.feature_names_in_) == list(frame.columns)


def labels_to_score(model: Any, X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Targets that the model gets partly wrong (a fifth of the labels swapped, or the
    values moved by noise), and sample weights: scores that are not 1.0."""
    rng = np.random.default_rng(0)
    predicted = np.asarray(model.predict(X))
    if sklearn_base.is_classifier(model):
        y = predicted.copy()
        swap = rng.random(len(y)) < 0.2
        y[swap] = rng.choice(model.classes_, int(swap.sum()))
    else:
        y = predicted + rng.normal(0.0, predicted.std() / 3, predicted.shape)
    return y, rng.random(len(y))


@pytest.mark.parametrize(
    "name",
    [
        "sklearn_rf",
        "xgboost_multiclass",
        "lightgbm_multiclass",
        "sklearn_multi_output",
        "xgboost_categorical",
        "lightgbm_categorical_zero",
    ],
)
def test_score_is_the_native_score(name: str) -> None:
    """Accuracy of a classifier, r2 of a regressor: the native float exactly, also through
    FrozenEstimator and cross_val_score, whose folds score the model as fitted."""
    from sklearn.model_selection import cross_val_score

    model, X = fitted(name)
    y, weights = labels_to_score(model, X)
    cm = treecomp.convert(model, "numpy")
    assert cm.score(X, y) == model.score(X, y) < 1.0
    assert cm.score(X, y, sample_weight=weights) == model.score(X, y, sample_weight=weights)
    assert frozen.FrozenEstimator(cm).score(X, y) == model.score(X, y)
    folds = cross_val_score(frozen.FrozenEstimator(cm), X, y, cv=3)
    assert_equal(folds, cross_val_score(frozen.FrozenEstimator(model), X, y, cv=3))


def test_a_pipelines_score_is_the_pipelines() -> None:
    pipeline_, rows = small_pipeline("onehot")
    y, weights = labels_to_score(pipeline_, rows)
    cm = treecomp.convert(pipeline_, "numpy")
    assert cm.score(rows, y, sample_weight=weights) == pipeline_.score(rows, y, weights)


def test_outlier_detectors_have_no_score() -> None:
    """IsolationForest has no score method, and neither has its compiled model."""
    model, _ = fitted("sklearn_iforest")
    cm = treecomp.convert(model, "numpy")
    assert not hasattr(model, "score")
    assert not hasattr(cm, "score") and "score" not in dir(cm)
    with pytest.raises(AttributeError, match="outlier has no method 'score'"):
        cm.score  # noqa: B018
    assert "score" in dir(treecomp.convert(fitted("sklearn_rf")[0], "numpy"))


def test_score_without_scikit_learn_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """XGBoost and LightGBM users need not install scikit-learn: score says it needs it."""
    import sys

    model, X = fitted("xgboost_multiclass")
    cm = treecomp.convert(model, "numpy")
    monkeypatch.setitem(sys.modules, "sklearn", None)  # an import of it now fails
    with pytest.raises(ImportError, match="install scikit-learn"):
        cm.score(X, model.predict(X))
