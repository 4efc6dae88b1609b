"""A CompiledModel follows scikit-learn's conventions: tags, fitted attributes, Pipelines."""

from __future__ import annotations

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal
from tests.zoo import fitted, pd

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
