"""scikit-learn Pipelines: row transforms lowered in front of the forest (issue 22).

Native ``pipeline.predict`` against the compiled model on every backend and the exported
ONNX file, on held-out rows with missing values and categories never seen in fit; the
transforms alone against ``pipeline[:-1].transform`` bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import re

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from sklearn.compose import ColumnTransformer, make_column_selector  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import (  # noqa: E402
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    PolynomialFeatures,
    RobustScaler,
    StandardScaler,
)

import treecomp  # noqa: E402
from tests.helpers import assert_close, assert_equal  # noqa: E402
from treecomp import transforms_json  # noqa: E402
from treecomp.transforms import apply, encode  # noqa: E402

BACKENDS = ["numpy", "torch", "onnx"]
COLORS = ["red", "green", "blue"]
SIZES = ["S", "M", "L"]


def frame(n: int, seed: int, *, unseen: bool = False) -> pd.DataFrame:
    """Numeric float64 columns and string columns, 10 % missing in each; ``unseen`` adds
    categories never seen in fit."""
    rng = np.random.default_rng(seed)
    extra = ["purple"] if unseen else []
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n) * 10,
            "b": rng.uniform(0, 5, n),
            "c": rng.normal(size=n),
            "color": rng.choice(COLORS + extra, n).astype(object),
            "size": rng.choice(SIZES + (["XL"] if unseen else []), n).astype(object),
        }
    )
    for column in df.columns:
        df.loc[rng.random(n) < 0.1, column] = np.nan
    return df


TRAIN = frame(300, 0)
LABELS = ((TRAIN["a"].fillna(0) > 0) ^ (TRAIN["color"] == "red")).astype(int)
# Held out: new rows with unseen categories, rows of nothing but missing values (NaN, and
# None, which scikit-learn's imputers and encoders read as a value), and training rows.
TEST = pd.concat(
    [
        frame(150, 1, unseen=True),
        pd.DataFrame([dict.fromkeys(TRAIN.columns, np.nan), dict.fromkeys(TRAIN.columns)]),
        TRAIN[:40],
    ],
    ignore_index=True,
)
TEST[["a", "b", "c"]] = TEST[["a", "b", "c"]].astype(np.float64)


def preprocessing() -> ColumnTransformer:
    return ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["a", "b"]),
            ("minmax", MinMaxScaler(), ["c"]),
            (
                "onehot",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                ["color"],
            ),
            (
                "ordinal",
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                ["size"],
            ),
        ]
    )


def _forest(family: str):
    if family == "xgboost":
        xgboost = pytest.importorskip("xgboost")
        return xgboost.XGBClassifier(n_estimators=12, max_depth=3, n_jobs=1)
    if family == "lightgbm":
        lightgbm = pytest.importorskip("lightgbm")
        return lightgbm.LGBMClassifier(n_estimators=12, num_leaves=8, verbose=-1, n_jobs=1)
    if family == "random_forest":
        return RandomForestClassifier(n_estimators=12, max_depth=6, random_state=0)
    return HistGradientBoostingClassifier(max_iter=12, random_state=0)


FAMILIES = ["xgboost", "lightgbm", "random_forest", "hist_gradient_boosting"]
# XGBoost adds its trees in float32: its tolerance entry; the others add in float64.
TOLERANCE = {"xgboost": "xgboost_float32"}
_FITTED: dict[str, Pipeline] = {}


def fitted_pipeline(family: str) -> Pipeline:
    if family not in _FITTED:
        pipeline = Pipeline([("pre", preprocessing()), ("model", _forest(family))])
        _FITTED[family] = pipeline.fit(TRAIN, LABELS)
    return _FITTED[family]


def kernel_missing() -> str:
    """Why the C kernel backend cannot run here ("" where it can)."""
    from treecomp import kernel

    try:
        kernel.load_kernel()
    except kernel.KernelUnavailable as exc:  # pragma: no cover - machines without cc
        return str(exc)
    return ""


@pytest.mark.parametrize("backend", [*BACKENDS, "kernel"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_matches_native(family: str, backend: str) -> None:
    if backend == "torch":
        pytest.importorskip("torch")
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    if backend == "kernel" and kernel_missing():
        pytest.skip(f"no kernel here: {kernel_missing()}")
    pipeline = fitted_pipeline(family)
    cm = treecomp.convert(pipeline, backend)
    assert_equal(cm.predict(TEST), pipeline.predict(TEST))
    tolerance = TOLERANCE.get(family, "float64")
    assert_close(cm.predict_proba(TEST), pipeline.predict_proba(TEST), tolerance)
    assert_equal(cm.predict(TEST[:1]), pipeline.predict(TEST[:1]))  # one row
    assert list(cm.feature_names_in_) == list(pipeline.feature_names_in_)
    assert cm.n_features_in_ == 5
    assert not hasattr(cm, "apply")  # a Pipeline has no apply()
    assert repr(cm).startswith("CompiledModel(pipeline='ColumnTransformer -> ")


def onnx_feeds(session, X: pd.DataFrame) -> dict[str, np.ndarray]:
    """The exported file's inputs: one (N, 1) column each, strings with "" for missing."""
    feeds = {}
    for node in session.get_inputs():
        column = X[[node.name]]
        if node.type == "tensor(string)":
            # NaN is scikit-learn's missing value; None and pd.NA are values of their own
            # ("None" and "<NA>" here, strings never seen in fit).
            values = column.to_numpy(dtype=object)
            missing = np.array([isinstance(v, float) and np.isnan(v) for v in values.flat])
            feeds[node.name] = np.where(missing.reshape(values.shape), "", values).astype(str)
        else:
            feeds[node.name] = column.to_numpy(np.float64)
    return feeds


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_onnx_file(family: str, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pipeline = fitted_pipeline(family)
    path = tmp_path / "pipeline.onnx"
    treecomp.convert(pipeline, "numpy").export_onnx(path)
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["a", "b", "c", "color", "size"]
    label, proba = session.run(["label", "probabilities"], onnx_feeds(session, TEST))
    assert_equal(label, pipeline.predict(TEST))
    assert_close(proba, pipeline.predict_proba(TEST), TOLERANCE.get(family, "float64"))


def every_step() -> ColumnTransformer:
    """Each supported transform and option, columns by name, index and selector."""
    return ColumnTransformer(
        [
            (
                "mean",
                make_pipeline(SimpleImputer(add_indicator=True), StandardScaler(with_mean=False)),
                ["a"],
            ),
            (
                "constant",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value=1.5),
                    MinMaxScaler(feature_range=(-1, 2), clip=True),
                ),
                [1],
            ),
            ("robust", make_pipeline(SimpleImputer(), RobustScaler(), MaxAbsScaler()), ["c"]),
            (
                "onehot",
                OneHotEncoder(drop="first", handle_unknown="ignore", sparse_output=False),
                ["color"],
            ),
            (
                "ordinal",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="M"),
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan),
                ),
                make_column_selector(pattern="^size$"),
            ),
            (
                "missing_category",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=9, encoded_missing_value=-5
                ),
                ["color"],
            ),
            ("pass", "passthrough", ["b"]),
        ],
        remainder="drop",
    )


