"""The row transforms (:mod:`treecomp.transforms`) as ONNX nodes, in the graph the onnx
backend runs and exports (:func:`emit_transforms`), with no torch.

Every target evaluates the one description of the chains, :func:`treecomp.transforms.
evaluate`, through its own primitives: :class:`OnnxPrimitives` here (the torch module's are
in :mod:`treecomp.transforms_torch`). The features are computed in float64, then cast to the
forest's input type, then to the precision the engine compares in, as in the torch module.

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

from treecomp.errors import UnsupportedModelError
from treecomp.inputs import Precision
from treecomp.transforms import USES_NONE, USES_OTHER, Transforms, blocks, evaluate

if TYPE_CHECKING:
    from treecomp.ir import Forest


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
