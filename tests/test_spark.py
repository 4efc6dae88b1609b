"""Spark batch scoring (treecomp.spark): pandas UDFs agree exactly with single-process scoring.

One local[2] SparkSession serves the module. The UDFs the tests define for themselves are
nested functions, so that cloudpickle sends them by value (the workers need not import the
tests package).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal, tolerance

pyspark = pytest.importorskip("pyspark")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
xgboost = pytest.importorskip("xgboost")
lightgbm = pytest.importorskip("lightgbm")
ensemble = pytest.importorskip("sklearn.ensemble")

from pyspark.errors import PythonException  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

from tests.zoo import fitted, small_pipeline  # noqa: E402
from treecomp import spark as treecomp_spark  # noqa: E402
from treecomp.spark import predict_udf  # noqa: E402

# PySpark 4 warns on every UDF that it "does not yet fully support pandas >= 3.0.0", and its
# own conversions pass pandas 3 a deprecated copy= keyword: noise about PySpark, not treecomp.
pytestmark = [
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime (no `java` on PATH)")
    with pytest.MonkeyPatch.context() as env:
        # the workers must run this interpreter, where treecomp and its backends are installed
        env.setenv("PYSPARK_PYTHON", sys.executable)
        env.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        session = (
            SparkSession.builder.master("local[2]")
            .appName("treecomp-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.driver.memory", "2g")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        yield session
        session.stop()


def collected(rows: list[Any], name: str) -> np.ndarray:
    """One column of collected rows (Spark arrays arrive as lists, nested as nested lists)."""
    return np.array([row[name] for row in rows])


def frame_of(X: Any, names: tuple[str, ...] | None) -> Any:
    """Rows as the single-process model is given them, plus the id that sorts Spark's back."""
    columns = list(names) if names is not None else [f"x{j}" for j in range(X.shape[1])]
    frame = X.copy() if isinstance(X, pd.DataFrame) else pd.DataFrame(X, columns=columns)
    frame.insert(0, "id", np.arange(len(frame)))
    return frame


# ----------------------------------------------------------------------------------------
def test_million_parquet_rows_match_single_process_exactly(spark, tmp_path):
    """1,000,000 Parquet rows (5% NaN) scored by Spark equal cm.predict / cm.predict_proba."""
    rng = np.random.default_rng(0)
    n, names = 1_000_000, tuple(f"f{j}" for j in range(8))
    X = rng.normal(size=(n, len(names)))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) > 0).astype(int) + (X[:, 2] > 1)
    frame = frame_of(X, names)
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=4, n_jobs=1)
    cm = treecomp.convert(model.fit(frame[list(names)][:5000], y[:5000]))
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path, row_group_size=100_000)

    rows = spark.read.parquet(str(path))
    scored = rows.select(
        "id",
        predict_udf(cm)(*names).alias("label"),
        predict_udf(cm, "predict_proba")().alias("proba"),
    )
    # Probabilities come back as one double column per class: a million rows of arrays cost
    # three times as long to collect (each becomes its own NumPy array on the driver).
    k = len(cm.forest.classes)
    scored = scored.select(
        "id", "label", F.size("proba").alias("width"), *[scored.proba[i] for i in range(k)]
    ).toPandas()

    assert len(scored) == n and set(scored["width"]) == {k}
    scored = scored.sort_values("id", ignore_index=True)
    assert np.array_equal(scored["id"].to_numpy(), np.arange(n))
    label = scored["label"].to_numpy()
    proba = scored.iloc[:, 3:].to_numpy()
    expected_label = cm.predict(frame[list(names)])
    expected_proba = cm.predict_proba(frame[list(names)])
    assert label.dtype == np.int64 and proba.dtype == np.float64
    assert np.array_equal(label, expected_label)
    assert np.array_equal(proba, expected_proba)  # bit for bit, no tolerance
    assert_equal(proba, expected_proba)