def test_transforms_bit_for_bit() -> None:
    """The chains in NumPy and in the torch module give scikit-learn's features exactly."""
    pipeline = Pipeline([("pre", every_step()), ("model", RandomForestRegressor(n_estimators=3))])
    pipeline.fit(TRAIN, TRAIN["b"].fillna(0))
    cm = treecomp.convert(pipeline, "numpy")
    expected = pipeline[:-1].transform(TEST)
    encoded = encode(cm.transforms, TEST)
    assert_equal(apply(cm.transforms, encoded), expected)
    assert_equal(cm.predict(TEST), pipeline.predict(TEST))
    torch = pytest.importorskip("torch")
    module = treecomp.convert(pipeline, "torch").torch_module
    assert_equal(module.front(torch.from_numpy(encoded)).numpy(), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_step_on_backends(backend: str) -> None:
    if backend == "torch":
        pytest.importorskip("torch")
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    pipeline = Pipeline([("pre", every_step()), ("model", _forest("xgboost"))])
    pipeline.fit(TRAIN, LABELS)
    cm = treecomp.convert(pipeline, backend)
    assert_equal(cm.predict(TEST), pipeline.predict(TEST))
    assert_close(cm.predict_proba(TEST), pipeline.predict_proba(TEST), "xgboost_float32")


@pytest.mark.parametrize("family", ["xgboost", "random_forest"])
def test_sparse_one_hot(family: str) -> None:
    """A sparse one-hot matrix: XGBoost reads its unstored zeros as missing, scikit-learn
    as zeros."""
    pipeline = make_pipeline(
        ColumnTransformer(
            [("onehot", OneHotEncoder(handle_unknown="ignore"), ["color", "size"])],
            sparse_threshold=1.0,
        ),
        _forest(family),
    )
    pipeline.fit(TRAIN, LABELS)
    cm = treecomp.convert(pipeline, "numpy")
    assert_equal(cm.predict(TEST), pipeline.predict(TEST))
    assert_close(
        cm.predict_proba(TEST), pipeline.predict_proba(TEST), TOLERANCE.get(family, "float64")
    )


def test_arrays_by_position() -> None:
    """A pipeline fitted on an array: columns by index, rows as arrays, a regressor."""
    X = TRAIN[["a", "b", "c"]].to_numpy()
    pipeline = make_pipeline(
        ColumnTransformer([("scale", StandardScaler(), [0, 2])], remainder="passthrough"),
        SimpleImputer(),
        RandomForestRegressor(n_estimators=8, random_state=0),
    ).fit(X, TRAIN["b"].fillna(1.0))
    cm = treecomp.convert(pipeline, "numpy")
    test = TEST[["a", "b", "c"]].to_numpy()
    assert_close(cm.predict(test), pipeline.predict(test), "float64")
    with pytest.raises(AttributeError):
        cm.feature_names_in_  # noqa: B018
    with pytest.raises(ValueError, match="shape"):
        cm.predict(test[:, :2])


# pd.NA, the missing value of pandas' nullable strings (string[python], string[pyarrow]: what
# convert_dtypes() and pyarrow-backed Parquet reads give), is no NaN to scikit-learn's
# encoders (is_scalar_nan, sklearn/utils/_missing.py): _check_unknown (utils/_encode.py)
# reads it as a category never seen in fit. A category column holds NaN (a control).
NA_DTYPES = ["object", "string[python]", "string[pyarrow]", "category"]
NA_ENCODERS = {
    "ordinal": lambda: OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
    "onehot": lambda: OneHotEncoder(handle_unknown="ignore", sparse_output=False),
}
# Labels that follow the missing colours, so that the trees tell NaN (a category in fit)
# from a colour never seen.
NA_LABELS = (TRAIN["color"].isna() | (TRAIN["a"] > 10)).astype(int)


def with_pandas_na(X: pd.DataFrame, dtype: str) -> pd.DataFrame:
    """``X`` with its colours as ``dtype``: missing ones as pd.NA (every one in the nullable
    strings, every other one in an object column, beside NaN and None)."""
    if dtype.endswith("[pyarrow]"):
        pytest.importorskip("pyarrow", reason="string[pyarrow] columns need pyarrow")
    color = X["color"].astype(object)
    if dtype == "object":
        color = color.where(~(color.isna() & (np.arange(len(X)) % 2 == 0)), pd.NA)
        assert any(v is pd.NA for v in color)
    return X.assign(color=color.astype(dtype))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("encoder", NA_ENCODERS)
@pytest.mark.parametrize("dtype", NA_DTYPES)
def test_pandas_na_is_an_unknown_category(dtype: str, encoder: str, backend: str) -> None:
    if backend == "torch":
        pytest.importorskip("torch")
    if backend == "onnx":
        ort = pytest.importorskip("onnxruntime")
    pipeline = make_pipeline(
        ColumnTransformer([("enc", NA_ENCODERS[encoder](), ["color"])], remainder="passthrough"),
        RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0),
    ).fit(TRAIN[["color", "a"]], NA_LABELS)
    test = with_pandas_na(TEST[["color", "a"]], dtype)
    cm = treecomp.convert(pipeline, backend)
    assert_equal(cm.predict(test), pipeline.predict(test))
    assert_close(cm.predict_proba(test), pipeline.predict_proba(test), "float64")
    if backend == "onnx":  # the exported file takes strings: pd.NA as one never seen
        session = ort.InferenceSession(cm.to_onnx().SerializeToString())
        assert_equal(session.run(["label"], onnx_feeds(session, test))[0], pipeline.predict(test))


