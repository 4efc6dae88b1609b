"""Turn user input (NumPy, lists, pandas) into the float matrix the trees compare against.

The native libraries cast inputs before comparing: scikit-learn trees and XGBoost to
float32, LightGBM and HistGradientBoosting to float64. :func:`prepare` applies the same cast
(``Forest.input_dtype``), then the requested precision, maps XGBoost's ``missing=`` value to
NaN and encodes pandas categorical columns the way the native library does.

Precision ``"auto"`` (the default) is exact on whatever the caller passes: rows are compared
in the native library's type, except that float32 rows of a model that compares in float64
stay float32 (every float32 number compares against the float32-rounded threshold exactly as
it compares in double against the double one, see :func:`treecomp.passes.float32_thresholds`),
which halves what the walk reads. The prepared matrix's dtype says which precision a call
runs in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from treecomp.arrays import Value, cast, equal, numpy_function, record, where
from treecomp.errors import UnsupportedModelError

if TYPE_CHECKING:
    from treecomp.ir import Forest

Precision = Literal["float32", "float64"]
# What ``convert(precision=...)`` takes: a precision, or "auto" (chosen per call, see above).
PrecisionOption = Literal["auto", "float32", "float64"]
PRECISIONS = ("auto", "float32", "float64")


def check_positive(name: str, value: object) -> None:
    """Reject a run option (``batch_size``, ``n_threads``) that is set but not a positive int."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_precision(precision: str) -> PrecisionOption:
    """Validate a ``precision`` option."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision  # type: ignore[return-value]


def default_precision(forest: Forest, precision: PrecisionOption) -> Precision:
    """The precision a model built with ``precision`` runs in unless a call says otherwise:
    the option itself, or for ``"auto"`` the native library's input type."""
    return forest.input_dtype if precision == "auto" else precision


def call_precision(forest: Forest, precision: PrecisionOption, dtype: str) -> Precision:
    """The precision a call on rows of float type ``dtype`` runs in: the option, or under
    ``"auto"`` float32 for float32 rows (exact, see the module's notes), else the native
    input type. The one rule :func:`prepare` and tensor inputs both follow."""
    if precision == "auto" and dtype == "float32":
        return "float32"
    return default_precision(forest, precision)


def _is_dataframe(X: Any) -> bool:
    return hasattr(X, "columns") and hasattr(X, "dtypes") and hasattr(X, "iloc")


def _dataframe_to_array(forest: Forest, X: Any) -> npt.NDArray[np.floating]:
    ignored = [c for c in X.columns if str(c) in forest.ignored_columns]
    if ignored:  # the native predict drops them too (the caller's frame is not modified)
        X = X.drop(columns=ignored)
    columns = [str(c) for c in X.columns]
    names = forest.feature_names
    if forest.check_feature_names and names is not None and len(columns) == forest.n_features:
        if columns != list(names):
            missing = [c for c in names if c not in columns]
            unexpected = [c for c in columns if c not in names]
            detail = (
                f"missing {missing}, unexpected {unexpected}"
                if missing or unexpected
                else "in another order"
            )
            raise ValueError(
                "the DataFrame's columns do not match the feature names seen at fit time "
                f"({detail}); "
                f"expected {list(names)}"
            )
    _check_width(forest, len(columns))
    if forest.categories is not None and forest.category_encoding == "pandas":
        # LightGBM recodes the k-th category column of a frame with the k-th training list,
        # whichever feature it is; the lists sit on the model's categorical features, so a
        # category column anywhere else would be recoded with the wrong list.
        stray = [
            name
            for j, name in enumerate(X.columns)
            if str(X[name].dtype) == "category" and forest.categories[j] is None
        ]
        if stray:
            listed = [str(X.columns[j]) for j, c in enumerate(forest.categories) if c is not None]
            raise UnsupportedModelError(
                f"columns {stray} are pandas categories, but the model's categorical features "
                f"are {listed}: the training category lists cannot be matched to them (a "
                "categorical_feature= list that differs from the category columns); pass them "
                "as numbers (their codes)"
            )
        # ... and both refuse a frame whose column of such a feature is not a category: its
        # numbers may be values or codes, and read as codes, values would be wrong.
        plain = [
            str(name)
            for j, name in enumerate(X.columns)
            if forest.categories[j] is not None and str(X[name].dtype) != "category"
        ]
        if plain:
            raise TypeError(
                f"columns {plain} are not pandas categories, but the model was fitted with "
                "them as categories; the native model refuses such a frame too: pass them as "
                "'category' columns (NumPy rows carry category codes)"
            )
    _check_category_columns(forest, X)
    out = np.empty((len(X), len(columns)), dtype=_frame_dtype(forest, X))
    numbers = _column_cast(forest, X)
    for j, name in enumerate(X.columns):
        col = X[name]
        dtype = col.dtype
        known = None if forest.categories is None else forest.categories[j]
        if str(dtype) == "category":
            if forest.category_encoding == "always":
                _check_category_type(known, col.cat.categories.dtype, name)
            out[:, j] = _encode_categorical(col, known)
        elif known is not None and forest.category_encoding == "always":
            _check_category_type(known, dtype, name)
            out[:, j] = _encode_values(_object_values(col), known)
        elif getattr(dtype, "kind", "O") in "biuf":
            out[:, j] = _numbers(col, numbers)
        elif getattr(dtype, "kind", "O") in "mM":
            raise TypeError(
                f"column {name!r} has dtype {dtype}: dates and durations are not numbers the "
                "model was trained on; convert them explicitly"
            )
        else:
            try:  # nullable extension dtypes (Int64, Float64, boolean) convert cleanly
                out[:, j] = _numbers(col, numbers)
            except (TypeError, ValueError):
                raise TypeError(
                    f"column {name!r} has non-numeric dtype {dtype}; convert it to a number or a "
                    "pandas 'category' dtype"
                ) from None
    return out


