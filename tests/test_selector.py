"""The strategy selector does what strategies/selector.py documents."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from strategies import selector
from strategies.perfect_tree_traversal import MAX_PADDED_NODES, padded_size
from strategies.selector import GroupShape, cost, plan


def full_trees(depths: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth, internal-node and leaf counts of complete trees of the given depths."""
    d = np.array(depths)
    return d, 2**d - 1, 2**d


def test_tiny_batches_of_shallow_trees_use_gemm() -> None:
    """Rule: fixed per-operation cost dominates small batches; GEMM has the fewest ops."""
    groups = plan(*full_trees([3] * 100), batch=1, device="cpu")
    assert [name for name, _ in groups] == ["gemm"]


def test_large_batches_of_deep_trees_avoid_gemm() -> None:
    """Rule: GEMM's work grows as internal x leaves; traversals grow with depth only."""
    groups = plan(*full_trees([8] * 100), batch=10_000, device="cpu")
    assert groups[0][0] in ("tree_traversal", "perfect_tree_traversal")
    assert cost("gemm", GroupShape(100, 8, 255, 256), 10_000, "cpu") > 10 * cost(
        "tree_traversal", GroupShape(100, 8, 255, 256), 10_000, "cpu"
    )


def test_padding_beyond_the_memory_limit_rules_out_perfect_traversal() -> None:
    """Rule: a strategy that cannot express the forest costs infinity and is never chosen."""
    depth = 22
    n_trees = 100
    assert padded_size(n_trees, depth) > MAX_PADDED_NODES
    d = np.full(n_trees, depth)
    # Sparse deep trees (LightGBM leaf-wise): few nodes, great depth.
    internal, leaves = np.full(n_trees, 60), np.full(n_trees, 61)
    shape = GroupShape(n_trees, depth, 60, 61)
    assert cost("perfect_tree_traversal", shape, 10_000, "cpu") == float("inf")
    groups = plan(d, internal, leaves, batch=10_000, device="cpu")
    assert [name for name, _ in groups] == ["tree_traversal"]


def test_a_few_deep_trees_do_not_drag_the_shallow_majority() -> None:
    """Rule: when depths differ, the forest may split into a shallow and a deep group."""
    depths = [2] * 200 + [20] * 5
    groups = plan(*_sparse(depths), batch=10_000, device="cpu")
    assert len(groups) == 2
    (shallow_name, shallow), (deep_name, deep) = groups
    assert shallow_name != deep_name
    np.testing.assert_array_equal(shallow, np.arange(200))
    np.testing.assert_array_equal(deep, np.arange(200, 205))
    # Chain-like deep trees have few nodes: padding them to 2**20 slots is the worst choice.
    assert deep_name != "perfect_tree_traversal"


def test_splitting_is_not_worth_it_when_launches_dominate() -> None:
    """Rule: the cheapest plan wins, so a one-row batch keeps a single group."""
    groups = plan(*_sparse([2] * 200 + [20] * 5), batch=1, device="cpu")
    assert len(groups) == 1


def test_device_changes_the_costs() -> None:
    shape = GroupShape(n_trees=500, depth=6, internal=63, leaves=64)
    for strategy in ("gemm", "tree_traversal", "perfect_tree_traversal"):
        assert cost(strategy, shape, 10_000, "cuda") < cost(strategy, shape, 10_000, "cpu")


def test_unknown_strategy_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        cost("magic", GroupShape(1, 1, 1, 2), 1, "cpu")


def _sparse(depths: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depths with node counts of chain-like trees (one extra node per level)."""
    d = np.array(depths)
    return d, np.maximum(d, 1), d + 1


# --- Compiled plans (rule 4) ---------------------------------------------------------------


def test_compiled_plans_group_trees_by_depth() -> None:
    """Rule 4: a tree walks only its own depth; groups follow depths in order."""
    depths = [3] * 50 + [6] * 30 + [9] * 20
    groups = plan(*full_trees(depths), batch=10_000, device="cpu", compiled=True)
    assert len(groups) == 3
    for (_, members), depth in zip(groups, (3, 6, 9)):
        assert set(np.asarray(depths)[members]) == {depth}
    assert sorted(np.concatenate([m for _, m in groups]).tolist()) == list(range(100))


def test_compiled_plans_pad_small_trees_and_walk_big_ones() -> None:
    """Rule 4's costs: perfect layout while one tree's table fits L1, pointers beyond."""
    shallow = plan(*full_trees([8] * 100), batch=10_000, device="cpu", compiled=True)
    assert [name for name, _ in shallow] == ["perfect_tree_traversal"]
    # Chain-like trees of depth 16: 2**17 padded slots per tree, against 17 real nodes.
    deep = plan(*_sparse([16] * 100), batch=10_000, device="cpu", compiled=True)
    assert [name for name, _ in deep] == ["tree_traversal"]
    assert cost(
        "perfect_tree_traversal", GroupShape(100, 16, 16, 17), 10_000, "cpu", compiled=True
    ) > cost("tree_traversal", GroupShape(100, 16, 16, 17), 10_000, "cpu", compiled=True)


def test_compiled_plans_have_few_groups() -> None:
    """Rule 4: adjacent depths merge (cheapest first) down to MAX_COMPILED_GROUPS."""
    from strategies.selector import MAX_COMPILED_GROUPS

    depths = list(range(5, 40))  # 35 distinct depths, as in a leaf-wise LightGBM forest
    groups = plan(*_sparse(depths), batch=10_000, device="cpu", compiled=True)
    assert len(groups) == MAX_COMPILED_GROUPS
    covered = np.sort(np.concatenate([m for _, m in groups]))
    np.testing.assert_array_equal(covered, np.arange(len(depths)))
    for _, members in groups:  # each group is a run of neighbouring depths
        assert np.ptp(members) == members.size - 1


def test_branch_free_modules_walk_shallow_forests_in_row_blocks() -> None:
    """Rule 5: row blocks on the CPU up to MAX_BLOCKED_DEPTH; deeper or CUDA: tree-major."""
    from strategies.selector import BLOCK_ROWS, MAX_BLOCKED_DEPTH, block_rows

    assert block_rows(np.array([3, MAX_BLOCKED_DEPTH]), "cpu") == BLOCK_ROWS
    assert block_rows(np.array([3, MAX_BLOCKED_DEPTH + 1]), "cpu") == 0
    assert block_rows(np.array([3]), "cuda") == 0
    assert block_rows(np.zeros(0, dtype=np.int64), "cpu") == 0


@pytest.mark.parametrize("batch", [1, 10_000])
def test_estimates_are_the_costs_a_one_group_plan_picks_from(batch: int) -> None:
    """What ``treecomp inspect`` prints: rule 1's whole-forest cost of each strategy; a
    forest of one depth gets one group, the cheapest of them."""
    from tests.test_ir import small_forest
    from treecomp.passes import float32_thresholds

    forest = float32_thresholds(small_forest())
    depths, internal, leaves = selector.tree_shapes(forest.trees)
    assert np.unique(depths).size == 1
    costs = selector.estimates(forest.trees, batch=batch, device="cpu")
    assert set(costs) == set(selector.CANDIDATES)
    everyone = selector.shape_of(depths, internal, leaves, np.arange(depths.size))
    assert costs == {s: cost(s, everyone, batch, "cpu") for s in selector.CANDIDATES}
    [(chosen, _)] = plan(depths, internal, leaves, batch=batch, device="cpu")
    assert chosen == min(costs, key=costs.__getitem__)
