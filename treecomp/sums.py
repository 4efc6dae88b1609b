"""The forest's sum, written once: each output's base score and its trees' leaf values,
added in the native order and type.

XGBoost adds a row's trees one after the other in float32, LightGBM and scikit-learn in
float64, each output from its base score (or from zero where :func:`treecomp.passes.
fold_base_score` moved the base into the first trees' leaves); averaging forests divide the
sum by their trees per output and add the base after. :func:`program` records that in
:mod:`treecomp.arrays`' vocabulary, whose ``ordered_sum`` carries the contract (terms added
one after the other, in the values' type); the torch module and the ONNX graph render it.
:mod:`treecomp.reference` keeps its own sum (the oracle), the kernel its C one, and the
ONNX graph's sums inside tree operators (:mod:`treecomp.onnx.graph`) read this plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from treecomp.arrays import Program, Value, columns_at, ordered_sum, record

if TYPE_CHECKING:
    from treecomp.ir import Forest

# The tables a sum program reads after the leaf values, in this order (a target passes
# them all; a program reads those it needs). Per-output tables lie along the target's
# output axis (NumPy and ONNX: a row of them; torch's row blocks: a column).
TABLES = ("order", "base", "divisor")


@dataclass(frozen=True, eq=False)
class SumPlan:
    """How a forest's leaf values ``(rows, trees * width)`` add up to its outputs.

    Attributes:
        outputs: The number of outputs.
        width: Leaf values per tree (a tree adds its leaf's values to outputs
            ``output_index ..``); the leaf values hold ``width`` columns per tree.
        accumulation: The type of the sum (``float32`` or ``float64``).
        steps: ``(steps, outputs)``: output ``j``'s ``m``-th term is leaf-value column
            ``steps[m, j]``, in tree order; ``trees * width`` (one past the last) adds a
            zero to outputs with fewer trees.
        in_order: Whether ``steps`` is the storage order (the terms are the leaf values,
            step-major: no gather).
        base: The base score per output, in the accumulation type.
        base_first: Whether the sum starts from ``base`` (else from zero: averages add the
            base after the mean; the base may have been folded into the leaves).
        divisor: Trees per output, for averages (None: a sum).
    """

    outputs: int
    width: int
    accumulation: str
    steps: npt.NDArray[np.int64]
    in_order: bool
    base: npt.NDArray[np.generic]
    base_first: bool
    divisor: npt.NDArray[np.generic] | None

    @property
    def n_terms(self) -> int:
        """Terms added per row (padding included)."""
        return int(self.steps.size)

    def tables(self) -> dict[str, npt.NDArray[np.generic]]:
        """The tables of :data:`TABLES`, as NumPy and ONNX read them (per-output ones as a
        row); unused ones empty."""
        divisor = np.zeros(0, self.base.dtype) if self.divisor is None else self.divisor
        return dict(zip(TABLES, (self.steps.reshape(-1), self.base, divisor), strict=True))


def plan(forest: Forest) -> SumPlan:
    """The sum of ``forest`` as its passes left it (base scores folded or not)."""
    acc = np.float32 if forest.accumulation == "float32" else np.float64
    width = max(t.leaf_width for t in forest.trees)
    steps = contribution_order(forest).T  # (steps, outputs)
    in_order = bool(
        np.array_equal(steps.reshape(-1), np.arange(steps.size))
        and steps.size == forest.n_trees * width
    )
    average = forest.aggregation == "average"
    divisor = np.maximum(forest.trees_per_output(), 1).astype(acc) if average else None
    return SumPlan(
        outputs=forest.n_outputs,
        width=width,
        accumulation=forest.accumulation,
        steps=np.ascontiguousarray(steps),
        in_order=in_order,
        base=np.asarray(forest.base_score, dtype=acc),
        base_first=not average and bool(forest.base_score.any()),
        divisor=divisor,
    )


def program(sums: SumPlan) -> Program:
    """The outputs' sums ``(rows, outputs)`` from the leaf values and the tables of
    :data:`TABLES` (:meth:`SumPlan.tables`)."""

    def summed(values: Value, order: Value, base: Value, divisor: Value) -> Value:
        terms = values if sums.in_order else columns_at(values, order)
        total = ordered_sum(terms, sums.outputs, base if sums.base_first else None)
        return total if sums.divisor is None else mean(sums, total, base, divisor)

    return record(summed, sums.accumulation, "int64", sums.accumulation, sums.accumulation)


def mean(sums: SumPlan, total: Value, base: Value, divisor: Value) -> Value:
    """An averaging forest's outputs from the sums of its trees: divided, plus the base
    (whose + 0.0 would change only the sign of a zero, so a zero base adds nothing)."""
    average = total / divisor
    return average + base if sums.base.any() else average


def mean_program(sums: SumPlan) -> Program:
    """:func:`mean` of sums computed elsewhere (a tree operator's), from the sums and the
    tables of :data:`TABLES`."""
    return record(
        lambda total, order, base, divisor: mean(sums, total, base, divisor),
        sums.accumulation,
        "int64",
        sums.accumulation,
        sums.accumulation,
    )


def contribution_order(forest: Forest) -> npt.NDArray[np.int64]:
    """For each output, the flat ``tree * leaf_width + w`` columns that add to it, in tree
    order, ``(outputs, steps)``. Shorter lists are padded with one past the last column."""
    width = max(t.leaf_width for t in forest.trees)
    lists: list[list[int]] = [[] for _ in range(forest.n_outputs)]
    for t, tree in enumerate(forest.trees):
        for w in range(tree.leaf_width):
            lists[tree.output_index + w].append(t * width + w)
    pad = forest.n_trees * width
    longest = max(len(lst) for lst in lists)
    return np.array([lst + [pad] * (longest - len(lst)) for lst in lists], dtype=np.int64)