def categories_by_value(forest: Forest, frame: Any) -> Any:
    """``frame`` with the columns of features fitted as pandas categories made categories of
    their values, where they arrived as plain values: from Spark, files and other sources
    that have no category type.

    Encoded by value against the fit-time categories (unseen values missing), as a pandas
    ``category`` column of the same values would be; a frame passed to ``cm.predict``
    directly must hold category columns there, as the native libraries demand (its numbers
    could be codes). Only the ``"pandas"`` encoding needs it: ``"always"`` already encodes
    plain values (and rejects infinity, as the native does).
    """
    import pandas as pd

    if forest.categories is None or forest.category_encoding != "pandas":
        return frame
    if not _is_dataframe(frame):
        return frame
    positions = [j for j, c in enumerate(frame.columns) if str(c) not in forest.ignored_columns]
    if len(positions) != forest.n_features:
        return frame  # cm.predict reports the width
    frame = frame.copy(deep=False)
    for position, known in zip(positions, forest.categories):
        column = frame.iloc[:, position]
        if known is not None and not isinstance(column.dtype, pd.CategoricalDtype):
            frame.isetitem(position, pd.Categorical(column))
    return frame


def categorical_features(forest: Forest) -> set[int]:
    """The features the model reads as categories: those with training category lists, and
    those some tree splits on by category membership."""
    features = {j for j, known in enumerate(forest.categories or ()) if known is not None}
    for tree in forest.trees:
        features.update(tree.feature[tree.is_categorical].tolist())
    return features


def _check_category_columns(forest: Forest, X: Any) -> None:
    """Refuse a pandas ``category`` column on a feature the model reads as a number.

    Its codes are not its values, and the libraries disagree on what such a column means
    (scikit-learn reads the category values, LightGBM the codes, XGBoost refuses it), so no
    answer would be the native one for every model.
    """
    known = forest.categories or ()
    # Columns with training category lists are categorical: only the others need the trees.
    unlisted = [
        (j, name)
        for j, name in enumerate(X.columns)
        if str(X[name].dtype) == "category" and (j >= len(known) or known[j] is None)
    ]
    if not unlisted:
        return
    categorical = categorical_features(forest)
    numeric = [str(name) for j, name in unlisted if j not in categorical]
    if numeric:
        raise TypeError(
            f"columns {numeric} are pandas categories, but the model reads them as numbers "
            "(it has no categorical split on them): pass their values instead (for example "
            "X[column].astype(float)), or fit the model with them as categorical features"
        )


