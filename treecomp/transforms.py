"""The row transforms in front of a forest: the IR of a scikit-learn Pipeline's preprocessing.

A fitted Pipeline (imputers, scalers, encoders, a ColumnTransformer) maps every input row to
the row its forest reads, one output feature at a time: each output feature is one input
column passed through a short chain of elementwise operations (:class:`Op`). That chain is
the whole description; :mod:`treecomp.frontends.pipeline` builds it from the fitted
objects, and every target (NumPy here, torch in :mod:`treecomp.transforms_torch`, ONNX in
:mod:`treecomp.onnx.transforms`) evaluates the same chains through :func:`evaluate`, each
with its own few primitives.

Input contract. Numbers cannot carry strings, so the rows reach the chains as an *encoded
matrix*, one column per :class:`Source`: a numeric source is the input column's values
(float64, NaN for missing); a categorical source is the position of each value among the
fitted encoder's categories (NaN for a missing value, -1 for a value never seen in fit).
:func:`encode` builds that matrix from a DataFrame or an array, at the NumPy boundary; the
exported ONNX file does the same in its graph.

Arithmetic. Each operation is the one scikit-learn performs, in the same order and type
(float64): ``(x - mean_) / scale_`` for StandardScaler, ``x * scale_ + min_`` for
MinMaxScaler; the result is then cast to the forest's input type, as the native forest
casts it.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    pass

OpKind = Literal[
    "fill",
    "subtract",
    "divide",
    "multiply",
    "add",
    "clip",
    "equal",
    "decode",
    "is_missing",
    "replace",
]


@dataclass(frozen=True, slots=True)
class Op:
    """One elementwise operation on a float64 value ``x``.

    ``fill``: NaN becomes ``value``. ``subtract``, ``divide``, ``multiply``, ``add``:
    ``x - value``, ``x / value``, ``x * value``, ``x + value``. ``clip``: below ``value``
    becomes ``value``, above ``other`` becomes ``other`` (NaN stays NaN, as ``np.clip``).
    ``equal``: 1.0 where ``x == value``, else 0.0 (a one-hot column). ``decode``: a code
    becomes itself, NaN (missing) becomes ``value``, -1 (unknown) becomes ``other`` (an
    ordinal column). ``is_missing``: 1.0 where NaN, else 0.0 (a missing indicator).
    ``replace``: ``value`` becomes ``other`` (XGBoost's zeros of a sparse matrix: missing).
    """

    kind: OpKind
    value: float = 0.0
    other: float = 0.0


# The kinds that read ``Op.other``, and the one that reads no constant: targets make
# constants for the others only.
USES_OTHER = frozenset(["clip", "decode", "replace"])
USES_NONE = frozenset(["is_missing"])


@dataclass(frozen=True, slots=True)
class Source:
    """A column of the encoded matrix: pipeline input column ``column``, as numbers
    (``categories`` None) or as codes among ``categories``.

    Attributes:
        column: Position of the input column.
        categories: The fitted categories (NaN left out: missing values are NaN codes).
        refuse_unknown: The encoder whose ``handle_unknown="error"`` refuses values never
            seen in fit (named in the error), or ``""`` where unknown values are scored.
        refuse_missing: Whether that encoder also refuses a missing value (NaN was not a
            category in fit, and no imputer fills it first).
        refuse_na: Whether ``pd.NA`` raises scikit-learn's ``TypeError``: a SimpleImputer
            reads the strings before the encoder, and finds NaN by comparing each value with
            itself, which ``pd.NA`` cannot answer. Where an encoder reads the strings
            itself, ``pd.NA`` is a value never seen in fit (:func:`is_missing`).
    """

    column: int
    categories: tuple[Any, ...] | None = None
    refuse_unknown: str = ""
    refuse_missing: bool = False
    refuse_na: bool = False


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature the forest reads: source ``source`` through ``ops``, in order."""

    source: int
    ops: tuple[Op, ...]
    name: str


@dataclass(frozen=True, slots=True)
class Transforms:
    """A pipeline's row transforms: input columns, encoded sources, output features.

    Attributes:
        columns: The pipeline's input column names (``"x0"``... where it was fitted on an
            array without names).
        named: Whether the pipeline was fitted on a DataFrame: its columns are then found
            by name, else by position.
        sources: The encoded matrix's columns (:func:`encode`).
        features: The forest's input features, in order.
        steps: What each fitted step was, for ``repr`` and the documentation of exports.
    """

    columns: tuple[str, ...]
    named: bool
    sources: tuple[Source, ...]
    features: tuple[Feature, ...]
    steps: tuple[str, ...] = ()

    def validate(self) -> Transforms:
        """Check the indices; raise ``ValueError`` naming the first problem."""
        for source in self.sources:
            if not 0 <= source.column < len(self.columns):
                raise ValueError(f"source column {source.column} out of range")
        for feature in self.features:
            if not 0 <= feature.source < len(self.sources):
                raise ValueError(f"feature {feature.name!r} reads a source out of range")
        return self

    @property
    def n_features(self) -> int:
        """Features the forest reads."""
        return len(self.features)

    @property
    def used_columns(self) -> tuple[int, ...]:
        """Input columns some feature reads, in input order."""
        return tuple(sorted({source.column for source in self.sources}))


@dataclass(frozen=True, slots=True)
class Block:
    """Features with the same chain of operation kinds, evaluated together: every target
    runs a block as one vectorised chain over its ``(rows, len(sources))`` columns."""

    sources: npt.NDArray[np.int64]
    kinds: tuple[OpKind, ...]
    values: tuple[npt.NDArray[np.float64], ...]
    others: tuple[npt.NDArray[np.float64], ...]
    positions: npt.NDArray[np.int64]


def blocks(transforms: Transforms) -> tuple[tuple[Block, ...], npt.NDArray[np.int64] | None]:
    """The features grouped by chain, and the permutation that puts the blocks' columns
    (concatenated in block order) back in feature order (None where already in order)."""
    groups: dict[tuple[OpKind, ...], list[int]] = {}
    for j, feature in enumerate(transforms.features):
        groups.setdefault(tuple(op.kind for op in feature.ops), []).append(j)
    out = []
    for kinds, members in groups.items():
        chains = [transforms.features[j].ops for j in members]
        out.append(
            Block(
                sources=np.array([transforms.features[j].source for j in members], np.int64),
                kinds=kinds,
                values=tuple(np.array([c[i].value for c in chains]) for i in range(len(kinds))),
                others=tuple(np.array([c[i].other for c in chains]) for i in range(len(kinds))),
                positions=np.array(members, np.int64),
            )
        )
    positions = np.concatenate([b.positions for b in out]) if out else np.zeros(0, np.int64)
    order = np.argsort(positions, kind="stable").astype(np.int64)
    identity = bool((order == np.arange(len(order))).all())
    return tuple(out), None if identity else order


class Primitives(Protocol):
    """What a target provides to evaluate the chains: values ``x`` of shape (rows, k),
    constants ``c`` broadcasting as (1, k), booleans from the comparisons."""

    def where(self, condition: Any, a: Any, b: Any) -> Any: ...
    def isnan(self, x: Any) -> Any: ...
    def equal(self, x: Any, c: Any) -> Any: ...
    def less(self, x: Any, c: Any) -> Any: ...
    def greater(self, x: Any, c: Any) -> Any: ...
    def arithmetic(self, kind: str, x: Any, c: Any) -> Any: ...
    def as_float(self, condition: Any) -> Any: ...
    def columns(self, x: Any, indices: Any) -> Any: ...
    def concat(self, parts: Sequence[Any]) -> Any: ...


def _apply(P: Primitives, kind: OpKind, x: Any, value: Any, other: Any, zero: Any) -> Any:
    """One operation of :class:`Op`, written once for every target."""
    if kind == "fill":
        return P.where(P.isnan(x), value, x)
    if kind in ("subtract", "divide", "multiply", "add"):
        return P.arithmetic(kind, x, value)
    if kind == "clip":
        return P.where(P.less(x, value), value, P.where(P.greater(x, other), other, x))
    if kind == "equal":
        return P.as_float(P.equal(x, value))
    if kind == "decode":
        return P.where(P.isnan(x), value, P.where(P.less(x, zero), other, x))
    if kind == "is_missing":
        return P.as_float(P.isnan(x))
    if kind == "replace":
        return P.where(P.equal(x, value), other, x)
    raise ValueError(f"unknown operation {kind!r}")


def evaluate(
    P: Primitives,
    X: Any,
    plan: tuple[tuple[Block, ...], Any],
    constants: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    indices: Sequence[Any],
    zero: Any,
) -> Any:
    """The features of the encoded matrix ``X``: each block's chain, then feature order.

    Args:
        P: The target's primitives.
        X: The encoded matrix (:func:`encode`), float64.
        plan: :func:`blocks` of the transforms, the permutation in the target's form.
        constants: Per block, its operations' ``values`` and ``others`` in the target's form.
        indices: Per block, its sources in the target's form.
        zero: The constant 0.0 in the target's form (codes below it are unknown).
    """
    parts = []
    for block, (values, others), sources in zip(plan[0], constants, indices, strict=True):
        x = P.columns(X, sources)
        for kind, value, other in zip(block.kinds, values, others, strict=True):
            x = _apply(P, kind, x, value, other, zero)
        parts.append(x)
    out = P.concat(parts)
    return out if plan[1] is None else P.columns(out, plan[1])


class OperatorPrimitives:
    """The primitives that Python's operators give alike on NumPy arrays and torch tensors:
    the comparisons and the arithmetic, written once for both (:class:`NumpyPrimitives`,
    ``treecomp.transforms_torch.TorchPrimitives``)."""

    def equal(self, x: Any, c: Any) -> Any:
        return x == c

    def less(self, x: Any, c: Any) -> Any:
        return x < c

    def greater(self, x: Any, c: Any) -> Any:
        return x > c

    def arithmetic(self, kind: str, x: Any, c: Any) -> Any:
        return _ARITHMETIC[kind](x, c)


class NumpyPrimitives(OperatorPrimitives):
    """The primitives in NumPy: the reference evaluation of the transforms."""

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        return np.where(condition, a, b)

    def isnan(self, x: Any) -> Any:
        return np.isnan(x)

    def as_float(self, condition: Any) -> Any:
        return condition.astype(np.float64)

    def columns(self, x: Any, indices: Any) -> Any:
        return x[:, indices]

    def concat(self, parts: Sequence[Any]) -> Any:
        return np.concatenate(parts, axis=1)


# A true division, as scikit-learn's, never a product by a reciprocal.
_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "subtract": lambda x, c: x - c,
    "divide": lambda x, c: x / c,
    "multiply": lambda x, c: x * c,
    "add": lambda x, c: x + c,
}