@pytest.mark.parametrize(
    "name",
    ["xgboost_binary", "lightgbm_binary_nan", "sklearn_rf", "sklearn_gb", "sklearn_iforest",
     "sklearn_multi_output"],
)  # fmt: skip
def test_every_method_matches_single_process(spark, name):
    """Every native method of zoo models (NaN rows, nested apply, outliers, several outputs)."""
    _, X_test = fitted(name)
    cm = treecomp.convert(fitted(name)[0])
    X = np.array(X_test, dtype=np.float64)
    if cm.forest.allow_nan:
        X = np.vstack([X, np.full((1, X.shape[1]), np.nan)])
        X[::5, 0] = np.nan
    frame = frame_of(X, cm.forest.feature_names)
    features = list(frame.columns[1:])
    df = spark.createDataFrame(frame).repartition(3)
    rows = df.select(
        "id", *[predict_udf(cm, method)(*features).alias(method) for method in cm.forest.methods]
    ).collect()
    rows.sort(key=lambda row: row["id"])
    # The executors run cm.batch_backend (the kernel here); the same backend in this process
    # gives the same bits (others agree within the tolerance table: links such as the
    # isolation forest's 2 ** x may differ in the last bit between runtimes).
    local = treecomp.loads(cm.dumps(), cm.batch_backend)
    for method in cm.forest.methods:
        assert_equal(collected(rows, method), getattr(local, method)(frame[features]))


def test_defaults_on_float64_rows_of_a_double_library(spark):
    """treecomp.convert(model) with no option on a HistGradientBoosting model, scored on
    its float64 training rows through Spark: compared in double on the executors, exactly
    as scikit-learn compares them."""
    from sklearn.datasets import make_classification

    X, y = make_classification(2000, 6, random_state=5)
    model = ensemble.HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    cm = treecomp.convert(model)
    frame = frame_of(X, None)
    features = list(frame.columns[1:])
    df = spark.createDataFrame(frame).repartition(3)
    rows = df.select("id", predict_udf(cm, "predict_proba")(*features).alias("p")).collect()
    rows.sort(key=lambda row: row["id"])
    np.testing.assert_allclose(collected(rows, "p"), model.predict_proba(X), rtol=1e-12, atol=1e-12)


def test_types_follow_the_native_outputs(spark):
    """Return types: labels keep their type, scores are doubles, leaves are longs."""
    names = ("xgboost_binary", "sklearn_gb", "sklearn_iforest", "sklearn_multi_output")
    models = {name: treecomp.convert(fitted(name)[0]) for name in names}
    types = {
        name: {method: predict_udf(cm, method).returnType for method in cm.forest.methods}
        for name, cm in models.items()
    }
    doubles, longs = T.ArrayType(T.DoubleType()), T.ArrayType(T.LongType())
    assert types["xgboost_binary"] == {
        "predict": T.LongType(),
        "predict_proba": doubles,
        "apply": longs,
    }
    assert types["sklearn_gb"]["decision_function"] == T.DoubleType()
    assert types["sklearn_gb"]["apply"] == T.ArrayType(longs)  # (n_estimators, 1) per row
    assert types["sklearn_iforest"] == {
        "predict": T.LongType(),
        "decision_function": T.DoubleType(),
        "score_samples": T.DoubleType(),
    }
    assert types["sklearn_multi_output"]["predict"] == doubles


def test_string_labels_and_spark_nulls(spark):
    """A classifier with string labels predicts strings; a Spark null is a missing value."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 3))
    X[rng.random(X.shape) < 0.1] = np.nan
    labels = np.array(["cat", "dog", "eel"], dtype=object)[
        (np.nan_to_num(X[:, 0]) > 0).astype(int) + (X[:, 1] > 0.5)
    ]
    model = ensemble.RandomForestClassifier(5, max_depth=4, random_state=0).fit(X, labels)
    cm = treecomp.convert(model)
    frame = frame_of(X, None)
    df = spark.createDataFrame(frame).withColumn(
        "x1", F.when(F.col("id") % 7 == 0, F.lit(None)).otherwise(F.col("x1"))
    )
    udf = predict_udf(cm)
    assert udf.returnType == T.StringType()
    rows = sorted(df.select("id", udf("x0", "x1", "x2").alias("label")).collect())
    frame.loc[frame["id"] % 7 == 0, "x1"] = np.nan
    expected = cm.predict(frame[["x0", "x1", "x2"]])
    assert set(expected) == {"cat", "dog", "eel"}
    assert_equal(collected(rows, "label"), expected)


def test_regressor_predict_and_apply_on_another_backend(spark):
    """A regressor's values (double) and leaves (array<long>); executors' backend and options."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 4))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = np.nan_to_num(X[:, 0]) * 3 - np.nan_to_num(X[:, 1]) + rng.normal(0, 0.1, 500)
    model = lightgbm.LGBMRegressor(n_estimators=8, num_leaves=8, verbose=-1, n_jobs=1).fit(X, y)
    cm = treecomp.convert(model)
    frame = frame_of(X, cm.forest.feature_names)
    features = list(frame.columns[1:])
    rows = (
        spark.createDataFrame(frame)
        .select(
            "id",
            predict_udf(cm)(*features).alias("value"),
            predict_udf(cm, backend="numpy")(*features).alias("value_numpy"),
            predict_udf(cm, "apply", n_threads=1)(*features).alias("leaves"),
        )
        .collect()
    )
    rows.sort(key=lambda row: row["id"])
    assert_equal(collected(rows, "value"), cm.predict(frame[features]))
    assert_equal(collected(rows, "value_numpy"), cm.predict(frame[features]))
    leaves = collected(rows, "leaves")
    assert leaves.dtype == np.int64
    assert_equal(leaves, cm.apply(frame[features]))