# Column dtypes whose every value float32 holds exactly (NaN included).
_FLOAT32_EXACT = frozenset(["float32", "float16", "bool", "int8", "int16", "uint8", "uint16"])


def _frame_dtype(forest: Forest, X: Any) -> Any:
    """The matrix a DataFrame becomes: float32 where the model reads float32 and every
    column converts to float32 exactly, float64 otherwise (holding float32 numbers where
    :func:`_column_cast` rounds them to float32; categories are codes)."""
    if forest.input_dtype != "float32" or forest.categories is not None:
        return np.float64
    if all(str(dtype) in _FLOAT32_EXACT for dtype in X.dtypes):
        return np.float32
    return np.float64


def _column_cast(forest: Forest, X: Any) -> Any:
    """The float type a DataFrame's numeric columns are converted to, as the native library
    converts them (``Forest.frame_cast``): each straight to the input type, or as
    scikit-learn's ``check_array`` does: column by column where one is boolean or a
    nullable number type (its early conversion), else through the frame's common type,
    which rounds an int64 column twice (to float64, then float32) beside a float64 column
    or an object or string one (Python objects), and once in a frame of integers alone."""
    if forest.input_dtype == "float64":
        return np.float64
    dtypes = list(X.dtypes)
    kinds = [getattr(d, "kind", "O") for d in dtypes]
    plain = [isinstance(d, np.dtype) for d in dtypes]
    if forest.frame_cast == "columns" or any(
        k == "b" or (k in "iuf" and not p) for k, p in zip(kinds, plain)
    ):
        return np.float32
    if not all(p and k in "iuf" for k, p in zip(kinds, plain)):
        return np.float64  # objects, strings (or categories, dates: refused later)
    common = np.result_type(*dtypes) if dtypes else np.dtype(np.float32)
    return np.float64 if common.kind == "f" and common.itemsize > 4 else np.float32


def _numbers(col: Any, dtype: Any) -> npt.NDArray[np.floating]:
    """A numeric (or nullable numeric) column as ``dtype``, missing values as NaN; values
    beyond float32 become infinities, which :func:`prepare` reports as natively."""
    with np.errstate(over="ignore"):
        return col.to_numpy(dtype=dtype, na_value=np.nan)


def _check_category_type(known: tuple[Any, ...] | None, dtype: Any, name: Any) -> None:
    """Refuse numbers for a feature whose categories are strings, as scikit-learn does.

    HistGradientBoosting's encoder cannot compare a numeric column (or a category column
    whose categories are numbers) with string categories and raises; read by value, every
    number would be an unknown category, scored as missing: a silent wrong answer where
    they were meant as codes. Objects mixing strings and numbers are read by value, as
    natively (a number there is an unknown category).
    """
    if known and getattr(dtype, "kind", "O") in "biuf" and all(isinstance(v, str) for v in known):
        raise TypeError(
            f"column {name!r} holds numbers ({dtype}), but the model's categories for it are "
            f"strings ({list(known[:3])}{', ...' if len(known) > 3 else ''}); the native model "
            "refuses it too: pass the category values (strings), not their codes"
        )


def _encode_values(values: npt.NDArray[Any], known: tuple[Any, ...]) -> npt.NDArray[np.float64]:
    """Position of each value in ``known``; values never seen in training become NaN.

    Infinite values are rejected, as scikit-learn's OrdinalEncoder rejects them.
    """
    if values.dtype.kind in "fc" and np.isinf(values).any():
        raise ValueError("X contains infinity in a categorical feature, which the model rejects")
    lookup = {value: float(i) for i, value in enumerate(known)}
    return np.array([lookup.get(v, np.nan) for v in values.tolist()], dtype=np.float64)


def _object_values(col: Any) -> npt.NDArray[Any]:
    values = col.to_numpy(dtype=object)
    if any(isinstance(v, float) and np.isinf(v) for v in values.tolist()):
        raise ValueError(
            f"column {col.name!r} contains infinity in a categorical feature, "
            "which the model rejects"
        )
    return values


