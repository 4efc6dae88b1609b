"""scikit-learn frontend: native predictions == reference backend, on hard rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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

pytest.importorskip("sklearn")
from sklearn import datasets
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression
from sklearn.tree import (
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    ExtraTreeClassifier,
    ExtraTreeRegressor,
)

METHODS = ("predict", "predict_proba", "decision_function", "score_samples", "apply")


@cache
def data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test): half of each bundled set is held out."""
    if name == "multi_target":
        X, y = datasets.make_regression(300, 6, n_targets=3, random_state=0)
    elif name == "digits":
        X, y = datasets.load_digits(return_X_y=True)
    else:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    train, test = order[: len(X) // 2], order[len(X) // 2 :]
    return X[train], y[train], X[test]


def nan_train(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same split with 15% of the training entries missing, so NaN directions are learnt."""
    X, y, X_test = data(name)
    return with_missing(X, fraction=0.15, seed=1)[:-1], y, X_test


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], Any]
    data: str
    nan_in_training: bool = False

    def fit(self) -> tuple[Any, np.ndarray]:
        X, y, X_test = nan_train(self.data) if self.nan_in_training else data(self.data)
        model = self.make()
        if isinstance(model, IsolationForest):
            model.fit(X)
        else:
            model.fit(X, y)
        return model, X_test


CASES = [
    Case("tree-clf-iris", lambda: DecisionTreeClassifier(random_state=0), "iris"),
    Case(
        "tree-clf-nan",
        lambda: DecisionTreeClassifier(max_depth=6, random_state=0),
        "breast_cancer",
        True,
    ),
    Case("extratree-clf", lambda: ExtraTreeClassifier(random_state=0), "wine"),
    Case("tree-reg", lambda: DecisionTreeRegressor(max_depth=8, random_state=0), "diabetes"),
    Case(
        "tree-reg-multi", lambda: DecisionTreeRegressor(max_depth=6, random_state=0), "multi_target"
    ),
    Case("extratree-reg", lambda: ExtraTreeRegressor(random_state=0), "diabetes"),
    Case(
        "rf-clf-binary",
        lambda: RandomForestClassifier(15, max_depth=7, random_state=0),
        "breast_cancer",
    ),
    Case("rf-clf-nan", lambda: RandomForestClassifier(10, random_state=0), "wine", True),
    Case(
        "rf-clf-digits", lambda: RandomForestClassifier(10, max_depth=8, random_state=0), "digits"
    ),
    Case(
        "rf-clf-weighted",
        lambda: RandomForestClassifier(10, class_weight="balanced", random_state=0),
        "iris",
    ),
    Case("et-clf", lambda: ExtraTreesClassifier(10, random_state=0), "iris"),
    Case("rf-reg", lambda: RandomForestRegressor(10, max_depth=8, random_state=0), "diabetes"),
    Case(
        "rf-reg-nan",
        lambda: RandomForestRegressor(10, max_depth=8, random_state=0),
        "diabetes",
        True,
    ),
    Case("rf-reg-multi", lambda: RandomForestRegressor(8, random_state=0), "multi_target"),
    Case("et-reg-multi", lambda: ExtraTreesRegressor(8, random_state=0), "multi_target"),
    Case(
        "gb-clf-binary",
        lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
        "breast_cancer",
    ),
    Case(
        "gb-clf-multi", lambda: GradientBoostingClassifier(n_estimators=15, random_state=0), "iris"
    ),
    Case(
        "gb-clf-exponential",
        lambda: GradientBoostingClassifier(loss="exponential", n_estimators=20, random_state=0),
        "breast_cancer",
    ),
    Case(
        "gb-clf-zero-init", lambda: GradientBoostingClassifier(n_estimators=10, init="zero"), "wine"
    ),
    Case(
        "gb-clf-dummy-init",
        lambda: GradientBoostingClassifier(n_estimators=10, init=DummyClassifier(strategy="prior")),
        "wine",
    ),
    Case(
        "gb-clf-early-stop",
        lambda: GradientBoostingClassifier(n_estimators=200, n_iter_no_change=3, random_state=0),
        "breast_cancer",
    ),
    Case("gb-reg", lambda: GradientBoostingRegressor(n_estimators=20, random_state=0), "diabetes"),
    Case(
        "gb-reg-huber",
        lambda: GradientBoostingRegressor(loss="huber", n_estimators=15, random_state=0),
        "diabetes",
    ),
    Case(
        "gb-reg-quantile",
        lambda: GradientBoostingRegressor(
            loss="quantile", alpha=0.8, n_estimators=15, random_state=0
        ),
        "diabetes",
    ),
    Case(
        "gb-reg-absolute",
        lambda: GradientBoostingRegressor(loss="absolute_error", n_estimators=15, random_state=0),
        "diabetes",
    ),
    Case(
        "gb-reg-zero-init",
        lambda: GradientBoostingRegressor(n_estimators=10, init="zero"),
        "diabetes",
    ),
    Case(
        "gb-reg-dummy-median",
        lambda: GradientBoostingRegressor(n_estimators=10, init=DummyRegressor(strategy="median")),
        "diabetes",
    ),
    Case(
        "hgb-clf-binary",
        lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0),
        "breast_cancer",
        True,
    ),
    Case(
        "hgb-clf-multi",
        lambda: HistGradientBoostingClassifier(max_iter=15, random_state=0),
        "wine",
        True,
    ),
    Case(
        "hgb-reg",
        lambda: HistGradientBoostingRegressor(max_iter=20, random_state=0),
        "diabetes",
        True,
    ),
    Case(
        "hgb-reg-absolute",
        lambda: HistGradientBoostingRegressor(loss="absolute_error", max_iter=15, random_state=0),
        "diabetes",
    ),
    Case(
        "hgb-reg-quantile",
        lambda: HistGradientBoostingRegressor(loss="quantile", quantile=0.3, max_iter=15),
        "diabetes",
    ),
    Case("iforest", lambda: IsolationForest(n_estimators=20, random_state=0), "diabetes"),
    Case(
        "iforest-subspace",
        lambda: IsolationForest(
            n_estimators=15, max_features=0.5, contamination=0.1, random_state=0
        ),
        "breast_cancer",
        True,
    ),
]


@cache
def fitted(case_id: str) -> tuple[Any, np.ndarray]:
    return next(c for c in CASES if c.id == case_id).fit()


def compare(model: Any, cm: treecomp.CompiledModel, X: np.ndarray) -> None:
    """Every native method against the compiled model; missing methods missing on both."""
    compare_native(model, cm, X, tolerance_name="float64")


def native_precision(model: Any) -> str:
    """The precision that reproduces the native model on any input."""
    return treecomp.parse(model).input_dtype


def compiled(model: Any) -> treecomp.CompiledModel:
    return treecomp.convert(model, backend="numpy", precision=native_precision(model))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_native_out_of_sample(case: Case) -> None:
    model, X_test = fitted(case.id)
    compare(model, compiled(model), X_test)


@pytest.mark.parametrize("case", [c for c in CASES if c.id.startswith("hgb")], ids=lambda c: c.id)
def test_float32_precision_is_exact_on_float32_data(case: Case) -> None:
    model, X_test = fitted(case.id)
    forest = treecomp.parse(model)
    X = np.vstack([X_test, probe_rows(forest, X_test, "float32")]).astype(np.float32)
    compare(model, treecomp.convert(model, backend="numpy", precision="float32"), X)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_native_on_threshold_probes(case: Case) -> None:
    model, X_test = fitted(case.id)
    forest = treecomp.parse(model)
    dtype = native_precision(model)
    X = probe_rows(forest, X_test, dtype)
    assert len(X) > 0
    compare(model, treecomp.convert(model, backend="numpy", precision=dtype), X)


@pytest.mark.parametrize(
    "case", [c for c in CASES if not c.id.startswith("gb-")], ids=lambda c: c.id
)
def test_matches_native_with_missing_values(case: Case) -> None:
    model, X_test = fitted(case.id)
    X = with_missing(X_test, fraction=0.3, seed=2)
    compare(model, compiled(model), X)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_special_rows_and_batch_sizes(case: Case) -> None:
    model, X_test = fitted(case.id)
    cm = compiled(model)
    forest = cm.forest
    special = special_rows(X_test.shape[1])
    finite = special[np.isfinite(special).all(axis=1) & (np.abs(special) < 1e30).all(axis=1)]
    compare(model, cm, finite)
    if forest.allow_inf:
        compare(model, cm, special)
    else:
        with pytest.raises(ValueError, match="infinity"):
            cm.predict(special)
        # sklearn's own finiteness check sums inf and -inf: its warning is not ours.
        with pytest.raises(ValueError), np.errstate(invalid="ignore"):
            model.predict(special)
    compare(model, cm, X_test[:1])
    empty = X_test[:0]
    for method in METHODS:
        if hasattr(cm, method):
            out = getattr(cm, method)(empty)
            assert out.shape[0] == 0
            assert out.shape[1:] == getattr(cm, method)(X_test[:2]).shape[1:]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_json_round_trip_is_lossless(case: Case) -> None:
    model, X_test = fitted(case.id)
    forest = treecomp.parse(model)
    again = treecomp.Forest.from_json(forest.to_json())
    assert again == forest
    assert [t.threshold.tobytes() for t in again.trees] == [
        t.threshold.tobytes() for t in forest.trees
    ]
    compare(model, compiled(again), X_test[:50])


def test_float32_precision_never_rounds_a_threshold_up() -> None:
    """float32 inputs next to a float64 threshold take the native double comparison's branch."""
    model, X_test = fitted("hgb-reg")
    forest = treecomp.parse(model)
    # HistGradientBoosting thresholds are float64 midpoints: most are not float32 numbers.
    assert sum(float(np.float32(t)) != t for _, t in thresholds(forest)) > 10
    X = probe_rows(forest, X_test, "float32", limit=10_000).astype(np.float32)
    cm = treecomp.convert(model, backend="numpy", precision="float32")
    assert_close(cm.predict(X), model.predict(X), "float64")


def test_no_nan_accepted_where_native_rejects_it() -> None:
    model, X_test = fitted("gb-reg")
    X = with_missing(X_test[:10])
    with pytest.raises(ValueError, match="NaN"):
        treecomp.convert(model, backend="numpy").predict(X)
    with pytest.raises(ValueError):
        model.predict(X)


# --- HistGradientBoosting categorical features ------------------------------------------


def categorical_frame(n: int, seed: int) -> Any:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    colours = np.array(["red", "green", "blue", "amber", "teal"])
    frame = pd.DataFrame(
        {
            "x0": rng.normal(size=n),
            "colour": pd.Categorical(colours[rng.integers(0, 5, n)], categories=colours),
            "x1": rng.normal(size=n),
            "size": pd.Categorical(rng.integers(0, 40, n)),
        }
    )
    effect = {"red": 2.0, "green": -1.0, "blue": 0.5, "amber": 3.0, "teal": -2.0}
    y = (
        frame["x0"]
        + frame["colour"].map(effect).astype(float)
        + (frame["size"].astype(int) % 7) / 3
    )
    frame.loc[rng.random(n) < 0.1, "colour"] = np.nan
    return frame, y.to_numpy()


@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_hgb_pandas_categories_match_native(kind: str) -> None:
    pd = pytest.importorskip("pandas")
    frame, y = categorical_frame(600, 0)
    if kind == "classifier":
        model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(
            frame, y > np.median(y)
        )
    else:
        model = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(frame, y)
    forest = treecomp.parse(model)
    assert any(t.is_categorical.any() for t in forest.trees)
    cm = treecomp.convert(model, backend="numpy", precision="float64")
    test, _ = categorical_frame(300, 1)
    compare(model, cm, test)
    # Categories in another order, an unseen category, and missing values at predict time.
    shuffled = test.copy()
    shuffled["colour"] = shuffled["colour"].cat.set_categories(
        ["teal", "blue", "red", "green", "amber", "violet"]
    )
    shuffled.loc[::7, "colour"] = "violet"
    compare(model, cm, shuffled)
    with pytest.raises(ValueError, match="feature names"):
        cm.predict(test[["colour", "x0", "x1", "size"]])
    assert isinstance(test, pd.DataFrame)


def test_hgb_numeric_categories_are_encoded_like_native() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack(
        [rng.integers(0, 12, 500) * 3.0, rng.normal(size=500), rng.integers(0, 4, 500)]
    )
    y = np.sin(X[:, 0]) + X[:, 1] + (X[:, 2] == 2)
    model = HistGradientBoostingRegressor(
        max_iter=20, categorical_features=[0, 2], random_state=0
    ).fit(X, y)
    X_test = np.column_stack(
        [rng.integers(-2, 14, 300) * 3.0, rng.normal(size=300), rng.integers(-1, 6, 300)]
    )
    X_test[::11, 0] = np.nan
    X_test[::13, 0] = 4.5  # never seen in training: missing for the encoder
    compare(model, treecomp.convert(model, backend="numpy", precision="float64"), X_test)


# --- Hypothesis: rows built from thresholds, their neighbours, NaN, zeros and infinities --


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_rows_on_thresholds(data_: st.DataObject) -> None:
    model, X_test = fitted("rf-clf-nan")
    forest = treecomp.parse(model)
    pairs = thresholds(forest)
    by_feature: dict[int, list[float]] = {}
    for f, t in pairs:
        # sklearn marks "only missing values go right" with an infinite threshold: skip those.
        by_feature.setdefault(f, []).extend(v for v in probe_values(t, "float32") if np.isfinite(v))
    n_features = X_test.shape[1]
    rows = data_.draw(
        st.lists(
            st.tuples(
                *[
                    st.one_of(
                        st.sampled_from(by_feature.get(j, [0.0])),
                        st.just(float("nan")),
                        st.just(0.0),
                        st.just(-0.0),
                        st.floats(-1e3, 1e3, width=32),
                    )
                    for j in range(n_features)
                ]
            ),
            min_size=1,
            max_size=20,
        )
    )
    X = np.array(rows, dtype=np.float64)
    cm = treecomp.convert(model, backend="numpy")
    assert_equal(cm.apply(X), model.apply(X))
    assert_equal(cm.predict(X), model.predict(X))


# --- Errors ----------------------------------------------------------------------------


def test_unsupported_model_names_itself() -> None:
    model = LinearRegression().fit(*data("diabetes")[:2])
    with pytest.raises(treecomp.UnsupportedModelError, match=r"LinearRegression.*supported"):
        treecomp.convert(model)


def test_unfitted_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        treecomp.convert(RandomForestClassifier())


def test_input_dependent_init_is_rejected() -> None:
    X, y, _ = data("diabetes")
    model = GradientBoostingRegressor(n_estimators=3, init=LinearRegression()).fit(X, y)
    with pytest.raises(treecomp.UnsupportedModelError, match="init=LinearRegression"):
        treecomp.parse(model)


def test_multi_output_classifier_is_rejected() -> None:
    X, y, _ = data("iris")
    model = RandomForestClassifier(3).fit(X, np.column_stack([y, y % 2]))
    with pytest.raises(treecomp.UnsupportedModelError, match="multi-output"):
        treecomp.parse(model)


def test_bad_inputs_are_clear_errors() -> None:
    model, X_test = fitted("rf-clf-binary")
    cm = treecomp.convert(model, backend="numpy")
    with pytest.raises(ValueError, match="30"):
        cm.predict(X_test[:, :5])
    with pytest.raises(ValueError, match="2-D"):
        cm.predict(X_test[0])
    with pytest.raises(TypeError, match="non-numeric"):
        cm.predict(np.array([["a"] * 30], dtype=object))
    with pytest.raises(TypeError, match="dtype"):
        cm.predict(np.array([["a"] * 30]))
    with pytest.raises(ValueError, match="precision"):
        treecomp.convert(model, backend="numpy", precision="float16")
    with pytest.raises(ValueError, match="unknown backend"):
        treecomp.convert(model, backend="tpu")


def test_inputs_in_any_layout_give_the_same_answer() -> None:
    model, X_test = fitted("rf-clf-digits")
    cm = treecomp.convert(model, backend="numpy")
    expected = model.predict_proba(X_test)
    for X in (
        X_test.tolist(),
        np.asfortranarray(X_test),
        X_test.astype(np.float32),
        X_test.astype(np.int64),
    ):
        assert_close(cm.predict_proba(X), expected, "float64")


def test_string_labels_are_kept() -> None:
    X, y, X_test = data("iris")
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    model = RandomForestClassifier(5, random_state=0).fit(X, labels)
    cm = treecomp.convert(model, backend="numpy")
    assert_equal(cm.predict(X_test), model.predict(X_test))
    again = treecomp.Forest.from_json(cm.forest.to_json())
    assert_equal(again.classes, model.classes_)


def test_integers_are_cast_once_like_native() -> None:
    """sklearn casts int64 straight to float32; through float64 would round twice."""
    v = 2**60 + 2**36 + 1
    model = DecisionTreeRegressor().fit([[2.0**60], [2.0**60 + 2**37]] * 20, [0.0, 1.0] * 20)
    X = np.array([[v]], dtype=np.int64)
    cm = treecomp.convert(model, backend="numpy")
    assert_equal(cm.apply(X), model.apply(X))
    assert_close(cm.predict(X), model.predict(X), "float64")


def test_hgb_rejects_infinity_in_a_categorical_feature() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=300), rng.integers(0, 5, 300)])
    model = HistGradientBoostingRegressor(max_iter=5, categorical_features=[1]).fit(X, X[:, 1])
    bad = np.array([[0.0, np.inf]])
    with pytest.raises(ValueError):
        model.predict(bad)
    with pytest.raises(ValueError, match="infinity"):
        treecomp.convert(model, backend="numpy").predict(bad)


