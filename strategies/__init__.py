"""Lowerings of a :class:`treecomp.Forest` to tensor programs, and the selector between them.

Three strategies (the Hummingbird paper's): ``"gemm"``, ``"tree_traversal"`` and
``"perfect_tree_traversal"``, registered by name in :mod:`strategies.registry` for every
target, and ``"tree_ensemble"`` (ONNX Runtime's tree operator) for the ONNX target only.
Each maps inputs to leaf rows of a group of trees. :func:`lower` makes a
:class:`~strategies.forest_plan.ForestPlan` (NumPy tables and programs, no torch), which the
ONNX graph renders directly and :class:`~strategies.forest_module.ForestModule` renders as a
torch module, with the shared aggregation and post-transform; only that rendering
(``forest_module``, ``torch_groups``, ``programs``, ``eager``) imports torch. This package
depends on :mod:`treecomp.ir`, never on a frontend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from strategies import (  # noqa: F401 (registration)
    gemm,
    perfect_tree_traversal,
    tree_ensemble,
    tree_traversal,
)
from strategies.forest_plan import ForestPlan
from strategies.nodes import GroupOptions
from strategies.registry import STRATEGIES, TARGETS
from strategies.selector import MAX_COMPILED_GROUPS, block_rows, plan, tree_shapes
from treecomp.inputs import Precision
from treecomp.ir import Forest
from treecomp.names import ALIASES
from treecomp.passes import fold_base_score, fold_missing, thresholds_for

if TYPE_CHECKING:
    from strategies.forest_module import ForestModule

__all__ = [
    "STRATEGIES",
    "TARGETS",
    "ForestPlan",
    "describe",
    "lower",
    "lower_forest",
    "plan_forest",
]


def plan_forest(
    forest: Forest, precision: Precision, strategy: str = "auto", **options: Any
) -> ForestPlan:
    """The lowering every target runs: the forest's thresholds for ``precision``
    (:func:`treecomp.passes.thresholds_for`), then :func:`lower` in that type.

    The engines and the ONNX exporter are handed this function (or :func:`lower_forest`)
    by their callers (:mod:`treecomp.backends`, :meth:`treecomp.CompiledModel.to_onnx`):
    they run a lowering, they do not choose one.

    Args:
        forest: A validated forest, thresholds as parsed.
        precision: ``"float32"`` or ``"float64"``: the type of comparisons and sums.
        strategy: As for :func:`lower`.
        **options: :func:`lower`'s keyword options other than ``precision``.
    """
    lowered = thresholds_for(forest, precision)
    return lower(lowered, strategy, precision=precision, **options)


def lower_forest(
    forest: Forest, precision: Precision, strategy: str = "auto", **options: Any
) -> tuple[ForestModule, str]:
    """:func:`plan_forest` rendered as a torch module: the module (on CPU) and its plan in
    words (:func:`describe`)."""
    from strategies.forest_module import ForestModule

    plan = plan_forest(forest, precision, strategy, **options)
    return ForestModule(plan), plan.description


def lower(
    forest: Forest,
    strategy: str = "auto",
    *,
    precision: Precision = "float32",
    batch_size: int = 10_000,
    device: str = "cpu",
    compiled: bool = False,
    target: str = "torch",
    one_thread: bool = False,
    shapes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> ForestPlan:
    """Lower a forest to a :class:`ForestPlan`.

    Args:
        forest: A validated forest whose thresholds suit ``precision`` (see
            ``treecomp.passes.float32_thresholds``).
        strategy: ``"auto"`` (the cost model of :mod:`strategies.selector`) or a registered name.
        precision: ``"float32"`` or ``"float64"``: the type of comparisons.
        batch_size: Expected rows per call, for the cost model.
        device: ``"cpu"`` or ``"cuda"``, for the cost model.
        compiled: Plan for compiled code (AOTInductor): one group per tree depth, so
            that shallow trees stop walking early, costed for fused execution (see
            :func:`strategies.selector.plan`). Each group is one more loop: worth it when a
            compiler fuses every group's levels, not in eager mode. 200
            HistGradientBoosting trees of depth 7 to 16, 10 000 rows, compiled, 1 thread:
            363 ms in one tree-traversal group, 184 ms by depth.
        target: ``"torch"`` or ``"onnx"``: what the plan will be rendered as. Only the ONNX
            target can use ``"tree_ensemble"``, whose plan has no torch module.
        one_thread: The ONNX graph will run in sessions of one thread each
            (:class:`GroupOptions`).
        shapes: :func:`strategies.selector.tree_shapes` of the forest's trees where the
            caller has them (they cost a walk of every node: 36 ms for 300 trees of 255
            leaves); else computed here.

    Returns:
        The plan of every target.
    """
    if precision not in ("float32", "float64"):
        raise ValueError(f"unknown precision {precision!r}; use 'float32' or 'float64'")
    name = ALIASES.get(strategy, strategy)
    forest = fold_base_score(forest)  # every target's sum then starts at zero
    depths, internal, leaves = shapes if shapes is not None else tree_shapes(forest.trees)
    if target not in ("torch", "onnx"):
        raise ValueError(f"unknown target {target!r}; use 'torch' or 'onnx'")
    if name == "auto":
        tree_operator = (
            target == "onnx" and tree_ensemble.refusal(list(forest.trees), precision) is None
        )
        groups = plan(
            depths,
            internal,
            leaves,
            batch=batch_size,
            device=device,
            compiled=compiled,
            tree_operator=tree_operator,
        )
    elif name in STRATEGIES:
        if target not in TARGETS[name]:
            raise ValueError(
                f"strategy {name!r} is an ONNX Runtime operator: it runs with backend='onnx' "
                "and in export_onnx, not in torch; choose one of "
                f"{sorted(n for n in STRATEGIES if target in TARGETS[n])}"
            )
        groups = [(name, np.arange(forest.n_trees))]
    else:
        raise ValueError(
            f"unknown strategy {strategy!r}; choose 'auto' or one of "
            f"{sorted(n for n in STRATEGIES if target in TARGETS[n])}"
        )
    if compiled and name != "auto":
        groups = _split_by_depth(groups, depths)
    fold = None
    # The tree operator tests NaN itself: folding would only widen its input.
    if any(group_name != "tree_ensemble" for group_name, _ in groups):
        fold = fold_missing(
            forest.trees,
            less_equal=forest.comparison == "<=",
            dtype=precision,
        )
    trees, fold_columns = fold if fold is not None else (None, 0)
    options = GroupOptions(
        less_equal=forest.comparison == "<=" and trees is None,
        precision=precision,
        leaf_width=max(t.leaf_width for t in forest.trees),
        nonnegative_categories=forest.category_domain == "nonnegative",
        folded=trees is not None,
        batch_size=batch_size,
        one_thread=one_thread,
    )
    source = list(forest.trees) if trees is None else trees
    plans = [
        STRATEGIES[group_name]([source[i] for i in members], members.tolist(), options)
        for group_name, members in groups
    ]
    return ForestPlan(
        forest,
        plans,
        groups,
        precision,
        fold_columns,
        describe(groups, depths),
        block_rows(depths, device),
    )


def _split_by_depth(
    groups: list[tuple[str, np.ndarray]], depths: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """At most ``MAX_COMPILED_GROUPS`` groups of traversal trees of near depths, in depth
    quantiles; GEMM groups stay whole."""
    out = []
    for name, members in groups:
        if name == "gemm":
            out.append((name, members))
            continue
        levels = np.unique(depths[members])
        picks = np.linspace(0, len(levels) - 1, min(len(levels), MAX_COMPILED_GROUPS))
        edges = np.unique(levels[np.round(picks).astype(np.int64)])
        lower = -1
        for upper in edges:
            part = members[(depths[members] > lower) & (depths[members] <= upper)]
            if part.size:
                out.append((name, part))
            lower = upper
    return out


def describe(groups: list[tuple[str, np.ndarray]], depths: np.ndarray) -> str:
    """``"gemm"``, ``"gemm(120 trees, depth<=3) + tree_traversal(380 trees, depth<=12)"``, or
    ``"tree_traversal(300 trees in 25 depth groups, depth 9..38)"``."""
    if len(groups) == 1:
        return groups[0][0]
    by_name: dict[str, list[np.ndarray]] = {}
    for name, members in groups:
        by_name.setdefault(name, []).append(members)
    parts = []
    for name, lists in by_name.items():
        members = np.concatenate(lists)
        if len(lists) == 1:
            parts.append(f"{name}({len(members)} trees, depth<={int(depths[members].max())})")
        else:
            parts.append(
                f"{name}({len(members)} trees in {len(lists)} depth groups, depth "
                f"{int(depths[members].min())}..{int(depths[members].max())})"
            )
    return " + ".join(parts)
