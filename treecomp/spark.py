"""Score Spark DataFrames with a compiled model: a pandas UDF over Arrow batches.

:func:`predict_udf` turns a :class:`~treecomp.CompiledModel` method into a pandas UDF. The
driver broadcasts the model's safe artifact (checksummed JSON, never a pickled torch module
or ONNX session) once per UDF; each executor's Python worker rebuilds the model from it with
:func:`treecomp.loads` on its first batch and keeps it for every later batch and task that
worker runs, so a worker builds a model once, not once per batch.

Typical use::

    import treecomp
    from treecomp.spark import predict_udf

    cm = treecomp.convert(model)
    scored = spark.read.parquet("rows.parquet").withColumn(
        "proba", predict_udf(cm, "predict_proba")(*feature_columns)
    )

PySpark (with pyarrow and pandas) is imported only when a UDF is built: ``import treecomp``
never needs it.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import numpy.typing as npt

from treecomp.container import CompiledModel, loads_for_batches
from treecomp.inputs import categories_by_value
from treecomp.ir import METHODS, Forest

if TYPE_CHECKING:
    from pyspark.sql import Column, SparkSession
    from pyspark.sql.types import DataType

__all__ = ["predict_udf", "rebuilds"]

# Models a worker process rebuilt, by artifact key. Workers outlive tasks (Spark reuses them,
# `spark.python.worker.reuse`), so this is what spares the rebuild per task; bounded so that a
# long-lived worker scoring many retrained models does not keep all of them.
_MODELS: collections.OrderedDict[str, CompiledModel] = collections.OrderedDict()
_MODELS_KEPT = 8

rebuilds: collections.Counter[str] = collections.Counter()
"""How many times this process rebuilt the model of each artifact key (the tests read it on the
workers through a Spark job: at most once per key per worker)."""


def predict_udf(
    cm: CompiledModel,
    method: str = "predict",
    *,
    spark: SparkSession | None = None,
    backend: str | None = None,
    **options: Any,
) -> Callable[..., Column]:
    """A pandas UDF that scores Spark rows with one method of a compiled model.

    Call the UDF on the feature columns, in the order the model was fitted on, or on one
    struct of them::

        proba = predict_udf(cm, "predict_proba")
        df.withColumn("proba", proba("a", "b", "c"))   # columns taken by position
        df.withColumn("proba", proba())                 # the model's feature names
        df.withColumn("proba", proba(F.struct("a", "b", "c")))   # names checked

    Columns passed one by one are taken by position, like the columns of a NumPy array, and
    named after the model's features. A struct behaves like a pandas DataFrame: its field
    names are checked against the fit-time names where the native library checks them
    (scikit-learn, XGBoost), so a reordered or misspelt column is an error, not a silent
    mis-scoring. Called with no columns, the UDF reads the columns named after the model's
    features (models fitted on a named DataFrame). For a converted Pipeline the feature
    columns are the pipeline's own input columns, before its transforms (``cm.n_features_in_``,
    ``cm.feature_names_in_``), string columns its encoders read included.

    Spark nulls are missing values (NaN). Spark has no categorical type: a column feeding a
    categorical feature holds the category values themselves (strings or numbers), encoded
    by value against the categories seen at fit time, unseen values as missing, as a pandas
    ``category`` column would be.

    The UDF returns one value per row, typed as the method's native output:

    ====================  =======================================================
    ``predict``           a classifier's label type (``long``, ``double``,
                          ``string`` or ``boolean``); ``double`` for regressors
                          and rankers (``array<double>`` for several outputs);
                          ``long`` (-1 or 1) for outlier detectors
    ``predict_proba``     ``array<double>``, one entry per class
    ``decision_function`` ``double``, or ``array<double>`` for several margins
    ``score_samples``     ``double``
    ``apply``             ``array<long>``, one leaf per tree (nested arrays when the
                          native ``apply`` has more axes, e.g. GradientBoosting)
    ====================  =======================================================

    The UDF is a plain pandas UDF, so ``spark.udf.register("score", udf)`` makes it
    callable from SQL (``SELECT score(a, b, c) FROM rows``, columns by position).

    Example::

        import treecomp
        from pyspark.sql import SparkSession, functions as F
        from treecomp.spark import predict_udf

        spark = SparkSession.builder.getOrCreate()
        cm = treecomp.convert(model)   # fitted on a DataFrame with columns a, b, c
        rows = spark.read.parquet("rows.parquet")
        scored = rows.select(
            "id",
            predict_udf(cm)().alias("label"),
            predict_udf(cm, "predict_proba")(F.struct("a", "b", "c")).alias("proba"),
        )

    Args:
        cm: The model, from :func:`treecomp.convert` or :func:`treecomp.load`.
        method: ``"predict"``, ``"predict_proba"``, ``"decision_function"``,
            ``"score_samples"`` or ``"apply"``: one the native model has.
        spark: The session whose SparkContext broadcasts the model; by default the active one.
        backend: Rebuild the model on the executors with this backend instead of
            ``cm.batch_backend`` (the kernel where the model's own large batches run it,
            else ``cm.backend``; say ``"numpy"`` where executors lack ONNX Runtime).
        **options: Run options for the executors' rebuild, as :func:`treecomp.loads` takes
            them (``n_threads``, ``batch_size``, ``device``, ...); an unknown or invalid one
            fails on the first batch, with the message :func:`treecomp.convert` gives.

    Returns:
        The pandas UDF: call it on the feature columns to get a :class:`pyspark.sql.Column`.

    Raises:
        TypeError: ``cm`` is not a :class:`~treecomp.CompiledModel`.
        ValueError: an unknown method or one the model lacks, an unknown backend, or no
            active SparkSession. Applying the UDF to a number of columns other than the
            model's feature count (or one struct) raises ``ValueError`` at once; a struct
            of the wrong width or names fails on the first batch, as ``cm.predict`` would.
    """
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    if not isinstance(cm, CompiledModel):
        raise TypeError(
            f"predict_udf needs a compiled model (treecomp.convert(model)), "
            f"got {type(cm).__qualname__}"
        )
    forest = cm.forest
    _check_method(forest, method)
    if backend is not None:
        from treecomp.backends import get_backend

        get_backend(backend)  # an unknown name fails here, not on every executor
    backend = backend or cm.batch_backend
    session = spark if spark is not None else SparkSession.getActiveSession()
    if session is None:
        raise ValueError("no active SparkSession: start one, or pass spark=")

    artifact = cm.dumps()
    key = _key(artifact, backend, options)
    broadcast = session.sparkContext.broadcast(artifact)
    fit_names = getattr(cm, "feature_names_in_", None)
    # Columns passed one by one are named so: by the fit-time names where the model has them
    # (a Pipeline's own input columns), else x0, x1, ... and taken by position.
    names = (
        tuple(str(n) for n in fit_names)
        if fit_names is not None
        else tuple(f"x{j}" for j in range(cm.n_features_in_))
    )

    # A closure, pickled by value to the workers; it reaches the module's cache through
    # `_score_batches`, a module function cloudpickle sends by reference (a global the
    # closure used directly would travel as a copy, and every task would get an empty cache).
    def score(batches: Any) -> Any:
        return _score_batches(batches, key, broadcast, backend, options, method, names)

    import pandas as pd

    # The hints that make it an iterator-of-batches UDF, set here because pandas is imported
    # lazily; typing.Union because PySpark recognises no `X | Y` union.
    score.__annotations__ = {
        "batches": Iterator[tuple[Union[pd.Series, pd.DataFrame], ...]],  # noqa: UP007
        "return": Iterator[pd.Series],
    }
    score.__name__ = method  # Spark names the output column after it: predict_proba(a, b, c)
    udf = pandas_udf(score, _return_type(forest, method))  # type: ignore[call-overload]
    return _checked_call(udf, names, named=fit_names is not None)


def _check_method(forest: Forest, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method not in forest.methods:
        raise ValueError(
            f"this compiled {forest.task} has no method {method!r} (the native model lacks "
            f"it); it has {forest.methods}"
        )


def _key(artifact: bytes, backend: str | None, options: dict[str, Any]) -> str:
    """The cache key of a rebuilt model: the artifact's hash and how it is rebuilt."""
    digest = hashlib.sha256(artifact)
    digest.update(repr((backend, sorted(options.items()))).encode())
    return digest.hexdigest()


