"""Tree traversal: every (row, tree) pair walks its tree one level per step.

Nodes of all trees are flattened into one array; leaves point to themselves, so running
``max_depth`` steps leaves every walker at its leaf whatever the tree's own depth. Work per
row is ``n_trees * max_depth`` gathers, independent of tree size: the choice for deep trees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from strategies.nodes import GroupOptions, NodeArrays, TreeGroup, child_pointers
from strategies.registry import register_strategy
from treecomp.ir_shapes import tree_depths

if TYPE_CHECKING:
    from treecomp.ir import Tree


@register_strategy("tree_traversal")
class TreeTraversal(TreeGroup):
    """Per-level gathers over flattened node arrays."""

    roots: np.ndarray

    def __init__(
        self,
        trees: list[Tree],
        columns: list[int],
        options: GroupOptions,
    ) -> None:
        nodes = NodeArrays(trees)
        super().__init__(trees, columns, nodes, options)
        sizes = np.array([t.n_nodes for t in trees])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.table("child", child_pointers(trees))
        self.table("roots", offsets.astype(np.int32))
        self.depth = int(tree_depths(trees).max())
        self.set_walk(self.depth, 0)  # every level by child pointers, from the roots
        self.set_leaves(
            np.concatenate([t.value for t in trees]), np.concatenate([t.leaf_id for t in trees])
        )

    def emit_top(self, g: Any, X: str) -> str:
        n_trees = int(self.roots.size)
        return g.op("Expand", g.const(self.roots.reshape(1, -1)), g.rows_by(n_trees))
