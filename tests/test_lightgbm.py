"""LightGBM frontend: native LightGBM predictions == the reference backend, on hard rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import treecomp
from tests.helpers import (
    assert_close,
    assert_equal,
    compare_native,
    probe_rows,
    probe_values,
    special_rows,
    thresholds,
    with_missing,
)
from treecomp.ir import ZERO_THRESHOLD

lgb = pytest.importorskip("lightgbm")
pytest.importorskip("sklearn")
from sklearn import datasets  # noqa: E402

# Small models: the whole file runs in well under a minute on two cores. LightGBM runs
# single-threaded: on a busy machine its OpenMP threads spin-wait for one another and
# made the file three times slower with two threads (results do not depend on threads).
SMALL = {"verbose": -1, "n_jobs": 1, "num_leaves": 15, "min_child_samples": 5}
THREADS = {"verbose": -1, "num_threads": 1}
# Encourage categorical splits on the synthetic data's 12-level feature.
CATEGORICAL = {"min_data_per_group": 5, "cat_smooth": 1.0, "cat_l2": 1.0}
CATEGORICAL_FEATURE = 2


# --- Data --------------------------------------------------------------------------------


@cache
def data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test): half of each set is held out."""
    if name == "synthetic":
        X, y = synthetic(800)
    elif name == "digits":
        X, y = datasets.load_digits(return_X_y=True)
        X, y = X[:600], y[:600]
    else:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    train, test = order[: len(X) // 2], order[len(X) // 2 :]
    return X[train], y[train], X[test]


def synthetic(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Six features: NaN at train time, many exact zeros, a 12-level categorical feature."""
    rng = np.random.default_rng(42)
    X = np.column_stack(
        [
            rng.normal(size=n),
            np.where(rng.random(n) < 0.4, 0.0, rng.normal(size=n)),
            rng.integers(0, 12, n).astype(np.float64),
            rng.uniform(-1, 1, n),
            rng.integers(-2, 3, n).astype(np.float64),
            rng.normal(size=n),
        ]
    )
    effect = np.array([0.0, 2.0, -1.0, 0.5, 3.0, -2.0, 1.0, 0.0, -0.5, 2.5, -3.0, 1.5])
    y = (
        np.nan_to_num(X[:, 0])
        + 1.5 * (X[:, 1] == 0)
        + effect[X[:, 2].astype(int)]
        + X[:, 3]
        + 0.5 * X[:, 4]
        + 0.1 * rng.normal(size=n)
    )
    X[rng.random(n) < 0.1, 0] = np.nan
    X[rng.random(n) < 0.05, 2] = np.nan
    X[rng.random(n) < 0.05, 5] = np.nan
    return X, y


def target(y: np.ndarray, kind: str) -> np.ndarray:
    """Turn a continuous target into what an objective needs."""
    if kind == "binary":
        return (y > np.median(y)).astype(int)
    if kind in ("multi", "strings", "relevance"):
        bins = 4 if kind == "relevance" else 3
        codes = np.digitize(y, np.quantile(y, np.linspace(0, 1, bins + 1)[1:-1]))
        return np.array(["low", "mid", "high"])[codes] if kind == "strings" else codes
    if kind == "unit":
        return 1.0 / (1.0 + np.exp(-(y - y.mean()) / y.std()))
    if kind == "scaled":
        return y / 100.0
    return y


# --- Cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fitted model: ``make`` builds an estimator, or ``train(X, y)`` a raw Booster."""

    id: str
    data: str
    target: str = "raw"
    make: Callable[[], Any] | None = None
    train: Callable[[np.ndarray, np.ndarray], Any] | None = None
    fit_kwargs: dict[str, Any] = field(default_factory=dict)

    def fit(self) -> tuple[Any, np.ndarray]:
        X, y, X_test = data(self.data)
        y = target(y, self.target)
        if self.train is not None:
            return self.train(X, y), X_test
        assert self.make is not None
        kwargs = dict(self.fit_kwargs)
        if kwargs.pop("groups", False):
            kwargs["group"] = [20] * (len(X) // 20) + ([len(X) % 20] if len(X) % 20 else [])
        return self.make().fit(X, y, **kwargs), X_test


def booster(
    params: dict[str, Any], rounds: int = 15, categorical: Any = "auto"
) -> Callable[..., Any]:
    """A trainer of raw Boosters with ``lgb.train``."""

    def train(X: np.ndarray, y: np.ndarray) -> Any:
        dataset = lgb.Dataset(X, y, categorical_feature=categorical)
        return lgb.train({**THREADS, **params}, dataset, rounds)

    return train


def early_stopped(X: np.ndarray, y: np.ndarray) -> Any:
    """A Booster that keeps the trees past its best iteration (best_iteration < all)."""
    half = len(X) // 2
    train_set = lgb.Dataset(X[:half], y[:half])
    valid = lgb.Dataset(X[half:], y[half:], reference=train_set)
    params = {"objective": "multiclass", "num_class": 3, "learning_rate": 0.5, **THREADS}
    model = lgb.train(
        params,
        train_set,
        200,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(3, verbose=False)],
        keep_training_booster=True,
    )
    assert 0 < model.best_iteration < model.current_iteration()
    return model


def sigmoid_in_memory(X: np.ndarray, y: np.ndarray) -> Any:
    """A Booster still holding its training set: its objective uses the exact sigmoid."""
    params = {"objective": "binary", "sigmoid": 0.123456789, **THREADS}
    return lgb.train(params, lgb.Dataset(X, y), 15, keep_training_booster=True)


def l2_custom(y_pred: np.ndarray, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    return y_pred - dataset.get_label(), np.ones_like(y_pred)


def early_stopped_classifier() -> Any:
    return lgb.LGBMClassifier(n_estimators=200, learning_rate=0.5, **SMALL)


LGBMClassifier = lgb.LGBMClassifier
LGBMRegressor = lgb.LGBMRegressor
LGBMRanker = lgb.LGBMRanker
CAT = {"categorical_feature": [CATEGORICAL_FEATURE]}

CASES = [
    # --- classifiers
    Case("clf-binary", "breast_cancer", make=lambda: LGBMClassifier(n_estimators=20, **SMALL)),
    Case(
        "clf-binary-sigmoid-cat",
        "synthetic",
        "binary",
        make=lambda: LGBMClassifier(n_estimators=20, sigmoid=0.7, **SMALL, **CATEGORICAL),
        fit_kwargs=CAT,
    ),
    Case(
        "clf-binary-sigmoid-rounded",
        "breast_cancer",
        make=lambda: LGBMClassifier(n_estimators=15, sigmoid=0.123456789, **SMALL),
    ),
    Case("clf-multi", "iris", make=lambda: LGBMClassifier(n_estimators=15, **SMALL)),
    Case(
        "clf-ova",
        "wine",
        make=lambda: LGBMClassifier(n_estimators=15, objective="multiclassova", **SMALL),
    ),
    Case(
        "clf-rf",
        "iris",
        make=lambda: LGBMClassifier(
            n_estimators=15, boosting_type="rf", subsample=0.6, subsample_freq=1, **SMALL
        ),
    ),
    Case(
        "clf-dart",
        "breast_cancer",
        make=lambda: LGBMClassifier(n_estimators=20, boosting_type="dart", **SMALL),
    ),
    Case(
        "clf-goss-digits",
        "digits",
        make=lambda: LGBMClassifier(n_estimators=6, data_sample_strategy="goss", **SMALL),
    ),
    Case(
        "clf-strings-zero-missing",
        "synthetic",
        "strings",
        make=lambda: LGBMClassifier(n_estimators=10, zero_as_missing=True, **SMALL, **CATEGORICAL),
        fit_kwargs=CAT,
    ),
    Case(
        "clf-no-missing",
        "synthetic",
        "binary",
        make=lambda: LGBMClassifier(n_estimators=20, use_missing=False, **SMALL, **CATEGORICAL),
        fit_kwargs=CAT,
    ),
    Case(
        "clf-xentropy",
        "breast_cancer",
        make=lambda: LGBMClassifier(n_estimators=15, objective="cross_entropy", **SMALL),
    ),
    Case(
        "clf-early-stop",
        "wine",
        make=early_stopped_classifier,
        fit_kwargs={"callbacks": [lgb.early_stopping(3, verbose=False)], "eval": True},
    ),
    # --- regressors
    Case("reg-l2", "diabetes", make=lambda: LGBMRegressor(n_estimators=30, **SMALL)),
    Case(
        "reg-sqrt", "diabetes", make=lambda: LGBMRegressor(n_estimators=20, reg_sqrt=True, **SMALL)
    ),
    Case(
        "reg-l1-sqrt",
        "diabetes",
        make=lambda: LGBMRegressor(n_estimators=20, objective="l1", reg_sqrt=True, **SMALL),
    ),
    Case(
        "reg-huber",
        "diabetes",
        make=lambda: LGBMRegressor(n_estimators=20, objective="huber", alpha=30.0, **SMALL),
    ),
    Case(
        "reg-fair",
        "diabetes",
        make=lambda: LGBMRegressor(n_estimators=20, objective="fair", **SMALL),
    ),
    Case(
        "reg-quantile",
        "diabetes",
        make=lambda: LGBMRegressor(n_estimators=20, objective="quantile", alpha=0.3, **SMALL),
    ),
    Case(
        "reg-mape",
        "diabetes",
        make=lambda: LGBMRegressor(n_estimators=20, objective="mape", **SMALL),
    ),
    Case(
        "reg-poisson",
        "diabetes",
        "scaled",
        make=lambda: LGBMRegressor(n_estimators=20, objective="poisson", **SMALL),
    ),
    Case(
        "reg-gamma",
        "diabetes",
        "scaled",
        make=lambda: LGBMRegressor(n_estimators=20, objective="gamma", **SMALL),
    ),
    Case(
        "reg-tweedie",
        "diabetes",
        "scaled",
        make=lambda: LGBMRegressor(
            n_estimators=20, objective="tweedie", tweedie_variance_power=1.4, **SMALL
        ),
    ),
    Case(
        "reg-xentropy",
        "synthetic",
        "unit",
        make=lambda: LGBMRegressor(n_estimators=20, objective="cross_entropy", **SMALL),
    ),
    Case(
        "reg-xentlambda",
        "synthetic",
        "unit",
        make=lambda: LGBMRegressor(n_estimators=20, objective="cross_entropy_lambda", **SMALL),
    ),
    Case(
        "reg-rf-cat",
        "synthetic",
        make=lambda: LGBMRegressor(
            n_estimators=15, boosting_type="rf", subsample=0.6, subsample_freq=1, **SMALL
        ),
        fit_kwargs=CAT,
    ),
    Case(
        "reg-nan-cat",
        "synthetic",
        make=lambda: LGBMRegressor(n_estimators=20, **SMALL, **CATEGORICAL),
        fit_kwargs=CAT,
    ),
    Case(
        "reg-zero-missing-cat",
        "synthetic",
        make=lambda: LGBMRegressor(n_estimators=20, zero_as_missing=True, **SMALL, **CATEGORICAL),
        fit_kwargs=CAT,
    ),
    Case(
        "reg-no-missing-cat",
        "synthetic",
        make=lambda: LGBMRegressor(n_estimators=20, use_missing=False, **SMALL, **CATEGORICAL),
        fit_kwargs=CAT,
    ),
    # --- rankers
    Case(
        "rank-lambdarank",
        "synthetic",
        "relevance",
        make=lambda: LGBMRanker(n_estimators=20, **SMALL),
        fit_kwargs={"groups": True},
    ),
    Case(
        "rank-xendcg",
        "synthetic",
        "relevance",
        make=lambda: LGBMRanker(n_estimators=20, objective="rank_xendcg", **SMALL),
        fit_kwargs={"groups": True},
    ),
    Case(
        "model-plain-binary",
        "breast_cancer",
        make=lambda: lgb.LGBMModel(objective="binary", n_estimators=15, **SMALL),
    ),
    # --- raw boosters
    Case("booster-binary", "breast_cancer", train=booster({"objective": "binary"})),
    Case(
        "booster-multiclass",
        "iris",
        train=booster({"objective": "multiclass", "num_class": 3, "num_leaves": 7}),
    ),
    Case(
        "booster-regression-cat",
        "synthetic",
        train=booster({"objective": "regression", **CATEGORICAL}, categorical=[2]),
    ),
    Case("booster-best-iteration", "synthetic", "multi", train=early_stopped),
    Case("booster-sigmoid-in-memory", "breast_cancer", train=sigmoid_in_memory),
    Case(
        "booster-custom-objective",
        "diabetes",
        "scaled",
        train=booster({"objective": l2_custom, "num_leaves": 7}),
    ),
    Case(
        "booster-multiclass-single-leaf",
        "iris",
        train=booster(
            {
                "objective": "multiclass",
                "num_class": 3,
                "min_split_gain": 0.1,
                "learning_rate": 0.5,
                "min_data_in_leaf": 5,
            },
            rounds=10,
        ),
    ),
]


@cache
def fitted(case_id: str) -> tuple[Any, np.ndarray]:
    case = next(c for c in CASES if c.id == case_id)
    if case.fit_kwargs.get("eval"):
        X, y, _ = data(case.data)
        half = len(X) // 2
        kwargs = {**case.fit_kwargs, "eval_X": (X[half:],), "eval_y": (y[half:],)}
        del kwargs["eval"]
        assert case.make is not None
        return case.make().fit(X[:half], y[:half], **kwargs), data(case.data)[2]
    return case.fit()


def native_methods(model: Any) -> tuple[str, ...]:
    if isinstance(model, lgb.LGBMClassifier):
        # decision_function (LightGBM >= 4.7) returns raw margins; in rf mode it returns the
        # un-averaged sum, which treecomp does not offer.
        rf = model.get_params().get("boosting_type") == "rf"
        margins = ("decision_function",) if hasattr(model, "decision_function") and not rf else ()
        return ("predict", "predict_proba", "apply", *margins)
    return ("predict", "apply")


def native(model: Any, method: str, X: Any) -> np.ndarray:
    """LightGBM's answer; ``apply`` is ``predict(pred_leaf=True)`` for every model."""
    threads = {"num_threads": 1} if isinstance(model, lgb.Booster) else {}
    if method == "apply":
        return np.asarray(model.predict(X, pred_leaf=True, **threads))
    return np.asarray(getattr(model, method)(X, **threads))


def compare(model: Any, cm: treecomp.CompiledModel, X: Any) -> None:
    """Every native method against the compiled model: labels and leaves exactly."""
    compare_native(
        model, cm, X, tolerance_name="float64", methods=native_methods(model), native=native
    )


def compiled(model: Any, precision: str = "float64") -> treecomp.CompiledModel:
    return treecomp.convert(model, backend="numpy", precision=precision)


def booster_of(model: Any) -> Any:
    return model if isinstance(model, lgb.Booster) else model.booster_


# --- Native agreement --------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_native_out_of_sample(case: Case) -> None:
    model, X_test = fitted(case.id)
    compare(model, compiled(model), X_test)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_native_on_threshold_probes(case: Case) -> None:
    model, X_test = fitted(case.id)
    forest = treecomp.parse(model)
    X = probe_rows(forest, X_test, "float64", limit=100)
    assert len(X) > 0
    compare(model, compiled(model), X)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_native_with_missing_values(case: Case) -> None:
    model, X_test = fitted(case.id)
    compare(model, compiled(model), with_missing(X_test, fraction=0.3, seed=2))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_special_rows_and_batch_sizes(case: Case) -> None:
    model, X_test = fitted(case.id)
    cm = compiled(model)
    compare(model, cm, special_rows(X_test.shape[1]))
    compare(model, cm, np.full((4, X_test.shape[1]), [[1e300], [1e301], [-1e301], [1e-300]]))
    compare(model, cm, X_test[:1])
    # LightGBM's wrappers reject empty batches and a multiclass Booster returns shape (0,)
    # for them; the compiled model keeps the per-row shape of a non-empty batch.
    for method in native_methods(model):
        out = getattr(cm, method)(X_test[:0])
        assert out.shape == (0, *getattr(cm, method)(X_test[:2]).shape[1:])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float32_precision_is_exact_on_float32_data(case: Case) -> None:
    model, X_test = fitted(case.id)
    forest = treecomp.parse(model)
    X = np.vstack([X_test[:200], probe_rows(forest, X_test, "float32", limit=100)])
    X = X.astype(np.float32)
    compare(model, compiled(model, "float32"), X)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_json_round_trip_is_lossless(case: Case) -> None:
    model, X_test = fitted(case.id)
    forest = treecomp.parse(model)
    again = treecomp.Forest.from_json(forest.to_json())
    assert again == forest
    compare(model, treecomp.convert(again, backend="numpy", precision="float64"), X_test[:50])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_dump_numbers_match_the_model_text_bit_for_bit(case: Case) -> None:
    """dump_model() keeps every bit of thresholds and leaf values, except that it clamps
    |threshold| >= 1e300 (infinite ones) to 1e300; model_to_string is exact."""
    model, _ = fitted(case.id)
    b = booster_of(model)
    dump = b.dump_model(num_iteration=-1)
    texts = b.model_to_string(num_iteration=-1).split("Tree=")[1:]
    assert len(texts) == len(dump["tree_info"])
    for text, info in zip(texts, dump["tree_info"]):
        fields = dict(line.split("=", 1) for line in text.splitlines()[1:] if "=" in line)
        leaf_values = [float(v) for v in fields["leaf_value"].split()]
        split_thresholds = [float(v) for v in fields.get("threshold", "").split()]
        stack = [info["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" in node:
                if node["decision_type"] == "<=":
                    expected = split_thresholds[node["split_index"]]
                    if abs(expected) >= 1e300:
                        expected = np.copysign(1e300, expected)
                    assert float(node["threshold"]).hex() == expected.hex()
                stack += [node["left_child"], node["right_child"]]
            else:
                expected = leaf_values[node.get("leaf_index", 0)]
                assert float(node["leaf_value"]).hex() == expected.hex()


# --- Semantics pinned down explicitly ------------------------------------------------------


def split_kinds() -> set[str]:
    """Every (decision, missing type) pair the cases' dumps contain."""
    kinds = set()
    for case in CASES:
        model, _ = fitted(case.id)
        for info in booster_of(model).dump_model()["tree_info"]:
            stack = [info["tree_structure"]]
            while stack:
                node = stack.pop()
                if "split_index" in node:
                    kinds.add(f"{node['decision_type']} {node['missing_type']}")
                    stack += [node["left_child"], node["right_child"]]
    return kinds


def test_infinite_thresholds_survive_the_dump_clamp() -> None:
    """A "numbers left, NaN right" split has threshold +inf, which the dump writes as 1e300."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 2))
    nan = rng.random(600) < 0.3
    X[nan, 0] = np.nan
    model = lgb.LGBMRegressor(n_estimators=5, num_leaves=4, verbose=-1, n_jobs=1).fit(
        X, nan * 5.0 + X[:, 1]
    )
    forest = treecomp.parse(model)
    assert all(tree.threshold[0] == np.inf for tree in forest.trees)
    huge = [1e300, np.nextafter(1e300, np.inf), 1e301, np.inf, -1e301, -np.inf, np.nan, 1e299]
    X_test = np.column_stack([huge, np.zeros(len(huge))])
    compare(model, compiled(model), X_test)
    with np.errstate(over="ignore"):  # 1e301 is inf in float32, for both models
        compare(model, compiled(model, "float32"), X_test.astype(np.float32))


def test_cases_cover_every_missing_type_and_categorical_splits() -> None:
    kinds = split_kinds()
    assert {"<= None", "<= Zero", "<= NaN"} <= kinds
    assert {"== None", "== NaN"} <= kinds


@pytest.mark.parametrize(
    "case_id",
    ["reg-nan-cat", "reg-zero-missing-cat", "reg-no-missing-cat", "clf-goss-digits", "reg-l2"],
)
def test_zero_flushed_inputs_match_native(case_id: str) -> None:
    """LightGBM reads |x| <= kZeroThreshold as 0.0, and has thresholds at ±kZeroThreshold."""
    model, X_test = fitted(case_id)
    dump = booster_of(model).dump_model()
    assert f"{ZERO_THRESHOLD!r}" in repr(dump) or f"{-ZERO_THRESHOLD!r}" in repr(dump)
    tiny = [0.0, -0.0, 5e-324, -5e-324, 1e-36, -1e-36, ZERO_THRESHOLD, -ZERO_THRESHOLD]
    tiny += [float(np.nextafter(v, s)) for v in (ZERO_THRESHOLD, -ZERO_THRESHOLD) for s in (-1, 1)]
    rows = []
    for j in range(X_test.shape[1]):
        for v in tiny:
            row = X_test[len(rows) % len(X_test)].copy()
            row[j] = v
            rows.append(row)
    X = np.array(rows)
    compare(model, compiled(model), X)
    compare(model, compiled(model, "float32"), X.astype(np.float32))


@pytest.mark.parametrize(
    "case_id", ["reg-nan-cat", "reg-zero-missing-cat", "reg-no-missing-cat", "clf-no-missing"]
)
def test_categorical_edge_values_match_native(case_id: str) -> None:
    """Negative, fractional, unseen, huge and NaN categories: CategoricalDecision's rules."""
    model, X_test = fitted(case_id)
    forest = treecomp.parse(model)
    assert any(t.is_categorical.any() for t in forest.trees)
    values = [np.nan, -np.inf, -1e30, -2.0, -1.0, -0.99, -0.5, -0.0, 0.0, 0.3, 0.999, 1.0]
    values += [2.5, 3.0, 7.9, 11.0, 11.5, 12.0, 31.0, 32.0, 33.0, 1e9, 2.0**31, 2.0**32 + 3]
    values += [1e30, np.inf]
    X = np.repeat(X_test[:8], len(values), axis=0)
    X[:, CATEGORICAL_FEATURE] = np.tile(values, 8)
    compare(model, compiled(model), X)


def test_missing_type_none_sends_nan_like_zero() -> None:
    """missing_type None ignores the stored default_left: NaN is compared as 0.0."""
    model, X_test = fitted("reg-no-missing-cat")
    forest = treecomp.parse(model)
    numeric = [t for t in forest.trees if (t.left_child >= 0).any()]
    for tree in numeric:
        internal = (tree.left_child >= 0) & ~tree.is_categorical
        assert_equal(tree.default_left[internal], 0.0 <= tree.threshold[internal])
        assert not tree.zero_is_missing.any()
    X = np.full((1, X_test.shape[1]), np.nan)
    zeros = np.zeros_like(X)
    zeros[0, CATEGORICAL_FEATURE] = np.nan  # a categorical NaN always goes right
    assert_equal(model.predict(X, pred_leaf=True), model.predict(zeros, pred_leaf=True))
    compare(model, compiled(model), np.vstack([X, zeros]))


@pytest.mark.parametrize(
    ("case_id", "kind", "scale"),
    [
        ("clf-binary-sigmoid-cat", "sigmoid", 0.7),
        ("clf-binary-sigmoid-rounded", "sigmoid", 0.123457),
        ("booster-sigmoid-in-memory", "sigmoid", 0.123456789),
        ("clf-ova", "sigmoid", 1.0),
        ("clf-multi", "softmax", 1.0),
        ("reg-sqrt", "signed_square", 1.0),
        ("reg-l1-sqrt", "signed_square", 1.0),
        ("reg-poisson", "exp", 1.0),
        ("reg-xentropy", "sigmoid", 1.0),
        ("reg-xentlambda", "softplus", 1.0),
        ("rank-xendcg", "identity", 1.0),
        ("booster-custom-objective", "identity", 1.0),
    ],
)
def test_objectives_map_to_post_transforms(case_id: str, kind: str, scale: float) -> None:
    """The sigmoid slope is what predictions use: 6 digits once reloaded, exact in memory."""
    forest = treecomp.parse(fitted(case_id)[0])
    assert (forest.post_transform.kind, forest.post_transform.scale) == (kind, scale)


def test_random_forest_mode_averages_over_iterations() -> None:
    model, X_test = fitted("reg-rf-cat")
    forest = treecomp.parse(model)
    assert forest.aggregation == "average"
    assert_equal(forest.trees_per_output(), [model.booster_.current_iteration()])
    # The average is the sum of the trees in order divided by the iteration count.
    leaves = model.predict(X_test, pred_leaf=True)
    total = np.zeros(len(X_test))
    for t, tree in enumerate(forest.trees):
        index = {int(leaf): v for leaf, v in zip(tree.leaf_id, tree.value[:, 0]) if leaf >= 0}
        total += [index[int(leaf)] for leaf in leaves[:, t]]
    assert_equal(total / forest.n_trees, model.predict(X_test))


def test_best_iteration_is_honoured() -> None:
    model, X_test = fitted("booster-best-iteration")
    forest = treecomp.parse(model)
    assert forest.n_trees == 3 * model.best_iteration < model.num_trees()
    assert forest.leaf_shape == (3 * model.best_iteration,)
    model.best_iteration, saved = 0, model.best_iteration
    try:  # without a best iteration every tree is used, by LightGBM and by treecomp
        everything = treecomp.parse(model)
        assert everything.n_trees == model.num_trees()
        compare(model, compiled(model), X_test)
    finally:
        model.best_iteration = saved
    classifier, _ = fitted("clf-early-stop")
    assert treecomp.parse(classifier).n_trees == 3 * classifier.best_iteration_


def test_single_leaf_trees_report_leaf_zero() -> None:
    model, X_test = fitted("booster-multiclass-single-leaf")
    forest = treecomp.parse(model)
    singles = [t for t in forest.trees if t.n_nodes == 1]
    assert singles and all(t.leaf_id[0] == 0 for t in singles)
    assert_equal(compiled(model).apply(X_test), native(model, "apply", X_test))


def test_forest_layout_follows_the_dump() -> None:
    model, _ = fitted("clf-goss-digits")
    forest = treecomp.parse(model)
    dump = model.booster_.dump_model()
    assert forest.n_outputs == 10
    assert [t.output_index for t in forest.trees] == [t % 10 for t in range(forest.n_trees)]
    assert forest.n_features == dump["max_feature_idx"] + 1
    assert forest.feature_names == tuple(dump["feature_names"])
    assert forest.comparison == "<=" and forest.input_dtype == "float64"
    assert_equal(forest.classes, model.classes_)


def test_string_labels_are_kept() -> None:
    model, X_test = fitted("clf-strings-zero-missing")
    cm = compiled(model)
    assert cm.predict(X_test).dtype == model.predict(X_test).dtype
    again = treecomp.Forest.from_json(cm.forest.to_json())
    assert_equal(again.classes, model.classes_)


# --- pandas categorical columns ------------------------------------------------------------


def frame(n: int, seed: int) -> tuple[Any, np.ndarray]:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    colours = np.array(["red", "green", "blue", "amber", "teal"])
    out = pd.DataFrame(
        {
            "x0": rng.normal(size=n),
            "colour": pd.Categorical(colours[rng.integers(0, 5, n)], categories=colours),
            "x1": np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),
            "size": pd.Categorical(rng.integers(0, 40, n) * 10),
        }
    )
    effect = {"red": 2.0, "green": -1.0, "blue": 0.5, "amber": 3.0, "teal": -2.0}
    y = out["x0"] + out["colour"].map(effect).astype(float) + (out["size"].astype(int) % 70) / 20
    out.loc[rng.random(n) < 0.1, "colour"] = np.nan
    out.loc[rng.random(n) < 0.1, "x0"] = np.nan
    return out, y.to_numpy()


@pytest.mark.parametrize("kind", ["regressor", "classifier", "booster"])
def test_pandas_categories_match_native(kind: str) -> None:
    train, y = frame(800, 0)
    if kind == "classifier":
        model: Any = lgb.LGBMClassifier(n_estimators=10, **SMALL, **CATEGORICAL)
        model.fit(train, target(y, "multi"))
    elif kind == "regressor":
        model = lgb.LGBMRegressor(n_estimators=20, **SMALL, **CATEGORICAL).fit(train, y)
    else:
        model = lgb.train({"num_leaves": 15, **THREADS, **CATEGORICAL}, lgb.Dataset(train, y), 20)
    forest = treecomp.parse(model)
    assert forest.categories is not None and forest.categories[0] is None
    assert forest.categories[1] == ("red", "green", "blue", "amber", "teal")
    assert any(t.is_categorical.any() for t in forest.trees)
    cm = compiled(model)
    test, _ = frame(300, 1)
    compare(model, cm, test)
    # Categories in another order, unseen categories and missing values at predict time.
    shuffled = test.copy()
    shuffled["colour"] = shuffled["colour"].cat.set_categories(
        ["teal", "blue", "violet", "red", "green", "amber"]
    )
    shuffled.loc[::7, "colour"] = "violet"
    shuffled["size"] = shuffled["size"].cat.set_categories(
        [*sorted(shuffled["size"].cat.categories, reverse=True), 5, 15]
    )
    shuffled.loc[::5, "size"] = 15
    compare(model, cm, shuffled)
    compare(model, cm, shuffled.iloc[:1])


def test_pandas_trivial_category_column_is_located_by_parameters() -> None:
    pd = pytest.importorskip("pandas")
    train, y = frame(600, 0)
    train.insert(2, "constant", pd.Categorical(["k"] * len(train)))
    model = lgb.LGBMRegressor(n_estimators=10, **SMALL, **CATEGORICAL).fit(train, y)
    forest = treecomp.parse(model)
    assert forest.categories is not None
    assert forest.categories[2] == ("k",) and forest.categories[4] is not None
    test, _ = frame(200, 1)
    test.insert(2, "constant", pd.Categorical(["k"] * len(test)))
    compare(model, compiled(model), test)


def test_ordered_pandas_category_column_is_rejected() -> None:
    train, y = frame(400, 0)
    train["size"] = train["size"].cat.as_ordered()
    model = lgb.LGBMRegressor(n_estimators=5, **SMALL).fit(train, y)
    with pytest.raises(treecomp.UnsupportedModelError, match="pandas category columns"):
        treecomp.parse(model)


# --- Hypothesis: rows built from thresholds, neighbours, NaN, zeros, tiny values ---------


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_rows_on_thresholds(data_: st.DataObject) -> None:
    model, X_test = fitted("reg-zero-missing-cat")
    forest = treecomp.parse(model)
    by_feature: dict[int, list[float]] = {}
    for f, t in thresholds(forest):
        by_feature.setdefault(f, []).extend(probe_values(t, "float64"))
    by_feature[CATEGORICAL_FEATURE] = [float(v) for v in range(-2, 14)] + [0.5, -0.5]
    rows = data_.draw(
        st.lists(
            st.tuples(
                *[
                    st.one_of(
                        st.sampled_from(by_feature.get(j, [0.0])),
                        st.sampled_from([np.nan, 0.0, -0.0, 1e-36, -ZERO_THRESHOLD, np.inf]),
                        st.floats(-1e3, 1e3),
                    )
                    for j in range(X_test.shape[1])
                ]
            ),
            min_size=1,
            max_size=20,
        )
    )
    X = np.array(rows, dtype=np.float64)
    cm = compiled(model)
    assert_equal(cm.apply(X), model.predict(X, pred_leaf=True))
    assert_close(cm.predict(X), model.predict(X), "float64")


# --- Errors and rejections -----------------------------------------------------------------


def test_unfitted_model_is_a_clear_error() -> None:
    for model in (lgb.LGBMClassifier(), lgb.LGBMRegressor(), lgb.LGBMRanker()):
        with pytest.raises(ValueError, match="not fitted"):
            treecomp.convert(model)


def test_unknown_objective_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = fitted("booster-binary")
    dump = model.dump_model()
    monkeypatch.setattr(model, "dump_model", lambda **_: {**dump, "objective": "made_up k:1"})
    with pytest.raises(treecomp.UnsupportedModelError, match=r"'made_up'.*supported objectives"):
        treecomp.parse(model)


def test_linear_trees_are_rejected() -> None:
    X, y, _ = data("diabetes")
    model = lgb.LGBMRegressor(n_estimators=3, linear_tree=True, **SMALL).fit(X, y)
    with pytest.raises(treecomp.UnsupportedModelError, match="linear_tree"):
        treecomp.parse(model)


def test_callable_objective_classifier_is_rejected() -> None:
    X, y, _ = data("breast_cancer")

    def logloss(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = 1.0 / (1.0 + np.exp(-y_pred))
        return p - y_true, p * (1.0 - p)

    model = lgb.LGBMClassifier(n_estimators=3, objective=logloss, **SMALL).fit(X, y)
    with pytest.raises(treecomp.UnsupportedModelError, match="callable objective"):
        treecomp.parse(model)


def test_prediction_early_stopping_is_rejected() -> None:
    X, y, _ = data("iris")
    model = lgb.LGBMClassifier(n_estimators=3, pred_early_stop=True, **SMALL).fit(X, y)
    with pytest.raises(treecomp.UnsupportedModelError, match="pred_early_stop"):
        treecomp.parse(model)


def test_wrong_feature_count_is_a_value_error() -> None:
    model, X_test = fitted("clf-binary")
    cm = compiled(model)
    with pytest.raises(ValueError, match="30"):
        cm.predict(X_test[:, :5])
    with pytest.raises(ValueError):
        model.predict(X_test[:, :5])


def test_package_imports_without_lightgbm_at_module_level() -> None:
    import ast
    import inspect

    from treecomp.frontends import lightgbm as frontend

    tree = ast.parse(inspect.getsource(frontend))
    top_level = [
        alias.name
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    modules = [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert "lightgbm" not in top_level and "lightgbm" not in modules


def test_integer_inputs_are_rounded_to_float32_like_native() -> None:
    """LightGBM converts integer arrays to float32 before predicting: 2**24 + 1 -> 2**24."""
    rng = np.random.default_rng(0)
    X = rng.integers(2**24 - 40, 2**24 + 40, size=(500, 2)).astype(np.float64)
    model = lgb.LGBMRegressor(n_estimators=5, min_child_samples=2, verbose=-1, n_jobs=1).fit(
        X, X[:, 0] % 7
    )
    X_int = np.column_stack([np.arange(2**24, 2**24 + 40), np.full(40, 2**24)]).astype(np.int64)
    assert_equal(compiled(model).apply(X_int), model.predict(X_int, pred_leaf=True))


def test_dataframe_column_names_with_spaces_are_accepted_like_native() -> None:
    """LightGBM stores "a b" as "a_b"; a DataFrame may use either spelling."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a b": rng.normal(size=300), "c": rng.normal(size=300)})
    model = lgb.LGBMRegressor(n_estimators=3, n_jobs=1, verbose=-1).fit(train, train["a b"])
    assert treecomp.parse(model).feature_names == ("a_b", "c")
    assert_close(compiled(model).predict(train), model.predict(train), "float64")


def test_dataframe_columns_are_taken_by_position_like_native() -> None:
    """LightGBM ignores DataFrame names (unless validate_features=True): so does treecomp."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    model = lgb.LGBMRegressor(n_estimators=3, n_jobs=1, verbose=-1).fit(X, X[:, 0])
    frame = pd.DataFrame(X[:20], columns=["a", "b", "c"])
    assert_close(compiled(model).predict(frame), model.predict(frame), "float64")


@pytest.mark.parametrize("objective", ["multiclass", "multiclassova"])
def test_two_classes_with_a_multiclass_objective(objective: str) -> None:
    """num_class=2 with a multiclass objective: one margin per class, as LightGBM fits it."""
    X, y, X_test = data("breast_cancer")
    model = lgb.LGBMClassifier(objective=objective, num_class=2, n_estimators=5, verbose=-1)
    model.fit(X, y)
    for backend in ("numpy", "torch", "onnx"):
        cm = treecomp.convert(model, backend)
        assert cm.forest.n_outputs == 2
        compare(model, cm, X_test)
        compare(model, cm, with_missing(X_test, fraction=0.2, seed=1))


def test_category_columns_other_than_the_categorical_features_are_refused() -> None:
    """LightGBM recodes category columns by position: with categorical_feature= naming
    another column, the lists cannot be placed, and a silent wrong answer is refused."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=600),
            "c": pd.Categorical(rng.integers(0, 5, 600)),
            "k": rng.integers(0, 6, 600).astype(float),
        }
    )
    y = frame["a"] + frame["c"].astype(int) % 2 + frame["k"] % 3
    model = lgb.LGBMRegressor(n_estimators=10, verbose=-1, min_child_samples=5)
    model.fit(frame, y, categorical_feature=["k"])
    cm = treecomp.convert(model, "numpy")
    with pytest.raises(
        treecomp.UnsupportedModelError, match=r"\['c'\] are pandas categories.*\['k'\]"
    ):
        cm.predict(frame)
    # As numbers (the codes LightGBM would use), the same rows score exactly from NumPy; a
    # frame without the category column is refused, as LightGBM refuses it.
    codes = frame.assign(c=frame["c"].cat.codes.astype(float))
    assert_close(cm.predict(codes.to_numpy()), model.predict(frame), "float64")
    with pytest.raises(ValueError, match="categorical_feature do not match"):
        model.predict(codes)
    with pytest.raises(TypeError, match=r"columns \['k'\] are not pandas categories"):
        cm.predict(codes)
