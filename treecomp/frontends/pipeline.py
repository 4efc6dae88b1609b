"""Frontend for scikit-learn Pipelines: row transforms (:mod:`treecomp.transforms`) + a forest.

A Pipeline's transform steps are read into per-feature chains of operations, following each
input column through the fitted steps; the final estimator goes through the library
frontends (:func:`treecomp.frontends.parse`). Supported steps: SimpleImputer (``np.nan``
missing values, any strategy, ``add_indicator``), StandardScaler, MinMaxScaler,
MaxAbsScaler, RobustScaler, OneHotEncoder and OrdinalEncoder (no infrequent categories),
ColumnTransformer (columns by name, index, mask or selector; ``"passthrough"``/``"drop"``;
no ``transformer_weights``), nested Pipelines, and ``"passthrough"`` or ``None`` steps.
Anything else raises :class:`~treecomp.UnsupportedModelError` naming it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from treecomp.errors import UnsupportedModelError
from treecomp.frontends.registry import parse
from treecomp.ir import Forest
from treecomp.transforms import Feature, Op, Source, Transforms, is_missing

SUPPORTED_STEPS = (
    "SimpleImputer",
    "StandardScaler",
    "MinMaxScaler",
    "MaxAbsScaler",
    "RobustScaler",
    "OneHotEncoder",
    "OrdinalEncoder",
    "ColumnTransformer",
    "Pipeline",
    "'passthrough'",
    "'drop'",
)


@dataclass(frozen=True, slots=True)
class _Column:
    """One column of the matrix between two steps, while parsing.

    ``ops`` apply to the input column's values; ``fills`` are the raw values imputers put
    in for missing ones (strings for a categorical column, converted to codes when its
    encoder is reached); ``source`` is set once the column is encoded.
    """

    column: int
    name: str
    ops: tuple[Op, ...] = ()
    fills: tuple[Any, ...] = ()
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class _Matrix:
    columns: tuple[_Column, ...]
    sparse: bool = False  # scikit-learn scales sparse matrices by reciprocals


def is_pipeline(model: Any) -> bool:
    """Whether ``model`` is a scikit-learn Pipeline (without importing scikit-learn)."""
    return any(
        cls.__name__ == "Pipeline" and cls.__module__.startswith("sklearn")
        for cls in type(model).__mro__
    )


def parse_pipeline(pipeline: Any) -> tuple[Transforms, Forest]:
    """The row transforms and the forest of a fitted Pipeline ending in a supported model.

    Raises:
        UnsupportedModelError: a step is not supported (named), the final model is not a
            supported forest, or the forest reads categories itself.
    """
    steps = [step for _, step in pipeline.steps]
    *transforms, final = steps
    if final is None or final == "passthrough":
        raise UnsupportedModelError("the Pipeline has no final model: nothing to compile")
    forest = parse(final)
    names = getattr(pipeline, "feature_names_in_", None)
    n_inputs = int(getattr(pipeline, "n_features_in_", forest.n_features))
    columns = tuple(str(n) for n in names) if names is not None else None
    matrix = _Matrix(tuple(_Column(j, columns[j] if columns else f"x{j}") for j in range(n_inputs)))
    for step in transforms:
        matrix = _transform(step, matrix)
    if len(matrix.columns) != forest.n_features:
        raise UnsupportedModelError(
            f"the transforms give {len(matrix.columns)} features but "
            f"{type(final).__qualname__} reads {forest.n_features}"
        )
    # Categorical splits read the transforms' numbers: as codes (LightGBM, XGBoost), or,
    # for HistGradientBoosting, as values it maps to its known categories (every target
    # does after the transforms: treecomp.transforms_torch, treecomp.onnx.transforms,
    # FeaturesEngine).
    if not math.isnan(forest.missing_value):
        raise UnsupportedModelError(
            f"{type(final).__qualname__} has missing={forest.missing_value}: after a "
            "Pipeline's transforms, only NaN as the missing value is supported"
        )
    sources: dict[Source, int] = {}
    features = []
    for col in matrix.columns:
        source = col.source or Source(col.column)
        if col.source is None and any(not _is_number(v) for v in col.fills):
            raise UnsupportedModelError(
                f"column {col.name!r} reaches {type(final).__qualname__} as strings "
                f"(imputed with {col.fills[0]!r}) without an encoder"
            )
        ops = col.ops
        if matrix.sparse and _library(final) == "xgboost":
            # XGBoost reads the entries a sparse matrix does not store (its zeros) as missing.
            ops = (*ops, Op("replace", 0.0, math.nan))
        features.append(Feature(sources.setdefault(source, len(sources)), ops, col.name))
    description = tuple(type(step).__qualname__ for step in steps)
    result = Transforms(
        columns=columns or tuple(f"x{j}" for j in range(n_inputs)),
        named=columns is not None,
        sources=tuple(sources),
        features=tuple(features),
        steps=description,
    ).validate()
    # A Pipeline has no apply(): its methods are the final model's prediction methods.
    methods = tuple(m for m in forest.methods if m != "apply")
    forest = dataclasses.replace(forest, methods=methods, feature_names=None).validate()
    return result, forest


def _library(model: Any) -> str:
    return type(model).__module__.partition(".")[0]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _transform(step: Any, matrix: _Matrix) -> _Matrix:
    """``matrix`` after one fitted step."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return matrix
    for cls in type(step).__mro__:
        handler = _STEPS.get(cls.__name__) if cls.__module__.startswith("sklearn") else None
        if handler is not None:
            return handler(step, matrix)
    raise UnsupportedModelError(
        f"{type(step).__qualname__} is not a supported Pipeline step; supported steps: "
        f"{', '.join(SUPPORTED_STEPS)}"
    )


