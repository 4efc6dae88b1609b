"""The torch modules of the strategies' groups: each a :class:`~strategies.nodes.TreeGroup`'s
tables as buffers, its programs run by :func:`strategies.programs.run_steps`.

A group's ``forward(X)`` takes row blocks ``(n_blocks, block_rows, n_features)`` and returns
``(n_blocks, n_trees_in_group, block_rows)`` int32 indices into ``leaf_value`` and
``leaf_id``. Tree-major within a block: the walkers of one tree sit side by side, so a
kernel walks one tree's nodes (a few KiB, in L1) for a run of rows whose inputs (a block of
a few KiB) stay in L1 for every tree. What each strategy adds here is the layout of its
walkers for its top levels (``top``: aranges, expanded roots) and, for folded trees, its
walk in the eager kernels of :mod:`strategies.eager`; the walks themselves are the group's
programs.
"""

# No `from __future__ import annotations`: TorchScript reads the buffer annotations below
# at run time and cannot resolve them as strings.
import inspect
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from strategies import eager
from strategies.programs import run_steps, take

if TYPE_CHECKING:
    from strategies.nodes import TreeGroup


def tensor(array: npt.NDArray[np.generic]) -> torch.Tensor:
    """A contiguous tensor copy of a NumPy array (buffers never alias the plan)."""
    return torch.from_numpy(np.ascontiguousarray(array).copy())


# Plan attributes that stay with the plan: the torch module runs the flat programs.
_PLAN_ONLY = ("tables", "programs", "node_types")