def _checked_call(udf: Any, names: tuple[str, ...], *, named: bool) -> Callable[..., Column]:
    """Wrap ``udf`` so that a wrong column count fails on the driver, before any job runs.

    ``names`` are the model's input columns (:func:`predict_udf`'s); ``named`` says whether
    they are its fit-time names, which ``udf()`` reads.
    """

    def apply(*columns: Any) -> Column:
        if len(columns) == 1 and isinstance(columns[0], (list, tuple)):
            columns = tuple(columns[0])  # udf(["a", "b"]), as df.select takes a list
        if not columns:
            if not named:
                raise ValueError(
                    f"this model has no feature names: pass its {len(names)} feature "
                    "columns, in the order it was fitted on"
                )
            # backquoted, so that a name with a dot is a column, not a struct field access
            columns = tuple(f"`{name.replace('`', '``')}`" for name in names)
        elif len(columns) not in (1, len(names)):
            raise ValueError(
                f"got {len(columns)} columns, but the model expects {len(names)}: pass "
                "its feature columns in the order it was fitted on, or one struct of them"
            )
        return udf(*columns)

    # The pandas UDF's attributes (func, returnType, evalType, ...) come along, so that
    # spark.udf.register accepts the wrapper as the UDF itself.
    return functools.update_wrapper(apply, udf)


