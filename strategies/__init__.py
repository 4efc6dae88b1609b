"""Lowerings of a :class:`treecomp.Forest` to torch programs, and the selector between them.

Three strategies (the Hummingbird paper's): ``"gemm"``, ``"tree_traversal"`` and
``"perfect_tree_traversal"``, registered by name in :mod:`strategies.registry`. Each maps
inputs to leaf rows of a group of trees; :class:`~strategies.forest_module.ForestModule`
composes them with the shared aggregation and post-transform. This package depends on
:mod:`treecomp.ir` and torch only, never on a frontend.
"""

from __future__ import annotations

import numpy as np
import torch

from strategies import gemm, perfect_tree_traversal, tree_traversal  # noqa: F401 (registration)
from strategies.forest_module import ForestModule
from strategies.nodes import GroupOptions, fold_missing
from strategies.registry import STRATEGIES
from strategies.selector import plan
from treecomp.ir import Forest, tree_depths

__all__ = ["STRATEGIES", "ForestModule", "describe", "lower"]

ALIASES = {"tt": "tree_traversal", "ptt": "perfect_tree_traversal"}


def lower(
    forest: Forest,
    strategy: str = "auto",
    *,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 10_000,
    device: str = "cpu",
) -> tuple[ForestModule, list[tuple[str, np.ndarray]]]:
    """Lower a forest to a :class:`ForestModule`.

    Args:
        forest: A validated forest whose thresholds suit ``dtype`` (see
            ``treecomp.passes.float32_thresholds``).
        strategy: ``"auto"`` (the cost model of :mod:`strategies.selector`) or a registered name.
        dtype: Precision of comparisons and sums.
        batch_size: Expected rows per call, for the cost model.
        device: ``"cpu"`` or ``"cuda"``, for the cost model.

    Returns:
        The module (on CPU) and the plan: ``(strategy, tree indices)`` per group.
    """
    name = ALIASES.get(strategy, strategy)
    depths = tree_depths(forest.trees)
    if name == "auto":
        internal = np.array([int((t.left_child >= 0).sum()) for t in forest.trees])
        leaves = np.array([int((t.left_child < 0).sum()) for t in forest.trees])
        groups = plan(depths, internal, leaves, batch=batch_size, device=device)
    elif name in STRATEGIES:
        groups = [(name, np.arange(forest.n_trees))]
    else:
        raise ValueError(
            f"unknown strategy {strategy!r}; choose 'auto' or one of {sorted(STRATEGIES)}"
        )
    trees = fold_missing(
        list(forest.trees),
        n_features=forest.n_features,
        less_equal=forest.comparison == "<=",
        dtype=dtype,
    )
    options = GroupOptions(
        less_equal=forest.comparison == "<=" and trees is None,
        dtype=dtype,
        leaf_width=max(t.leaf_width for t in forest.trees),
        nonnegative_categories=forest.category_domain == "nonnegative",
        folded=trees is not None,
    )
    source = list(forest.trees) if trees is None else trees
    modules = [
        STRATEGIES[group_name]([source[i] for i in members], members.tolist(), options)
        for group_name, members in groups
    ]
    return ForestModule(forest, modules, dtype, folded=options.folded), groups


def describe(groups: list[tuple[str, np.ndarray]], depths: np.ndarray) -> str:
    """``"gemm"``, or ``"gemm(120 trees, depth<=3) + tree_traversal(380 trees, depth<=12)"``."""
    if len(groups) == 1:
        return groups[0][0]
    return " + ".join(
        f"{name}({len(m)} trees, depth<={int(depths[m].max())})" for name, m in groups
    )