def _elementwise(matrix: _Matrix, step: Any, ops: list[tuple[Op, ...]]) -> _Matrix:
    """Each column followed by its operations (numeric columns only)."""
    if len(ops) != len(matrix.columns):
        raise UnsupportedModelError(
            f"{type(step).__qualname__} was fitted on {len(ops)} features, but it receives "
            f"{len(matrix.columns)}"
        )
    out = []
    for col, extra in zip(matrix.columns, ops, strict=True):
        if col.source is None and any(not _is_number(v) for v in col.fills):
            raise UnsupportedModelError(
                f"{type(step).__qualname__} receives column {col.name!r} as strings"
            )
        out.append(dataclasses.replace(col, ops=col.ops + extra))
    return dataclasses.replace(matrix, columns=tuple(out))


def _vector(values: Any, n: int) -> list[float]:
    return [float(v) for v in np.broadcast_to(np.asarray(values, dtype=np.float64), (n,))]


def _scale(step: Any, matrix: _Matrix, center: Any, scale: Any) -> _Matrix:
    """``(x - center) / scale`` (scikit-learn's order), either part absent where None;
    on a sparse matrix, ``x * (1 / scale)`` as scikit-learn's ``inplace_column_scale``."""
    n = len(matrix.columns)
    ops: list[list[Op]] = [[] for _ in range(n)]
    if center is not None:
        for j, value in enumerate(_vector(center, n)):
            ops[j].append(Op("subtract", value))
    if scale is not None:
        if matrix.sparse:
            reciprocal = 1.0 / np.asarray(scale, dtype=np.float64)
            for j, value in enumerate(_vector(reciprocal, n)):
                ops[j].append(Op("multiply", value))
        else:
            for j, value in enumerate(_vector(scale, n)):
                ops[j].append(Op("divide", value))
    return _elementwise(matrix, step, [tuple(o) for o in ops])


def _standard_scaler(step: Any, matrix: _Matrix) -> _Matrix:
    return _scale(step, matrix, step.mean_ if step.with_mean else None, step.scale_)


