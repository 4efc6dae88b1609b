"""The defaults, with the data users pass: ``treecomp.convert(model)`` and no option at all.

Every zoo model (every family), scored on float64 NumPy rows that are not float32 numbers,
on float32 rows, on pandas frames (with category columns where the model has categorical
features, refused where it has none), on float64 rows sitting on, just below and just above
every threshold, on NaN and ±inf, and on the rows the model was trained on: labels and leaf
indices exactly, probabilities and scores within the tolerance table, against the native
library. Then the same model file scored through ``treecomp.score``, whose batches reach
the model as DataFrames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import (
    assert_close,
    assert_equal,
    compare_native,
    native_apply,
    probe_rows,
    special_rows,
    tolerance,
    with_missing,
)
from tests.zoo import ZOO, fitted, pd

ensemble = pytest.importorskip("sklearn.ensemble")
lightgbm = pytest.importorskip("lightgbm")


def off_float32(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Float64 rows that no float32 holds: each value moved by a relative 1e-9."""
    rng = np.random.default_rng(seed)
    X = np.asarray(X, dtype=np.float64)
    return X * (1 + rng.uniform(-1e-9, 1e-9, X.shape))


def default_inputs(model: Any, X_test: Any, forest: treecomp.Forest) -> list[Any]:
    """What users pass: float64 rows (not float32 numbers), float32 rows, frames of both,
    float64 threshold probes, NaN, ±inf and one row."""
    if isinstance(X_test, pd.DataFrame):
        shifted = X_test.assign(a=off_float32(X_test["a"].to_numpy()))
        nan_rows = shifted.copy()
        nan_rows.loc[::3, "b"] = np.nan
        return [shifted, nan_rows, shifted.iloc[:1]]
    X64 = off_float32(X_test)
    names = [f"x{j}" for j in range(X64.shape[1])]
    probes = probe_rows(forest, X64, "float64", limit=150)
    if not forest.allow_inf:  # neighbours of infinite thresholds, which the model refuses
        probes = probes[(np.abs(probes) <= np.finfo(np.float32).max).all(axis=1)]
    batches = [
        X64,
        X64.astype(np.float32),
        probes,
        X64[:1],
        pd.DataFrame(X64, columns=names),
        pd.DataFrame(X64.astype(np.float32), columns=names),
    ]
    if forest.allow_nan:
        batches.append(with_missing(X64, fraction=0.3, seed=3))
    special = special_rows(X64.shape[1])
    batches.append(special if forest.allow_inf else special[:2])
    return batches


@pytest.mark.parametrize("name", sorted(ZOO))
def test_defaults_match_native_on_the_data_users_pass(name: str) -> None:
    model, X_test = fitted(name)
    cm = treecomp.convert(model)
    assert cm.precision == "auto"
    for X in default_inputs(model, X_test, cm.forest):
        # scikit-learn warns about frames with names for a model fitted on an array (and the
        # reverse); the rows are what matters here
        compare_native(model, cm, X)


def test_float64_rows_of_double_libraries_run_in_float64() -> None:
    """LightGBM and HistGradientBoosting compare in double: float64 rows run in float64,
    float32 rows in float32 (exact for them), each on its own engine, said in ``strategy``."""
    model, X_test = fitted("lightgbm_binary_nan")
    cm = treecomp.convert(model, "torch", strategy="tree_traversal")
    assert cm.export_dtype == "float64" and cm.strategy == "tree_traversal"
    X64 = off_float32(X_test)
    assert_equal(cm.apply(X64), native_apply(model, X64))
    assert cm.strategy == "tree_traversal"  # one engine so far: the float64 one
    X32 = X64.astype(np.float32)
    assert_equal(cm.apply(X32), native_apply(model, X32))
    assert cm.strategy == "tree_traversal (float32 and float64 rows)"
    assert sorted(cm._engines) == ["float32", "float64"]
    # XGBoost reads float32: one engine, whatever the rows
    xgb, X_xgb = fitted("xgboost_binary")
    cm = treecomp.convert(xgb, "torch", strategy="tree_traversal")
    cm.predict(off_float32(X_xgb))
    cm.predict(np.asarray(X_xgb, dtype=np.float32))
    assert cm.export_dtype == "float32" and sorted(cm._engines) == ["float32"]


