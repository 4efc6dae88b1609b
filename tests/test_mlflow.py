"""MLflow python_function models (treecomp.mlflow): saved and logged without a pickle, loaded
by mlflow.pyfunc, predicting exactly what the compiled model predicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_equal
from tests.zoo import ensemble, lightgbm, xgboost

pytest.importorskip("mlflow", reason="treecomp.mlflow writes MLflow models")
pd = pytest.importorskip("pandas", reason="MLflow models take DataFrames")

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

import treecomp.mlflow as tcmlflow  # noqa: E402

FEATURES = ["age", "income", "tenure"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def frame(rows: int = 120, seed: int = 0) -> Any:
    X = np.random.default_rng(seed).normal(size=(rows, len(FEATURES)))
    X[::13, 1] = np.nan  # missing values take each node's default way
    return pd.DataFrame(X, columns=FEATURES)


@pytest.fixture(scope="module")
def classifier() -> treecomp.CompiledModel:
    """String labels, fitted on a named frame (the signature's column names)."""
    X = frame().fillna(0.0)
    y = np.array(["churn", "stay", "upsell"])[(X.age > 0).astype(int) + (X.income > 0.8)]
    forest = ensemble.RandomForestClassifier(4, max_depth=3, random_state=0).fit(X, y)
    return treecomp.convert(forest, "numpy")


def test_save_load_predict_exactly(tmp_path: Path, classifier: treecomp.CompiledModel) -> None:
    tcmlflow.save_model(classifier, tmp_path / "model")
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    X = frame(seed=1)
    assert_equal(loaded.predict(X), classifier.predict(X))
    proba = loaded.predict(X, params={"method": "predict_proba"})
    np.testing.assert_array_equal(proba, classifier.predict_proba(X))  # the same engine
    assert_equal(loaded.predict(X, params={"method": "apply"}), classifier.apply(X))
    # MLflow takes the columns by name, so another order gives the same answers ...
    assert_equal(loaded.predict(X[FEATURES[::-1]]), classifier.predict(X))
    # ... and float32 columns are widened exactly: the float32 rows' own answers.
    X32 = X.astype(np.float32)
    assert_equal(loaded.predict(X32), classifier.predict(X32))
    # The model is JSON and YAML: the treecomp artifact, no pickle, no code copied.
    files = sorted(
        p.relative_to(tmp_path / "model").as_posix() for p in (tmp_path / "model").rglob("*")
    )
    assert "data/model.tc" in files and not [f for f in files if f.endswith((".pkl", ".pt"))]
    flavor = mlflow.models.Model.load(str(tmp_path / "model")).flavors["python_function"]
    assert flavor["loader_module"] == "treecomp.mlflow" and flavor["config"]["backend"] == "numpy"
    requirements = (tmp_path / "model" / "requirements.txt").read_text().split()
    assert f"treecomp=={treecomp.__version__}" in requirements


def test_signature(classifier: treecomp.CompiledModel) -> None:
    signature = tcmlflow.signature(classifier)
    assert signature.inputs.input_names() == FEATURES
    assert [c.type.name for c in signature.inputs.inputs] == ["double"] * 3
    assert [c.type.name for c in signature.outputs.inputs] == ["string"]
    assert [(p.name, p.default) for p in signature.params.params] == [("method", "predict")]

    X = np.random.default_rng(2).normal(size=(80, 3))
    multi = ensemble.RandomForestRegressor(3, max_depth=3, random_state=0).fit(X, X[:, :2])
    outputs = tcmlflow.signature(treecomp.convert(multi, "numpy")).outputs.inputs
    assert [(o.type, o.shape) for o in outputs] == [(np.dtype(np.float64), (-1, 2))]
    booster = xgboost.XGBClassifier(n_estimators=3, max_depth=2).fit(X, X[:, 0] > 0)
    nameless = tcmlflow.signature(treecomp.convert(booster, "numpy"))
    assert nameless.inputs.input_names() == ["x0", "x1", "x2"]  # no names at fit time
    assert [c.type.name for c in nameless.outputs.inputs] == ["long"]


def test_log_model_and_load_from_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, classifier: treecomp.CompiledModel
) -> None:
    # A local file store: mlflow-skinny has no SQL store, and MLflow 3 asks for this opt-in
    # before it uses a folder (full MLflow's default sqlite store works the same way).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as run:
            info = tcmlflow.log_model(classifier, "churn")
        X = frame(seed=3)
        loaded = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/churn")
        assert_equal(loaded.predict(X), classifier.predict(X))
        # model_config picks the serving backend at load time: the same answers on onnx.
        onnx = mlflow.pyfunc.load_model(info.model_uri, model_config={"backend": "onnx"})
        assert_equal(onnx.predict(X), classifier.predict(X))
        assert onnx._model_impl.model.backend == "onnx"
    finally:
        mlflow.set_tracking_uri(previous)