def _robust_scaler(step: Any, matrix: _Matrix) -> _Matrix:
    return _scale(step, matrix, step.center_, step.scale_)


def _max_abs_scaler(step: Any, matrix: _Matrix) -> _Matrix:
    return _scale(step, matrix, None, step.scale_)


def _min_max_scaler(step: Any, matrix: _Matrix) -> _Matrix:
    n = len(matrix.columns)
    low, high = (float(v) for v in step.feature_range)
    ops = []
    for scale, offset in zip(_vector(step.scale_, n), _vector(step.min_, n), strict=True):
        chain = [Op("multiply", scale), Op("add", offset)]
        if step.clip:
            chain.append(Op("clip", low, high))
        ops.append(tuple(chain))
    return _elementwise(matrix, step, ops)


def _simple_imputer(step: Any, matrix: _Matrix) -> _Matrix:
    # np.nan only: scikit-learn's pd.NA (or None) leaves NaN unimputed, which codes cannot tell
    if not (isinstance(step.missing_values, float) and math.isnan(step.missing_values)):
        raise UnsupportedModelError(
            f"SimpleImputer(missing_values={step.missing_values!r}): only np.nan is supported"
        )
    statistics = list(step.statistics_.tolist())
    if len(statistics) != len(matrix.columns):
        raise UnsupportedModelError(
            f"SimpleImputer was fitted on {len(statistics)} features, but it receives "
            f"{len(matrix.columns)}"
        )
    out = []
    for col, value in zip(matrix.columns, statistics, strict=True):
        if is_missing(value) and not step.keep_empty_features:
            continue  # scikit-learn drops a feature never observed in fit
        if col.source is not None:
            if not _is_number(value):
                raise UnsupportedModelError(
                    f"SimpleImputer fills encoded column {col.name!r} with {value!r}"
                )
            out.append(dataclasses.replace(col, ops=(*col.ops, Op("fill", float(value)))))
            continue
        fill = (Op("fill", float(value)),) if _is_number(value) else ()
        out.append(dataclasses.replace(col, ops=col.ops + fill, fills=(*col.fills, value)))
    if step.add_indicator:
        for j in step.indicator_.features_.tolist():
            col = matrix.columns[j]
            source = col.source
            if source is None and not _is_number(statistics[j]):
                # strings: missing (NaN) or not, as codes; pd.NA raises in this imputer
                source = Source(col.column, (), refuse_na=True)
            indicator = _Column(col.column, f"missingindicator_{col.name}", col.ops, (), source)
            out.append(dataclasses.replace(indicator, ops=(*col.ops, Op("is_missing"))))
    return dataclasses.replace(matrix, columns=tuple(out))


def _encoded_source(step: Any, col: _Column, categories: list[Any]) -> tuple[Source, list[Op]]:
    """The source of a column an encoder reads, and the imputers' fills as codes."""
    name = type(step).__qualname__
    if col.source is not None or any(op.kind != "fill" for op in col.ops):
        raise UnsupportedModelError(
            f"{name} receives column {col.name!r} after a numeric transform or another "
            "encoder: only imputers may come before an encoder"
        )
    known = tuple(v for v in categories if not is_missing(v))
    lookup = {value: float(i) for i, value in enumerate(known)}
    fills = [Op("fill", lookup.get(value, -1.0)) for value in col.fills]
    refuse = name if step.handle_unknown == "error" else ""
    has_nan = len(known) < len(categories)
    source = Source(col.column, known, refuse, refuse_missing=bool(refuse) and not has_nan)
    if col.fills:  # an imputer reads the values first: no NaN reaches the encoder, pd.NA raises
        source = dataclasses.replace(source, refuse_missing=False, refuse_na=True)
    return source, fills


def _check_encoder(step: Any, matrix: _Matrix) -> None:
    name = type(step).__qualname__
    if getattr(step, "_infrequent_enabled", False):
        raise UnsupportedModelError(
            f"{name} with infrequent categories (min_frequency / max_categories) is not supported"
        )
    if len(step.categories_) != len(matrix.columns):
        raise UnsupportedModelError(
            f"{name} was fitted on {len(step.categories_)} features, but it receives "
            f"{len(matrix.columns)}"
        )


