"""The row transforms (:mod:`treecomp.transforms`) as a torch module and as ONNX nodes.

Every target evaluates the one description of the chains, :func:`treecomp.transforms.
evaluate`, through its own primitives: :class:`TorchPrimitives` inside
:class:`TransformModule` (put in front of the forest's module, so one ``torch.nn.Module``
scores the encoded rows), :class:`OnnxPrimitives` in the graph the onnx backend runs and
exports (:func:`emit_transforms`). The features are computed in float64, then cast to the
forest's input type (float32 for XGBoost and scikit-learn trees), then to the precision
the engine compares in: the native path of a pipeline's rows. A HistGradientBoosting
forest's categorical features then become positions among its known categories, as its
own preprocessing does (the NumPy evaluation, :class:`treecomp.transform_engines.FeaturesEngine`,
does the same with :func:`treecomp.inputs.to_matrix`).

The exported ONNX file of a pipeline takes one input per column the pipeline reads, named
after it, shape ``(N, 1)``: ``tensor(double)`` for numeric columns and for categories that
are numbers, ``tensor(string)`` for categories that are strings (a missing string is the
empty string ``""``). The graph maps categories to codes with ONNX-ML's ``LabelEncoder``;
values never seen in fit score as scikit-learn's ``handle_unknown="ignore"`` would (a graph
cannot raise ``"error"``'s exception).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from treecomp.errors import UnsupportedModelError
from treecomp.inputs import Precision
from treecomp.transforms import (
    USES_NONE,
    USES_OTHER,
    OperatorPrimitives,
    Transforms,
    blocks,
    evaluate,
)

if TYPE_CHECKING:
    from treecomp.ir import Forest


def wrap_torch_engine(engine: Any, transforms: Transforms, forest: Forest, dtype: str) -> Any:
    """Put the transforms in front of a torch engine's module: it then scores encoded rows."""
    precision = torch.float32 if dtype == "float32" else torch.float64
    module = PipelineModule(TransformModule(transforms), engine.module, forest, precision)
    engine.module = module.to(engine.device)
    engine._forward = engine.module  # the eager forward (compile= is refused for pipelines)
    return engine


# ------------------------------------------------------------------------------------------
# torch


class TorchPrimitives(OperatorPrimitives):
    """The primitives of :func:`treecomp.transforms.evaluate` in torch (the comparisons and
    the arithmetic are Python's operators, shared with NumPy)."""

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        return torch.where(condition, a, b)

    def isnan(self, x: Any) -> Any:
        return torch.isnan(x)

    def as_float(self, condition: Any) -> Any:
        return condition.to(torch.float64)

    def columns(self, x: Any, indices: Any) -> Any:
        return x.index_select(1, indices)

    def concat(self, parts: Sequence[Any]) -> Any:
        return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)


class TransformModule(torch.nn.Module):
    """The transforms as a ``torch.nn.Module``: encoded matrix (float64) in, features
    (float64) out; every constant a buffer."""

    def __init__(self, transforms: Transforms) -> None:
        super().__init__()
        self.plan = blocks(transforms)
        self.n_blocks = len(self.plan[0])
        for b, block in enumerate(self.plan[0]):
            self.register_buffer(f"sources_{b}", torch.from_numpy(block.sources))
            for i, (value, other) in enumerate(zip(block.values, block.others, strict=True)):
                self.register_buffer(f"value_{b}_{i}", torch.from_numpy(value[None, :].copy()))
                self.register_buffer(f"other_{b}_{i}", torch.from_numpy(other[None, :].copy()))
        order = self.plan[1]
        self.register_buffer("order", None if order is None else torch.from_numpy(order))
        self.register_buffer("zero", torch.zeros((), dtype=torch.float64))
        self.primitives = TorchPrimitives()

    def forward(self, X: Any) -> Any:
        constants = []
        for b, block in enumerate(self.plan[0]):
            n = len(block.kinds)
            values = [getattr(self, f"value_{b}_{i}") for i in range(n)]
            others = [getattr(self, f"other_{b}_{i}") for i in range(n)]
            constants.append((values, others))
        indices = [getattr(self, f"sources_{b}") for b in range(self.n_blocks)]
        plan = (self.plan[0], self.order)
        return evaluate(self.primitives, X, plan, constants, indices, self.zero)


