"""The strategy selector: a cost model over tree shapes, batch size and device.

Hummingbird picks by maximum depth alone (GEMM up to depth 3, perfect-tree traversal up to
10, tree traversal beyond). That ignores what the costs depend on:

* GEMM does ``internal * leaves`` multiply-adds per tree and row (exponential in depth, but
  dense and vectorised), plus elementwise tests on every internal node.
* Tree traversal does a fixed number of *gathers* per level (feature, threshold, default,
  children), each a random memory access, times the forest's maximum depth.
* Perfect-tree traversal gathers less per level (no child pointers) but pads every tree to
  ``2**depth`` slots: its memory, and the levels every tree walks, follow the deepest tree.
* Every kernel launch has a fixed cost (a few microseconds on CPU, more on GPU), which
  dominates for small batches: there, fewer, larger operations win.

:func:`plan` estimates ``batch * per_row_work + kernel_launches * launch_cost`` for each
strategy on the whole forest and, when depths differ widely, on two depth groups (shallow
trees, deep trees) each lowered with its own cheapest strategy, and keeps the cheapest plan.
The constants below are nanoseconds, fitted to measurements on a 2-core x86 CPU and
estimated for GPUs (far cheaper arithmetic, costlier launches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from strategies.sizes import MAX_PADDED_NODES, MAX_PATH_MATRIX, padded_size
from treecomp.ir_shapes import tree_depths

if TYPE_CHECKING:
    from treecomp.ir import Tree


@dataclass(frozen=True)
class DeviceCosts:
    """Cost constants of one device kind, in nanoseconds."""

    traversal_step: float  # tree traversal, per row x tree x level
    perfect_step: float  # perfect-tree traversal, per row x tree x level
    gemm_node: float  # GEMM, per row x tree x internal node (feature gather and test)
    gemm_path: float  # GEMM, per row x tree x internal node x leaf (path matrix product)
    gemm_tree: float  # GEMM, per row x tree (leaf selection)
    launch: float  # fixed cost of one tensor operation, whatever its size


# CPU: fitted to runs of 100-tree forests of depth 2..12 at batches of 1, 100 and 10,000 rows
# on a 2-core x86 machine (torch 2.13, 2 threads). CUDA: estimates from the usual ratios
# (arithmetic ~100x cheaper, launches ~2x dearer), to be re-fitted on a GPU.
COSTS = {
    "cpu": DeviceCosts(
        traversal_step=8.0,
        perfect_step=7.0,
        gemm_node=7.2,
        gemm_path=0.028,
        gemm_tree=10.0,
        launch=8_000.0,
    ),
    "cuda": DeviceCosts(
        traversal_step=0.08,
        perfect_step=0.06,
        gemm_node=0.05,
        gemm_path=0.0002,
        gemm_tree=0.1,
        launch=15_000.0,
    ),
}
# Compiled (torch.compile, CPU): each group is one fused loop, tree by tree over the rows, so
# launches cost nothing and what matters is whether one tree's node table stays in L1/L2.
# Fitted to 10 000-row runs of seven models (1 thread; ns per row x tree x level): perfect
# traversal 1.9-2.7 with tables of a few KiB, 7.4 for 74 KiB tables (100 trees of depth 12);
# tree traversal 3.4, 8.5 for 45 KiB tables. CUDA: estimates, to be fitted on a GPU.
COMPILED_STEP = {"cpu": (2.2, 3.4), "cuda": (0.03, 0.05)}  # (perfect, tree traversal)
COMPILED_TREE_BYTES = 32 << 10  # one tree's table beyond this leaves L1 ...
COMPILED_OUT_OF_CACHE = 3.3  # ... and each level's loads cost this much more

# A padded table beyond this many bytes no longer sits in cache: each level's gathers slow
# down, which the perfect-tree cost reflects with this factor.
CACHE_BYTES = 32 << 20
OUT_OF_CACHE = 1.5

# Tensor operations per level (tree traversals) or per call (GEMM), counted from the forward
# passes; categorical and zero-as-missing tests add a few more, which changes no ranking.
OPS_TREE_TRAVERSAL = 9
OPS_PERFECT_TREE_TRAVERSAL = 10
OPS_GEMM = 12


@dataclass(frozen=True)
class GroupShape:
    """What the cost model needs to know of a group of trees."""

    n_trees: int
    depth: int  # deepest tree
    internal: int  # most internal nodes in one tree
    leaves: int  # most leaves in one tree


def tree_shapes(trees: Sequence[Tree]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each tree's depth, internal-node count and leaf count: what :func:`plan` reads."""
    depths = tree_depths(list(trees))
    internal = np.array([int((t.left_child >= 0).sum()) for t in trees])
    leaves = np.array([int((t.left_child < 0).sum()) for t in trees])
    return depths, internal, leaves