def test_explicit_float32_still_rounds_double_rows() -> None:
    """precision="float32" stays what it says (an override): float64 rows are rounded, so
    a row between a threshold's float32 neighbours can take the other branch."""
    model, X_test = fitted("sklearn_hgb_nan")
    forest = treecomp.parse(model)
    probes = probe_rows(forest, np.nan_to_num(np.asarray(X_test)), "float64", limit=400)
    rounded = treecomp.convert(model, "numpy", precision="float32")
    exact = treecomp.convert(model, "numpy")
    assert_close(exact.predict_proba(probes), model.predict_proba(probes), "float64")
    assert (rounded.predict_proba(probes) != model.predict_proba(probes)).any()


@pytest.mark.parametrize(
    "make",
    [
        lambda: ensemble.HistGradientBoostingClassifier(max_iter=30, random_state=0),
        lambda: lightgbm.LGBMClassifier(n_estimators=30, verbose=-1, n_jobs=1),
        lambda: lightgbm.LGBMRegressor(n_estimators=30, num_leaves=63, verbose=-1, n_jobs=1),
        lambda: ensemble.RandomForestRegressor(10, max_depth=8, random_state=0),
    ],
    ids=["hgb", "lgbm-classifier", "lgbm-regressor", "rf"],
)
def test_defaults_on_training_rows(make: Any) -> None:
    """The issue's reproduction: a model scored on its own float64 training rows, whose
    values sit exactly on the bin edges the thresholds came from."""
    from sklearn.datasets import make_classification

    X, y = make_classification(3000, 12, random_state=0)
    model = make().fit(X, y)
    cm = treecomp.convert(model)
    compare_native(model, cm, X)
    compare_native(model, cm, pd.DataFrame(X, columns=[f"f{j}" for j in range(12)]))


@pytest.mark.parametrize("name", ["sklearn_rf", "lightgbm_binary_nan", "xgboost_binary"])
def test_category_column_on_a_numeric_feature_is_refused(name: str) -> None:
    """Scoring a category column by its codes would be wrong (scikit-learn reads its values,
    LightGBM its codes, XGBoost refuses it): refused with the column named."""
    model, X_test = fitted(name)
    cm = treecomp.convert(model)
    frame = pd.DataFrame(np.asarray(X_test), columns=[f"x{j}" for j in range(X_test.shape[1])])
    frame["x1"] = frame["x1"].astype("category")
    with pytest.raises(TypeError, match=r"columns \['x1'\] are pandas categories"):
        cm.predict(frame)


def test_category_columns_of_categorical_models_still_encode() -> None:
    model, frame = fitted("lightgbm_categorical_zero")
    cm = treecomp.convert(model)
    assert_equal(cm.apply(frame), native_apply(model, frame))
    assert_close(cm.predict(frame), model.predict(frame), tolerance(model))


# Two float32 neighbours above 2**53, and an int64 between them that float32 rounds up
# but float64 then float32 rounds down: a frame's wide integers show how they were cast.
WIDE_LOW, WIDE_HIGH = 2**60, 2**60 + 2**37
WIDE_BETWEEN = 2**60 + 2**36 + 1