def _one_hot_encoder(step: Any, matrix: _Matrix) -> _Matrix:
    _check_encoder(step, matrix)
    drop = step.drop_idx_
    out = []
    for j, (col, categories) in enumerate(zip(matrix.columns, step.categories_, strict=True)):
        values = list(categories.tolist())
        source, ops = _encoded_source(step, col, values)
        nan_code = [k for k, v in enumerate(values) if is_missing(v)]
        if nan_code:  # NaN was a category in fit: missing values get its column
            ops.append(Op("fill", float(nan_code[0])))
        dropped = None if drop is None or drop[j] is None else int(drop[j])
        for k, value in enumerate(values):
            if k != dropped:
                chain = (*ops, Op("equal", float(k)))
                out.append(_Column(col.column, f"{col.name}_{value}", chain, (), source))
    return _Matrix(tuple(out), sparse=bool(step.sparse_output))


def _ordinal_encoder(step: Any, matrix: _Matrix) -> _Matrix:
    _check_encoder(step, matrix)
    unknown = math.nan
    if step.handle_unknown == "use_encoded_value":
        unknown = float(step.unknown_value)
    out = []
    for col, categories in zip(matrix.columns, step.categories_, strict=True):
        values = list(categories.tolist())
        source, ops = _encoded_source(step, col, values)
        has_nan = any(is_missing(v) for v in values)
        # NaN, where a category in fit, becomes encoded_missing_value; else it is unknown.
        missing = float(step.encoded_missing_value) if has_nan else unknown
        chain = (*ops, Op("decode", missing, unknown))
        out.append(_Column(col.column, col.name, chain, (), source))
    return dataclasses.replace(matrix, columns=tuple(out))


def _column_transformer(step: Any, matrix: _Matrix) -> _Matrix:
    if step.transformer_weights:
        raise UnsupportedModelError("ColumnTransformer with transformer_weights is not supported")
    indices = step._transformer_to_input_indices  # resolved at fit, for every column spec
    out: list[_Column] = []
    for name, transformer, _ in step.transformers_:
        selected = list(indices.get(name, []))
        if not selected or (isinstance(transformer, str) and transformer == "drop"):
            continue
        part = _Matrix(tuple(matrix.columns[j] for j in selected), matrix.sparse)
        out.extend(_transform(transformer, part).columns)
    return _Matrix(tuple(out), sparse=bool(step.sparse_output_))


def _function_transformer(step: Any, matrix: _Matrix) -> _Matrix:
    # A fitted ColumnTransformer holds its "passthrough" columns as an identity
    # FunctionTransformer (func=None); any other function is not ours to lower.
    if step.func is None and not getattr(step, "validate", False):
        return matrix
    raise UnsupportedModelError(
        f"FunctionTransformer(func={getattr(step.func, '__name__', step.func)!r}) is not a "
        f"supported Pipeline step; supported steps: {', '.join(SUPPORTED_STEPS)}"
    )


def _pipeline(step: Any, matrix: _Matrix) -> _Matrix:
    for _, inner in step.steps:
        matrix = _transform(inner, matrix)
    return matrix


_STEPS: dict[str, Callable[[Any, _Matrix], _Matrix]] = {
    "SimpleImputer": _simple_imputer,
    "StandardScaler": _standard_scaler,
    "MinMaxScaler": _min_max_scaler,
    "MaxAbsScaler": _max_abs_scaler,
    "RobustScaler": _robust_scaler,
    "OneHotEncoder": _one_hot_encoder,
    "OrdinalEncoder": _ordinal_encoder,
    "ColumnTransformer": _column_transformer,
    "Pipeline": _pipeline,
    "FunctionTransformer": _function_transformer,
}
