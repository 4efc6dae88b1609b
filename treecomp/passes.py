"""IR-to-IR passes run before lowering. Each returns a new :class:`~treecomp.Forest`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from treecomp.arrays import Value, interleave, isnan, where

if TYPE_CHECKING:
    from treecomp.inputs import Precision
    from treecomp.ir import Forest, Tree


def float32_floor(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The largest float32 <= t, element-wise (as float64)."""
    t32 = t.astype(np.float32)
    above = t32.astype(np.float64) > t
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32.astype(np.float64)


def float32_ceil(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The smallest float32 >= t, element-wise (as float64)."""
    t32 = t.astype(np.float32)
    below = t32.astype(np.float64) < t
    t32[below] = np.nextafter(t32[below], np.float32(np.inf))
    return t32.astype(np.float64)


def float32_thresholds(forest: Forest) -> Forest:
    """Thresholds a float32 comparison can use and take exactly the float64 decisions.

    For a float32 input ``x`` and a float64 threshold ``t``: ``x <= t`` iff
    ``x <= floor32(t)``, and ``x < t`` iff ``x < ceil32(t)``. Rounding to nearest instead
    (what a plain cast does) sends inputs between ``t`` and its rounding the wrong way.
    """
    adjust = float32_floor if forest.comparison == "<=" else float32_ceil
    trees = tuple(
        dataclasses.replace(
            tree, threshold=np.where(np.isnan(tree.threshold), np.nan, adjust(tree.threshold))
        )
        for tree in forest.trees
    )
    return dataclasses.replace(forest, trees=trees)


def thresholds_for(forest: Forest, precision: str) -> Forest:
    """``forest`` with the thresholds a comparison in ``precision`` uses: adjusted by
    :func:`float32_thresholds` for ``"float32"``, as they are for ``"float64"``. Every engine
    that compares in a chosen precision lowers its forest through here."""
    return float32_thresholds(forest) if precision == "float32" else forest


def fold_base_score(forest: Forest) -> Forest:
    """``forest`` with each output's base score added into the leaves of its first tree.

    The native sum of a summing forest starts ``base + v0``: that step, rounded once in the
    accumulation type, moves into the first tree's leaf values, and every later partial sum
    is unchanged. The sum then starts at zero (``0 + v`` is ``v``, up to the sign of a zero),
    so a graph needs no base-score term per row, and a compiled sum is one reduction fused
    with the walk. Averaging forests (the base comes after the mean), forests of zero base
    scores and forests with an output that no tree adds to are returned as they are.
    """
    if forest.aggregation != "sum" or not np.any(forest.base_score):
        return forest
    first: dict[int, tuple[int, int]] = {}  # output -> (tree, leaf column)
    for t, tree in enumerate(forest.trees):
        for w in range(tree.leaf_width):
            first.setdefault(tree.output_index + w, (t, w))
    if len(first) < forest.n_outputs:
        return forest
    acc = np.float32 if forest.accumulation == "float32" else np.float64
    values: dict[int, npt.NDArray[np.float64]] = {}
    for output, (t, w) in first.items():
        tree = forest.trees[t]
        value = values.setdefault(t, tree.value.copy())
        leaves = tree.left_child < 0
        value[leaves, w] = acc(forest.base_score[output]) + value[leaves, w].astype(acc)
    trees = tuple(
        dataclasses.replace(tree, value=values[t]) if t in values else tree
        for t, tree in enumerate(forest.trees)
    )
    return dataclasses.replace(forest, trees=trees, base_score=np.zeros_like(forest.base_score))


def extended_input(x: Value, columns: int) -> Value:
    """The input ``x'`` of trees folded by :func:`fold_missing`, ``columns`` (2 or 3) per
    feature, from rows ``x`` (written in :mod:`treecomp.arrays`: each lowering renders it)."""
    if columns == 3:  # 0, or NaN where x is
        return interleave(x, -x, where(isnan(x), x, 0.0))
    return interleave(x, -x)


def numerical(trees: Sequence[Tree]) -> bool:
    """Whether every split of ``trees`` is numerical, with NaN as the missing value: the
    forests :func:`fold_missing` folds (no categorical or zero-as-missing split)."""
    return not any(tree.is_categorical.any() or tree.zero_is_missing.any() for tree in trees)


def fold_missing(
    trees: Sequence[Tree], *, less_equal: bool, dtype: Precision
) -> tuple[list[Tree], int] | None:
    """Trees whose every node is ``left iff x'[feature] < threshold``, NaN going right.

    Returns the trees and ``k``, the columns of ``x'`` per input feature: column ``k * j``
    is ``X[:, j]``, ``k * j + 1`` is ``-X[:, j]`` and, when ``k == 3``, ``k * j + 2`` is 0,
    or NaN where ``X[:, j]`` is (side by side, so they share a cache line; see
    :func:`extended_input`).

    A node whose missing values go right keeps its feature and tests ``x < t`` (``x <= t``
    becomes ``x < nextup(t)``); NaN fails the test and goes right, as it should. A node
    whose missing values go left swaps its children and tests the negated column: the old
    right child is taken iff ``x > t``, that is ``-x < -t`` (or, for ``x >= t``,
    ``-x < nextup(-t)``), and NaN again fails the test. The one test with no strict form,
    ``v <= +inf`` (HistGradientBoosting's "missing values right" splits), holds for every
    non-NaN value: it becomes ``0 < 1`` on the third column, which NaN fails. Every step is
    exact in ``dtype`` for every input, infinities included. Forests with categorical or
    zero-as-missing nodes are not folded (``None``) and keep the general rule.
    """
    float_type = np.float32 if dtype == "float32" else np.float64
    infinity = float_type(np.inf)
    if not numerical(trees):
        return None
    parts = []
    for tree in trees:
        internal = tree.left_child >= 0
        t = np.where(internal, tree.threshold, 0.0).astype(float_type)
        if not np.array_equal(t.astype(np.float64)[internal], tree.threshold[internal]):
            return None  # thresholds not yet exact in dtype (see treecomp.passes)
        swap = internal & tree.default_left
        # Tests of the form "y <= v" that become "y < nextup(v)".
        strict_from_le = ~swap if less_equal else swap
        v = np.where(swap, np.negative(t), t)
        not_nan = strict_from_le & internal & (v == infinity)
        s = np.where(strict_from_le, np.nextafter(v, infinity), v)
        s = np.where(not_nan, 1.0, s)
        column = np.where(not_nan, 2, swap.astype(np.int64))
        parts.append((tree, internal, swap, s, column))
    k = 3 if any((column == 2).any() for *_, column in parts) else 2
    folded = [
        dataclasses.replace(
            tree,
            left_child=np.where(swap, tree.right_child, tree.left_child).astype(np.int32),
            right_child=np.where(swap, tree.left_child, tree.right_child).astype(np.int32),
            feature=(k * np.maximum(tree.feature, 0) + column).astype(np.int32),
            threshold=np.where(internal, s.astype(np.float64), np.nan),
            default_left=np.zeros_like(tree.default_left),
        )
        for tree, internal, swap, s, column in parts
    ]
    return folded, k