def test_categorical_strings_are_encoded_by_value(spark):
    """A string column feeding a categorical feature scores as a pandas category column would,
    an unseen value and a null as missing; a struct's field names are checked."""
    rng = np.random.default_rng(3)
    colors = np.array(["red", "green", "blue", "teal"], dtype=object)
    train = pd.DataFrame(
        {"size": rng.normal(size=600), "color": pd.Categorical(colors[rng.integers(0, 4, 600)])}
    )
    y = train["size"] + 2.0 * (train["color"] == "red") - (train["color"] == "teal")
    model = xgboost.XGBRegressor(
        n_estimators=6, max_depth=3, enable_categorical=True, max_cat_to_onehot=1
    ).fit(train, y)
    cm = treecomp.convert(model)
    values = np.array(["teal", "red", "purple", None, "blue", "green"] * 20, dtype=object)
    frame = pd.DataFrame(
        {"id": np.arange(len(values)), "size": rng.normal(size=len(values)), "color": values}
    )
    df = spark.createDataFrame(frame, "id long, size double, color string")
    udf = predict_udf(cm)
    rows = sorted(
        df.select(
            "id",
            udf("size", "color").alias("positional"),
            udf(F.struct("size", "color")).alias("struct"),
        ).collect()
    )
    local = frame[["size", "color"]].astype({"color": "category"})
    expected = cm.predict(local)
    assert len(np.unique(expected[:6])) > 2  # the encoding matters for these rows
    assert_equal(collected(rows, "positional"), expected)
    assert_equal(collected(rows, "struct"), expected)
    with pytest.raises(PythonException, match="do not match the feature names"):
        df.select(udf(F.struct("color", "size"))).collect()


def test_a_pipeline_reads_its_own_columns(spark):
    """A converted Pipeline takes the pipeline's input columns (its encoder's strings too),
    by name, by position or as a struct in any order, and scores as the pipeline does."""
    pipeline, rows = small_pipeline("onehot")
    cm = treecomp.convert(pipeline)
    df = spark.createDataFrame(frame_of(rows, None), "id long, a double, b double, s string")
    udf, proba = predict_udf(cm), predict_udf(cm, "predict_proba")
    scored = sorted(
        df.select(
            "id",
            udf().alias("named"),
            udf("a", "b", "s").alias("positional"),
            udf(F.struct("s", "b", "a")).alias("struct"),
            proba().alias("proba"),
        ).collect()
    )
    expected = pipeline.predict(rows)
    for column in ("named", "positional", "struct"):
        assert_equal(collected(scored, column), expected)
    assert_close(collected(scored, "proba"), pipeline.predict_proba(rows), tolerance(pipeline[-1]))
    with pytest.raises(ValueError, match="got 2 columns, but the model expects 3"):
        udf("a", "b")
    with pytest.raises(PythonException, match=r"columns are missing from the DataFrame: \['s'\]"):
        df.select(udf(F.struct("a", "b"))).collect()