class PipelineModule(torch.nn.Module):
    """Transforms, the native cast, then the forest's module: one module from encoded rows
    to ``(raw, transformed)`` (and ``leaf_ids``)."""

    def __init__(self, front: Any, forest_module: Any, forest: Forest, dtype: Any) -> None:
        super().__init__()
        self.front = front
        self.forest = forest_module
        self.native = torch.float32 if forest.input_dtype == "float32" else torch.float64
        self.dtype = dtype
        # HistGradientBoosting's categorical features ("always" encoded), with their lists.
        lists = forest.categories if forest.category_encoding == "always" else None
        listed = [j for j, k in enumerate(lists or ()) if k is not None]
        known = [k for k in lists or () if k is not None]
        width = max((len(k) for k in known), default=0)
        table = np.full((len(listed), width), np.nan)  # NaN pads: it matches no value
        for row, values in enumerate(known):
            table[row, : len(values)] = np.asarray(values, dtype=np.float64)
        self.register_buffer("listed", torch.tensor(listed, dtype=torch.int64) if listed else None)
        self.register_buffer("known", torch.from_numpy(table).to(dtype).unsqueeze(0))

    def features(self, X: Any) -> Any:
        """The rows the forest reads, in the type its module compares in."""
        features = self.front(X).to(self.native).to(self.dtype)
        if self.listed is not None:
            features = self._positions(features)
        return features

    def _positions(self, features: Any) -> Any:
        """HistGradientBoosting's encoding: a listed feature's value becomes its position
        among the forest's known categories, NaN where it is none of them."""
        values = features.index_select(1, self.listed)
        matches = values.unsqueeze(2) == self.known  # (rows, listed, categories)
        position = matches.to(torch.int8).argmax(dim=2).to(features.dtype)
        nan = torch.full_like(position, float("nan"))
        out = features.clone()
        out[:, self.listed] = torch.where(matches.any(dim=2), position, nan)
        return out

    def forward(self, X: Any) -> Any:
        return self.forest(self.features(X))

    def leaf_ids(self, X: Any) -> Any:
        return self.forest.leaf_ids(self.features(X))


# ------------------------------------------------------------------------------------------
# ONNX


class OnnxPrimitives:
    """The primitives of :func:`treecomp.transforms.evaluate` as ONNX nodes."""

    def __init__(self, g: Any) -> None:
        self.g = g

    def where(self, condition: str, a: str, b: str) -> str:
        return str(self.g.op("Where", condition, a, b))

    def isnan(self, x: str) -> str:
        return str(self.g.op("IsNaN", x))

    def equal(self, x: str, c: str) -> str:
        return str(self.g.op("Equal", x, c))

    def less(self, x: str, c: str) -> str:
        return str(self.g.op("Less", x, c))

    def greater(self, x: str, c: str) -> str:
        return str(self.g.op("Greater", x, c))

    def arithmetic(self, kind: str, x: str, c: str) -> str:
        op = {"subtract": "Sub", "divide": "Div", "multiply": "Mul", "add": "Add"}[kind]
        return str(self.g.op(op, x, c))

    def as_float(self, condition: str) -> str:
        return str(self.g.op("Cast", condition, to="float64"))

    def columns(self, x: str, indices: str) -> str:
        return str(self.g.op("Gather", x, indices, axis=1))

    def concat(self, parts: Sequence[str]) -> str:
        return parts[0] if len(parts) == 1 else str(self.g.op("Concat", *parts, axis=1))


def input_names(transforms: Transforms) -> list[str]:
    """The exported graph's inputs: the columns the pipeline reads, in input order."""
    return [transforms.columns[c] for c in transforms.used_columns]


def _is_text(categories: tuple[Any, ...]) -> bool:
    return all(isinstance(v, str) for v in categories)


