"""XGBoost frontend against XGBoost itself: native predictions == the NumPy reference.

Leaf indices and labels compare exactly; probabilities and scores within the
``"xgboost_float32"`` tolerance (XGBoost accumulates in float32). Every model is checked on
held-out rows, rows with NaN, rows on, just below and just above every threshold, special
rows and a single row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

xgb = pytest.importorskip("xgboost")
pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import treecomp  # noqa: E402
from tests.helpers import (  # noqa: E402
    assert_close,
    assert_equal,
    probe_rows,
    special_rows,
    thresholds,
    with_missing,
)
from treecomp.frontends.xgboost import parse_json  # noqa: E402

TOL = "xgboost_float32"
SMALL = {"n_estimators": 12, "max_depth": 4, "learning_rate": 0.3, "random_state": 0}
Array = npt.NDArray[np.float64]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """One XGBoost thread: OpenMP spin-waits make small models crawl on a shared machine."""
    with xgb.config_context(nthread=1):
        yield


def compile_numpy(model: Any, precision: str = "float32") -> treecomp.CompiledModel:
    return treecomp.convert(model, backend="numpy", precision=precision)


# -------------------------------------------------------------------------------------------
# Data


@cache
def dataset(name: str) -> tuple[Array, npt.NDArray[Any]]:
    if name == "digits":  # a subset keeps the ten classes at a fraction of the cost
        X, y = datasets.load_digits(return_X_y=True)
        return X[:600].astype(np.float64), y[:600]
    if name == "synthetic_classification":
        X, y = datasets.make_classification(
            n_samples=400, n_features=8, n_informative=5, n_classes=3, random_state=0
        )
        return np.round(X, 1), y  # coarse values: many rows sit exactly on thresholds
    if name == "synthetic_regression":
        X, y = datasets.make_regression(n_samples=400, n_features=6, noise=5.0, random_state=0)
        # Unit-scale targets: XGBoost's float32 partial sums then err by ~1e-7, inside the
        # absolute tolerance even where a prediction cancels to near zero.
        return np.round(X, 1), y / y.std()
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return X.astype(np.float64), y


@cache
def split(name: str) -> tuple[Array, Array, npt.NDArray[Any], npt.NDArray[Any]]:
    """(X_train, X_test, y_train, y_test): 30 % of every set is held out."""
    X, y = dataset(name)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    return X_train, X_test, y_train, y_test


def positive(y: npt.NDArray[Any]) -> Array:
    """Targets rescaled to [0.05, 1]: fit for gamma, Tweedie, log-error and logistic losses."""
    y = np.asarray(y, dtype=np.float64)
    return 0.05 + 0.95 * (y - y.min()) / (y.max() - y.min())


def counts(y: npt.NDArray[Any]) -> Array:
    return np.round(10 * positive(y))


def censored(y: npt.NDArray[Any]) -> Array:
    """survival:cox labels: negative times are right-censored."""
    return positive(y) * np.where(np.arange(len(y)) % 4 == 0, -1, 1)


def row_blocks(forest: treecomp.Forest, X_train: Array, X_test: Array) -> dict[str, Array]:
    """The rows every model is checked on (±inf has its own tests: a DMatrix rejects it)."""
    special = special_rows(X_test.shape[1])
    blocks = {
        "held_out": X_test,
        "missing": with_missing(X_test),
        "probe": probe_rows(forest, X_train, "float32", limit=300),
        "special": special[np.all(np.isfinite(special), axis=1)],
        "one_row": X_test[:1],
    }
    return {name: rows for name, rows in blocks.items() if len(rows)}  # stumps have no probes


# -------------------------------------------------------------------------------------------
# Comparison


def check_wrapper(model: Any, cm: treecomp.CompiledModel, X: Any) -> None:
    """Every method of a scikit-learn wrapper against the compiled model."""
    assert_equal(cm.apply(X), model.apply(X))
    if hasattr(model, "predict_proba"):
        assert_equal(cm.predict(X), model.predict(X))
        assert_close(cm.predict_proba(X), model.predict_proba(X), TOL)
    else:
        assert_close(cm.predict(X), model.predict(X), TOL)


def check_booster(booster: Any, cm: treecomp.CompiledModel, X: Array) -> None:
    """``predict`` is ``Booster.predict``, ``apply`` is ``Booster.predict(pred_leaf=True)``."""
    dmatrix = xgb.DMatrix(X)
    assert_equal(cm.apply(X), booster.predict(dmatrix, pred_leaf=True))
    expected = booster.predict(dmatrix)
    if cm.forest.task == "classifier":  # label objectives: Booster.predict returns labels
        assert_equal(cm.predict(X), expected)
        assert cm.predict(X).dtype == expected.dtype
    else:
        assert_close(cm.predict(X), expected, TOL)


def check_model(model: Any, X_train: Array, X_test: Array, precision: str = "float32") -> None:
    cm = compile_numpy(model, precision)
    check = check_booster if isinstance(model, xgb.Booster) else check_wrapper
    for name, X in row_blocks(cm.forest, X_train, X_test).items():
        try:
            check(model, cm, X)
        except AssertionError as exc:
            raise AssertionError(f"rows {name!r}: {exc}") from None


def train(params: dict[str, Any], X: Any, y: Any, rounds: int = 10, **info: Any) -> Any:
    """A raw Booster from ``xgb.train``; ``info`` sets float fields such as label bounds."""
    dtrain = xgb.DMatrix(X, label=y)
    for key, value in info.items():
        dtrain.set_float_info(key, value)
    return xgb.train({"max_depth": 4, "seed": 0, **params}, dtrain, num_boost_round=rounds)


# -------------------------------------------------------------------------------------------
# Classifiers: estimators x data, then options


CLASSIFICATION_DATA = ["iris", "wine", "breast_cancer", "digits", "synthetic_classification"]


@pytest.mark.parametrize("data", CLASSIFICATION_DATA)
@pytest.mark.parametrize("estimator", ["XGBClassifier", "XGBRFClassifier"])
def test_classifier(estimator: str, data: str) -> None:
    X_train, X_test, y_train, _ = split(data)
    params = {**SMALL, "n_estimators": 5} if data == "digits" else SMALL  # 10 trees per round
    model = getattr(xgb, estimator)(**params).fit(X_train, y_train)
    check_model(model, X_train, X_test)


CLASSIFIER_OPTIONS = [
    ("wine", {"objective": "multi:softmax"}),
    ("breast_cancer", {"objective": "binary:logitraw"}),
    ("breast_cancer", {"objective": "reg:logistic"}),
    ("breast_cancer", {"base_score": 0.3}),
    ("iris", {"base_score": 0.2}),
    ("iris", {"booster": "dart", "rate_drop": 0.3, "skip_drop": 0.0}),
    ("breast_cancer", {"booster": "dart", "rate_drop": 0.5, "one_drop": True}),
    ("iris", {"num_parallel_tree": 3, "subsample": 0.7, "n_estimators": 5}),
    ("iris", {"multi_strategy": "multi_output_tree", "tree_method": "hist"}),
    ("breast_cancer", {"tree_method": "exact", "gamma": 2.0}),
    ("wine", {"tree_method": "approx"}),
    ("synthetic_classification", {"max_depth": 6, "n_estimators": 20}),
    ("breast_cancer", {"n_estimators": 1}),
    ("iris", {"n_estimators": 1}),
]


@pytest.mark.parametrize(("data", "params"), CLASSIFIER_OPTIONS, ids=str)
def test_classifier_options(data: str, params: dict[str, Any]) -> None:
    X_train, X_test, y_train, _ = split(data)
    model = xgb.XGBClassifier(**{**SMALL, **params}).fit(X_train, y_train)
    check_model(model, X_train, X_test)


def test_custom_objectives() -> None:
    """A callable objective trains under a built-in name (reg:squarederror for regressors,
    binary:logistic for classifiers) whose link predict applies: the document says which."""

    def squared(y: Array, p: Array) -> tuple[Array, Array]:
        return p - y, np.ones_like(p)

    def logistic(y: Array, p: Array) -> tuple[Array, Array]:
        q = 1.0 / (1.0 + np.exp(-p))
        return q - y, q * (1.0 - q)

    X_train, X_test, y_train, _ = split("diabetes")
    check_model(xgb.XGBRegressor(objective=squared, **SMALL).fit(X_train, y_train), X_train, X_test)
    X_train, X_test, y_train, _ = split("breast_cancer")
    model = xgb.XGBClassifier(objective=logistic, **SMALL).fit(X_train, y_train)
    check_model(model, X_train, X_test)


@pytest.mark.parametrize("data", ["iris", "breast_cancer"])
def test_precision_float64(data: str) -> None:
    """float64 precision sees the same float32-rounded inputs, so it is as exact."""
    X_train, X_test, y_train, _ = split(data)
    model = xgb.XGBClassifier(**SMALL).fit(X_train, y_train)
    check_model(model, X_train, X_test, precision="float64")


# -------------------------------------------------------------------------------------------
# Regressors: objectives x data, then options

REGRESSOR_OBJECTIVES: list[tuple[str, dict[str, Any], Callable[[Any], Any]]] = [
    ("reg:squarederror", {}, np.asarray),
    ("reg:squaredlogerror", {}, positive),
    ("reg:pseudohubererror", {"huber_slope": 50.0}, np.asarray),
    ("reg:absoluteerror", {}, np.asarray),
    ("reg:quantileerror", {"quantile_alpha": 0.3}, np.asarray),
    ("reg:quantileerror", {"quantile_alpha": [0.2, 0.8]}, np.asarray),
    ("reg:logistic", {}, positive),
    ("count:poisson", {}, counts),
    ("reg:gamma", {}, positive),
    ("reg:tweedie", {"tweedie_variance_power": 1.3}, positive),
    ("survival:cox", {}, censored),
]


@pytest.mark.parametrize("data", ["diabetes", "synthetic_regression"])
@pytest.mark.parametrize(
    ("objective", "params", "target"),
    REGRESSOR_OBJECTIVES,
    ids=[
        o + ("-2" if isinstance(p.get("quantile_alpha"), list) else "")
        for o, p, _ in REGRESSOR_OBJECTIVES
    ],
)
def test_regressor_objective(
    objective: str, params: dict[str, Any], target: Callable[[Any], Any], data: str
) -> None:
    X_train, X_test, y_train, _ = split(data)
    model = xgb.XGBRegressor(objective=objective, **SMALL, **params)
    model.fit(X_train, target(y_train))
    check_model(model, X_train, X_test)


REGRESSOR_OPTIONS = [
    {"booster": "dart", "rate_drop": 0.3, "skip_drop": 0.0, "one_drop": True},
    {"num_parallel_tree": 3, "subsample": 0.7, "colsample_bynode": 0.7, "n_estimators": 5},
    # Pruning leaves deleted nodes in the arrays; exact cannot sample columns per node.
    {"tree_method": "exact", "gamma": 2000.0, "colsample_bynode": 1.0},
    {"tree_method": "approx"},
    {"max_depth": 6, "n_estimators": 30},
    {"n_estimators": 1},
    {"base_score": 100.0},
]


# A random forest is one round of num_parallel_tree gbtree trees: DART and an explicit
# num_parallel_tree do not apply to XGBRFRegressor.
REGRESSOR_CASES = [("XGBRegressor", p) for p in REGRESSOR_OPTIONS] + [
    ("XGBRFRegressor", p)
    for p in REGRESSOR_OPTIONS
    if "booster" not in p and "num_parallel_tree" not in p
]


@pytest.mark.parametrize(("estimator", "params"), REGRESSOR_CASES, ids=str)
def test_regressor_options(estimator: str, params: dict[str, Any]) -> None:
    X_train, X_test, y_train, _ = split("diabetes")
    model = getattr(xgb, estimator)(**{**SMALL, **params}).fit(X_train, y_train)
    check_model(model, X_train, X_test)


@pytest.mark.parametrize("strategy", ["one_output_per_tree", "multi_output_tree"])
def test_multi_target_regressor(strategy: str) -> None:
    X_train, X_test, y_train, _ = split("diabetes")
    Y = np.stack([y_train, np.sqrt(y_train), -y_train], axis=1)
    model = xgb.XGBRegressor(multi_strategy=strategy, tree_method="hist", **SMALL).fit(X_train, Y)
    forest = treecomp.parse(model)
    assert forest.n_outputs == 3
    assert {t.leaf_width for t in forest.trees} == {3 if strategy == "multi_output_tree" else 1}
    check_model(model, X_train, X_test)


@pytest.mark.parametrize("objective", ["rank:pairwise", "rank:ndcg", "rank:map"])
def test_ranker(objective: str) -> None:
    X_train, X_test, y_train, _ = split("synthetic_regression")
    cuts = [0.5] if objective == "rank:map" else [0.25, 0.5, 0.75]  # map needs 0/1 relevance
    relevance = np.digitize(y_train, np.quantile(y_train, cuts))
    qid = np.arange(len(y_train)) // 20
    model = xgb.XGBRanker(objective=objective, **SMALL).fit(X_train, relevance, qid=qid)
    assert treecomp.parse(model).task == "ranker"
    check_model(model, X_train, X_test)


def test_log_link_fitted_on_zero_counts_has_a_minus_infinite_margin() -> None:
    """count:poisson on all-zero labels: intercept 0, margin -inf, every prediction 0."""
    X_train, X_test, _, _ = split("synthetic_regression")
    model = xgb.XGBRegressor(objective="count:poisson", **SMALL).fit(
        X_train, np.zeros(len(X_train))
    )
    assert np.all(model.predict(X_test, output_margin=True) == -np.inf)
    for backend in ("numpy", "torch", "torchscript", "onnx"):
        cm = treecomp.convert(model, backend)
        assert_equal(cm.predict(X_test), model.predict(X_test))
        assert_equal(cm.apply(X_test), model.apply(X_test))
    # Tweedie's gradients at -inf are NaN: its leaves, and every prediction, are NaN.
    tweedie = xgb.XGBRegressor(objective="reg:tweedie", **SMALL).fit(
        X_train, np.zeros(len(X_train))
    )
    assert np.isnan(tweedie.predict(X_test)).all()
    with pytest.raises(treecomp.UnsupportedModelError, match="NaN or infinite leaf values"):
        treecomp.convert(tweedie, "numpy")


def test_ranker_dataframe_qid_column_is_dropped_like_native(tmp_path: Any) -> None:
    """XGBRanker.predict and apply drop a DataFrame's ``qid`` column (the query groups)."""
    X_train, X_test, y_train, _ = split("synthetic_regression")
    columns = [f"f{j}" for j in range(X_train.shape[1])]
    frame = pd.DataFrame(X_train, columns=columns)
    frame["qid"] = np.arange(len(frame)) // 20
    relevance = np.digitize(y_train, np.quantile(y_train, [0.5]))
    model = xgb.XGBRanker(**SMALL).fit(frame, relevance)
    test = pd.DataFrame(X_test, columns=columns)
    test["qid"] = np.arange(len(test)) // 7
    for backend in ("numpy", "torch", "onnx"):
        cm = treecomp.convert(model, backend)
        assert_close(cm.predict(test), model.predict(test), TOL)
        assert_equal(cm.apply(test), model.apply(test))
        assert_close(cm.predict(test.drop(columns="qid")), model.predict(test), TOL)
    assert "qid" in test.columns  # the caller's frame is left alone
    cm.save(tmp_path / "ranker.tc")
    assert treecomp.load(tmp_path / "ranker.tc").forest.ignored_columns == ("qid",)