def _encode_categorical(col: Any, known: tuple[Any, ...] | None) -> npt.NDArray[np.float64]:
    """Category codes as the trees saw them in training; unknown and missing values are NaN."""
    if known is None:
        codes = col.cat.codes.to_numpy().astype(np.float64)
    else:
        remap = _encode_values(np.asarray(list(col.cat.categories), dtype=object), known)
        # code -1 (a missing value) picks the trailing NaN
        codes = np.append(remap, np.nan)[col.cat.codes.to_numpy()]
    codes[codes < 0] = np.nan
    return codes


def check_shape(forest: Forest, shape: tuple[int, ...]) -> None:
    """Reject an input that is not ``(n_samples, n_features)``: NumPy arrays and tensors alike."""
    if len(shape) != 2:
        raise ValueError(
            f"expected a 2-D array of shape (n_samples, {forest.n_features}), "
            f"got {len(shape)}-D shape {tuple(shape)}"
        )
    _check_width(forest, shape[1])


def check_values(forest: Forest, has_nan: Callable[[], bool], has_inf: Callable[[], bool]) -> None:
    """Reject NaN or infinity where the native model rejects them (checks run only then)."""
    if not forest.allow_nan and has_nan():
        raise ValueError(
            "X contains NaN, which this model does not accept (the native model's predict "
            "rejects it too)"
        )
    if not forest.allow_inf and has_inf():
        raise ValueError(
            f"X contains infinity or a value too large for {forest.input_dtype}, which this model "
            "does not accept (the native model rejects it too)"
        )


def _check_width(forest: Forest, n_columns: int) -> None:
    if n_columns != forest.n_features:
        raise ValueError(f"X has {n_columns} features, but the model expects {forest.n_features}")


def integer_target(forest: Forest) -> str:
    """The float dtype integer inputs become, in one cast, as the native library does.

    scikit-learn and XGBoost cast integers straight to float32 (never through float64,
    which would round twice); LightGBM casts integer arrays to float32 too.
    """
    if "float32" in (forest.input_dtype, forest.integer_input_dtype):
        return "float32"
    return "float64"


def to_matrix(forest: Forest, X: Any) -> npt.NDArray[np.floating]:
    """Convert any supported input into a 2-D float array of the model's width."""
    if _is_dataframe(X):
        return _dataframe_to_array(forest, X)
    if hasattr(X, "detach") and hasattr(X, "cpu"):  # a torch tensor reaching the NumPy path
        X = X.detach().cpu()
        try:
            X = X.numpy()
        except TypeError:  # a type NumPy lacks (bfloat16, float8): float32 holds it exactly
            if not X.is_floating_point():
                raise TypeError(f"X has unsupported dtype {X.dtype}; expected numbers") from None
            X = X.float().numpy()
    if hasattr(X, "tocsr") and hasattr(X, "nnz"):  # SciPy sparse: np.asarray would wrap it
        # Absent entries are zeros to scikit-learn and LightGBM but missing to XGBoost's trees
        # (dmlc/xgboost#1634; measured with xgboost 3 and lightgbm 4), and a forest does not
        # record which library it came from: densifying either way could be wrong.
        raise TypeError(
            "X is a SciPy sparse matrix: its absent entries mean 0 to scikit-learn and LightGBM "
            "but 'missing' to XGBoost, and the model does not record which library it follows; "
            "pass X.toarray() (absent = 0) or, for XGBoost's reading, a dense array with NaN "
            "where entries are absent"
        )
    arr = np.asarray(X)
    if arr.dtype.kind not in "biuf":
        if arr.dtype.kind == "O":
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise TypeError("X contains non-numeric values; expected numbers or NaN") from None
        else:
            raise TypeError(f"X has unsupported dtype {arr.dtype}; expected a numeric array")
    check_shape(forest, arr.shape)
    if arr.dtype.kind != "f":
        arr = arr.astype(integer_target(forest))
    if forest.categories is not None and forest.category_encoding == "always":
        given = arr.dtype
        arr = arr.astype(np.float64)  # a copy: the caller's array is never written
        for j, known in enumerate(forest.categories):
            if known is not None:
                _check_category_type(known, given, f"x{j}")
                arr[:, j] = _encode_values(arr[:, j], known)
    return arr