def test_model_is_rebuilt_once_per_worker(spark):
    """Many tasks and batches, one rebuild per Python worker (read back through a Spark job)."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(2400, 3))
    model = xgboost.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1)
    cm = treecomp.convert(model.fit(X, (X[:, 0] > 0).astype(int)))
    udf = predict_udf(cm)
    key = treecomp_spark._key(cm.dumps(), cm.batch_backend, {})  # the workers cache it so
    df = spark.createDataFrame(frame_of(X, None)).repartition(16)

    def report(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        import os

        from treecomp import spark as treecomp_spark

        for batch in batches:
            yield pd.Series([f"{os.getpid()} {treecomp_spark.rebuilds[key]}"] * len(batch))

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "50")
    try:
        scored = df.select(udf("x0", "x1", "x2").alias("label")).collect()  # 16 x 3 batches
        assert len(scored) == len(X)
        reports = df.select(F.pandas_udf(report, "string")("x0").alias("r")).distinct().collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    builds = dict(tuple(map(int, row["r"].split())) for row in reports)
    assert max(builds.values()) == 1, builds  # some worker scored, and built the model once
    assert all(count <= 1 for count in builds.values()), builds
    assert len(builds) < 16  # workers were reused across tasks, keeping their model


def test_no_columns_reads_the_feature_names(spark):
    """Called with no columns, the UDF reads the model's feature names, dotted ones too."""
    rng = np.random.default_rng(5)
    train = pd.DataFrame(rng.normal(size=(300, 2)), columns=["width.cm", "height"])
    model = ensemble.ExtraTreesRegressor(4, max_depth=3, random_state=0)
    cm = treecomp.convert(model.fit(train, train["width.cm"] - train["height"]))
    frame = frame_of(train, None)
    rows = sorted(spark.createDataFrame(frame).select("id", predict_udf(cm)().alias("y")).collect())
    assert_equal(collected(rows, "y"), cm.predict(train))


def test_registered_for_sql(spark):
    """spark.udf.register takes the UDF; SQL passes columns by position."""
    cm = treecomp.convert(fitted("xgboost_binary")[0])
    X = np.array(fitted("xgboost_binary")[1], dtype=np.float64)[:50]  # a copy: fitted() is cached
    frame = frame_of(X, None)
    spark.createDataFrame(frame).createOrReplaceTempView("tc_rows")
    spark.udf.register("tc_predict", predict_udf(cm))
    columns = ", ".join(frame.columns[1:])
    rows = spark.sql(
        f"SELECT id, tc_predict({columns}) AS label FROM tc_rows ORDER BY id"
    ).collect()
    assert_equal(collected(rows, "label"), cm.predict(X))
    with pytest.raises(PythonException, match="got 2 columns, but the model expects 30"):
        spark.sql("SELECT tc_predict(x0, x1) FROM tc_rows").collect()


def test_bad_input_fails_clearly_before_any_job(spark):
    """Unknown or missing methods, wrong column counts, non-models: Python errors on the driver."""
    regressor = treecomp.convert(fitted("xgboost_categorical")[0])  # names ("a", "c", "b")
    classifier = treecomp.convert(fitted("xgboost_binary")[0])  # no names, 30 features
    with pytest.raises(ValueError, match="unknown method 'predict_log_proba'"):
        predict_udf(classifier, "predict_log_proba")
    with pytest.raises(ValueError, match="regressor has no method 'predict_proba'"):
        predict_udf(regressor, "predict_proba")
    with pytest.raises(TypeError, match=r"needs a compiled model.*XGBClassifier"):
        predict_udf(fitted("xgboost_binary")[0])
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        predict_udf(classifier, backend="tpu")
    with pytest.raises(ValueError, match="got 2 columns, but the model expects 3"):
        predict_udf(regressor)("a", "c")
    with pytest.raises(ValueError, match="no feature names: pass its 30 feature columns"):
        predict_udf(classifier)()


def test_bad_values_fail_with_the_models_message(spark):
    """A value the model rejects fails the job with the single-process message."""
    cm = treecomp.convert(fitted("sklearn_gb")[0])  # GradientBoosting rejects NaN
    X = np.array(fitted("sklearn_gb")[1], dtype=np.float64)[:20]  # a copy: fitted() is cached
    X[3, 4] = np.nan
    df = spark.createDataFrame(frame_of(X, None))
    with pytest.raises(PythonException, match="X contains NaN"):
        df.select(predict_udf(cm)(*df.columns[1:])).collect()


def test_core_imports_without_pyspark():
    """treecomp.spark imports PySpark only when a UDF is built."""
    import subprocess

    code = "import sys; sys.modules['pyspark'] = None; import treecomp, treecomp.spark; print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "ok"