# -------------------------------------------------------------------------------------------
# Raw boosters: all trees, Booster.predict's output and shape

BOOSTER_CASES = [
    ("breast_cancer", {"objective": "binary:logistic"}),
    ("breast_cancer", {"objective": "binary:logitraw"}),
    ("breast_cancer", {"objective": "binary:hinge"}),
    ("iris", {"objective": "multi:softprob", "num_class": 3}),
    ("wine", {"objective": "multi:softmax", "num_class": 3}),
    ("iris", {"objective": "multi:softmax", "num_class": 3, "num_parallel_tree": 2}),
    ("diabetes", {"objective": "reg:squarederror", "booster": "dart", "rate_drop": 0.5}),
    ("diabetes", {"objective": "survival:aft"}),
    ("diabetes", {"objective": "count:poisson"}),
]


@pytest.mark.parametrize(("data", "params"), BOOSTER_CASES, ids=str)
def test_booster(data: str, params: dict[str, Any]) -> None:
    X_train, X_test, y_train, _ = split(data)
    info = {}
    if params["objective"] == "survival:aft":
        info = {"label_lower_bound": y_train, "label_upper_bound": y_train * 1.5}
    if params["objective"] == "count:poisson":
        y_train = counts(y_train)
    booster = train(params, X_train, y_train, **info)
    assert treecomp.parse(booster).methods == ("predict", "apply")
    check_model(booster, X_train, X_test)