def test_pandas_na_refused_or_missing_as_natively() -> None:
    """Where scikit-learn raises on pd.NA, the compiled pipeline raises, naming the column:
    a SimpleImputer reading strings (it compares each value with itself to find NaN: "boolean
    value of NA is ambiguous"), a step reading objects as numbers (float(pd.NA)), an encoder
    fitted with handle_unknown="error". Nullable number columns (Float64, Int64) reach the
    steps as NaN (check_array converts them): missing, and scored."""
    strings = TRAIN[["color", "a"]]
    imputed = [
        make_pipeline(
            SimpleImputer(strategy="most_frequent"),
            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
        ),
        make_pipeline(
            SimpleImputer(strategy="constant", fill_value="red", add_indicator=True),
            ColumnTransformer([("codes", OrdinalEncoder(), [0])], remainder="passthrough"),
        ),
    ]
    cases = [
        (ColumnTransformer([("imp", step, ["color"])]), strings, TypeError, "'color' holds pd.NA")
        for step in imputed
    ]
    cases.append(
        (
            ColumnTransformer([("codes", OrdinalEncoder(), ["color"])]),
            strings,
            ValueError,
            r"unknown categories \[<NA>\] in column 'color'",
        )
    )
    cases.append(
        (
            ColumnTransformer([("scale", StandardScaler(), ["a"])], remainder="passthrough"),
            TRAIN[["a", "b"]],
            TypeError,
            "'b' holds pd.NA among objects",
        )
    )
    # Seen colours and pd.NA: the training rows and the all-missing ones of TEST.
    rows = with_pandas_na(TEST.loc[150:, ["color", "a", "b"]], "string[python]")
    rows = rows.assign(b=rows["b"].astype(object).where(rows["b"].notna(), pd.NA))
    for steps, train, error, message in cases:
        pipeline = make_pipeline(steps, RandomForestClassifier(n_estimators=2, random_state=0))
        pipeline.fit(train, NA_LABELS)
        cm = treecomp.convert(pipeline, "numpy")
        with pytest.raises(error):
            pipeline.predict(rows)
        with pytest.raises(error, match=message):
            cm.predict(rows)
        with pytest.raises(error, match=message):  # the artifact keeps the refusals
            treecomp.loads(cm.dumps()).predict(rows)

    # Nullable numbers: pd.NA is NaN, imputed, scaled, or an encoder's missing category.
    def level(b: pd.Series) -> np.ndarray:  # 1 or 2, NaN (a category in fit) where b is
        return np.where(b.isna(), np.nan, np.where(b > 2.5, 1.0, 2.0))

    numbers = TRAIN.assign(level=level(TRAIN["b"]))
    pipeline = make_pipeline(
        ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["a"]),
                ("scale", StandardScaler(), ["c"]),
                ("codes", OrdinalEncoder(encoded_missing_value=-5), ["level"]),
            ]
        ),
        RandomForestClassifier(n_estimators=4, random_state=0),
    ).fit(numbers, NA_LABELS)
    nullable = TEST.assign(
        a=TEST["a"].astype("Float64"),
        c=TEST["c"].astype("Float64"),
        level=pd.array(level(TEST["b"]), "Float64").astype("Int64"),  # NaN is pd.NA there
    )
    assert nullable["level"].isna().any() and nullable["a"].isna().any()
    for backend in ["numpy", "torch"]:
        if backend == "torch":
            pytest.importorskip("torch")
        cm = treecomp.convert(pipeline, backend)
        assert_equal(cm.predict(nullable), pipeline.predict(nullable))
        assert_close(cm.predict_proba(nullable), pipeline.predict_proba(nullable), "float64")