def shape_of(
    depths: np.ndarray, internal: np.ndarray, leaves: np.ndarray, members: np.ndarray
) -> GroupShape:
    """The :class:`GroupShape` of the trees ``members`` (indices into the arrays)."""
    return GroupShape(
        n_trees=int(members.size),
        depth=int(depths[members].max()),
        internal=int(max(1, internal[members].max())),
        leaves=int(leaves[members].max()),
    )


def cost(
    strategy: str, group: GroupShape, batch: int, device: str, *, compiled: bool = False
) -> float:
    """Estimated nanoseconds to score ``batch`` rows; ``inf`` when it cannot be lowered."""
    kind = "cuda" if device == "cuda" else "cpu"
    c = COSTS[kind]
    t, d = group.n_trees, group.depth
    if compiled and strategy != "gemm":
        perfect, traversal = COMPILED_STEP[kind]
        if strategy == "perfect_tree_traversal":
            if padded_size(t, d) > MAX_PADDED_NODES:
                return float("inf")
            step, tree_bytes = perfect, ((1 << (d + 1)) - 1) * 9  # feature, threshold, flag
        elif strategy == "tree_traversal":
            step, tree_bytes = traversal, (2 * group.internal + 1) * 16  # and two children
        else:
            raise ValueError(f"unknown strategy {strategy!r}")
        factor = COMPILED_OUT_OF_CACHE if tree_bytes > COMPILED_TREE_BYTES else 1.0
        return batch * t * d * step * factor
    if strategy == "gemm":
        if t * group.internal * group.leaves > MAX_PATH_MATRIX:
            return float("inf")
        per_row = t * (
            group.internal * c.gemm_node + group.internal * group.leaves * c.gemm_path + c.gemm_tree
        )
        return batch * per_row + OPS_GEMM * c.launch
    if strategy == "tree_traversal":
        return batch * t * d * c.traversal_step + OPS_TREE_TRAVERSAL * d * c.launch
    if strategy == "perfect_tree_traversal":
        slots = padded_size(t, d)
        if slots > MAX_PADDED_NODES:
            return float("inf")
        step = c.perfect_step * (OUT_OF_CACHE if slots * 24 > CACHE_BYTES else 1.0)
        return batch * t * d * step + OPS_PERFECT_TREE_TRAVERSAL * d * c.launch
    raise ValueError(f"unknown strategy {strategy!r}")


CANDIDATES = ("gemm", "perfect_tree_traversal", "tree_traversal")


def estimates(
    trees: Sequence[Tree], *, batch: int, device: str, compiled: bool = False
) -> dict[str, float]:
    """Estimated nanoseconds of each standard-operator strategy lowering every tree (rule 1
    of :func:`plan`; ``inf`` past a strategy's memory limits), for ``treecomp inspect``."""
    everyone = shape_of(*tree_shapes(trees), np.arange(len(trees)))
    return {name: cost(name, everyone, batch, device, compiled=compiled) for name in CANDIDATES}


def _best(group: GroupShape, batch: int, device: str, compiled: bool = False) -> tuple[float, str]:
    return min((cost(s, group, batch, device, compiled=compiled), s) for s in CANDIDATES)


# At most this many depth groups in a compiled plan: each group unrolls its own levels, and
# compile time grows with their sum (300 LightGBM trees of depth 11..38 in 27 groups took
# 116 s to compile).
MAX_COMPILED_GROUPS = 6


def _depth_groups(
    depths: np.ndarray, internal: np.ndarray, leaves: np.ndarray, batch: int, device: str
) -> list[tuple[str, np.ndarray]]:
    """Rule 4: per-depth groups, the cheapest merges applied until few enough remain."""
    groups = [np.flatnonzero(depths == d) for d in np.unique(depths)]

    def priced(members: np.ndarray) -> tuple[float, str]:
        return _best(shape_of(depths, internal, leaves, members), batch, device, compiled=True)

    costs = [priced(m) for m in groups]
    while len(groups) > MAX_COMPILED_GROUPS:
        merged = [priced(np.concatenate(groups[i : i + 2])) for i in range(len(groups) - 1)]
        extra = [merged[i][0] - costs[i][0] - costs[i + 1][0] for i in range(len(merged))]
        i = int(np.argmin(extra))
        groups[i : i + 2] = [np.concatenate(groups[i : i + 2])]
        costs[i : i + 2] = [merged[i]]
    if not all(np.isfinite(c) for c, _ in costs):
        raise ValueError("no strategy can express this forest within the memory limits")
    return [(name, members) for (_, name), members in zip(costs, groups)]