def test_booster_uses_all_trees_despite_early_stopping() -> None:
    X_train, X_test, y_train, y_test = split("diabetes")
    booster = xgb.train(
        {"max_depth": 4, "learning_rate": 0.9},
        xgb.DMatrix(X_train, label=y_train),
        num_boost_round=100,
        evals=[(xgb.DMatrix(X_test, label=y_test), "test")],
        early_stopping_rounds=2,
        verbose_eval=False,
    )
    assert booster.best_iteration + 1 < booster.num_boosted_rounds()
    assert treecomp.parse(booster).n_trees == booster.num_boosted_rounds()
    check_model(booster, X_train, X_test)


@pytest.mark.parametrize(
    ("estimator", "data"),
    [("XGBClassifier", "iris"), ("XGBClassifier", "breast_cancer"), ("XGBRegressor", "diabetes")],
)
def test_wrapper_uses_best_iteration(estimator: str, data: str) -> None:
    X_train, X_test, y_train, y_test = split(data)
    model = getattr(xgb, estimator)(
        n_estimators=100, max_depth=4, learning_rate=0.9, early_stopping_rounds=2
    ).fit(X_train, y_train, eval_set=[(X_test, y_test)], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    check_model(model, X_train, X_test)


# -------------------------------------------------------------------------------------------
# Missing values and infinities


@pytest.mark.parametrize("missing", [-999.0, 0.0, 1.5])
def test_missing_value(missing: float) -> None:
    X_train, X_test, y_train, _ = split("synthetic_classification")
    rng = np.random.default_rng(1)
    X_train = np.where(rng.random(X_train.shape) < 0.1, missing, X_train)
    X_test = np.where(rng.random(X_test.shape) < 0.2, missing, X_test)
    model = xgb.XGBClassifier(missing=missing, **SMALL).fit(X_train, y_train)
    assert treecomp.parse(model).missing_value == missing
    check_model(model, X_train, with_missing(X_test))


@pytest.mark.parametrize(
    ("estimator", "data"), [("XGBClassifier", "iris"), ("XGBRegressor", "diabetes")]
)
def test_infinity_is_an_ordinary_value(estimator: str, data: str) -> None:
    """``inplace_predict`` (behind the wrappers' ``predict``) compares ±inf as an ordinary
    value, as the IR does. A ``DMatrix`` (behind ``apply`` and ``Booster.predict``) refuses
    it unless ``missing`` is infinite; treecomp's ``apply`` still answers."""
    X_train, X_test, y_train, _ = split(data)
    model = getattr(xgb, estimator)(**SMALL).fit(X_train, y_train)
    cm = compile_numpy(model)
    rng = np.random.default_rng(0)
    signs = np.where(rng.random(X_test.shape) < 0.5, np.inf, -np.inf)
    rows = np.where(rng.random(X_test.shape) < 0.3, signs, X_test)
    huge = np.full((2, X_test.shape[1]), [[1e39], [-1e39]])  # ±inf once cast to float32
    rows = np.vstack([rows, special_rows(X_test.shape[1]), huge])
    if estimator == "XGBClassifier":
        assert_equal(cm.predict(rows), model.predict(rows))
        assert_close(cm.predict_proba(rows), model.predict_proba(rows), TOL)
    else:
        assert_close(cm.predict(rows), model.predict(rows), TOL)
    with pytest.raises(ValueError, match="inf"):
        model.apply(rows)
    assert cm.apply(rows).shape == (len(rows), cm.forest.n_trees)


def test_missing_infinity() -> None:
    """``missing=inf``: +inf (and 1e39, +inf in float32) is missing, -inf an ordinary value,
    for every method."""
    X_train, X_test, y_train, _ = split("breast_cancer")
    model = xgb.XGBClassifier(missing=np.inf, **SMALL).fit(X_train, y_train)
    high = np.where(X_test > np.median(X_test, axis=0), np.inf, X_test)
    huge = np.full((1, X_test.shape[1]), 1e39)
    rows = np.vstack([special_rows(X_test.shape[1]), high, -high, huge, -huge])
    check_wrapper(model, compile_numpy(model), rows)


# -------------------------------------------------------------------------------------------
# Categorical splits


def categorical_frame(n: int, seed: int) -> tuple[Any, Array]:
    rng = np.random.default_rng(seed)
    letters = rng.choice(list("abcdefghij"), size=n)
    small = rng.integers(0, 6, size=n)
    frame = pd.DataFrame(
        {
            "x": np.round(rng.normal(size=n), 1),
            "letter": pd.Categorical(letters),
            "small": pd.Categorical(small),
            "z": rng.normal(size=n),
        }
    )
    y = frame["x"].to_numpy() + np.array([ord(c) % 5 for c in letters]) + (small % 3)
    return frame, y


@pytest.mark.parametrize("max_cat_to_onehot", [1, 16], ids=["partition", "onehot"])
@pytest.mark.parametrize("estimator", ["XGBClassifier", "XGBRegressor"])
def test_pandas_categorical(estimator: str, max_cat_to_onehot: int) -> None:
    frame, y = categorical_frame(500, seed=0)
    if estimator == "XGBClassifier":
        y = (y > np.median(y)).astype(int)
    model = getattr(xgb, estimator)(
        enable_categorical=True, max_cat_to_onehot=max_cat_to_onehot, **SMALL
    ).fit(frame, y)
    cm = compile_numpy(model)
    forest = cm.forest
    assert forest.categories == (None, tuple("abcdefghij"), tuple(range(6)), None)
    assert forest.feature_names == ("x", "letter", "small", "z")
    assert any(t.is_categorical.any() for t in forest.trees)

    test, _ = categorical_frame(200, seed=1)
    test.loc[::7, "x"] = np.nan
    test.loc[::5, "letter"] = np.nan
    check_wrapper(model, cm, test)
    # XGBoost >= 3.1 re-codes by the categories stored at training: another order and
    # unused extra categories change nothing. (Extras sorting after every training category
    # make XGBoost raise, so the extras here sort inside the known range.)
    recoded = test.copy()
    recoded["letter"] = pd.Categorical(test["letter"], categories=[*"jihgfedcba", "bb", "aa"])
    recoded["small"] = pd.Categorical(test["small"], categories=[5, 3, 1, 0, 2, 4])
    check_wrapper(model, cm, recoded)
    assert_equal(cm.apply(recoded), cm.apply(test))
    # Numbers are taken as codes of the training categories, by both.
    codes = np.column_stack(
        [test["x"], test["letter"].cat.codes, test["small"].cat.codes, test["z"]]
    ).astype(np.float64)
    codes[codes == -1] = np.nan
    if estimator == "XGBClassifier":
        assert_close(cm.predict_proba(codes), model.predict_proba(codes), TOL)
    else:
        assert_close(cm.predict(codes), model.predict(codes), TOL)


def test_numeric_coded_categorical() -> None:
    """Categories given as numbers (``feature_types="c"``) reach the trees as codes."""
    frame, y = categorical_frame(500, seed=0)
    X = np.column_stack(
        [frame["x"], frame["letter"].cat.codes, frame["small"].cat.codes, frame["z"]]
    ).astype(np.float64)
    model = xgb.XGBRegressor(feature_types=["q", "c", "c", "q"], enable_categorical=True, **SMALL)
    model.fit(X, y)
    cm = compile_numpy(model)
    assert cm.forest.categories is None
    test = X[:40].copy()
    # Negative, out-of-range, huge and fractional (truncated) codes go where XGBoost sends
    # them. Values in (-1, 0): see test_negative_fraction_category.
    test[:12, 1] = [-1.0, -2.0, 10.0, 63.0, 64.0, 100.0, 1e9, 2.5, 3.99, np.nan, 0.0, 9.0]
    booster = model.get_booster()
    dmatrix = xgb.DMatrix(test, feature_types=booster.feature_types, enable_categorical=True)
    assert_equal(cm.apply(test), booster.predict(dmatrix, pred_leaf=True))
    assert_close(cm.predict(test), booster.predict(dmatrix), TOL)


def test_negative_fraction_category() -> None:
    """XGBoost treats every negative code as unlisted, even one that truncates to 0."""
    X = np.array([[0.0], [1.0], [2.0]] * 30)
    y = np.array([5.0, 0.0, 0.0] * 30)
    model = xgb.XGBRegressor(feature_types=["c"], enable_categorical=True, n_estimators=1)
    model.fit(X, y)
    row = np.array([[-0.5]])
    dmatrix = xgb.DMatrix(row, feature_types=["c"], enable_categorical=True)
    assert_equal(
        compile_numpy(model).apply(row), model.get_booster().predict(dmatrix, pred_leaf=True)
    )


def test_non_ascii_categories_rejected() -> None:
    frame = pd.DataFrame({"c": pd.Categorical(["é", "a", "b"] * 20)})
    model = xgb.XGBRegressor(enable_categorical=True, n_estimators=2).fit(frame, np.arange(60.0))
    with pytest.raises(treecomp.UnsupportedModelError, match="non-ASCII"):
        treecomp.parse(model)


# -------------------------------------------------------------------------------------------
# Property test: NaN, ±inf, ±0, float32 overflow and values on every threshold


@cache
def property_model() -> tuple[Any, treecomp.CompiledModel, tuple[tuple[float, ...], ...]]:
    X_train, _, y_train, _ = split("synthetic_classification")
    # missing=inf: the only setting in which a DMatrix (behind apply) accepts ±inf.
    model = xgb.XGBClassifier(missing=np.inf, **SMALL).fit(X_train, y_train)
    cm = compile_numpy(model)
    per_feature: list[set[float]] = [set() for _ in range(X_train.shape[1])]
    for feature, t in thresholds(cm.forest):
        t32 = np.float32(t)
        for v in (
            t32,
            np.nextafter(t32, np.float32(-np.inf)),
            np.nextafter(t32, np.float32(np.inf)),
        ):
            per_feature[feature].add(float(v))
    return model, cm, tuple(tuple(sorted(v)) or (0.0,) for v in per_feature)


def _row() -> Any:
    _, _, candidates = property_model()
    special = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e39, -1e39])
    return st.tuples(
        *[st.one_of(special, st.sampled_from(c), st.floats(-5, 5, width=32)) for c in candidates]
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.deferred(_row), min_size=1, max_size=8))
def test_property_special_values(rows: list[tuple[float, ...]]) -> None:
    model, cm, _ = property_model()
    check_wrapper(model, cm, np.array(rows, dtype=np.float64))