def test_dates_are_not_numbers() -> None:
    pd = pytest.importorskip("pandas")
    model, X_test = fitted("rf-reg")
    frame = pd.DataFrame(X_test[:3])
    frame[0] = pd.to_datetime(["2026-01-01"] * 3)
    with pytest.raises(TypeError, match="dates"):
        treecomp.convert(model, backend="numpy").predict(frame)


@pytest.mark.parametrize("strategy", ["stratified", "uniform"])
def test_random_dummy_init_is_refused(strategy: str) -> None:
    """A DummyClassifier drawing at random per row is no constant initial margin."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = data("breast_cancer")[:2]
    init = DummyClassifier(strategy=strategy, random_state=0)
    model = GradientBoostingClassifier(n_estimators=3, init=init).fit(X, y)
    with pytest.raises(treecomp.UnsupportedModelError, match=f"strategy='{strategy}'"):
        treecomp.convert(model, "numpy")
    constant = GradientBoostingClassifier(n_estimators=3, init=DummyClassifier()).fit(X, y)
    assert_equal(treecomp.convert(constant, "numpy").predict(X), constant.predict(X))


def test_leaf_values_overflowing_to_infinity_are_refused() -> None:
    from sklearn.tree import DecisionTreeRegressor

    X = np.arange(10.0).reshape(-1, 1)
    model = DecisionTreeRegressor(max_depth=1).fit(X, np.full(10, 1.7e308))
    assert np.isinf(model.predict(X)).any()  # the leaf mean overflows natively too
    with pytest.raises(treecomp.UnsupportedModelError, match="overflow to infinity"):
        treecomp.convert(model, "numpy")


def test_numbers_for_string_categories_are_refused_as_natively() -> None:
    """HistGradientBoosting fitted on a category column of strings refuses numbers there
    (its codes, say), as a float column, a NumPy array or a category column of numbers;
    read by value they would all be unknown categories, scored as missing. Objects mixing
    strings and numbers are read by value, as natively."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(2)
    letters = rng.choice(list("abcdef"), 300)
    frame = pd.DataFrame({"c": pd.Categorical(letters), "x": rng.normal(size=300)})
    y = pd.Series(letters).map(dict(a=0, b=3, c=-2, d=1, e=5, f=-4)).to_numpy() + frame.x
    model = HistGradientBoostingRegressor(max_iter=5, categorical_features="from_dtype")
    model.fit(frame, y)
    rows = frame.iloc[:4]
    numbers = [
        rows.assign(c=[0.0, 1.0, 2.0, np.nan]),
        rows.assign(c=[0.0, 1.0, 2.0, 3.0]).to_numpy(),
        rows.assign(c=pd.Categorical([1, 2, 3, 1])),
    ]
    mixed = rows.assign(c=pd.Series(["a", 1.0, None, np.nan], dtype=object))
    for backend in ("auto", "numpy"):
        cm = treecomp.convert(model, backend=backend)
        for X in numbers:
            with pytest.raises(TypeError):
                model.predict(X)
            with pytest.raises(TypeError, match=r"holds numbers .* categories for it are strings"):
                cm.predict(X)
        assert_equal(cm.predict(mixed), model.predict(mixed))
        with pytest.raises(TypeError, match=r"holds numbers \(float32\)"):  # the type given
            cm.predict(np.asarray(numbers[1], dtype=np.float32))
