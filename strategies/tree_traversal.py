"""Tree traversal: every (row, tree) pair walks its tree one level per step.

Nodes of all trees are flattened into one array; leaves point to themselves, so running
``max_depth`` steps leaves every walker at its leaf whatever the tree's own depth. Work per
row is ``n_trees * max_depth`` gathers, independent of tree size: the choice for deep trees.
"""

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from strategies import eager
from strategies.nodes import (
    GroupOptions,
    NodeArrays,
    TreeGroup,
    child_pointers,
    tensor,
)
from strategies.registry import register_strategy
from treecomp.ir_shapes import tree_depths

if TYPE_CHECKING:
    from treecomp.ir import Tree


@register_strategy("tree_traversal")
class TreeTraversal(TreeGroup):
    """Per-level gathers over flattened node arrays."""

    child: torch.Tensor
    roots: torch.Tensor

    def __init__(
        self,
        trees: "list[Tree]",
        columns: list[int],
        options: GroupOptions,
    ) -> None:
        nodes = NodeArrays(trees)
        super().__init__(trees, columns, nodes, options)
        sizes = np.array([t.n_nodes for t in trees])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.register_buffer("child", tensor(child_pointers(trees)))
        self.register_buffer("roots", tensor(offsets.astype(np.int32)))
        self.depth = int(tree_depths(trees).max())
        self.set_walk(self.depth, 0)  # every level by child pointers, from the roots
        self.set_leaves(
            np.concatenate([t.value for t in trees]), np.concatenate([t.leaf_id for t in trees])
        )

    def forward(self, X: torch.Tensor, check_missing: bool) -> torch.Tensor:
        node = self.roots.unsqueeze(1).expand(X.shape[0], -1, X.shape[1])
        return self.walk_child_pointers(X, node, check_missing)

    @torch.jit.unused
    def walk_eager(self, block: eager.KeyedBlock) -> torch.Tensor | None:
        """:meth:`forward` in eager kernels (see :mod:`strategies.eager`), for folded trees."""
        tables = self.eager_tables()
        node = self.roots.unsqueeze(1).expand(-1, block.rows)
        return eager.walk_pointers(
            block, node, self.depth, self.feature, tables["threshold"], self.child
        )

    @torch.jit.unused
    def build_eager_tables(self) -> dict[str, torch.Tensor]:
        return {"threshold": eager.order_keys(self.threshold)}

    def emit_onnx(self, g: Any, X: str) -> str:
        n_trees = int(self.roots.numel())
        node = g.op("Expand", g.const(self.roots.reshape(1, -1)), g.rows_by(n_trees))
        return self.emit_child_pointers(g, X, node)
