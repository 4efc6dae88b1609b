"""A forest's lowering, as data every target renders: the groups' plans, the exact sum and
the forest's facts around them, in NumPy and :mod:`treecomp.arrays` programs, with no torch.

:func:`strategies.lower` makes it; the torch module
(:class:`strategies.forest_module.ForestModule`) and the ONNX graph
(:func:`treecomp.onnx.graph.emit_module`) are built from it, so the ONNX target needs no
torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from treecomp import sums

if TYPE_CHECKING:
    from strategies.nodes import TreeGroup
    from treecomp.ir import Forest

# float32 holds every integer up to 2**24 exactly; past it, integers round to even neighbours.
FLOAT32_EXACT_INTEGERS = 1 << 24


@dataclass(eq=False)  # NumPy fields: compared by identity
class ForestPlan:
    """What every target of a lowered forest reads.

    Attributes:
        forest: The forest lowered (thresholds for ``precision``, the base score folded
            into each output's first tree's leaves where the sum allows it:
            :func:`treecomp.passes.fold_base_score`).
        groups: Each group's plan (:class:`strategies.nodes.TreeGroup`), leaf tables in the
            forest's accumulation type.
        layout: ``(strategy, tree indices)`` per group.
        precision: ``"float32"`` or ``"float64"``: the type of comparisons.
        fold_columns: Columns of the extended input per feature when the trees are folded
            (:func:`treecomp.passes.fold_missing`; 0: not).
        description: The plan in words (:func:`strategies.describe`).
        compiled_block_rows: Rows per block of a branch-free torch module
            (:func:`strategies.selector.block_rows`).
        sum_plan: The exact sum (:func:`treecomp.sums.plan`).
        inverse: The forest's tree order from the groups' concatenated order.
    """

    forest: Forest
    groups: list[TreeGroup]
    layout: list[tuple[str, npt.NDArray[np.int64]]]
    precision: str
    fold_columns: int
    description: str
    compiled_block_rows: int
    sum_plan: sums.SumPlan = field(init=False)
    inverse: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        warn_float32_categories(self.forest, self.precision)
        self.sum_plan = sums.plan(self.forest)
        for group in self.groups:
            group.table("leaf_value", group.leaf_value.astype(self.forest.accumulation))
        columns = np.concatenate([group.columns for group in self.groups])
        self.inverse = np.argsort(columns).astype(np.int64)

    @property
    def folded(self) -> bool:
        return self.fold_columns > 0

    @property
    def in_forest_order(self) -> bool:
        """The groups' trees, concatenated, are in the forest's order."""
        return bool(np.array_equal(self.inverse, np.arange(self.inverse.size)))


def warn_float32_categories(forest: Forest, precision: str) -> None:
    """Warn when float32 tests cannot tell apart the category codes a float64 model reads.

    The native library (LightGBM) truncates a double to its code; a float32 input has
    already rounded codes from 2**24 on to an even neighbour, so a listed code can be read
    for an unlisted one next to it, or never at all. Every float32 lowering is exact for
    the rounded input (the reference evaluator's answer at that precision), which is not
    the native answer: the warning says which precision is.
    """
    if precision != "float32" or forest.input_dtype == "float32":
        return  # float64 tests, or a library that rounds its inputs to float32 itself
    largest = max(int(t.category_values.max(initial=-1)) for t in forest.trees)
    if largest >= FLOAT32_EXACT_INTEGERS:
        warnings.warn(
            f"this model lists categories up to {largest}, but precision='float32' tells "
            f"integer codes apart only below 2**24 = {FLOAT32_EXACT_INTEGERS}: larger codes "
            "are rounded to an even neighbour before the test and may take the other branch "
            "than in the native model; use precision='float64' to compare them as it does",
            UserWarning,
            stacklevel=4,
        )