def _return_type(forest: Forest, method: str) -> DataType:
    """The Spark type of one row of ``method``'s output."""
    from pyspark.sql.types import ArrayType, DoubleType, LongType

    if method == "predict_proba":
        return ArrayType(DoubleType())
    if method == "apply":
        leaves: DataType = LongType()
        for _ in forest.leaf_shape:
            leaves = ArrayType(leaves)
        return leaves
    if method == "score_samples" or (method == "decision_function" and forest.task == "outlier"):
        return DoubleType()
    if method == "predict" and forest.task == "classifier":
        assert forest.classes is not None  # guaranteed by Forest.validate for classifiers
        return _label_type(forest.classes)
    if method == "predict" and forest.task == "outlier":
        return LongType()
    return DoubleType() if forest.n_outputs == 1 else ArrayType(DoubleType())


def _label_type(classes: npt.NDArray[Any]) -> DataType:
    """The Spark type that holds a classifier's labels exactly."""
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType

    values = list(classes)  # numpy scalars in a numeric array, the objects in an object one
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return BooleanType()
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return LongType()
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return DoubleType()
    if all(isinstance(v, str) for v in values):
        return StringType()
    raise TypeError(
        f"cannot hold the class labels {values[:5]!r} in one Spark type: a classifier's "
        "labels must all be numbers, all booleans or all strings"
    )


# ----------------------------------------------------------------------------------------
# What runs on the executors.


def _score_batches(
    batches: Iterator[Any],
    key: str,
    broadcast: Any,
    backend: str | None,
    options: dict[str, Any],
    method: str,
    names: tuple[str, ...],
) -> Iterator[Any]:
    """Score each Arrow batch (a tuple of pandas Series, or one DataFrame for a struct)."""
    model: CompiledModel | None = None
    for batch in batches:
        if model is None:  # on the first batch: a task with no rows builds nothing
            model = _model(key, broadcast, backend, options)
        columns = batch if isinstance(batch, tuple) else (batch,)
        yield _series(getattr(model, method)(_frame(model, columns, names)))


def _model(key: str, broadcast: Any, backend: str | None, options: dict[str, Any]) -> CompiledModel:
    """This worker's model for ``key``, rebuilt from the broadcast artifact on first use."""
    model = _MODELS.get(key)
    if model is None:
        model = loads_for_batches(broadcast.value, backend, **options)
        rebuilds[key] += 1
        _MODELS[key] = model
        while len(_MODELS) > _MODELS_KEPT:
            _MODELS.popitem(last=False)
    _MODELS.move_to_end(key)
    return model


def _frame(model: CompiledModel, columns: tuple[Any, ...], names: tuple[str, ...]) -> Any:
    """One batch's columns as the pandas DataFrame ``cm.predict`` would be given."""
    import pandas as pd

    if len(columns) == 1 and isinstance(columns[0], pd.DataFrame):
        frame = columns[0]  # a struct: its field names stay, to be checked as pandas' are
    elif any(isinstance(c, pd.DataFrame) for c in columns):
        raise TypeError("pass the feature columns one by one, or as one struct, not a mix")
    elif len(columns) != len(names):  # reached through SQL, which skips the wrapper
        raise ValueError(
            f"got {len(columns)} columns, but the model expects {len(names)}: pass "
            "its feature columns in the order it was fitted on, or one struct of them"
        )
    else:
        frame = pd.DataFrame(dict(zip(names, columns)))
    if model.transforms is not None:  # a Pipeline's encoders read the values themselves
        return frame
    return categories_by_value(model.forest, frame)


def _series(values: npt.NDArray[Any]) -> Any:
    """One output row per Series entry; rows of a 2-D (or 3-D) output become arrays."""
    import pandas as pd

    # PySpark turns each row of an array column into a list whatever it is given; from Python
    # lists of floats that is 20% faster than from NumPy rows (1.0 vs 1.26 s per million rows
    # of predict_proba, pyspark.sql.pandas.conversion.create_arrow_array_from_pandas).
    return pd.Series(values if values.ndim == 1 else values.tolist())