class GroupModule(torch.nn.Module):
    """Base of every strategy's torch module: the plan's tables as buffers (moved with the
    module), its settings as attributes, its programs' flat steps."""

    feature: torch.Tensor
    threshold: torch.Tensor
    default_left: torch.Tensor
    zero_is_missing: torch.Tensor
    category_row: torch.Tensor
    category_table: torch.Tensor
    columns: torch.Tensor
    leaf_value: torch.Tensor
    leaf_id: torch.Tensor
    rest: int
    node_base: int
    child: torch.Tensor
    below: torch.Tensor
    node_steps: list[list[tuple[str, int, int, int, float]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A strategy's class sees the annotations above too: TorchScript reads those of a
        module's own class, and cannot type an empty program's steps without them."""
        super().__init_subclass__(**kwargs)
        own = inspect.get_annotations(cls)
        cls.__annotations__ = {**inspect.get_annotations(GroupModule), **own}

    def __init__(self, plan: "TreeGroup") -> None:
        super().__init__()
        for name, value in vars(plan).items():
            if name in plan.tables:
                self.register_buffer(name, tensor(value))
            elif name not in _PLAN_ONLY:
                setattr(self, name, value)

    def run_program(self, which: int, values: list[torch.Tensor]) -> torch.Tensor:
        """Program ``PROGRAMS[which]`` on ``values`` and then the node tables, which every
        program reads last."""
        inputs = values + self.node_tables()
        return run_steps(self.node_steps[which], inputs)

    def forward(self, X: torch.Tensor, check_missing: bool) -> torch.Tensor:
        """Leaf rows ``(n_blocks, n_trees_in_group, block_rows)`` for row blocks ``X``: the
        strategy's top levels (:meth:`top`), then the levels by child pointers."""
        rows = self.top(X, check_missing)
        if self.rest == 0:
            return rows
        values = [X, rows, self.feature, self.child, self.below]
        return self.run_program(int(check_missing), values)

    def top(self, X: torch.Tensor, check_missing: bool) -> torch.Tensor:
        """Where the strategy's own top levels leave each walker, ``(n_blocks,
        n_trees_in_group, block_rows)`` (leaf rows where no levels follow)."""
        raise NotImplementedError

    def node_tables(self) -> list[torch.Tensor]:
        """The node tables every program reads last, in ``NODE_INPUTS``' order."""
        return [
            self.threshold,
            self.default_left,
            self.zero_is_missing,
            self.category_row,
            self.category_table,
        ]

    @torch.jit.unused
    def walk_eager(self, block: Any) -> torch.Tensor | None:
        """Leaf rows ``(n_trees_in_group, rows)`` of one eager block of folded trees, as
        :class:`strategies.eager.KeyedBlock` ``block``; ``None`` where the strategy has no
        such walk (:meth:`forward` then runs)."""
        return None

    @torch.jit.unused
    def build_eager_tables(self) -> dict[str, torch.Tensor]:
        """The tables :meth:`walk_eager` reads, built from the buffers."""
        return {}

    @torch.jit.unused
    def eager_tables(self) -> dict[str, torch.Tensor]:
        """:meth:`build_eager_tables`, built once per device (they are not buffers: the
        compiled and exported programs never read them)."""
        device = self.columns.device
        cache: dict[torch.device, dict[str, torch.Tensor]] = self.__dict__.setdefault(
            "_eager_tables", {}
        )
        if device not in cache:
            cache.clear()  # the module moved: the old device's tables are stale
            cache[device] = self.build_eager_tables()
        return cache[device]


class TreeTraversalModule(GroupModule):
    """:class:`strategies.tree_traversal.TreeTraversal`: every level by child pointers."""

    roots: torch.Tensor
    depth: int

    def top(self, X: torch.Tensor, check_missing: bool) -> torch.Tensor:
        return self.roots.unsqueeze(1).expand(X.shape[0], -1, X.shape[1])

    @torch.jit.unused
    def walk_eager(self, block: eager.KeyedBlock) -> torch.Tensor | None:
        tables = self.eager_tables()
        node = self.roots.unsqueeze(1).expand(-1, block.rows)
        return eager.walk_pointers(
            block, node, self.depth, self.feature, tables["threshold"], self.child
        )

    @torch.jit.unused
    def build_eager_tables(self) -> dict[str, torch.Tensor]:
        return {"threshold": eager.order_keys(self.threshold)}


class GEMMModule(GroupModule):
    """:class:`strategies.gemm.GEMM`: the top levels as path products."""

    path: torch.Tensor
    lefts: torch.Tensor
    positions: torch.Tensor
    leaf_slots: torch.Tensor
    trees: torch.Tensor
    n_trees: int
    n_internal: int

    def top(self, X: torch.Tensor, check_missing: bool) -> torch.Tensor:
        walkers = self.positions.expand([X.shape[0], self.positions.shape[0], X.shape[1]])
        values = [
            X,
            self.positions,
            walkers,
            self.trees,
            self.leaf_slots,
            self.feature,
            self.path,
            self.lefts,
        ]
        return self.run_program(2 + int(check_missing), values)


class PerfectModule(GroupModule):
    """:class:`strategies.perfect_tree_traversal.PerfectTreeTraversal`: the top levels by
    index arithmetic."""

    # Declared for TorchScript, which cannot infer the type of an empty list (a forest of
    # single-leaf trees has no levels).
    level_base: list[int]
    n_trees: int
    depth: int

    def top(self, X: torch.Tensor, check_missing: bool) -> torch.Tensor:
        shape = [X.shape[0], self.n_trees, X.shape[1]]
        # Tree offsets an arange, level offsets constants: a compiler folds the positions'
        # arithmetic into its loop indices rather than loading it.
        trees = torch.arange(self.n_trees, dtype=torch.int32, device=X.device).unsqueeze(1)
        values = [X, trees, trees.expand(shape), self.feature]
        return self.run_program(2 + int(check_missing), values)

    @torch.jit.unused
    def walk_eager(self, block: eager.KeyedBlock) -> torch.Tensor | None:
        tables = self.eager_tables()
        n_trees, rows = self.n_trees, block.rows
        device = block.device
        if self.depth == 0:  # single leaves, or child pointers from the roots
            trees = torch.arange(n_trees, dtype=torch.int32, device=device)
            slot = trees.unsqueeze(1).expand(n_trees, rows).contiguous()
        else:
            # This group's own buffer: it holds the result until the caller gathers leaves.
            name = f"position-{id(self)}"
            position = eager.scratch(name, (n_trees, rows), torch.int32, device)
            eager.walk_roots(
                block, position, tables["roots"], tables["root_feature"], tables["root_threshold"]
            )
            levels = range(1, self.depth)
            eager.walk_levels(block, position, levels, tables["feature"], tables["threshold"])
            slot = position.sub_(n_trees << self.depth)
        if self.rest == 0:
            return slot
        node = take(self.below, slot)
        return eager.walk_pointers(
            block,
            node,
            self.rest,
            tables["node_feature"],
            tables["node_threshold"],
            self.child,
        )

    @torch.jit.unused
    def build_eager_tables(self) -> dict[str, torch.Tensor]:
        n_trees = self.n_trees
        keys = eager.order_keys(self.threshold)
        ahead = torch.zeros(n_trees, dtype=torch.int32, device=keys.device)
        tables = {
            # Heap positions: slot s of the layout sits at n_trees + s.
            "feature": torch.cat([ahead, self.feature]),
            "threshold": torch.cat([ahead.to(keys.dtype), keys]),
            "roots": (
                torch.arange(n_trees, dtype=torch.int32, device=keys.device) + n_trees
            ).unsqueeze(1),
            "node_feature": self.feature[self.node_base :],
            "node_threshold": keys[self.node_base :],
        }
        if self.depth:
            tables["root_feature"] = self.feature[:n_trees]
            tables["root_threshold"] = keys[:n_trees].unsqueeze(1)
        return tables


# The torch module of each strategy that has one (the ONNX Runtime operator has none).
MODULES: dict[str, type[GroupModule]] = {
    "tree_traversal": TreeTraversalModule,
    "gemm": GEMMModule,
    "perfect_tree_traversal": PerfectModule,
}


def group_module(plan: "TreeGroup") -> GroupModule:
    """The torch module of a group's plan."""
    if plan.name not in MODULES:
        raise ValueError(
            f"strategy {plan.name!r} is an ONNX Runtime operator: it runs with backend='onnx' "
            "and in export_onnx, not in torch"
        )
    return MODULES[plan.name](plan)