# NumPy 2 computes dtype.name in Python, 1 to 6 us a call: the two float types' names are
# looked up instead (an extra 8 us of a one-row call to the kernel, two lookups a call).
_FLOAT_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def dtype_name(dtype: np.dtype[Any]) -> str:
    """``dtype.name``, fast for float32 and float64."""
    return _FLOAT_NAMES.get(dtype) or dtype.name


def _all_finite(arr: npt.NDArray[np.floating]) -> bool:
    """Whether every value of ``arr`` is finite, or (rarely) a sum of them overflows. A few
    values are summed as Python floats: NaN and infinities carry through a sum, which
    warns of nothing, in 0.6 us where ``np.isfinite(arr).all()`` takes 1.4-1.8 (of a 6 us
    single-row call). The callers check precisely where this says no."""
    if arr.size <= 256:
        return math.isfinite(sum(arr.ravel().tolist()))
    return bool(np.isfinite(arr).all())


def native_values(x: Value, forest: Forest, precision: str) -> Value:
    """The values ``forest``'s trees compare, in ``precision``, from rows ``x``: cast as
    the native library casts them (``forest.input_dtype``), its ``missing=`` value read as
    NaN there (XGBoost compares it in float32), then in ``precision`` (written in
    :mod:`treecomp.arrays`: the NumPy path below, the torch module and the ONNX graph
    render it)."""
    return _native_values(x, forest.input_dtype, forest.missing_value, precision)


def _native_values(x: Value, input_dtype: str, missing: float, precision: str) -> Value:
    native = cast(x, input_dtype)
    if not math.isnan(missing):
        native = where(equal(native, missing), math.nan, native)
    return cast(native, precision)


@functools.cache
def _native_input_function(
    input_dtype: str, missing: float, given: str, precision: str
) -> Callable[..., list[Any]]:
    """:func:`native_values` in NumPy, for rows of type ``given``."""
    prepared = record(lambda x: _native_values(x, input_dtype, missing, precision), given)
    return numpy_function(prepared)


def prepare(forest: Forest, X: Any, precision: PrecisionOption) -> npt.NDArray[np.floating]:
    """The exact values the trees compare against, in the dtype of ``precision``.

    Values are first cast to the native input dtype (so float32-casting libraries see the
    same rounded values), then to ``precision``. With ``precision="float32"`` a model whose
    native input is float64 sees float32-rounded inputs: exact for float32-representable
    data, the documented trade-off otherwise. With ``"auto"`` the result is float32 where
    the input's values are float32 numbers and the model reads float32 or float64 (see the
    module's notes), float64 otherwise: never rounded.
    """
    # An array already 2-D and of the native dtype (the common case) skips the conversions:
    # at one row every NumPy call counts.
    if (
        type(X) is np.ndarray
        and X.ndim == 2
        and (X.dtype == forest.input_dtype or (precision == "auto" and X.dtype == np.float32))
        and X.shape[1] == forest.n_features
        and forest.categories is None
    ):
        arr = X
    else:
        arr = to_matrix(forest, X)
        # float32 rows that run in float32 need no detour through the native type: every
        # float32 number is one in float64 too
        stays = (
            arr.dtype == np.float32 and call_precision(forest, precision, "float32") == "float32"
        )
        if arr.dtype != forest.input_dtype and not stays:
            with np.errstate(over="ignore"):  # overflow to inf is reported below, as natively
                arr = arr.astype(forest.input_dtype)
    # One pass where both are allowed or the batch is finite (the common case), the precise
    # check otherwise.
    if not (forest.allow_nan and forest.allow_inf) and not _all_finite(arr):
        check_values(forest, lambda: bool(np.isnan(arr).any()), lambda: bool(np.isinf(arr).any()))
    given = dtype_name(arr.dtype)
    target = call_precision(forest, precision, given)
    if not math.isnan(forest.missing_value):
        missing_as_nan = _native_input_function(
            forest.input_dtype, forest.missing_value, given, target
        )
        (arr,) = missing_as_nan(arr)
    return np.ascontiguousarray(arr.astype(target, copy=False))