def apply(transforms: Transforms, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The features (float64) of the encoded matrix ``X``, in NumPy."""
    plan = blocks(transforms)
    constants = [(b.values, b.others) for b in plan[0]]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = evaluate(NumpyPrimitives(), X, plan, constants, [b.sources for b in plan[0]], 0.0)
    return np.asarray(out, dtype=np.float64).reshape(X.shape[0], transforms.n_features)


# ------------------------------------------------------------------------------------------
# The NumPy boundary: rows in, the encoded matrix out.


def is_missing(value: Any) -> bool:
    """Whether scikit-learn's encoders and imputers read ``value`` as missing: a real,
    non-integral NaN (``float``, ``np.float32``...), as their ``is_scalar_nan``
    (sklearn/utils/_missing.py), which ``_check_unknown`` (sklearn/utils/_encode.py) uses.

    ``None`` and ``pd.NA`` are values of their own: an encoder reads them as categories
    (never seen, unless ``None`` was one in fit). ``pd.NA`` reaches the encoders only from
    object and string columns (``string[python]``, ``string[pyarrow]``); nullable number
    columns (``Int64``, ``Float64``) arrive as NaN, as scikit-learn's ``check_array``
    converts them, and ``category`` columns hold NaN for a missing value.
    """
    if isinstance(value, float):  # the common case first, without the ABC checks below
        return math.isnan(value)
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, numbers.Integral)
        and math.isnan(value)
    )


def _is_pandas_na(value: Any) -> bool:
    # By type name: the core does not import pandas.
    return type(value).__name__ == "NAType"


def _is_dataframe(X: Any) -> bool:
    # Not hasattr(X, "dtypes"): a DataFrame builds a Series for it (15 us a call).
    return hasattr(X, "columns") and hasattr(X, "iloc")


def _column_values(transforms: Transforms, X: Any, column: int, frame: bool) -> npt.NDArray[Any]:
    """The values of input column ``column`` of ``X`` (a DataFrame where ``frame``): by
    name in a DataFrame fitted with names, else by position."""
    if frame:
        if transforms.named:
            name = transforms.columns[column]
            if name not in X.columns:
                missing = [transforms.columns[c] for c in transforms.used_columns]
                missing = [c for c in missing if c not in X.columns]
                raise ValueError(f"columns are missing from the DataFrame: {missing}")
            col = X[name]
        else:
            col = X.iloc[:, column]
        if str(col.dtype) == "category" or col.dtype.kind == "O" or col.dtype.kind in "US":
            return col.to_numpy(dtype=object)
        if col.dtype.kind in "mM":
            raise TypeError(f"column {col.name!r} has dtype {col.dtype}: not a number")
        try:
            return col.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            return col.to_numpy(dtype=object)
    return X[:, column]


def _check_rows(transforms: Transforms, X: Any) -> Any:
    if _is_dataframe(X):
        if not transforms.named and X.shape[1] != len(transforms.columns):
            raise ValueError(
                f"X has {X.shape[1]} columns, but the pipeline expects {len(transforms.columns)}"
            )
        return X
    if hasattr(X, "detach") and hasattr(X, "cpu"):  # a torch tensor
        X = X.detach().cpu().numpy()
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[1] != len(transforms.columns):
        raise ValueError(
            f"expected rows of shape (n_samples, {len(transforms.columns)}) (the pipeline's "
            f"input columns {list(transforms.columns)}), got shape {arr.shape}"
        )
    return arr


def encode(transforms: Transforms, X: Any) -> npt.NDArray[np.float64]:
    """The encoded matrix (see the module's notes) of a DataFrame or 2-D array.

    Raises:
        ValueError: a column is missing, a column a step reads holds infinity, or an
            encoder fitted with ``handle_unknown="error"`` meets a value it never saw
            (scikit-learn's errors).
        TypeError: a numeric column holds something that is not a number.
    """
    X = _check_rows(transforms, X)
    out = np.empty((X.shape[0], len(transforms.sources)), dtype=np.float64)
    # Every supported step checks its numbers as scikit-learn's validate_data does, NaN
    # allowed and infinity refused; a column passed through untouched is the forest's to
    # check (prepare does).
    stepped = {f.source for f in transforms.features if f.ops}
    frame = _is_dataframe(X)
    columns: dict[int, npt.NDArray[Any]] = {}  # each column read once, whatever reads it
    for s, source in enumerate(transforms.sources):
        values = columns.get(source.column)
        if values is None:
            values = columns[source.column] = _column_values(transforms, X, source.column, frame)
        if source.categories is None:
            out[:, s] = _numbers(transforms, values, source.column)
            if s in stepped and np.isinf(out[:, s]).any():
                raise ValueError(
                    "Input X contains infinity or a value too large for dtype('float64') (in "
                    f"column {transforms.columns[source.column]!r}, which the pipeline's "
                    "steps refuse it in)"
                )
        else:
            out[:, s] = _codes(transforms, values, source)
    return out


def _numbers(transforms: Transforms, values: npt.NDArray[Any], column: int) -> Any:
    """The float64 values of a column of objects that a step (or the forest) reads as
    numbers: ``None`` becomes NaN, as NumPy's conversion in scikit-learn's ``check_array``
    makes it, and ``pd.NA`` raises, as that conversion does (``float(pd.NA)``)."""
    if values.dtype.kind in "biuf":
        return values
    items = values.tolist()
    if any(_is_pandas_na(v) for v in items):
        raise TypeError(
            f"column {transforms.columns[column]!r} holds pd.NA among objects, which "
            "scikit-learn cannot read as a number (float() argument must be a string or a "
            "real number, not 'NAType'); give the column a nullable dtype such as 'Float64', "
            "whose pd.NA is missing, or NaN"
        )
    try:
        return np.asarray([np.nan if v is None else v for v in items], np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"column {transforms.columns[column]!r} holds non-numeric values, but the pipeline "
            "reads it as numbers"
        ) from None


@functools.lru_cache(maxsize=256)
def _lookup(categories: tuple[Any, ...]) -> dict[Any, float]:
    """Each category's code, built once per list (a model's lists, for its life)."""
    return {value: float(i) for i, value in enumerate(categories)}


def _codes(transforms: Transforms, values: npt.NDArray[Any], source: Source) -> Any:
    """The codes of a column an encoder reads: each value's position among the fitted
    categories, NaN where :func:`is_missing`, -1 for any other value never seen in fit
    (``None``, ``pd.NA``, a new string), as scikit-learn's ``_check_unknown``."""
    assert source.categories is not None  # the caller's branch
    lookup = _lookup(source.categories)
    items = values.tolist()
    name = transforms.columns[source.column]
    try:
        # Missing values are in no list (NaN is left out), so only the misses can be missing:
        # one dict probe a value, the missing-value test on the misses alone (3x faster).
        codes = np.fromiter((lookup.get(v, -1.0) for v in items), np.float64, len(items))
    except TypeError:  # as scikit-learn's set() of the values: unhashable, or pd.NA met a
        # category of its hash, which cannot say whether they are equal
        raise TypeError(
            f"column {name!r} holds a value that cannot be compared with its categories "
            "(unhashable, or pd.NA), as scikit-learn's encoders cannot"
        ) from None
    for i in np.flatnonzero(codes == -1.0).tolist():
        if is_missing(items[i]):
            codes[i] = math.nan
        elif source.refuse_na and _is_pandas_na(items[i]):
            raise TypeError(
                f"column {name!r} holds pd.NA, which the pipeline's SimpleImputer cannot read "
                "(scikit-learn raises 'boolean value of NA is ambiguous' as it compares each "
                "value with itself to find NaN); a missing string must be NaN there, as in "
                "pandas' default 'str' dtype"
            )
    if source.refuse_unknown:
        bad = codes == -1.0
        if source.refuse_missing:
            bad |= np.isnan(codes)
        if bad.any():
            unknown = sorted({repr(v) for v, b in zip(items, bad.tolist(), strict=True) if b})
            raise ValueError(
                f"Found unknown categories [{', '.join(unknown[:10])}] in column "
                f"{name!r} during transform ({source.refuse_unknown} "
                "was fitted with handle_unknown='error')"
            )
    return codes