def test_categories_arrive_as_values(tmp_path: Path) -> None:
    """A LightGBM model of a pandas category column: MLflow has no category type, so the
    column arrives as its values (strings) and is read against the training categories."""
    rng = np.random.default_rng(4)
    colour = pd.Categorical(rng.choice(["blue", "green", "red"], 300))
    X = pd.DataFrame({"size": rng.normal(size=300), "colour": colour})
    y = (X["size"] + 2 * (X["colour"] == "red") > 0.5).astype(int)
    params = {"n_estimators": 4, "num_leaves": 4, "min_child_samples": 5, "verbose": -1}
    native = lightgbm.LGBMClassifier(**params).fit(X, y)
    cm = treecomp.convert(native, "numpy")
    assert [c.type.name for c in tcmlflow.signature(cm).inputs.inputs] == ["double", "string"]
    tcmlflow.save_model(cm, tmp_path / "model")
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    values = X.assign(colour=X["colour"].astype(str))
    assert_equal(loaded.predict(values), native.predict(X))
    # A colour never seen in training is missing, as in a category column.
    unseen = values.assign(colour=values["colour"].where(values.index % 5 > 0, "purple"))
    missing = X.assign(colour=X["colour"].where(X.index % 5 > 0))
    assert_equal(loaded.predict(unseen), native.predict(missing))


def test_bad_input_is_named(tmp_path: Path, classifier: treecomp.CompiledModel) -> None:
    tcmlflow.save_model(classifier, tmp_path / "model")
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    X = frame()
    with pytest.raises(MlflowException, match=r"missing inputs \['tenure'\]"):
        loaded.predict(X[FEATURES[:2]])
    with pytest.raises(ValueError, match="method 'score_samples' is not one this model has"):
        loaded.predict(X, params={"method": "score_samples"})
    with pytest.raises(TypeError, match=r"expected a treecomp\.CompiledModel, got str"):
        tcmlflow.save_model("model.tc", tmp_path / "other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        tcmlflow.save_model(classifier, tmp_path / "other", backend="gpu")
    with pytest.raises(ValueError, match=r"unknown model_config keys \['threads'\]"):
        tcmlflow._load_pyfunc(str(tmp_path / "model" / "data"), {"threads": 2})


def test_pipeline_columns(tmp_path: Path) -> None:
    """A Pipeline fitted on an array reads its rows by position: its signature lists every
    column it was fitted on (x0..x3), the ones its ColumnTransformer drops too, so that
    MLflow hands it whole rows. One fitted on a DataFrame finds its columns by name: those
    it reads are enough."""
    compose = pytest.importorskip("sklearn.compose")
    pipeline_module = pytest.importorskip("sklearn.pipeline")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    X = np.random.default_rng(5).normal(size=(200, 4))
    X[::11, 3] = np.nan
    y = (X[:, 0] + np.nan_to_num(X[:, 3]) > 0).astype(int)
    by_position = (X, pd.DataFrame(X, columns=["x0", "x1", "x2", "x3"]), ["x0", "x1", "x2", "x3"])
    named = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    for fitted_on, rows, columns in [by_position, (named, named, ["a", "d"])]:
        scale = compose.ColumnTransformer([("s", preprocessing.StandardScaler(), [0, 3])])
        forest = ensemble.RandomForestClassifier(4, max_depth=4, random_state=0)
        pipeline = pipeline_module.Pipeline([("ct", scale), ("m", forest)]).fit(fitted_on, y)
        path = tmp_path / f"model{len(columns)}"
        tcmlflow.save_model(treecomp.convert(pipeline, "numpy"), path)
        loaded = mlflow.pyfunc.load_model(str(path))
        assert loaded.metadata.signature.inputs.input_names() == columns
        assert_equal(loaded.predict(rows), pipeline.predict(fitted_on))
        # MLflow puts the columns in the signature's order, whatever the frame's.
        assert_equal(loaded.predict(rows[rows.columns[::-1]]), pipeline.predict(fitted_on))


def test_import_treecomp_mlflow_does_not_import_mlflow() -> None:
    code = "import sys, treecomp, treecomp.mlflow; print('mlflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
