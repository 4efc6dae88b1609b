"""Perfect-tree traversal: trees padded to complete binary trees, walked by index arithmetic.

Padding puts every node of level ``d`` at position ``j`` in ``[0, 2**d)``; the next position
is ``2*j`` (left) or ``2*j + 1`` (right), so no child pointers are gathered. A leaf above the
last level is copied down: the nodes below it test anything, since every path under them
ends at copies of the same leaf. Memory grows as ``n_trees * 2**depth``.

Forests too deep to pad within ``MAX_PADDED_NODES`` slots keep the perfect layout for as many
top levels as fit, then walk on from the node each walker reached with child pointers (tree
traversal) for the remaining levels: every forest is expressible, and the deep, sparse part
of leaf-wise trees costs no padding.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from strategies.nodes import (
    NODE_INPUTS,
    GroupOptions,
    NodeArrays,
    NodeRule,
    TreeGroup,
    child_pointers,
    node_test,
)
from strategies.registry import register_strategy
from strategies.sizes import MAX_PADDED_NODES, padded_size
from treecomp.arrays import Value, broadcast, column, int32
from treecomp.arrays import take as take_value
from treecomp.ir_shapes import heap_levels, tree_depths

if TYPE_CHECKING:
    from treecomp.ir import Tree

# Past MAX_PADDED_NODES, keep perfect only the top levels whose padding stays within this many
# slots per real node: deeper levels walk child pointers.
HYBRID_PADDING = 4


@register_strategy("perfect_tree_traversal")
class PerfectTreeTraversal(TreeGroup):
    """Complete-tree layout; ``depth`` levels of gathers with arithmetic child indices."""

    below: npt.NDArray[np.int32]

    def __init__(
        self,
        trees: list[Tree],
        columns: list[int],
        options: GroupOptions,
    ) -> None:
        full_depth = int(tree_depths(trees).max())
        n_trees = len(trees)
        sizes = np.array([t.n_nodes for t in trees])
        depth = full_depth  # levels in the perfect layout; the rest walk child pointers
        if padded_size(n_trees, depth) > MAX_PADDED_NODES:
            budget = min(MAX_PADDED_NODES, HYBRID_PADDING * int(sizes.sum()))
            while depth > 0 and padded_size(n_trees, depth) > budget:
                depth -= 1
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        leaf = np.concatenate([t.left_child < 0 for t in trees])
        left = np.concatenate([t.left_child + o for t, o in zip(trees, offsets)])
        right = np.concatenate([t.right_child + o for t, o in zip(trees, offsets)])
        # Level by level, the global node id at each slot; a leaf is copied into both children.
        *levels, level = heap_levels(offsets, left, right, leaf, depth)
        slots = (
            np.concatenate([lv.reshape(-1) for lv in levels]) if levels else np.zeros(0, np.int64)
        )
        self_rest = full_depth - depth
        if self_rest:
            # Node parameters by slot, then by global node id from node_base on.
            slots = np.concatenate([slots, np.arange(int(sizes.sum()))])
        nodes = NodeArrays(trees).take(slots)
        super().__init__(trees, columns, nodes, options)
        self.depth = depth
        self.set_walk(self_rest, int(slots.size - sizes.sum()) if self_rest else 0, entry=True)
        # int32 positions: MAX_PADDED_NODES keeps them far below 2**31.
        self.level_base: list[int] = [n_trees * ((1 << d) - 1) for d in range(depth)]
        top = partial(perfect_levels, depth, self.level_base)
        self.set_program("top", top, ("int32", "int32", "int32"))  # trees, walkers, feature
        self.n_trees = n_trees
        values = np.concatenate([t.value for t in trees])
        leaf_ids = np.concatenate([t.leaf_id for t in trees])
        if self_rest:
            # The global node reached at each slot of the last perfect level, and child
            # pointers (leaves point to themselves) for the levels below it.
            self.table("below", level.reshape(-1).astype(np.int32))
            self.table("child", child_pointers(trees))
            self.set_leaves(values, leaf_ids)
        else:
            self.set_leaves(values[level.reshape(-1)], leaf_ids[level.reshape(-1)])

    def emit_top(self, g: Any, X: str) -> str:
        trees = np.arange(self.n_trees, dtype=np.int32).reshape(1, -1)  # row-major graphs
        walkers = g.op("Expand", g.const(np.zeros_like(trees)), g.rows_by(trees.shape[1]))
        tables = ("feature", *NODE_INPUTS[2:])
        return self.emit_program(g, "top", [X, g.const(trees), walkers], *tables)


def perfect_levels(
    depth: int,
    level_base: list[int],
    rule: NodeRule,
    X: Value,
    trees: Value,
    walkers: Value,
    feature: Value,
    *node_tables: Value,
) -> Value:
    """The slot each walker reaches after ``depth`` perfect levels: level ``d`` holds tree
    ``t``'s nodes from ``level_base[d] + t * 2**d`` (``trees``: each walker's tree number,
    broadcasting to ``walkers``), a walker at position ``i`` of its level goes to
    ``2 * i + right`` of the next; the last level's slots follow at ``t * 2**depth``.

    The positions are built from the first level's tests rather than from zeros: inductor's
    removal of "+ 0" compares the operands' shapes, which guards on the block count
    equalling a group's tree count."""
    index = None
    for d in range(depth):
        offset = trees * (1 << d) if d else trees
        offset = offset + level_base[d] if level_base[d] else offset
        pos = broadcast(offset, walkers) if index is None else index + offset
        x = column(X, take_value(feature, pos))
        _, right = node_test(rule, x, pos, *node_tables)
        index = int32(right) if index is None else index * 2 + int32(right)
    if index is None:  # single leaves, or child pointers from the roots
        return broadcast(trees, walkers)
    return index + trees * (1 << depth)