def emit_transforms(
    g: Any, transforms: Transforms, forest: Forest, precision: Precision, *, exported: bool
) -> tuple[str, list[Any]]:
    """Emit the transforms; returns the forest's input (in ``precision``) and the graph's
    inputs: the encoded matrix ``input`` for the onnx backend, one input per column for an
    exported file (see the module's notes)."""
    from onnx import TensorProto, helper

    if exported:
        encoded, inputs = _emit_boundary(g, transforms)
    else:
        encoded = "input"
        width = len(transforms.sources)
        inputs = [helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["N", width])]
    plan = blocks(transforms)
    constants = [
        (
            [None if k in USES_NONE else g.const(v[None, :]) for k, v in zip(b.kinds, b.values)],
            [g.const(o[None, :]) if k in USES_OTHER else None for k, o in zip(b.kinds, b.others)],
        )
        for b in plan[0]
    ]
    indices = [g.const(b.sources) for b in plan[0]]
    order = None if plan[1] is None else g.const(plan[1])
    decodes = any("decode" in b.kinds for b in plan[0])  # the one kind that reads zero
    zero = g.const(np.array(0.0)) if decodes else None
    X = evaluate(OnnxPrimitives(g), encoded, (plan[0], order), constants, indices, zero)
    if forest.input_dtype != "float64":
        X = g.op("Cast", X, to=forest.input_dtype)
    if forest.input_dtype != precision:
        X = g.op("Cast", X, to=precision)
    return X, inputs


def _emit_boundary(g: Any, transforms: Transforms) -> tuple[str, list[Any]]:
    """One input per column read, mapped to the encoded matrix in the graph."""
    from onnx import TensorProto, helper

    kinds: dict[int, int] = {}
    for source in transforms.sources:
        text = source.categories is not None and _is_text(source.categories)
        if source.categories is not None and not text:
            if not all(isinstance(v, (int, float)) for v in source.categories):
                raise UnsupportedModelError(
                    f"column {transforms.columns[source.column]!r} has categories of mixed "
                    "types: an ONNX input holds strings or numbers"
                )
        kind = TensorProto.STRING if text else TensorProto.DOUBLE
        if kinds.setdefault(source.column, kind) != kind:
            raise UnsupportedModelError(
                f"column {transforms.columns[source.column]!r} is read both as strings and as "
                "numbers: an ONNX input has one type"
            )
    inputs = [
        helper.make_tensor_value_info(transforms.columns[c], kinds[c], ["N", 1])
        for c in transforms.used_columns
    ]
    columns = []
    for source in transforms.sources:
        x = transforms.columns[source.column]
        if source.categories is None:
            columns.append(x)
        elif kinds[source.column] == TensorProto.STRING:
            columns.append(_emit_text_codes(g, x, source.categories))
        else:
            columns.append(_emit_number_codes(g, x, source.categories))
    encoded = columns[0] if len(columns) == 1 else g.op("Concat", *columns, axis=1)
    return encoded, inputs


def _emit_text_codes(g: Any, x: str, categories: tuple[Any, ...]) -> str:
    if "" in categories:
        raise UnsupportedModelError(
            "a category is the empty string, which the exported graph reads as missing"
        )
    codes = g.op(
        "LabelEncoder",
        x,
        domain="ai.onnx.ml",
        keys_strings=[*categories, ""],
        values_floats=[*(float(k) for k in range(len(categories))), float("nan")],
        default_float=-1.0,
    )
    return str(g.op("Cast", codes, to="float64"))


def _emit_number_codes(g: Any, x: str, categories: tuple[Any, ...]) -> str:
    known = g.const(np.array([categories], dtype=np.float64))
    matches = g.op("Cast", g.op("Equal", x, known), to="float64")
    position = g.op("Cast", g.op("ArgMax", matches, axis=1, keepdims=1), to="float64")
    found = g.op("Cast", g.op("ReduceMax", matches, axes=[1], keepdims=1), to="bool")
    missing = g.op("IsNaN", x)
    unknown = g.op("Where", missing, g.const(np.array(np.nan)), g.const(np.array(-1.0)))
    return str(g.op("Where", found, position, unknown))