# -------------------------------------------------------------------------------------------
# Shapes, names, errors, serialisation


def test_feature_names_and_dataframe_input() -> None:
    X_train, X_test, y_train, _ = split("wine")
    columns = [f"f{i}" for i in range(X_train.shape[1])]
    model = xgb.XGBClassifier(**SMALL).fit(pd.DataFrame(X_train, columns=columns), y_train)
    cm = compile_numpy(model)
    assert cm.forest.feature_names == tuple(columns)
    check_wrapper(model, cm, pd.DataFrame(X_test, columns=columns))
    with pytest.raises(ValueError, match="feature names"):
        cm.predict(pd.DataFrame(X_test, columns=columns[::-1]))


def test_zero_rows() -> None:
    """An empty batch gives empty outputs with the per-row shape of a one-row batch. (XGBoost
    returns ``(0,)`` from every method, and ``(0, 2)`` from a 3-class predict_proba.)"""
    X_train, X_test, y_train, _ = split("iris")
    model = xgb.XGBClassifier(**SMALL).fit(X_train, y_train)
    cm = compile_numpy(model)
    for method in ("predict", "predict_proba", "apply"):
        ours, native = getattr(cm, method)(X_test[:0]), getattr(model, method)(X_test[:0])
        assert ours.size == 0 and native.size == 0
        assert ours.shape[1:] == getattr(cm, method)(X_test[:1]).shape[1:]


