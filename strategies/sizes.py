"""How large the strategies' tables grow, and the limits past which they go hybrid.

The strategies lay their tables out by these rules, and the selector's cost model prices
plans by the same ones (:mod:`strategies.selector`), so they stand here, below both.
"""

# Perfect-tree traversal pads trees to complete ones up to this many node slots (about
# 1 GiB of node parameters); past it, only the top levels stay perfect
# (strategies.perfect_tree_traversal.HYBRID_PADDING).
MAX_PADDED_NODES = 1 << 27
# GEMM keeps whole trees in its path matrices up to this many entries; past it, only the top
# levels (strategies.gemm.HYBRID_PATH_MATRIX).
MAX_PATH_MATRIX = 1 << 27


def padded_size(n_trees: int, depth: int) -> int:
    """Node slots of ``n_trees`` complete trees of ``depth`` (internal levels plus leaves)."""
    return n_trees * ((1 << (depth + 1)) - 1)
