"""GEMM: the three-matrix formulation of Hummingbird.

For each tree: (1) feature selection — the value of each internal node's feature (a gather,
which is the feature-selection matrix product without its NaN hazard: ``NaN * 0`` would
poison every node); (2) the node tests, a 0/1 matrix; (3) a product with the path matrix
``C`` (+1 where a leaf lies left of an ancestor, -1 where right), compared with ``D`` (the
number of left turns on each leaf's path): a row reaches leaf ``l`` iff ``(tests @ C)[l] ==
D[l]``. All trees run as one batched matmul, padded to the group's largest tree. Work per
row is ``n_trees * internal * leaves``: the choice for shallow trees.
"""

from typing import Any

import numpy as np
import torch

from strategies.nodes import GroupOptions, NodeArrays, TreeGroup, tensor
from strategies.registry import register_strategy
from treecomp.ir import Tree

MAX_PATH_MATRIX = 1 << 27


@register_strategy("gemm")
class GEMM(TreeGroup):
    """Node tests as one tensor, leaf selection as a batched matrix product."""

    path: torch.Tensor
    lefts: torch.Tensor
    positions: torch.Tensor
    leaf_base: torch.Tensor

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
        if n_trees * n_internal * n_leaves > MAX_PATH_MATRIX:
            raise ValueError(
                f"gemm cannot express {n_trees} trees with up to {n_leaves} leaves: the path "
                f"matrices need {n_trees * n_internal * n_leaves:,} entries (limit "
                f"{MAX_PATH_MATRIX:,}); use strategy='tree_traversal'"
            )
        path = np.zeros((n_trees, n_internal, n_leaves), dtype=np.float32)
        lefts = np.full((n_trees, n_leaves), -1.0, dtype=np.float32)  # padding never matches
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
            column = np.arange(len(leaves[t]))
            n_left = np.zeros(len(leaves[t]), dtype=np.float32)
            while np.any(cur >= 0):
                up = parent[np.maximum(cur, 0)]
                live = (cur >= 0) & (up >= 0)
                sign = np.where(is_left[cur[live]], 1.0, -1.0)
                path[t, position[up[live]], column[live]] = sign
                n_left[live] += sign > 0
                cur = np.where(live, up, -1)
            lefts[t, : len(leaves[t])] = n_left
            value_rows[t, : len(leaves[t])] = leaves[t] + offsets[t]
        nodes = NodeArrays(trees).take(slot.reshape(-1))
        super().__init__(trees, columns, nodes, options)
        self.n_trees = n_trees
        self.n_internal = n_internal
        self.register_buffer("path", tensor(path))
        self.register_buffer("lefts", tensor(lefts).unsqueeze(1))  # (trees, 1, leaves)
        # One row of node positions: the node parameters broadcast over the batch.
        self.register_buffer(
            "positions", torch.arange(n_trees * n_internal, dtype=torch.int64).unsqueeze(0)
        )
        self.register_buffer(
            "leaf_base", torch.arange(n_trees, dtype=torch.int64).unsqueeze(1) * n_leaves
        )
        values = np.concatenate([t.value for t in trees])
        ids = np.concatenate([t.leaf_id for t in trees])
        rows = value_rows.reshape(-1)
        self.set_leaves(values[rows], np.where(lefts.reshape(-1) >= 0, ids[rows], -1))

    def forward(self, X: torch.Tensor, check_missing: bool) -> torch.Tensor:
        x = X.index_select(1, self.feature)  # (n, trees * internal)
        tests = self.decide(x, self.positions, check_missing)
        tests = tests.to(torch.float32).reshape(X.shape[0], self.n_trees, self.n_internal)
        reached = torch.bmm(tests.transpose(0, 1), self.path) == self.lefts  # (trees, n, leaves)
        return (self.leaf_base + reached.to(torch.uint8).argmax(dim=2)).to(torch.int32)

    def emit_onnx(self, g: Any, X: str) -> str:
        x = g.op("Gather", X, g.const(self.feature), axis=1)
        tests = g.op("Cast", self.emit_decide(g, x, g.const(self.positions)), to="float32")
        # ONNX Runtime's batched MatMul crashes on an empty batch: one extra row of tests is
        # carried through and sliced off at the end.
        padding = np.zeros((1, self.n_trees * self.n_internal), dtype=np.float32)
        tests = g.op("Concat", g.const(padding), tests, axis=0)
        shape = g.const(np.array([-1, self.n_trees, self.n_internal], dtype=np.int64))
        by_tree = g.op("Transpose", g.op("Reshape", tests, shape), perm=[1, 0, 2])
        reached = g.op("Equal", g.op("MatMul", by_tree, g.const(self.path)), g.const(self.lefts))
        leaf = g.op("ArgMax", g.op("Cast", reached, to="float32"), axis=2, keepdims=0)
        rows = g.op(
            "Slice", g.op("Transpose", leaf, perm=[1, 0]), g.ints([1]), g.ints([2**62]), g.ints([0])
        )
        return g.op("Add", rows, g.const(self.leaf_base.reshape(1, -1)))