@pytest.mark.parametrize(
    ("library", "beside"),
    [
        *(
            (library, beside)
            for library in ("xgboost", "sklearn")
            for beside in ("int64", "float64", "float32", "uint64", "int8", "bool", "Int64")
        ),
        ("xgboost", "Float64"),
        ("sklearn", "Float64"),
        ("sklearn", "object"),  # XGBoost refuses object and string columns
        ("sklearn", "string"),
    ],
)
def test_wide_integer_columns_are_cast_as_the_native_library_casts_frames(
    library: str, beside: str
) -> None:
    """An int64 column beside a column of another type: XGBoost casts each column straight
    to float32, scikit-learn through the frame's common type (float64 beside a float column,
    object beside an object or string one: twice rounded) unless a column is boolean or
    nullable. Labels equal native's."""
    xgboost = pytest.importorskip("xgboost")
    wide = np.array([WIDE_LOW] * 50 + [WIDE_HIGH] * 50, dtype=np.int64)
    other = np.arange(100) % 2

    def frame(a: np.ndarray, b: np.ndarray) -> Any:
        return pd.DataFrame({"a": a, "b": pd.array(b).astype(beside)})

    train = frame(wide, other)
    y = np.repeat([0, 1], 50)
    model = (
        xgboost.XGBClassifier(n_estimators=2, max_depth=1)
        if library == "xgboost"
        else ensemble.RandomForestClassifier(1, bootstrap=False, max_depth=1, random_state=0)
    ).fit(train, y)
    rows = frame(
        np.array([WIDE_BETWEEN, WIDE_LOW, WIDE_HIGH, WIDE_BETWEEN], dtype=np.int64),
        np.array([1, 0, 1, 0]),
    )
    for backend in ("auto", "numpy"):
        assert_equal(treecomp.convert(model, backend=backend).predict(rows), model.predict(rows))


def test_score_files_with_defaults(tmp_path: Path) -> None:
    """treecomp.score's batches arrive as float64 frames: the float64 path, exactly."""
    pytest.importorskip("pyarrow")
    from sklearn.datasets import make_classification

    X, y = make_classification(2000, 8, random_state=1)
    model = ensemble.HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(8)])
    frame.to_parquet(tmp_path / "rows.parquet")
    cm = treecomp.convert(model)
    treecomp.score(
        cm, tmp_path / "rows.parquet", tmp_path / "out.parquet", methods=["predict_proba"]
    )
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert_close(out[["proba_0", "proba_1"]].to_numpy(), model.predict_proba(X), "float64")
    # a string column on a numeric feature: refused, naming the column
    frame.assign(f3=frame["f3"].astype(str)).to_parquet(tmp_path / "strings.parquet")
    with pytest.raises((TypeError, ValueError), match="f3"):
        treecomp.score(cm, tmp_path / "strings.parquet", tmp_path / "bad.parquet")
    assert not (tmp_path / "bad.parquet").exists()


# Zoo models whose links run in float64 (scikit-learn's and LightGBM's sigmoid and softmax).
FLOAT64_LINKS = ["sklearn_gb", "sklearn_hgb_nan", "lightgbm_multiclass", "lightgbm_binary_nan"]


@pytest.mark.parametrize("backend", ["auto", "numpy", "kernel", "onnx", "torch"])
@pytest.mark.parametrize("name", FLOAT64_LINKS)
def test_float64_links_give_the_native_bits(name: str, backend: str) -> None:
    """Probabilities of float64 links are native's bit for bit, not within a tolerance: their
    exp is the C library's, as in scikit-learn, SciPy and LightGBM. NumPy's, ONNX Runtime's
    and torch's own double exp differ from it by an ulp on a few % of inputs (on an AMD EPYC
    with AVX-512, NumPy's on 4.6 %)."""
    model, X_test = fitted(name)
    X = np.asarray(X_test, dtype=np.float64)
    rng = np.random.default_rng(11)
    X = np.concatenate([X + rng.normal(0, 0.05, X.shape) * np.abs(X) for _ in range(6)])
    cm = treecomp.convert(model, backend)
    assert_equal(cm.predict_proba(X), model.predict_proba(X))
    assert_equal(cm.predict_proba(X[:1]), model.predict_proba(X[:1]))