# Rule 5's depth limit: deeper forests walk tree-major over all rows.
MAX_BLOCKED_DEPTH = 10
BLOCK_ROWS = 8


def block_rows(depths: np.ndarray, device: str) -> int:
    """Rule 5: rows per block of a branch-free module (0: one block of every row).

    A block walks every tree over a few rows, whose inputs then stay in L1 across the
    trees; tree-major over all rows keeps one tree's nodes in cache instead and streams the
    inputs once per tree. Which wins depends on which is smaller: shallow trees (a few
    hundred nodes each) favour blocks, deep ones the tree-major walk. Compiled, 10 000
    rows, 2 threads, ms tree-major / blocks of 8 / of 16 (one process, interleaved runs):
    XGBoost 10 classes x 100 rounds of depth 6: 46.4 / 42.9 / 41.8; XGBoost 500 trees of
    depth 8: 31.1 / 30.1 / 28.2; HistGradientBoosting depth 7..16: 25.0 / - / 22.2;
    RandomForest depth 12: 27.3 / 31.9 / -; LightGBM depth 11..38: 126 / - / 131. A block
    also sets the least work per call (a 1-row call walks a whole block): on the first
    model 120 / 183 / 242 us, hence blocks of 8. On CUDA, untested: tree-major.
    """
    if device != "cpu" or depths.size == 0 or int(depths.max()) > MAX_BLOCKED_DEPTH:
        return 0
    return BLOCK_ROWS


def plan(
    depths: np.ndarray,
    internal: np.ndarray,
    leaves: np.ndarray,
    *,
    batch: int,
    device: str,
    compiled: bool = False,
    tree_operator: bool = False,
) -> list[tuple[str, np.ndarray]]:
    """Choose strategies: a list of ``(strategy, tree indices)`` groups covering every tree.

    ``tree_operator``: the plan is for an ONNX graph and ONNX Runtime's ``TreeEnsemble``
    lowers these trees exactly (:func:`strategies.tree_ensemble.refusal`).

    Rules, in order:
      0. ONNX on CPU with ``tree_operator``: ``tree_ensemble`` for every tree. The operator
         walks each tree in C++ with no per-level kernels; it won at every batch size and
         depth measured (see ``TREE_OPERATOR_NOTE``). ONNX Runtime's CUDA provider has no
         kernel for it, so CUDA graphs go on to the rules below.
      1. Each strategy is costed on the whole forest (padding to its deepest/largest tree).
      2. If depths differ, every split "depth <= k | depth > k" is costed too, each side with
         its own cheapest strategy: a few deep trees no longer force GEMM off the shallow
         majority, nor do shallow trees pay for perfect-tree padding sized for deep ones.
      3. The cheapest plan wins; ties go to fewer groups.
      4. Compiled: one group per tree depth, each with its cheapest strategy. Every group is
         a loop of the one fused kernel, so groups cost no launches, and a tree walks only
         its own depth. Adjacent depths are merged, cheapest merge first, down to
         ``MAX_COMPILED_GROUPS`` groups, which bounds the compile time.
      5. Branch-free (compiled or exported) on the CPU, forests no deeper than
         ``MAX_BLOCKED_DEPTH``: rows walk in blocks of ``BLOCK_ROWS`` (:func:`block_rows`,
         kept in the forest's plan by ``strategies.lower``).
    """
    everyone = np.arange(depths.size)
    if tree_operator and device == "cpu":
        return [("tree_ensemble", everyone)]
    if compiled:
        return _depth_groups(depths, internal, leaves, batch, device)
    best_cost, best_name = _best(shape_of(depths, internal, leaves, everyone), batch, device)
    best_plan: list[tuple[str, np.ndarray]] = [(best_name, everyone)]
    for cut in np.unique(depths)[:-1]:
        shallow, deep = np.flatnonzero(depths <= cut), np.flatnonzero(depths > cut)
        cost_a, name_a = _best(shape_of(depths, internal, leaves, shallow), batch, device)
        cost_b, name_b = _best(shape_of(depths, internal, leaves, deep), batch, device)
        if name_a != name_b and cost_a + cost_b < best_cost:
            best_cost = cost_a + cost_b
            best_plan = [(name_a, shallow), (name_b, deep)]
    if not np.isfinite(best_cost):
        raise ValueError("no strategy can express this forest within the memory limits")
    return best_plan