def test_unknown_category_refused_as_natively() -> None:
    pipeline = make_pipeline(
        ColumnTransformer([("onehot", OneHotEncoder(sparse_output=False), ["color"])]),
        RandomForestClassifier(n_estimators=4, random_state=0),
    ).fit(TRAIN.fillna({"color": "red"}), LABELS)
    cm = treecomp.convert(pipeline, "numpy")
    seen = TRAIN.fillna({"color": "red"})[:20]
    assert_equal(cm.predict(seen), pipeline.predict(seen))
    unseen = seen.assign(color="purple")
    with pytest.raises(ValueError, match="unknown categories"):
        pipeline.predict(unseen)
    with pytest.raises(ValueError, match=r"unknown categories \['purple'\]"):
        cm.predict(unseen)
    missing = seen.assign(color=np.nan)
    with pytest.raises(ValueError, match="unknown categories"):
        cm.predict(missing)


@pytest.mark.parametrize(
    "step", [PolynomialFeatures(), FunctionTransformer(np.log1p)], ids=lambda s: type(s).__name__
)
def test_unsupported_step_named(step) -> None:
    X = TRAIN[["a", "b"]].fillna(1.0).abs()
    pipeline = make_pipeline(step, RandomForestRegressor(n_estimators=2)).fit(X, X["a"])
    with pytest.raises(treecomp.UnsupportedModelError, match=type(step).__qualname__):
        treecomp.convert(pipeline, "numpy")