def _native_link_case(case: str) -> tuple[Any, str, np.ndarray]:
    """A tiny model of ``case`` of :data:`NATIVE_LINKS`, the method to compare, and rows."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(600, 5))
    label, kind = case.rsplit("_", 1)
    classes = 10 if kind == "10" else 3
    y = np.abs(X[:, 0] * classes / 2.5).astype(int).clip(0, classes - 1)
    if case == "hgb_poisson":
        y_count = np.abs(X[:, 0] * 3 + rng.normal(size=600))
        model = ensemble.HistGradientBoostingRegressor(max_iter=5, loss="poisson")
        return model.fit(X, y_count), "predict", X
    if case == "lightgbm_softplus":
        model = lightgbm.LGBMRegressor(n_estimators=5, objective="cross_entropy_lambda")
        return model.set_params(verbose=-1).fit(X, 1 / (1 + np.exp(-X[:, 0]))), "predict", X
    if label == "hgb":
        model = ensemble.HistGradientBoostingClassifier(max_iter=5)
    elif label == "gb":
        model = ensemble.GradientBoostingClassifier(n_estimators=3, max_depth=2)
    elif label == "lightgbm":
        model = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=8, verbose=-1)
    else:
        xgboost = pytest.importorskip("xgboost")
        model = xgboost.XGBClassifier(n_estimators=5, max_depth=3, objective="multi:softmax")
    return model.fit(X, y), "predict_proba", X


# Links computed as their library computes them, whose bits differ from each other's:
# NumPy's exp (SIMD on AVX-512) or the C library's, and softmax's row sums added in order or
# pairwise by np.sum (from 8 classes on).
NATIVE_LINKS = [
    "hgb_poisson",  # LogLink.inverse: np.exp
    "hgb_3",  # extmath.softmax: np.exp, np.sum of F-ordered margins (in order)
    "hgb_10",
    "gb_10",  # extmath.softmax: np.exp, np.sum of C-ordered rows (pairwise)
    "xgboost_3",  # multi:softmax predict_proba: scipy.special.softmax in float32
    "xgboost_10",
    "lightgbm_10",  # Common::Softmax: exp, added in order
    "lightgbm_softplus",  # log1p(exp(x)) in C++
]


@pytest.mark.parametrize("backend", ["auto", "numpy", "kernel", "onnx", "torch"])
@pytest.mark.parametrize("case", NATIVE_LINKS)
def test_links_give_their_librarys_bits(case: str, backend: str) -> None:
    """Each link is its library's formula, bit for bit: NumPy's ufuncs where scikit-learn and
    XGBoost's wrapper call them (36 of 500 Poisson predictions differed in the last bit
    with the C library's exp), the C library's where LightGBM calls it."""
    model, method, X = _native_link_case(case)
    cm = treecomp.convert(model, backend)
    for rows in (X, X[:1]):
        want = np.asarray(getattr(model, method)(rows), dtype=np.float64)
        assert_equal(np.asarray(getattr(cm, method)(rows), dtype=np.float64), want)


def test_libm_exp_is_the_c_librarys() -> None:
    import math

    from treecomp import kernel, reference

    x = np.random.default_rng(0).normal(0, 20, 5000)
    x[:6] = [np.nan, np.inf, -np.inf, 710.0, -750.0, 0.0]

    def exp(v: float) -> float:
        try:
            return math.exp(v)
        except OverflowError:
            return math.inf

    want = np.array([exp(v) for v in x.tolist()])
    assert_equal(reference.libm_exp(x), want)
    assert_equal(kernel.libm_exp(x.reshape(50, 100)), want.reshape(50, 100))


@pytest.mark.parametrize("backend", ["auto", "numpy", "kernel", "onnx", "torch", "exported"])
def test_xgboost_binary_probabilities_are_natives_bits(backend: str) -> None:
    """XGBoost's wrapper gives ``[1 - p, p]`` with ``1 - p`` subtracted in float32: so does
    every backend and the exported ONNX file (in float64, a quarter of the rows differed)."""
    model, X_test = fitted("xgboost_binary")
    X = np.asarray(X_test, dtype=np.float64)
    rng = np.random.default_rng(12)
    X = np.concatenate([X + rng.normal(0, 0.05, X.shape) * np.abs(X) for _ in range(6)])
    want = model.predict_proba(X)
    if backend == "exported":
        ort = pytest.importorskip("onnxruntime")
        graph = treecomp.convert(model).to_onnx().SerializeToString()
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        names = [out.name for out in session.get_outputs()]
        outputs = session.run(None, {session.get_inputs()[0].name: X.astype(np.float32)})
        assert_equal(outputs[names.index("probabilities")], want)
        return
    cm = treecomp.convert(model, backend)
    assert_equal(cm.predict_proba(X), want)
    assert_equal(cm.predict_proba(X[:1]), want[:1])


@pytest.mark.parametrize("backend", ["auto", "numpy", "kernel", "onnx", "torch"])
def test_random_forest_probabilities_are_natives_bits(backend: str) -> None:
    """A forest averages ``tree_.value`` as stored (scikit-learn 1.4 on), not re-divided by
    its sum: fractions that do not add up to exactly 1 would change their last bits."""
    from sklearn.datasets import make_classification

    X, y = make_classification(3000, 8, n_informative=5, n_classes=5, random_state=0)
    # Shallow trees: leaves of mixed classes, whose fractions rarely add up to exactly 1.
    # n_jobs=None: scikit-learn adds the trees in their order (on threads, in any order).
    model = ensemble.RandomForestClassifier(20, max_depth=4, random_state=0).fit(X[:2000], y[:2000])
    X = X[2000:]
    cm = treecomp.convert(model, backend)
    assert_equal(cm.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("backend", ["auto", "numpy", "kernel", "onnx", "torch"])
def test_xgboost_softmax_is_natives_bits(backend: str) -> None:
    """XGBoost's float32 softmax calls the C library's expf, which is not the correctly
    rounded exp: on 10 classes a few probabilities in a thousand differ between the two."""
    xgboost = pytest.importorskip("xgboost")
    rng = np.random.default_rng(14)
    X = rng.normal(size=(3000, 6)).astype(np.float32)
    y = (np.abs(X[:, 0] * 3 + X[:, 1]) * 2).astype(int) % 10
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=4, n_jobs=1).fit(X[:1500], y[:1500])
    cm = treecomp.convert(model, backend)
    assert_equal(cm.predict_proba(X[1500:]), model.predict_proba(X[1500:]))


def test_libm_expf_is_the_c_librarys_in_c_and_python() -> None:
    from treecomp import kernel, reference

    x = np.random.default_rng(1).normal(0, 30, 20000).astype(np.float32)
    x[:5] = [np.nan, np.inf, -np.inf, 100.0, -120.0]
    assert_equal(kernel.libm_expf(x.reshape(100, 200)), reference.libm_expf(x).reshape(100, 200))


@pytest.mark.parametrize("rows", [1, 3, 300])
def test_nan_and_infinity_refused_and_huge_values_kept_in_batches_of_every_size(rows: int) -> None:
    """A model that rejects NaN and infinity (GradientBoosting) rejects them in one row as in
    many, naming which. Small batches are checked by the sum of their values, then
    precisely: values whose sum is past the largest double are values, scored as natively
    (HistGradientBoosting's forest, which reads doubles, made to reject infinity)."""
    model, X_test = fitted("sklearn_gb")
    cm = treecomp.convert(model)
    X = np.resize(np.asarray(X_test, dtype=np.float64), (rows, np.shape(X_test)[1]))
    for value in (np.nan, np.inf, -np.inf):
        bad = X.copy()
        bad[-1, 0] = value
        with pytest.raises(ValueError, match="NaN" if np.isnan(value) else "infinity"):
            cm.predict(bad)
    model, X_test = fitted("sklearn_hgb_nan")
    strict = treecomp.convert(dataclasses.replace(treecomp.parse(model), allow_inf=False))
    huge = np.resize(np.asarray(X_test, dtype=np.float64), (rows, np.shape(X_test)[1]))
    huge[:, :2] = 1.5e308
    assert_equal(strict.predict(huge), model.predict(huge))
    assert_close(strict.predict_proba(huge), model.predict_proba(huge), tolerance(model))
    huge[-1, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        strict.predict(huge)