def test_apply_shape_of_a_single_tree() -> None:
    """pred_leaf drops the tree axis when a single tree is used."""
    X_train, X_test, y_train, _ = split("breast_cancer")
    model = xgb.XGBClassifier(n_estimators=1, max_depth=3).fit(X_train, y_train)
    cm = compile_numpy(model)
    assert cm.forest.leaf_shape == ()
    assert cm.apply(X_test).shape == model.apply(X_test).shape == (len(X_test),)


def test_wrong_feature_count() -> None:
    X_train, X_test, y_train, _ = split("diabetes")
    cm = compile_numpy(xgb.XGBRegressor(**SMALL).fit(X_train, y_train))
    with pytest.raises(ValueError, match="features"):
        cm.predict(X_test[:, :-1])


def _two_labels(y: Any) -> Any:
    return np.stack([y > y.mean(), y > 150], axis=1)


UNSUPPORTED = {
    "gblinear": (
        lambda X, y: xgb.XGBRegressor(booster="gblinear", n_estimators=3).fit(X, y),
        "gblinear",
    ),
    "zero-rounds": (lambda X, y: train({}, X, y, rounds=0), "no trees"),
    "hinge-classifier": (
        lambda X, y: xgb.XGBClassifier(objective="binary:hinge", n_estimators=3).fit(
            X, y > y.mean()
        ),
        "binary:hinge",
    ),
    "softprob-two-classes": (
        lambda X, y: xgb.XGBClassifier(objective="multi:softprob", num_class=2, n_estimators=3).fit(
            X, y > y.mean()
        ),
        "multi:softprob",
    ),
    "multi-label": (
        lambda X, y: xgb.XGBClassifier(n_estimators=3).fit(X, _two_labels(y)),
        "multi-label",
    ),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported(case: str) -> None:
    make, match = UNSUPPORTED[case]
    model = make(*dataset("diabetes"))
    with pytest.raises(treecomp.UnsupportedModelError, match=match):
        treecomp.parse(model)


@pytest.mark.parametrize("make", [xgb.XGBRegressor, xgb.XGBClassifier, xgb.Booster])
def test_unfitted_model_is_a_clear_error(make: Any) -> None:
    with pytest.raises(ValueError, match="not fitted"):
        treecomp.parse(make())


def test_unsupported_objective_in_document() -> None:
    doc = json.loads(bytes(train({}, *dataset("diabetes"), rounds=2).save_raw("json")))
    doc["learner"]["objective"]["name"] = "reg:made_up"
    with pytest.raises(treecomp.UnsupportedModelError, match=r"reg:made_up.*supported objectives"):
        parse_json(doc)


def test_registry_reaches_subclasses() -> None:
    names = treecomp.supported_models()
    for name in ("XGBClassifier", "XGBRegressor", "XGBRanker", "Booster"):
        assert f"xgboost.{name}" in names
    X_train, _, y_train, _ = split("iris")
    forest = treecomp.parse(xgb.XGBRFClassifier(n_estimators=3).fit(X_train, y_train))
    assert forest.task == "classifier" and forest.methods == ("predict", "predict_proba", "apply")


def test_json_round_trip() -> None:
    X_train, _, y_train, _ = split("iris")
    Xd, _, yd, _ = split("diabetes")
    frame, y = categorical_frame(300, seed=0)
    models = [
        xgb.XGBClassifier(**SMALL).fit(X_train, y_train),
        xgb.XGBClassifier(enable_categorical=True, **SMALL).fit(frame, y > np.median(y)),
        xgb.XGBRegressor(multi_strategy="multi_output_tree", **SMALL).fit(
            Xd, np.stack([yd, -yd], 1)
        ),
        xgb.XGBRegressor(booster="dart", missing=-1.0, **SMALL).fit(Xd, yd),
        train({"objective": "multi:softmax", "num_class": 3}, X_train, y_train),
    ]
    for model in models:
        forest = treecomp.parse(model)
        assert treecomp.Forest.from_json(forest.to_json()) == forest


def test_parse_json_document(tmp_path: Any) -> None:
    X_train, X_test, y_train, _ = split("wine")
    booster = train({"objective": "multi:softprob", "num_class": 3}, X_train, y_train)
    path = tmp_path / "model.json"
    booster.save_model(str(path))
    forest = parse_json(path.read_text())
    assert forest == treecomp.parse(booster)
    check_booster(booster, compile_numpy(forest), X_test)


@pytest.mark.parametrize(
    ("objective", "target"),
    [
        ("reg:logistic", positive),
        ("count:poisson", counts),
        ("reg:gamma", positive),
        ("reg:squarederror", np.asarray),
    ],
)
def test_base_score_in_margin_space(objective: str, target: Callable[[Any], Any]) -> None:
    """The stored base_score is in output space; the intercept XGBoost adds to the margin is
    its logit, log or itself (checked with ``output_margin=True`` on a one-tree model)."""
    X_train, X_test, y_train, _ = split("diabetes")
    model = xgb.XGBRegressor(objective=objective, n_estimators=1, max_depth=2)
    model.fit(X_train, target(y_train))
    forest = treecomp.parse(model)
    leaves = model.apply(X_test).astype(np.int64)
    intercept = model.predict(X_test, output_margin=True) - forest.trees[0].value[leaves, 0]
    assert_close(intercept, np.full(len(X_test), forest.base_score[0]), TOL)


def test_parse_is_fast() -> None:
    """500 trees of depth 6 parse well under a second (arrays built from the JSON lists)."""
    import time

    X_train, _, y_train, _ = split("diabetes")
    model = xgb.XGBRegressor(n_estimators=500, max_depth=6, learning_rate=0.1).fit(X_train, y_train)
    start = time.perf_counter()
    forest = treecomp.parse(model)
    assert forest.n_trees == 500
    assert time.perf_counter() - start < 1.0


def test_missing_value_is_compared_in_float32_at_any_precision() -> None:
    """XGBoost compares `missing` after the float32 cast, whatever treecomp's precision."""
    rng = np.random.default_rng(0)
    X = rng.choice([0.1, 0.2, 0.3, 0.7], size=(400, 3))
    y = X.sum(axis=1) + (X[:, 0] == 0.1)
    model = xgb.XGBRegressor(n_estimators=10, max_depth=3, missing=0.1).fit(X, y)
    for precision in ("float32", "float64"):
        cm = compile_numpy(model, precision)
        assert_equal(cm.apply(X), model.apply(X))
        assert_close(cm.predict(X), model.predict(X), TOL)


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob", "multi:softmax"])
def test_labels_at_float32_ties_match_native(objective: str) -> None:
    """XGBoost adds margins and links in float32: at a tiny learning rate every probability
    rounds to a tie, and labels must resolve it exactly as XGBoost does, on every backend."""
    X_train, X_test, y_train, _ = split(
        "iris" if objective.startswith("multi") else "breast_cancer"
    )
    model = xgb.XGBClassifier(
        n_estimators=3, max_depth=2, learning_rate=1e-8, base_score=0.5, objective=objective
    ).fit(X_train, y_train)
    assert treecomp.parse(model).accumulation == "float32"
    for backend in ("numpy", "torch", "onnx"):
        cm = treecomp.convert(model, backend=backend)
        assert_equal(cm.predict(X_test), model.predict(X_test))
        assert_close(cm.predict_proba(X_test), model.predict_proba(X_test), TOL)


@pytest.mark.parametrize("base_score", [0.3, 0.9, None])
def test_intercept_margins_are_bit_equal(base_score: float | None) -> None:
    """XGBoost turns base_score into a margin in float32 (-logf(1/p - 1)): so must we."""
    X_train, X_test, y_train, _ = split("breast_cancer")
    params = {} if base_score is None else {"base_score": base_score}
    model = xgb.XGBClassifier(n_estimators=5, max_depth=3, **params).fit(X_train, y_train)
    forest = treecomp.parse(model)
    nodes = treecomp.reference.leaf_nodes(forest, X_test.astype(np.float32))
    raw = treecomp.reference.raw_scores(forest, nodes)
    np.testing.assert_array_equal(raw[:, 0], model.predict(X_test, output_margin=True))


DART_CASES = [
    ("reg:squarederror", 1, None),
    ("reg:squarederror", 1, 0.5),
    ("reg:squarederror", 1, 3.7),
    ("reg:squarederror", 1, -2.0),
    ("reg:squarederror", 2, None),  # one base margin per target, each its own value
    ("binary:logistic", 2, None),
    ("binary:logistic", 2, 0.3),
    ("multi:softprob", 3, None),  # one base margin per class
    ("multi:softprob", 3, 0.5),
]


@cache
def dart_model(objective: str, width: int, base_score: float | None) -> tuple[Any, Array]:
    """A tiny DART model whose trees are reweighted (rate_drop, no skipped drops)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    signal = X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.3, size=300)
    params: dict[str, Any] = {"base_score": base_score} if base_score is not None else {}
    params |= {"n_estimators": 5, "max_depth": 3, "booster": "dart", "rate_drop": 0.4}
    params |= {"skip_drop": 0.0, "objective": objective, "random_state": 0}
    if objective == "reg:squarederror":
        y = np.stack([3.0 * signal + 2.0, 4.0 - signal], axis=1)[:, :width].squeeze()
        return xgb.XGBRegressor(**params).fit(X, y), X
    y = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, width + 1)[1:-1]))
    return xgb.XGBClassifier(**params).fit(X, y), X


@pytest.mark.parametrize("backend", ["auto", "numpy", "onnx", "torch"])
@pytest.mark.parametrize(("objective", "width", "base_score"), DART_CASES, ids=str)
def test_dart_is_bit_equal(
    objective: str, width: int, base_score: float | None, backend: str
) -> None:
    """XGBoost's Dart::InplacePredict (src/gbm/gbtree.cc, behind the wrappers' predict) adds
    (float32(base + leaf) - base) * weight_drop per tree, not leaf * weight_drop: margins
    and probabilities are the native bits for any base score. A raw Booster's predict goes
    through a DMatrix (Dart::PredictBatchImpl), which adds leaf * weight_drop."""
    model, X = dart_model(objective, width, base_score)
    forest = treecomp.parse(model)
    nodes = treecomp.reference.leaf_nodes(forest, X.astype(np.float32))
    margins = model.predict(X, output_margin=True)
    raw = treecomp.reference.raw_scores(forest, nodes)
    assert_equal(raw.reshape(margins.shape), margins)
    cm = treecomp.convert(model, backend=backend)
    assert_equal(cm.predict(X), model.predict(X))
    if hasattr(model, "predict_proba"):
        assert_equal(cm.predict_proba(X), model.predict_proba(X))
    booster = model.get_booster()
    dmatrix = xgb.DMatrix(X)
    assert_equal(treecomp.convert(booster, backend=backend).predict(X), booster.predict(dmatrix))


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob"])
def test_float32_links_are_bit_equal_near_ties(objective: str) -> None:
    """Near p == 0.5 (or equal class probabilities) the float32 exp decides labels: it must be
    the correctly rounded expf XGBoost calls, not an ulp-off vectorised one."""
    from sklearn.datasets import make_classification

    n_classes = 3 if objective.startswith("multi") else 2
    X, y = make_classification(2000, 5, n_informative=3, n_classes=n_classes, random_state=0)
    model = xgb.XGBClassifier(
        n_estimators=5, max_depth=3, learning_rate=3e-8, base_score=0.5 if n_classes == 2 else 0.0
    ).fit(X, y)
    for backend in ("numpy", "torch", "torchscript", "onnx"):
        cm = treecomp.convert(model, backend=backend)
        assert_equal(cm.predict(X), model.predict(X))
        np.testing.assert_array_equal(cm.predict_proba(X)[:, 1:], model.predict_proba(X)[:, 1:])


def test_float32_frames_are_read_as_float32() -> None:
    """A DataFrame whose columns float32 holds exactly becomes a float32 matrix for a
    float32 model (half the memory of the float64 detour, the same values); a wide integer
    column keeps the float64 route. Either way the predictions are the native ones."""
    from tests.helpers import assert_close
    from tests.zoo import fitted, pd
    from treecomp.inputs import to_matrix

    model, X_test = fitted("xgboost_binary")
    X = np.asarray(X_test, dtype=np.float32)
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    frame.iloc[::4, 1] = np.nan
    cm = treecomp.convert(model, "numpy")
    assert to_matrix(cm.forest, frame).dtype == np.float32
    expected = model.predict_proba(frame.to_numpy())
    np.testing.assert_array_equal(cm.predict_proba(frame), cm.predict_proba(frame.to_numpy()))
    assert_close(cm.predict_proba(frame), expected, "xgboost_float32")
    wide = frame.assign(f0=(frame["f0"] * 1e6).round().astype(np.int64))
    assert to_matrix(cm.forest, wide).dtype == np.float64
    np.testing.assert_array_equal(cm.predict(wide), model.predict(wide.to_numpy(np.float64)))
