"""Shapes of trees: the depth of every node and tree, and trees laid out as complete binary
trees (heap order) level by level.

Functions of the child arrays only, shared by the IR's validation, the lowerings
(:mod:`strategies.perfect_tree_traversal`) and the kernel's layout (:mod:`treecomp.kernel`);
:mod:`treecomp.ir` re-exports the depths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from treecomp.errors import InvalidForestError

if TYPE_CHECKING:
    from treecomp.ir import Tree


def node_depths(trees: tuple[Tree, ...] | list[Tree]) -> npt.NDArray[np.int64]:
    """Depth of every node of every tree, concatenated (-1 for unreachable nodes).

    All trees are walked together, one level per step, so the cost is a few NumPy calls
    per level of the deepest tree, not per tree.

    Raises:
        InvalidForestError: naming the first tree where a child index is out of range or a
            node is reached twice (a cycle or a shared child).
    """
    sizes = np.array([t.n_nodes for t in trees], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    owner = np.repeat(np.arange(len(trees)), sizes)
    local_left = np.concatenate([t.left_child for t in trees]).astype(np.int64)
    local_right = np.concatenate([t.right_child for t in trees]).astype(np.int64)
    internal = local_left >= 0
    bad = internal & (
        (local_left < 1)
        | (local_left >= sizes[owner])
        | (local_right < 1)
        | (local_right >= sizes[owner])
    )
    if np.any(bad):
        raise InvalidForestError(f"tree {owner[np.argmax(bad)]}: child index out of range")
    left = np.where(internal, local_left + offsets[owner], -1)
    right = np.where(internal, local_right + offsets[owner], -1)
    depth = np.full(int(sizes.sum()), -1, dtype=np.int64)
    depth[offsets] = 0
    frontier = offsets
    level = 0
    while frontier.size:
        parents = frontier[left[frontier] >= 0]
        children = np.concatenate([left[parents], right[parents]])
        revisited = depth[children] >= 0
        if np.any(revisited) or np.unique(children).size != children.size:
            if not np.any(revisited):
                values, counts = np.unique(children, return_counts=True)
                revisited = np.isin(children, values[counts > 1])
            tree = owner[children[np.argmax(revisited)]]
            raise InvalidForestError(
                f"tree {tree}: a node is reached twice (cycle or shared child)"
            )
        level += 1
        depth[children] = level
        frontier = children
    return depth


def tree_depths(trees: tuple[Tree, ...] | list[Tree]) -> npt.NDArray[np.int64]:
    """Depth of each tree (0 for a single leaf)."""
    depth = node_depths(trees)
    sizes = np.array([t.n_nodes for t in trees], dtype=np.int64)
    return np.maximum.reduceat(depth, np.concatenate([[0], np.cumsum(sizes)[:-1]]))


def heap_levels(
    roots: npt.NDArray[np.int64],
    left: npt.NDArray[Any],
    right: npt.NDArray[Any],
    leaf: npt.NDArray[np.bool_],
    depth: int,
) -> list[npt.NDArray[np.int64]]:
    """The top ``depth`` levels of trees as complete binary trees, plus the level below them.

    ``left`` and ``right`` are the forest's child arrays in global node ids (anything where
    ``leaf`` marks a leaf) and ``roots`` the trees' roots. Level ``d`` is an array
    ``(len(roots), 2**d)`` of the node standing at each slot; a leaf above the last level is
    copied into both of its children's slots, so every path below it ends at that leaf and
    a walk may test anything on the way. Returns ``depth + 1`` levels.
    """
    level = roots.reshape(-1, 1)
    levels = [level]
    for _ in range(depth):
        is_leaf = leaf[level]
        level = np.stack(
            [np.where(is_leaf, level, left[level]), np.where(is_leaf, level, right[level])],
            axis=2,
        ).reshape(roots.size, -1)
        levels.append(level)
    return levels
