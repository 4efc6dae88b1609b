"""A folded forest as ``kernel.c``'s arrays (see there for their meaning): the top levels of
each tree perfect, in heap order, and every node whole (its test and children) for the
levels below them and for rows walked alone. Built once per model and engine, in NumPy, in
well under a second."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from treecomp.inputs import Precision
from treecomp.ir_shapes import heap_levels, tree_depths
from treecomp.kernel_build import ABI
from treecomp.passes import fold_missing, thresholds_for

if TYPE_CHECKING:
    from treecomp.ir import Forest, Tree

# A tree is perfect (heap-ordered) throughout where it has at most DENSE_LEVELS levels, or
# where that pads it to at most PADDING slots a node and MAX_PERFECT_LEVELS levels; see
# perfect_levels.
DENSE_LEVELS = 10
PADDING = 4
MAX_PERFECT_LEVELS = 12


# The arrays of kernel.c's forest struct, in its order (after its counts).
TABLES = (
    "used_column", "used_kind", "perfect_levels", "rest_levels", "perfect_base", "entry_base",
    "out_index", "width", "pfeature", "pthreshold", "entry", "value_base", "values", "base",
    "slot_base", "slot_values", "node", "node_base",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Layout:
    """A folded forest as the kernel's arrays (see ``kernel.c`` for their meaning).

    Attributes:
        compare, accumulate: NumPy dtypes of the tests and of the sums.
        node_base: Each tree's first global node id, its root (and, subtracted, its own
            node ids).
    """

    compare: type[np.floating[Any]]
    accumulate: type[np.floating[Any]]
    used_column: npt.NDArray[np.int32]
    used_kind: npt.NDArray[np.int8]
    perfect_levels: npt.NDArray[np.int32]
    rest_levels: npt.NDArray[np.int32]
    perfect_base: npt.NDArray[np.int64]
    entry_base: npt.NDArray[np.int64]
    out_index: npt.NDArray[np.int32]
    width: npt.NDArray[np.int32]
    pfeature: npt.NDArray[np.int32]
    pthreshold: npt.NDArray[Any]
    entry: npt.NDArray[np.int32]
    value_base: npt.NDArray[np.int64]
    values: npt.NDArray[Any]
    node_base: npt.NDArray[np.int64]
    slot_base: npt.NDArray[np.int64]
    slot_values: npt.NDArray[Any]
    node: npt.NDArray[np.void]


def perfect_levels(tree: Tree, depth: int) -> int:
    """Top levels of ``tree`` laid out perfect, the rest walked by child pointers.

    A perfect level is one vectorised step for every row of a block; a pointer level costs
    more a row (the child is loaded too) but only rows still walking take it. Trees of at
    most ``DENSE_LEVELS`` levels are perfect throughout however sparse (their tables stay
    within 12 KiB); so are trees of at most ``MAX_PERFECT_LEVELS`` whose padding stays within
    ``PADDING`` slots per node; deeper or sparser trees (leaf-wise growth) keep perfect the
    top levels that are at least half full. 10 000 rows, 1 thread, ms: LightGBM's 300 trees
    of 255 leaves (up to 37 levels) 438 with 10 perfect levels and no compaction, 233 with
    10 and compaction, 150 to 156 with 4 to 6, 196 with none; XGBoost's depth-8 trees 60 all
    perfect, 63 with 6, 101 with none; RandomForest's depth-12 trees 87 all perfect, 117
    with 6; HistGradientBoosting's 31-leaf trees 24 to 28 with 4 to 8. With the permuted
    top levels of kernel.c: XGBoost's 500 trees of depth 8, of which 141 are sparse (at most
    63 nodes), 38.5 with the padding rule alone, 27.6 all perfect; HistGradientBoosting's
    trees of 7 to 15 levels 22.8 and 18.7 with DENSE_LEVELS 10.
    """
    dense = depth <= DENSE_LEVELS or (1 << depth) - 1 <= PADDING * tree.n_nodes
    if depth <= MAX_PERFECT_LEVELS and dense:
        return depth
    level, levels = np.array([0]), 0
    while levels < min(depth, MAX_PERFECT_LEVELS):
        internal = level[tree.left_child[level] >= 0]
        if 2 * internal.size < (1 << levels):
            break
        level = np.concatenate([tree.left_child[internal], tree.right_child[internal]])
        levels += 1
    return levels


def counts(forest: Forest, layout: Layout) -> tuple[int, int, int, int]:
    """The counts before kernel.c's forest struct's arrays: the input features, the used
    columns, the trees and the outputs."""
    return forest.n_features, layout.used_column.size, layout.out_index.size, forest.n_outputs


def start_sums(forest: Forest, layout: Layout) -> npt.NDArray[Any]:
    """What each output's sum starts from in the kernel (its ``base`` table): the base
    score, or zeros for averaging forests, which add theirs after the mean."""
    if forest.aggregation == "average":
        return np.zeros(forest.n_outputs, dtype=layout.accumulate)
    return np.asarray(forest.base_score, dtype=layout.accumulate)


def folded_layout(forest: Forest, precision: Precision) -> Layout | None:
    """``forest``'s kernel arrays, tested in ``precision``: its trees with the thresholds
    of that type, folded (:func:`treecomp.passes.fold_missing`), then laid out; None where
    they do not fold (categorical or zero-as-missing splits)."""
    lowered = thresholds_for(forest, precision)
    fold = fold_missing(lowered.trees, less_equal=forest.comparison == "<=", dtype=precision)
    return None if fold is None else lay_out(forest, *fold, precision)


def lay_out(forest: Forest, trees: list[Tree], columns: int, compare: Precision) -> Layout:
    """The kernel's arrays of ``trees``, ``forest``'s trees folded with ``columns`` input
    columns per feature (:func:`treecomp.passes.fold_missing`), tested in ``compare``."""
    cmp_type = np.float32 if compare == "float32" else np.float64
    acc_type = np.float32 if forest.accumulation == "float32" else np.float64
    sizes = np.array([t.n_nodes for t in trees], dtype=np.int64)
    node_base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    internal = np.concatenate([t.left_child >= 0 for t in trees])
    folded = np.concatenate([t.feature for t in trees]).astype(np.int64)
    used, compact = np.unique(np.where(internal, folded, -1), return_inverse=True)
    compact = compact - (1 if used.size and used[0] == -1 else 0)
    used = used[used >= 0]
    nfeature = np.where(internal, compact, 0).astype(np.int32)
    nthreshold = np.concatenate([t.threshold for t in trees]).astype(cmp_type)
    nthreshold[~internal] = 0
    ids = np.arange(int(sizes.sum()), dtype=np.int32)
    left = np.concatenate([t.left_child + b for t, b in zip(trees, node_base)]).astype(np.int32)
    right = np.concatenate([t.right_child + b for t, b in zip(trees, node_base)]).astype(np.int32)
    child = np.stack([np.where(internal, left, ids), np.where(internal, right, ids)], 1)
    widths = np.array([t.leaf_width for t in trees], dtype=np.int32)
    node_widths = np.repeat(widths, sizes)
    value_base = np.concatenate([[0], np.cumsum(node_widths)[:-1]]).astype(np.int64)
    values = np.concatenate([t.value.reshape(-1) for t in trees]).astype(acc_type)
    depths = tree_depths(forest.trees)
    levels = np.array([perfect_levels(t, int(d)) for t, d in zip(trees, depths)], np.int32)
    pfeature, pthreshold, entry = [], [], []
    perfect_base, entry_base = [], []
    p_at = e_at = 0
    for t in range(len(trees)):
        # global ids of the slots of each perfect level, and of the level below them
        *perfect, below = heap_levels(node_base[t : t + 1], left, right, ~internal, int(levels[t]))
        slots = np.concatenate([level.reshape(-1) for level in perfect] or [np.zeros(0, np.int64)])
        pfeature.append(nfeature[slots])
        pthreshold.append(nthreshold[slots])
        perfect_base.append(p_at)
        entry_base.append(e_at)
        p_at += (1 << int(levels[t])) - 1
        e_at += below.size
        entry.append(below.reshape(-1).astype(np.int32))
    # Trees perfect throughout: their leaves' values by the slot of the last level.
    slot_base, slot_values, at = np.full(len(trees), -1, np.int64), [], 0
    for t, tree in enumerate(trees):
        if depths[t] == levels[t]:
            slot_base[t] = at
            local = entry[t] - node_base[t]
            slot_values.append(tree.value[local].reshape(-1).astype(acc_type))
            at += slot_values[-1].size
    empty_i32 = np.zeros(0, np.int32)
    return Layout(
        compare=cmp_type,
        accumulate=acc_type,
        used_column=(used // columns).astype(np.int32),
        used_kind=(used % columns).astype(np.int8),
        perfect_levels=levels,
        rest_levels=(depths - levels).astype(np.int32),
        perfect_base=np.array(perfect_base, np.int64),
        entry_base=np.array(entry_base, np.int64),
        out_index=np.array([t.output_index for t in trees], np.int32),
        width=widths,
        pfeature=np.concatenate(pfeature).astype(np.int32) if pfeature else empty_i32,
        pthreshold=np.concatenate(pthreshold).astype(cmp_type)
        if pthreshold
        else np.zeros(0, cmp_type),
        entry=np.concatenate(entry),
        value_base=value_base,
        values=values,
        node_base=node_base,
        slot_base=slot_base,
        slot_values=np.concatenate(slot_values) if slot_values else np.zeros(1, acc_type),
        node=whole_nodes(nfeature, nthreshold, child),
    )


def node_dtype(compare: Any) -> np.dtype[np.void]:
    """kernel.c's ``node``: a node's threshold, used column and children, padded as C does."""
    return np.dtype([("s", compare), ("f", np.int32), ("child", np.int32, (2,))], align=True)


def whole_nodes(
    feature: npt.NDArray[np.int32], threshold: npt.NDArray[Any], child: npt.NDArray[np.int32]
) -> npt.NDArray[np.void]:
    """Every node whole: one cache line a step below the perfect levels and for rows walked
    alone (see ``kernel.c``)."""
    nodes = np.zeros(feature.size, dtype=node_dtype(threshold.dtype))
    nodes["s"], nodes["f"], nodes["child"] = threshold, feature, child.reshape(-1, 2)
    return nodes


# kernel.c's BLOB_MAGIC ("treecomp", little-endian) and its header's numbers before the
# arrays' offsets (magic, calling convention, kinds, four counts).
MAGIC = 0x706D6F6365657274
HEADER_NUMBERS = 7
ALIGN = 64


def pack(forest: Forest, layout: Layout) -> npt.NDArray[np.uint8]:
    """The kernel's tables of ``forest`` in one buffer, as kernel.c's ``treecomp_blob_walk``
    reads them (compiled packages carry them so: :mod:`treecomp.kernel_op`): the header
    (magic, calling convention, kinds, counts, each array's offset), then the arrays, each
    at a multiple of 64 bytes."""
    arrays = [
        start_sums(forest, layout) if name == "base" else getattr(layout, name) for name in TABLES
    ]
    flat = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    at = 8 * (HEADER_NUMBERS + len(TABLES))
    offsets = []
    for part in flat:
        at = -(-at // ALIGN) * ALIGN
        offsets.append(at)
        at += part.size
    kinds = 2 * (layout.compare == np.float64) + (layout.accumulate == np.float64)
    header = np.array([MAGIC, ABI, kinds, *counts(forest, layout), *offsets], dtype=np.int64)
    blob = np.zeros(at, dtype=np.uint8)
    blob[: header.nbytes] = header.view(np.uint8)
    for part, offset in zip(flat, offsets, strict=True):
        blob[offset : offset + part.size] = part
    return blob
