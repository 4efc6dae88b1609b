"""Tree-operator lowering: ONNX-ML's ``TreeEnsemble`` operator finds the leaves.

ONNX Runtime implements ``ai.onnx.ml`` opset 5 ``TreeEnsemble`` as a C++ tree walker, several
times faster than a traversal unrolled into standard operators. We use it only to *find*
leaves: each tree is its own target, so the operator's per-target "sum" is the one leaf that
tree reached. The leaf's weight is either its row in the leaf table (:meth:`emit_onnx`, for
native leaf ids and vector leaves: exact while the float type counts the rows) or, for
scalar leaves, its value in the accumulation type (:meth:`emit_values`: ``0 + v`` is ``v``,
and no gather follows). The native summation order and precision, the link and the labels
stay in the standard-operator graph that every strategy shares (``treecomp.onnx.graph``), so
this lowering is exact wherever the others are: ONNX Runtime's own sum over trees splits the
trees between threads, an order no native library uses. Exported graphs score large batches
with one node per tree (:meth:`emit_tree_values`), whose values the graph adds in order.

How the IR's decision rule maps onto the operator (``true`` is the left child):

* ``x < t`` and ``x <= t`` are ``BRANCH_LT`` and ``BRANCH_LEQ``; a NaN follows the true branch
  iff ``nodes_missing_value_tracks_true``, which is the IR's ``default_left``.
* LightGBM's zero-as-missing nodes read a copy of their column with ``|x| <= ZERO_THRESHOLD``
  turned into NaN, so zeros follow the default direction as NaN does.
* Categorical nodes read a copy of their column mapped to category codes: ``trunc(x)`` where
  ``x`` is in the forest's category domain, -1 (never a category) elsewhere, NaN kept. Then
  ``BRANCH_MEMBER`` against the node's categories is the IR's rule for every input,
  non-integers and ±inf included. A category the float type cannot represent can never equal
  a code of that type and is left out of the set (codes above 2**24 in float32).
* A single-leaf tree is one node whose both branches are that leaf.

Those copies are placed before the input's columns, so the operator's input is
``[copies..., X]`` and original feature ``j`` is column ``n_copies + j``.

The operator exists only in ONNX Runtime's CPU provider: this strategy is registered for the
``onnx`` target only, and the selector keeps the standard-operator strategies for CUDA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from strategies.nodes import GroupOptions, TreeGroup
from strategies.registry import register_strategy
from treecomp.ir_schema import ZERO_THRESHOLD

if TYPE_CHECKING:
    from treecomp.ir import Tree

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 5
# nodes_modes values of TreeEnsemble (opset 5).
BRANCH_LEQ, BRANCH_LT, BRANCH_MEMBER = 0, 1, 6
# Integers a float type represents exactly, from 0: the leaf rows the operator can return.
EXACT_COUNT = {"float32": 1 << 24, "float64": 1 << 53}
# Trees per operator node, for batches of SPLIT_FROM_ROWS rows or more (smaller batches get one
# node per group). On 2+ threads ONNX Runtime keeps a score vector per target for every row
# and thread, which spills the cache on large batches: XGBoost, 500 trees of depth 8, 10 000
# rows, 2 threads, whole graph: 116 ms in nodes of 64 trees, 118 of 128, 121 in one node;
# 10 classes x 100 rounds: 175, 170, 193 ms. A node walks one row's trees on every thread
# only from 80 trees on (ONNX Runtime's parallel_tree_), so nodes of 128 serve the single
# rows of an exported graph too (1 row, in us, nodes of 64 / 128 / one node): 500 trees
# 35.8 / 30.7 / 24.9, 10 classes x 100 rounds 70.6 / 51.0 / 35.1, RandomForest 100 trees
# 32.4 / 21.0 / 21.0, LightGBM 300 trees 50.5 / 31.1 / - (10 000 rows within noise of 64).
# Since exported graphs score batches of 256 rows or more with a node per tree and smaller
# ones planned for them (treecomp.onnx.export.LARGE_BATCH_ROWS), this split serves their
# leaf_indices output and the graphs of a forest no If applies to.
TREES_PER_NODE = 128
SPLIT_FROM_ROWS = 5_000
# In sessions of one thread (GroupOptions.one_thread) the operator keeps one score vector per
# row of a 128-row block: small nodes keep it in L1. RandomForest, 5 classes, 100 trees of
# depth 12, 10 000 rows on two one-thread sessions: 47.7 ms in nodes of 2 trees, 49.2 of 4,
# 49.4 of 8, 52 of 16, 57 of 64 (ONNX-ML's graph: 50 ms on 2 threads).
ONE_THREAD_TREES_PER_NODE = 8


def refusal(trees: list[Tree], precision: str) -> str | None:
    """Why these trees cannot be lowered exactly to ``TreeEnsemble`` in ``precision``, or None.

    A tree with more leaves than float32 counts has its positions found in double (a
    float32 input and its float32-exact splits compare alike in double), so only trees past
    double's count, which no memory holds, are refused.
    """
    if precision not in EXACT_COUNT:
        return f"TreeEnsemble takes float or double inputs, not {precision}"
    limit = EXACT_COUNT["float64"]
    largest = max(int((t.left_child < 0).sum()) for t in trees)
    if largest > limit:
        return (
            f"a tree has {largest:,} leaves; double counts leaf positions exactly only to {limit:,}"
        )
    return None


def variant_keys(
    feature: npt.NDArray[np.int32],
    zero_is_missing: npt.NDArray[np.bool_],
    categorical: npt.NDArray[np.bool_],
) -> npt.NDArray[np.int64]:
    """One integer per input variant ``(feature, zero_is_missing, categorical)``: features
    are below 2**31, so the key fits an int64 and orders variants by feature first."""
    return feature.astype(np.int64) << 2 | zero_is_missing.astype(np.int64) << 1 | categorical


@register_strategy("tree_ensemble")
class TreeEnsemble(TreeGroup):
    """Leaves found by ONNX-ML ``TreeEnsemble`` nodes (ONNX Runtime's tree walker)."""

    tree_operator = True

    def __init__(self, trees: list[Tree], columns: list[int], options: GroupOptions) -> None:
        reason = refusal(trees, options.precision)
        if reason is not None:
            raise ValueError(f"tree_ensemble cannot express this forest: {reason}")
        super().__init__(trees, columns, None, options)
        self.dtype: type[np.floating[Any]] = np.dtype(options.precision).type
        self.trees = trees
        self.split = ONE_THREAD_TREES_PER_NODE if options.one_thread else TREES_PER_NODE
        self.plan_rows(options.batch_size)
        leaves = [np.flatnonzero(t.left_child < 0) for t in trees]
        counts = np.array([leaf.size for leaf in leaves])
        # A tree's leaf rows are its leaf positions plus its offset in the group's table.
        # When the whole table counts exactly, the offset is folded into the leaf weights.
        self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.global_rows = int(counts.sum()) <= EXACT_COUNT[options.precision]
        if int(counts.max()) > EXACT_COUNT[options.precision]:  # double positions count them all
            self.global_rows = int(counts.sum()) <= EXACT_COUNT["float64"]
        self.set_leaves(
            np.concatenate([t.value[leaf] for t, leaf in zip(trees, leaves)]),
            np.concatenate([t.leaf_id[leaf] for t, leaf in zip(trees, leaves)]),
        )
        # Input variants (feature, zero_is_missing, categorical) -> operator column, in the
        # order of their first node.
        internal = np.concatenate([t.left_child >= 0 for t in trees])
        feature, zero, categorical = (
            np.concatenate([getattr(t, name) for t in trees])[internal]
            for name in ("feature", "zero_is_missing", "is_categorical")
        )
        copied = zero | categorical
        keys, first = np.unique(
            variant_keys(feature[copied], zero[copied], categorical[copied]), return_index=True
        )
        order = np.argsort(first)
        self.copies: dict[tuple[int, bool, bool], int] = {
            (int(key) >> 2, bool(key & 2), bool(key & 1)): column
            for column, key in enumerate(keys[order])
        }
        self.copy_keys = keys  # sorted, for searchsorted
        self.copy_columns = np.empty(keys.size, dtype=np.int64)
        self.copy_columns[order] = np.arange(keys.size)

    def plan_rows(self, rows: int) -> None:
        """Size the operator nodes for batches of ``rows`` rows."""
        large = rows >= SPLIT_FROM_ROWS
        self.trees_per_node = self.split if large else max(1, len(self.trees))

    @contextlib.contextmanager
    def planned_for(self, rows: int) -> Iterator[None]:
        """Nodes sized for batches of ``rows`` rows while emitting (an exported graph's branch
        for small batches, ``treecomp.onnx.graph.emit_module``), the plan's own after."""
        kept = self.trees_per_node
        self.plan_rows(rows)
        try:
            yield
        finally:
            self.trees_per_node = kept

    def input_columns(
        self,
        feature: npt.NDArray[np.int32],
        zero_is_missing: npt.NDArray[np.bool_],
        categorical: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.int64]:
        """The operator-input column that each node on ``feature`` of that kind reads."""
        out = feature.astype(np.int64) + len(self.copies)
        copied = zero_is_missing | categorical
        keys = variant_keys(feature[copied], zero_is_missing[copied], categorical[copied])
        out[copied] = self.copy_columns[np.searchsorted(self.copy_keys, keys)]
        return out

    def attributes(
        self,
        lo: int,
        hi: int,
        weights: npt.NDArray[np.floating],
        targets: npt.NDArray[np.int64] | None = None,
        n_targets: int = 0,
    ) -> dict[str, Any]:
        """``TreeEnsemble`` attributes of trees ``lo:hi``; ``weights`` per leaf of the group.

        Each tree is its own target unless ``targets`` gives every tree of the group one of
        ``n_targets`` targets (:meth:`emit_sums`).

        Computed on the trees' arrays concatenated, not node by node: a fresh process builds
        this graph at every ``convert``. LightGBM, 300 trees of 255 leaves (76 200 operator
        nodes, ``lgbm-regression`` of ``treecomp.bench.models``): 0.20 s in a Python loop over
        the nodes, 0.011 s so. ``test_attributes_match_the_node_by_node_mapping`` keeps the
        loop as the oracle.
        """
        from onnx import numpy_helper

        trees = self.trees[lo:hi]
        sizes = np.array([t.n_nodes for t in trees])
        start = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # each tree's first node

        def joined(name: str) -> npt.NDArray[Any]:
            return np.concatenate([getattr(t, name) for t in trees])

        leaf = joined("left_child") < 0
        # Operator nodes: the internal nodes in order, and a single-leaf tree's leaf, which
        # becomes one node whose both branches reach it. Leaves keep their order too.
        emitted = ~leaf
        emitted[start[leaf[start]]] = True
        node_position = np.cumsum(emitted) - 1
        leaf_position = np.cumsum(leaf) - 1
        nodes = np.flatnonzero(emitted)
        single = leaf[nodes]
        base = np.repeat(start, sizes)[nodes]

        def branch(child: npt.NDArray[np.int32]) -> tuple[list[int], list[int]]:
            """Operator ids and leaf flags of the children ``child`` (local ids per node)."""
            target = np.where(single, nodes, child[nodes] + base)
            is_leaf = leaf[target]
            position = np.where(is_leaf, leaf_position[target], node_position[target])
            return position.tolist(), is_leaf.astype(np.int64).tolist()

        categorical = joined("is_categorical")[nodes]  # never a leaf (Forest.validate)
        modes = np.where(single, BRANCH_LEQ, BRANCH_LEQ if self.less_equal else BRANCH_LT)
        splits = np.where(single, 0.0, joined("threshold")[nodes])
        tracks = np.where(single, False, joined("default_left")[nodes]).astype(np.int64)
        features = np.zeros(nodes.size, dtype=np.int64)
        tested = ~single
        features[tested] = self.input_columns(
            joined("feature")[nodes][tested],
            joined("zero_is_missing")[nodes][tested],
            categorical[tested],
        )
        # Categories the precision of the tests cannot hold are never a code: left out.
        precision = self.dtype
        # Only categorical nodes list categories (Forest.validate), in node order.
        values = joined("category_values")
        owner = np.repeat(
            np.arange(leaf.size), np.concatenate([np.diff(t.category_offsets) for t in trees])
        )
        kept = values.astype(precision).astype(np.int64) == values
        listed = np.bincount(owner[kept], minlength=leaf.size)[nodes] > 0
        # A categorical node with no category listed: no code is < -inf.
        modes = np.where(categorical, np.where(listed, BRANCH_MEMBER, BRANCH_LT), modes)
        splits = np.where(categorical, np.where(listed, 0.0, -np.inf), splits)
        true_ids, true_leafs = branch(joined("left_child"))
        false_ids, false_leafs = branch(joined("right_child"))
        tree_targets = np.arange(hi - lo) if targets is None else targets[lo:hi]
        leaf_targets = np.repeat(tree_targets, np.add.reduceat(leaf, start))
        first_leaf = int(self.offsets[lo])
        last_leaf = int(self.offsets[hi]) if hi < len(self.trees) else weights.size
        attributes: dict[str, Any] = {
            "n_targets": hi - lo if targets is None else n_targets,
            "aggregate_function": 1,  # SUM
            "post_transform": 0,
            "tree_roots": node_position[start].tolist(),
            "nodes_modes": numpy_helper.from_array(modes.astype(np.uint8)),
            "nodes_featureids": features.tolist(),
            "nodes_splits": numpy_helper.from_array(splits.astype(weights.dtype)),
            "nodes_truenodeids": true_ids,
            "nodes_trueleafs": true_leafs,
            "nodes_falsenodeids": false_ids,
            "nodes_falseleafs": false_leafs,
            "nodes_missing_value_tracks_true": tracks.tolist(),
            "leaf_targetids": leaf_targets.tolist(),
            "leaf_weights": numpy_helper.from_array(weights[first_leaf:last_leaf]),
        }
        if kept.any():  # the sets in node order, separated by NaN
            members = values[kept].astype(np.float64)
            ends = np.flatnonzero(np.diff(owner[kept])) + 1
            joined_sets = np.insert(members, ends, np.nan).astype(weights.dtype)
            attributes["membership_values"] = numpy_helper.from_array(joined_sets)
        return attributes

    def emit_copy(
        self,
        g: Any,
        X: str,
        feature: int,
        zero_is_missing: bool,
        categorical: bool,
        float_type: Any,
    ) -> str:
        """Column ``feature`` of ``X`` as a node of that kind must see it (module docstring)."""

        def scalar(value: float) -> str:
            return g.const(np.array(value, dtype=float_type))

        x = g.op("Gather", X, g.ints([feature]), axis=1)
        nan = scalar(float("nan"))
        if zero_is_missing:
            x = g.op("Where", g.op("LessOrEqual", g.op("Abs", x), scalar(ZERO_THRESHOLD)), nan, x)
        if categorical:
            lower = (
                g.op("GreaterOrEqual", x, scalar(0.0))
                if self.nonnegative_categories
                else g.op("Greater", x, scalar(-1.0))
            )
            # trunc for values > -1 is floor(max(x, 0)); NaN fails `lower` and is put back.
            code = g.op("Where", lower, g.op("Floor", g.op("Max", x, scalar(0.0))), scalar(-1.0))
            x = g.op("Where", g.op("IsNaN", x), nan, code)
        return x

    def _emit(
        self,
        g: Any,
        X: str,
        weights: npt.NDArray[np.floating],
        targets: npt.NDArray[np.int64] | None = None,
        n_targets: int = 0,
    ) -> str:
        """Every tree's leaf weight, ``(N, n_trees)`` in the weights' float type; with
        ``targets``, their sums per target, ``(N, n_targets)``, from one operator node."""
        source = self._source(g, X, weights.dtype)
        step = self.trees_per_node if targets is None else len(self.trees)
        parts = [
            g.op(
                "TreeEnsemble",
                source,
                domain=ML_DOMAIN,
                **self.attributes(lo, hi, weights, targets, n_targets),
            )
            for lo in range(0, len(self.trees), step)
            for hi in [min(lo + step, len(self.trees))]
        ]
        return parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1)

    def _source(self, g: Any, X: str, float_type: Any) -> str:
        """The operator's input ``[copies..., X]`` for weights of ``float_type``."""
        if float_type != self.dtype:
            X = g.op("Cast", X, to="float64")  # exact: float32 inputs and splits, widened
        if not self.copies:
            return X
        copies = [self.emit_copy(g, X, *key, float_type) for key in self.copies]
        return g.op("Concat", *copies, X, axis=1)

    def emit_tree_values(self, g: Any, X: str, table: npt.NDArray[np.floating]) -> list[str]:
        """Each tree's leaf row of ``table``, ``(N, width)`` per tree in the group's order,
        from one operator node per tree (for :func:`treecomp.onnx.graph` to add in order).

        A node of one tree and one target returns that tree's leaf weight as it is (``0 + v``)
        on any number of threads: no split of the trees between threads applies to it. Scalar
        leaves are the weights, in double where the tests are float32 and the sums double
        (the input and the splits widened: the same tests); vector leaves are gathered at
        the tree's leaf position (exact in the positions' type, see :meth:`emit_onnx`).
        Scikit-learn's GradientBoosting, 50 trees, 10 000 rows, 2 threads, ONNX Runtime's
        profile: 6.9 ms so, 9.9 ms with float32 positions and a gather per tree (ONNX-ML's
        graph: 9.3 ms).
        """
        precision = self.dtype
        direct = table.shape[1] == 1 and table.dtype in (precision, np.float64)
        weights = np.ascontiguousarray(table[:, 0]) if direct else self._leaf_rows(local=True)
        source = self._source(g, X, weights.dtype)
        one = np.zeros(len(self.trees), dtype=np.int64)  # every tree: target 0 of 1
        values = []
        for t in range(len(self.trees)):
            attributes = self.attributes(t, t + 1, weights, one, 1)
            found = g.op("TreeEnsemble", source, domain=ML_DOMAIN, **attributes)
            if not direct:
                position = g.op("Squeeze", g.op("Cast", found, to="int64"), g.ints([1]))
                found = g.op("Gather", g.const(table[self.tree_rows(t)]), position, axis=0)
            values.append(found)
        return values

    def tree_rows(self, local: int) -> slice:
        """The rows of the leaf table that hold tree ``local``'s leaves."""
        end = int(self.offsets[local + 1]) if local + 1 < len(self.trees) else self.leaf_id.size
        return slice(int(self.offsets[local]), end)

    def _leaf_rows(self, *, local: bool) -> npt.NDArray[np.floating]:
        """Each leaf's row in the group's table, or (``local``) in its tree's rows, as leaf
        weights: in the tests' float type, or in double past its exact count."""
        float_type = self.dtype
        widest = max(int((t.left_child < 0).sum()) for t in self.trees)
        if widest > EXACT_COUNT[self.precision]:  # positions past float32's count: in double
            float_type = np.float64
        rows = np.arange(self.leaf_id.size)
        if local:
            rows = rows - np.repeat(self.offsets, np.diff(np.append(self.offsets, rows.size)))
        return rows.astype(float_type)

    def emit_onnx(self, g: Any, X: str) -> str:
        found = g.op(
            "Cast", self._emit(g, X, self._leaf_rows(local=not self.global_rows)), to="int64"
        )
        if not self.global_rows:
            found = g.op("Add", found, g.const(self.offsets.reshape(1, -1)))
        return found

    def emit_values(self, g: Any, X: str, table: npt.NDArray[np.floating]) -> str | None:
        """Every tree's leaf value ``(N, n_trees)`` from ``table`` (this group's leaf table,
        perhaps with base scores added; see ``treecomp.onnx.graph``), or None where the
        operator cannot return them: vector leaves (a leaf has one weight), and sums in
        another type than the tests. The weights take the input's type, and double tests of
        float32 inputs were slower than a gather after float32 positions (50 trees, 10 000
        rows, 2 threads: 10.3 ms in the operator against 8.2)."""
        precision = self.dtype
        if table.shape[1] != 1 or table.dtype != precision:
            return None
        return self._emit(g, X, np.ascontiguousarray(table[:, 0]))

    def emit_sums(
        self,
        g: Any,
        X: str,
        table: npt.NDArray[np.floating],
        targets: npt.NDArray[np.int64],
        n_targets: int,
    ) -> str | None:
        """The sum of the leaf values of the trees of each target, ``(N, n_targets)``, added
        by the operator itself; None where it cannot add in the accumulation type (vector
        leaves, float32 sums of float64 tests).

        The sum is the native one only where ONNX Runtime adds the trees one after another
        in their order, which it does on one thread (and for batches of up to 50 rows): on
        more threads it splits the trees between them and adds the partial sums. So only
        the ``onnx`` backend uses this, in sessions of one thread each that it runs side by
        side on slices of the rows (:class:`treecomp.onnx.engine.OnnxEngine`); exported
        graphs add the trees in standard operators, exact with any session options.
        """
        if table.shape[1] != 1:
            return None
        if table.dtype == np.float32 and self.dtype != np.float32:
            return None  # the operator would add float32 values in double
        return self._emit(g, X, np.ascontiguousarray(table[:, 0]), targets, n_targets)