def test_what_is_not_supported_yet_says_so() -> None:
    cm = treecomp.convert(fitted_pipeline("random_forest"), "numpy")
    with pytest.raises(treecomp.UnsupportedModelError, match="compile=True"):
        treecomp.convert(fitted_pipeline("random_forest"), "torch", compile=True)
    with pytest.raises(treecomp.UnsupportedModelError, match="torchscript"):
        treecomp.convert(fitted_pipeline("random_forest"), "torchscript")
    with pytest.raises(ValueError, match="missing from the DataFrame"):
        cm.predict(TEST.drop(columns=["color"]))


@pytest.mark.parametrize("family", ["xgboost", "hist_gradient_boosting"])
def test_save_load_and_pickle(family: str, tmp_path) -> None:
    """The artifact carries the transforms (every float bit) beside the forest; it loads on
    another backend, and pickling goes through it."""
    pipeline = fitted_pipeline(family)
    cm = treecomp.convert(pipeline, "numpy")
    path = tmp_path / "pipeline.json"
    cm.save(path)
    for backend in [None, "torch"]:
        if backend == "torch":
            pytest.importorskip("torch")
        loaded = treecomp.load(path, backend=backend)
        # Compared as documents: every bit of every float, NaN included
        assert transforms_json.write(loaded.transforms) == transforms_json.write(cm.transforms)
        assert_equal(loaded.predict(TEST), pipeline.predict(TEST))
        assert_close(
            loaded.predict_proba(TEST),
            pipeline.predict_proba(TEST),
            TOLERANCE.get(family, "float64"),
        )
    assert_equal(pickle.loads(pickle.dumps(cm)).predict(TEST), pipeline.predict(TEST))


def test_artifact_transforms_checked(tmp_path) -> None:
    """A transforms field of the wrong type or range is refused, naming it, even when the
    checksum is recomputed (a crafted file)."""
    cm = treecomp.convert(fitted_pipeline("random_forest"), "numpy")
    document = json.loads(cm.dumps())
    assert document["version"] == 2
    cases = {
        "sources[0].column": lambda t: t["sources"][0].update(column=99),
        "features[0].ops[0]": lambda t: t["features"][0]["ops"][0].__setitem__(0, "exec"),
        "features[1].source": lambda t: t["features"][1].update(source=True),
        "named": lambda t: t.update(named=1),
    }
    for field, damage in cases.items():
        doc = copy.deepcopy(document)
        damage(doc["transforms"])
        body = {k: v for k, v in doc.items() if k != "sha256"}
        doc["sha256"] = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        with pytest.raises(treecomp.InvalidArtifactError, match=re.escape(field)):
            treecomp.loads(json.dumps(doc).encode())
    # A model without transforms is still written as version 1, which older readers read.
    forest_alone = fitted_pipeline("random_forest")[-1]
    forest_only = json.loads(treecomp.convert(forest_alone, "numpy").dumps())
    assert forest_only["version"] == 1 and "transforms" not in forest_only


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_column_transformers_and_string_indicator(backend: str) -> None:
    """A missing indicator of a string column, its imputed strings one-hot encoded by a
    second ColumnTransformer that selects by position."""
    if backend == "torch":
        pytest.importorskip("torch")
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    impute = ColumnTransformer(
        [("imp", SimpleImputer(strategy="most_frequent", add_indicator=True), ["color"])],
        remainder="passthrough",
    )
    encode_first = ColumnTransformer(
        [("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False), [0])],
        remainder="passthrough",
    )
    pipeline = Pipeline(
        [("impute", impute), ("encode", encode_first), ("model", _forest("random_forest"))]
    )
    pipeline.fit(TRAIN[["color", "a", "b"]], LABELS)
    test = TEST[["color", "a", "b"]]
    cm = treecomp.convert(pipeline, backend)
    assert_equal(cm.predict(test), pipeline.predict(test))
    assert_close(cm.predict_proba(test), pipeline.predict_proba(test), "float64")
    if backend == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(cm.to_onnx().SerializeToString())
        assert_equal(session.run(["label"], onnx_feeds(session, test))[0], pipeline.predict(test))


def test_serving_a_pipeline() -> None:
    """Concurrent single-row requests (DataFrame rows and Series) batched through a compiled
    Pipeline: each caller gets its own row's answer; a bad row fails its own request."""
    from concurrent.futures import ThreadPoolExecutor

    pipeline = fitted_pipeline("random_forest")
    expected = pipeline.predict_proba(TEST)
    cm = treecomp.convert(pipeline, "numpy")
    with treecomp.Serving(cm, max_batch_size=16, max_wait_ms=2) as serving:

        def ask(i: int) -> np.ndarray:
            return serving.predict_proba(TEST.iloc[[i]] if i % 2 else TEST.iloc[i])

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(60)))
        with pytest.raises(ValueError, match="missing from the DataFrame"):
            serving.predict(TEST.iloc[[0]].drop(columns=["a"]))
    for i, answer in enumerate(answers):
        assert_close(np.reshape(answer, (1, -1)), expected[i : i + 1], "float64")


