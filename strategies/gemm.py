"""GEMM: the three-matrix formulation of Hummingbird.

For each tree: (1) feature selection — the value of each internal node's feature (a gather,
which is the feature-selection matrix product without its NaN hazard: ``NaN * 0`` would
poison every node); (2) the node tests, a 0/1 matrix; (3) a product with the path matrix
``C`` (+1 where a leaf lies left of an ancestor, -1 where right), less ``D`` (the number of
left turns on each leaf's path): ``(tests @ C)[l] - D[l]`` is 0 at the leaf the row reaches
and negative at every other (a product counts the path's turns the row takes, less those it
does not), so the reached leaf is the largest. All trees run as one batched matmul, padded
to the group's largest tree. Work per row is ``n_trees * internal * leaves``: the choice for
shallow trees. :func:`path_leaves` writes it once for every target.

Trees too large for ``MAX_PATH_MATRIX`` keep the matrix formulation for their top levels
only: each node at the cut depth is a "leaf" of the matrices, from which the walker goes on
with child pointers (tree traversal) for the remaining levels. Every forest is expressible.
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
from strategies.sizes import MAX_PATH_MATRIX
from treecomp.arrays import Value, broadcast, column, float32, group_argmax, group_matmul, int32
from treecomp.arrays import take as take_value
from treecomp.ir_shapes import node_depths, tree_depths

if TYPE_CHECKING:
    from treecomp.ir import Tree

# Past MAX_PATH_MATRIX, the top levels kept in the matrices stay within this many entries:
# the product's work per row is its size, while a level of child pointers costs one gather.
HYBRID_PATH_MATRIX = 1 << 20


def _matrix_size(n_trees: int, depth: int) -> int:
    """Path-matrix entries of trees cut at ``depth`` (at most 2**depth - 1 internal nodes by
    2**depth leaves each)."""
    return n_trees * max(1, (1 << depth) - 1) * (1 << depth)


@register_strategy("gemm")
class GEMM(TreeGroup):
    """Node tests as one tensor, leaf selection as a batched matrix product."""

    path: npt.NDArray[np.float32]
    lefts: npt.NDArray[np.float32]
    positions: npt.NDArray[np.int32]
    leaf_slots: npt.NDArray[np.int32]
    trees: npt.NDArray[np.int32]
    below: npt.NDArray[np.int32]

    def __init__(
        self,
        trees: list[Tree],
        columns: list[int],
        options: GroupOptions,
    ) -> None:
        n_trees = len(trees)
        internal = [np.flatnonzero(t.left_child >= 0) for t in trees]
        leaves = [np.flatnonzero(t.left_child < 0) for t in trees]
        n_internal = max(1, max(len(i) for i in internal))
        n_leaves = max(len(leaf) for leaf in leaves)
        full_depth = int(tree_depths(trees).max())
        cut = full_depth  # levels in the matrices; the rest walk child pointers
        if n_trees * n_internal * n_leaves > MAX_PATH_MATRIX:
            budget = min(MAX_PATH_MATRIX, HYBRID_PATH_MATRIX)
            while cut > 0 and _matrix_size(n_trees, cut) > budget:
                cut -= 1
            sizes = np.array([t.n_nodes for t in trees])
            depth = np.split(node_depths(trees), np.cumsum(sizes)[:-1])
            # Internal nodes above the cut; the nodes at the cut end the matrices' paths.
            internal = [
                np.flatnonzero((t.left_child >= 0) & (d < cut)) for t, d in zip(trees, depth)
            ]
            leaves = [
                np.flatnonzero(((t.left_child < 0) & (d <= cut)) | (d == cut))
                for t, d in zip(trees, depth)
            ]
            n_internal = max(1, max(len(i) for i in internal))
            n_leaves = max(len(leaf) for leaf in leaves)
        rest = full_depth - cut
        path = np.zeros((n_trees, n_internal, n_leaves), dtype=np.float32)
        lefts = np.full((n_trees, n_leaves), -1.0, dtype=np.float32)  # -1: padding
        slot = np.zeros((n_trees, n_internal), dtype=np.int64)  # global node id per column
        offsets = np.concatenate([[0], np.cumsum([t.n_nodes for t in trees])[:-1]])
        value_rows = np.zeros((n_trees, n_leaves), dtype=np.int64)
        for t, tree in enumerate(trees):
            position = np.full(tree.n_nodes, -1)
            position[internal[t]] = np.arange(len(internal[t]))
            slot[t, : len(internal[t])] = internal[t] + offsets[t]
            slot[t, len(internal[t]) :] = offsets[t] + leaves[t][0]  # harmless padding tests
            parent = np.full(tree.n_nodes, -1)
            is_left = np.zeros(tree.n_nodes, dtype=bool)
            parent[tree.left_child[internal[t]]] = internal[t]
            parent[tree.right_child[internal[t]]] = internal[t]
            is_left[tree.left_child[internal[t]]] = True
            # Walk every leaf's ancestors at once, one level per step.
            cur = leaves[t].copy()
            leaf_column = np.arange(len(leaves[t]))
            n_left = np.zeros(len(leaves[t]), dtype=np.float32)
            while np.any(cur >= 0):
                up = parent[np.maximum(cur, 0)]
                live = (cur >= 0) & (up >= 0)
                sign = np.where(is_left[cur[live]], 1.0, -1.0)
                path[t, position[up[live]], leaf_column[live]] = sign
                n_left[live] += sign > 0
                cur = np.where(live, up, -1)
            lefts[t, : len(leaves[t])] = n_left
            value_rows[t, : len(leaves[t])] = leaves[t] + offsets[t]
        slots = slot.reshape(-1)
        if rest:  # node parameters by matrix column, then by global node id
            slots = np.concatenate([slots, np.arange(int(offsets[-1] + trees[-1].n_nodes))])
        nodes = NodeArrays(trees).take(slots)
        super().__init__(trees, columns, nodes, options)
        self.set_walk(rest, n_trees * n_internal, entry=True)
        self.n_trees = n_trees
        self.n_internal = n_internal
        self.table("path", path)
        # D, and past the real leaves a count no product reaches: padding never wins.
        reach = np.where(lefts >= 0, lefts, n_internal + 1).astype(np.float32)
        self.table("lefts", reach.reshape(-1))
        # Positions along the walkers' axis (torch's row blocks: a column of them) of the
        # node tests, the leaves and the trees.
        for name, count in (
            ("positions", n_trees * n_internal),
            ("leaf_slots", n_trees * n_leaves),
            ("trees", n_trees),
        ):
            self.table(name, np.arange(count, dtype=np.int32).reshape(-1, 1))
        # positions, their walkers, trees, leaf slots, feature; path, lefts
        types = ("int32",) * 5 + ("float32", "float32")
        self.set_program("top", partial(path_leaves, n_trees, n_leaves), types)
        values = np.concatenate([t.value for t in trees])
        ids = np.concatenate([t.leaf_id for t in trees])
        rows = value_rows.reshape(-1)
        if self.rest:
            # The global node at each matrix "leaf", child pointers for the levels below.
            self.table("below", rows.astype(np.int32))
            self.table("child", child_pointers(trees))
            self.set_leaves(values, ids)
        else:
            self.set_leaves(values[rows], np.where(lefts.reshape(-1) >= 0, ids[rows], -1))

    def emit_top(self, g: Any, X: str) -> str:
        positions = g.const(self.positions.reshape(1, -1))  # row-major graphs
        walkers = g.op("Expand", positions, g.rows_by(int(self.positions.shape[0])))
        trees = [g.const(self.trees.reshape(1, -1)), g.const(self.leaf_slots.reshape(1, -1))]
        tables = ("feature", "path", "lefts", *NODE_INPUTS[2:])
        return self.emit_program(g, "top", [X, positions, walkers, *trees], *tables)


def path_leaves(
    n_trees: int,
    n_leaves: int,
    rule: NodeRule,
    X: Value,
    positions: Value,
    walkers: Value,
    trees: Value,
    leaf_slots: Value,
    feature: Value,
    path: Value,
    lefts: Value,
    *node_tables: Value,
) -> Value:
    """The leaf row each walker (a row and a tree) reaches: every node test of the row at
    once (``positions``: the tests' node positions, broadcasting to ``walkers``), their
    products with the trees' path matrices ``(trees, internal, leaves)`` less the left turns
    of each leaf's path (``lefts`` at ``leaf_slots``), the largest of each tree's leaves
    (the one whose path the row takes: 0, the others below), at ``tree * n_leaves``."""
    x = column(X, broadcast(take_value(feature, positions), walkers))
    left, _ = node_test(rule, x, positions, *node_tables)
    scores = group_matmul(float32(left), path) - take_value(lefts, leaf_slots)
    return int32(group_argmax(scores, n_trees, n_leaves)) + trees * n_leaves