def test_number_categories_and_pandas_output() -> None:
    """One-hot categories that are numbers (fitted as integers, scored as floats with NaN
    and unseen values), a pipeline whose steps hand DataFrames on (set_output)."""
    lightgbm = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    train = TRAIN.assign(level=rng.integers(1, 4, len(TRAIN)))
    test = TEST.assign(level=rng.integers(0, 5, len(TEST)).astype(np.float64))
    test.loc[::9, "level"] = np.nan
    pipeline = make_pipeline(
        ColumnTransformer(
            [
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["level"]),
                ("scale", StandardScaler(), ["a"]),
            ]
        ),
        lightgbm.LGBMClassifier(n_estimators=5, verbose=-1, n_jobs=1),
    )
    pipeline.set_output(transform="pandas")
    pipeline.fit(train, LABELS)
    for backend in BACKENDS:
        if backend == "torch":
            pytest.importorskip("torch")
        if backend == "onnx":
            ort = pytest.importorskip("onnxruntime")
        cm = treecomp.convert(pipeline, backend)
        assert_equal(cm.predict(test), pipeline.predict(test))
        assert_close(cm.predict_proba(test), pipeline.predict_proba(test), "float64")
    session = ort.InferenceSession(cm.to_onnx().SerializeToString())
    assert [i.type for i in session.get_inputs()] == ["tensor(double)", "tensor(double)"]
    assert_equal(session.run(["label"], onnx_feeds(session, test))[0], pipeline.predict(test))


def test_infinity_refused_where_natively() -> None:
    """Steps refuse infinity (scikit-learn's validate_data); passed through, the forest
    decides (RandomForest refuses it, HistGradientBoosting reads it)."""
    X = TEST.copy()
    X.loc[0, "a"] = np.inf
    for family in ["random_forest", "hist_gradient_boosting"]:
        pipeline = fitted_pipeline(family)
        with pytest.raises(ValueError, match="infinity"):
            pipeline.predict(X)
        with pytest.raises(ValueError, match="infinity"):
            treecomp.convert(pipeline, "numpy").predict(X)
    passthrough = ColumnTransformer([("keep", "passthrough", ["a", "b"])])
    for family in ["random_forest", "hist_gradient_boosting"]:
        pipeline = make_pipeline(passthrough, _forest(family)).fit(TRAIN, LABELS)
        cm = treecomp.convert(pipeline, "numpy")
        if family == "random_forest":
            with pytest.raises(ValueError, match="infinity"):
                pipeline.predict(X)
            with pytest.raises(ValueError, match="infinity"):
                cm.predict(X)
        else:
            assert_equal(cm.predict(X), pipeline.predict(X))


def test_mlflow_model_of_a_pipeline(tmp_path) -> None:
    """The MLflow signature names the pipeline's columns (strings where an encoder reads
    text); the loaded python_function model scores a frame with NaN in both kinds."""
    mlflow = pytest.importorskip("mlflow", reason="treecomp.mlflow writes MLflow models")
    from treecomp import mlflow as treecomp_mlflow

    pipeline = fitted_pipeline("lightgbm")
    cm = treecomp.convert(pipeline, "numpy")
    signature = treecomp_mlflow.signature(cm)
    assert [(c.name, c.type.name) for c in signature.inputs.inputs] == [
        ("a", "double"),
        ("b", "double"),
        ("c", "double"),
        ("color", "string"),
        ("size", "string"),
    ]
    treecomp_mlflow.save_model(cm, tmp_path / "model")
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    assert_equal(np.asarray(loaded.predict(TEST)).ravel(), pipeline.predict(TEST))


def test_triton_repository_of_a_pipeline(tmp_path) -> None:
    """Triton's config lists the exported file's inputs: one per column, FP64 or STRING."""
    pytest.importorskip("onnxruntime")
    from treecomp import triton

    cm = treecomp.convert(fitted_pipeline("xgboost"), "numpy")
    config = (triton.write_repository(cm, tmp_path, name="pipe") / "config.pbtxt").read_text()
    inputs = config[config.index("input [") : config.index("output [")]
    names = [line.split('"')[1] for line in inputs.splitlines() if "name:" in line]
    types = [line.split()[-1] for line in inputs.splitlines() if "data_type:" in line]
    assert names == ["a", "b", "c", "color", "size"]
    assert types == ["TYPE_FP64"] * 3 + ["TYPE_STRING"] * 2


def ordinal_then_numbers() -> ColumnTransformer:
    """Ordinal codes first (columns 0 and 1), numbers after: the layout a forest with
    categorical features of its own reads."""
    # Categories listed in fit, "green" never seen: codes 0 and 2 are HistGradientBoosting's
    # categories 0 and 1 (a value that is not its own position), and 1 one it never saw.
    codes = OrdinalEncoder(
        categories=[["blue", "green", "red"], ["L", "M", "S"]],
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
    )
    return ColumnTransformer(
        [
            ("codes", codes, ["color", "size"]),
            ("numbers", SimpleImputer(), ["a", "b"]),
        ]
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["hist_gradient_boosting", "lightgbm"])
def test_forest_with_categorical_features(family: str, backend: str) -> None:
    """HistGradientBoosting(categorical_features=...) maps the codes to its own known
    categories (unseen and missing ones to missing); LightGBM reads them as categories."""
    if backend == "torch":
        pytest.importorskip("torch")
    if backend == "onnx":
        ort = pytest.importorskip("onnxruntime")
    if family == "lightgbm":
        lightgbm = pytest.importorskip("lightgbm")
        model = lightgbm.LGBMClassifier(
            n_estimators=8, num_leaves=8, min_child_samples=5, verbose=-1, n_jobs=1
        )
        params = {"model__categorical_feature": [0, 1]}
    else:
        model = HistGradientBoostingClassifier(
            max_iter=8, categorical_features=[0, 1], random_state=0
        )
        params = {}
    pipeline = Pipeline([("pre", ordinal_then_numbers()), ("model", model)])
    seen = (TRAIN["color"] != "green").to_numpy()
    pipeline.fit(TRAIN[seen], LABELS[seen], **params)
    cm = treecomp.convert(pipeline, backend)
    assert any(tree.is_categorical.any() for tree in cm.forest.trees)
    assert_equal(cm.predict(TEST), pipeline.predict(TEST))
    assert_close(cm.predict_proba(TEST), pipeline.predict_proba(TEST), "float64")
    if backend == "onnx":
        session = ort.InferenceSession(cm.to_onnx().SerializeToString())
        label, proba = session.run(["label", "probabilities"], onnx_feeds(session, TEST))
        assert_equal(label, pipeline.predict(TEST))
        assert_close(proba, pipeline.predict_proba(TEST), "float64")


def test_cli_converts_a_pipeline_file(tmp_path) -> None:
    """``treecomp convert pipeline.skops --to onnx``: the transforms come with the forest."""
    skops_io = pytest.importorskip("skops.io", reason="the CLI reads .skops files with skops")
    ort = pytest.importorskip("onnxruntime")
    from treecomp.cli import main

    pipeline = fitted_pipeline("random_forest")
    skops_io.dump(pipeline, tmp_path / "pipeline.skops")
    out = tmp_path / "pipeline.onnx"
    assert main(["convert", str(tmp_path / "pipeline.skops"), "--to", "onnx", "-o", str(out)]) == 0
    session = ort.InferenceSession(str(out))
    assert_equal(session.run(["label"], onnx_feeds(session, TEST))[0], pipeline.predict(TEST))
