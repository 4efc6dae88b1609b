"""What every strategy shares: the node test, the node tables, the child-pointer walk.

Each strategy gathers, for every (tree, row), the feature value, then applies the node
test: :func:`node_test`, the IR's decision rule written once in the vocabulary of
:mod:`treecomp.arrays`, which the torch module (eager, TorchScript, compiled) and the ONNX
graph render. Categorical membership looks ``(category_row, code)`` up in one table of
every categorical node's listed categories (:class:`CategorySets`): direct where that is
small, else a hash table whose memory follows the categories the trees name, not their
largest code; row 0 marks numerical nodes.

Forests of numerical splits are first *folded* (:func:`treecomp.passes.fold_missing`): every
node becomes ``go left iff x' < s`` on the extended input ``x'`` (each column followed by its
negation, and where needed a NaN indicator), with NaN going right, so the missing-value rule
costs nothing at run time and needs no data-dependent branch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from strategies.categories import CODE_BITS, CategorySets, category_key, hash_slot
from treecomp.arrays import (
    Program,
    Value,
    column,
    equal,
    int32,
    int64,
    isnan,
    minimum,
    record,
    where,
)
from treecomp.arrays import take as take_value
from treecomp.ir_schema import ZERO_THRESHOLD

if TYPE_CHECKING:
    from treecomp.inputs import Precision
    from treecomp.ir import Tree


@dataclass(frozen=True)
class NodeRule:
    """What the node test of a group applies, beyond ``x < t`` (see :func:`node_test`).

    Attributes:
        folded: Every node is ``x' < t`` with NaN going right (the rest does not apply).
        less_equal: Numerical tests are ``x <= t``.
        zero_missing: Some nodes read values within ``ZERO_THRESHOLD`` of 0 as missing.
        categorical: Some nodes test category membership.
        nonnegative_categories: The ``"nonnegative"`` category domain (``x >= 0``) over
            ``"truncate"`` (``x > -1``).
        category_layout: The layout of the category table (:class:`CategorySets`).
        check_missing: Apply the missing-value rule (a batch known to hold no NaN skips it;
            zero-as-missing nodes are always checked).
    """

    folded: bool
    less_equal: bool
    zero_missing: bool
    categorical: bool
    nonnegative_categories: bool
    category_layout: tuple[int, ...]
    check_missing: bool


# The node test's inputs: the values, their nodes' positions, and the group's node tables.
NODE_INPUTS: tuple[str, ...] = ("x", "pos", "threshold", "default_left", "zero_is_missing")
NODE_INPUTS += ("category_row", "category_table")


def node_test(
    rule: NodeRule,
    x: Value,
    pos: Value,
    threshold: Value,
    default_left: Value,
    zero_is_missing: Value,
    category_row: Value,
    category_table: Value,
) -> tuple[Value, Value]:
    """The IR's decision for values ``x`` at the nodes ``pos``: whether each goes left, and
    whether it goes right, each in its cheapest form, written once for every target (the
    torch module, its compiled programs and the ONNX graph render it); the reference
    evaluator's ``go_left`` is the oracle it is tested against.

    Categorical nodes look ``trunc(x)`` up in ``category_table`` (:func:`category_member`):
    it is listed iff ``-1 < x < 2**31`` (or ``0 <= x``, the nonnegative domain; codes at or
    above 2**31 never are, a bound exact in either float type) and the table lists it; NaN
    and ±inf fail the range.
    """
    t = take_value(threshold, pos)
    if rule.folded:  # NaN fails x < t and goes right: no missing-value test at all
        return x < t, ~(x < t)
    left = x <= t if rule.less_equal else x < t
    missing = isnan(x) if rule.check_missing else None
    if rule.zero_missing:
        zero = take_value(zero_is_missing, pos) & (abs(x) <= ZERO_THRESHOLD)
        missing = zero if missing is None else missing | zero
    if rule.categorical:
        lower = x >= 0.0 if rule.nonnegative_categories else x > -1.0
        in_range = lower & (x < float(1 << CODE_BITS))
        code = int64(where(in_range, x, 0.0))  # truncated: in range, trunc(x) >= 0
        row = take_value(category_row, pos)
        member = category_member(code, row, category_table, rule.category_layout) & in_range
        left = where(row > 0, member, left)
    if missing is None:
        if rule.categorical:
            return left, ~left
        return left, x > t if rule.less_equal else x >= t
    left = where(missing, take_value(default_left, pos), left)
    return left, ~left


def category_member(code: Value, row: Value, table: Value, layout: Sequence[int]) -> Value:
    """Whether category ``code`` (int64 in ``[0, 2**31)``) is listed at category row ``row``
    (int64) of ``table``, a :class:`CategorySets` of that ``layout``.

    Direct (``layout == [width]``): the bit ``table[row * width + code]``, codes past the
    last column (always empty) reading it. Hash (``layout == [a1, b1, a2, b2, shift]``):
    the key ``row << 31 | code`` sits at one of its two slots of ``table``.
    """
    if len(layout) == 1:
        width = layout[0]
        return take_value(table, minimum(code, width - 1) + row * width)
    a1, b1, a2, b2, shift = layout
    key = category_key(code, row)
    first, second = (
        equal(take_value(table, hash_slot(code, row, a, b, shift)), key)
        for a, b in ((a1, b1), (a2, b2))
    )
    return first | second


def child_walk(
    levels: int,
    base: int,
    entry: bool,
    rule: NodeRule,
    X: Value,
    start: Value,
    feature: Value,
    child: Value,
    below: Value,
    *node_tables: Value,
) -> Value:
    """Walk ``levels`` levels by child pointers ``child`` (:func:`child_pointers`) from the
    global node ids ``start`` (``entry``: from the nodes ``below[start]``, where a strategy's
    top levels left each walker), the node parameters (``feature`` and the node tables of
    :data:`NODE_INPUTS`) at ``base + node``: the node each walker of ``X`` reaches."""
    node = take_value(below, start) if entry else start
    for _ in range(levels):
        pos = node + base if base else node
        x = column(X, take_value(feature, pos))
        _, right = node_test(rule, x, pos, *node_tables)
        node = take_value(child, node * 2 + int32(right))
    return node


# The programs of a group, flat, in the order the torch module finds them: the child-pointer
# walk, a strategy's walk of its top levels (its own idea), each without and with the
# missing-value rule.
PROGRAMS = [(n, check) for n in ("walk", "top") for check in (False, True)]


class NodeArrays:
    """Per-node parameters of a set of trees, flattened, as NumPy arrays ready for buffers.

    Attributes:
        feature: int32 feature per node (0 at leaves, so that gathers stay in range).
        threshold: float64 threshold (NaN where unused).
        default_left, zero_is_missing: bool per node.
        category_row: int64 category row of each categorical node (0 for numerical nodes).
        categories: The listed categories of every category row (:class:`CategorySets`).
    """

    def __init__(self, trees: list[Tree]) -> None:
        self.feature = np.concatenate([np.maximum(t.feature, 0) for t in trees]).astype(np.int32)
        self.threshold = np.concatenate([t.threshold for t in trees])
        self.default_left = np.concatenate([t.default_left for t in trees])
        self.zero_is_missing = np.concatenate([t.zero_is_missing for t in trees])
        lists = []
        rows = []
        for tree in trees:
            tree_rows = np.zeros(tree.n_nodes, dtype=np.int64)
            for node in np.flatnonzero(tree.is_categorical):
                lists.append(tree.categories(int(node)))
                tree_rows[node] = len(lists)
            rows.append(tree_rows)
        self.category_row = np.concatenate(rows)
        self.categories = CategorySets(lists)

    def take(self, slots: npt.NDArray[np.int64]) -> NodeArrays:
        """The parameters of the nodes at ``slots`` (global node ids); same categories."""
        out = object.__new__(NodeArrays)
        out.feature = self.feature[slots]
        out.threshold = self.threshold[slots]
        out.default_left = self.default_left[slots]
        out.zero_is_missing = self.zero_is_missing[slots]
        out.category_row = self.category_row[slots]
        out.categories = self.categories
        return out

    @property
    def has_categorical(self) -> bool:
        return bool(self.category_row.any())

    @property
    def has_zero_missing(self) -> bool:
        return bool(self.zero_is_missing.any())


def child_pointers(trees: list[Tree]) -> npt.NDArray[np.int32]:
    """``child[2 * node + went_right]`` over the trees' concatenated node ids, leaves pointing
    to themselves: one lookup per level instead of two and a select. int32, the narrowest
    type index_select takes: half the traffic of int64."""
    sizes = np.array([t.n_nodes for t in trees])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    own = np.arange(int(sizes.sum()))
    leaf = np.concatenate([t.left_child < 0 for t in trees])
    left = np.concatenate([t.left_child + o for t, o in zip(trees, offsets)])
    right = np.concatenate([t.right_child + o for t, o in zip(trees, offsets)])
    children = np.stack([np.where(leaf, own, left), np.where(leaf, own, right)], axis=1)
    if children.size >= 2**31:
        raise ValueError(f"cannot index {children.size:,} child slots in int32")
    return children.reshape(-1).astype(np.int32)


@dataclass(frozen=True)
class GroupOptions:
    """How a group of trees is lowered: the forest-wide facts every strategy needs.

    Attributes:
        less_equal: Numerical tests are ``x <= t`` (else ``x < t``).
        precision: ``"float32"`` or ``"float64"``: the type of the inputs and thresholds.
        leaf_width: Width of the leaf value rows (the forest's widest leaf).
        nonnegative_categories: The ``"nonnegative"`` category domain (XGBoost's).
        folded: The trees were rewritten by :func:`treecomp.passes.fold_missing`: every test is
            ``x' < t`` and NaN goes right by construction.
        batch_size: Expected rows per call (a strategy may lay itself out for it).
        one_thread: The graph runs in sessions of one thread each (the ``onnx`` backend on
            the CPU, which runs several side by side on slices of the rows).
    """

    less_equal: bool
    precision: Precision
    leaf_width: int
    nonnegative_categories: bool
    folded: bool = False
    batch_size: int = 10_000
    one_thread: bool = False


class TreeGroup:
    """Base of every strategy: a group of trees mapped to rows of a leaf table, as NumPy
    tables and programs of :mod:`treecomp.arrays`, with no torch.

    Every target renders it: the torch module (:mod:`strategies.torch_groups`, one buffer
    per table) and the ONNX graph (:meth:`emit_onnx`, one constant per table it reads).
    A walk gives, for every (tree, row), an int32 index into ``leaf_value`` (``(n_leaf_rows,
    leaf_width)``, float64, cast to the sum's type by the forest's plan) and ``leaf_id``
    (native leaf numbers); ``columns`` holds each tree's position in the forest.

    Attributes:
        name: The strategy's registered name.
        tables: The names of the group's tables, each a NumPy attribute.
        rest, node_base: Set by :meth:`set_walk`, for strategies that walk levels by child
            pointers: the levels so walked, where their node parameters start.
        child, below: The tables of that walk (empty where there is none): the pointers,
            and the node each walker starts from by the position its top levels left it at
            (empty too where the walk starts from the roots).
        node_steps: The group's programs (:func:`child_walk`, a strategy's top levels),
            each without and with the missing-value rule, flat, in the order of PROGRAMS.
    """

    name = ""
    # ONNX-ML's tree operator (strategies.tree_ensemble): it can give leaf values and sums
    # itself (emit_values, emit_tree_values, emit_sums), which the graph then uses.
    tree_operator = False
    columns: npt.NDArray[np.int64]
    feature: npt.NDArray[np.int32]
    threshold: npt.NDArray[np.floating]
    default_left: npt.NDArray[np.bool_]
    zero_is_missing: npt.NDArray[np.bool_]
    category_row: npt.NDArray[np.int64]
    category_table: npt.NDArray[Any]
    leaf_value: npt.NDArray[np.floating]
    leaf_id: npt.NDArray[np.int64]
    child: npt.NDArray[np.int32]
    below: npt.NDArray[np.int32]

    def __init__(
        self,
        trees: list[Tree],
        columns: list[int],
        nodes: NodeArrays | None,
        options: GroupOptions,
    ) -> None:
        self.tables: list[str] = []
        self.less_equal = options.less_equal
        self.folded = options.folded
        self.nonnegative_categories = options.nonnegative_categories
        self.precision = options.precision
        self.table("columns", np.array(columns, dtype=np.int64))
        self.leaf_width = options.leaf_width
        if nodes is None:  # a strategy that keeps its node parameters its own way
            return
        self.has_zero_missing = nodes.has_zero_missing
        self.has_categorical = nodes.has_categorical
        self.table("feature", nodes.feature)
        self.table("threshold", nodes.threshold.astype(options.precision))
        self.table("default_left", nodes.default_left)
        self.table("zero_is_missing", nodes.zero_is_missing)
        self.table("category_row", nodes.category_row)
        self.table("category_table", nodes.categories.table)
        self.category_layout = nodes.categories.layout
        # The types of NODE_INPUTS: positions are int32 in every target.
        float_type = options.precision
        table_type = "bool" if nodes.categories.table.dtype == bool else "int64"
        self.node_types = (float_type, "int32", float_type, "bool", "bool", "int64", table_type)
        self.programs: dict[tuple[str, bool], Program] = {}
        self.set_walk(0, 0)  # the strategy sets its own
        self.table("child", np.zeros(0, dtype=np.int32))
        self.table("below", np.zeros(0, dtype=np.int32))

    def table(self, name: str, array: npt.NDArray[Any]) -> None:
        """Keep ``array`` (a contiguous copy: tables never alias the IR) as table ``name``."""
        if name not in self.tables:
            self.tables.append(name)
        setattr(self, name, np.ascontiguousarray(array).copy())

    def rule(self, check_missing: bool) -> NodeRule:
        """The node test's rule for this group's nodes."""
        return NodeRule(
            self.folded,
            self.less_equal,
            self.has_zero_missing,
            self.has_categorical,
            self.nonnegative_categories,
            tuple(self.category_layout),
            check_missing,
        )

    def set_walk(self, levels: int, base: int, entry: bool = False) -> None:
        """Walk ``levels`` levels by child pointers (:func:`child_walk`, node parameters at
        ``base + node``, from ``below[position]`` where ``entry``): the deep part of a
        strategy that lowers only the top levels its own way (``child`` is then
        :func:`child_pointers`, ``below`` the node at each position its top levels end
        at), or all of tree traversal."""
        self.rest = levels
        self.node_base = base
        walk = partial(child_walk, levels, base, entry) if levels else None
        # start, feature, child, below
        self.set_program("walk", walk, ("int32", "int32", "int32", "int32"))

    def set_program(self, name: str, idea: Any, positions: tuple[str, ...]) -> None:
        """Record program ``name`` of :data:`PROGRAMS` (none if ``idea`` is None), with and
        without the missing-value rule: ``idea(rule, X, *values, *node_tables)`` of the
        rows ``X``, values of the types ``positions`` and the node tables."""
        types = (self.node_types[0], *positions, *self.node_types[2:])
        for check in (False, True):
            if idea is None:
                self.programs.pop((name, check), None)
            else:
                self.programs[name, check] = record(partial(idea, self.rule(check)), *types)
        # Flat, for the torch module, in PROGRAMS' order.
        self.node_steps = [
            self.programs[key].flat() if key in self.programs else [] for key in PROGRAMS
        ]

    def set_leaves(self, value: npt.NDArray[np.float64], leaf_id: npt.NDArray[np.int64]) -> None:
        """Keep the leaf table (rows the strategy's walk indexes into).

        Leaf values stay float64 whatever the precision of the tests (the forest's plan
        casts them to its accumulation type): sums then match the native libraries' double
        accumulation, and argmax ties stay ties.
        """
        padded = np.zeros((value.shape[0], self.leaf_width))
        padded[:, : value.shape[1]] = value
        self.table("leaf_value", padded)
        self.table("leaf_id", leaf_id)

    # ---------------------------------------------------------------------------------
    # ONNX: the walk emitted through a graph builder ``g`` (see
    # ``treecomp.onnx.graph.GraphBuilder``: ``g.op``, ``g.const``, ``g.scalar``). NaN is
    # always handled: a graph has no data-dependent fast path.

    def emit_onnx(self, g: Any, X: str) -> str:
        """Emit this group's walk: its top levels (:meth:`emit_top`), then the levels by
        child pointers; returns the name of the leaf-row tensor."""
        rows = self.emit_top(g, X)
        if self.rest == 0:
            return rows
        tables = ("feature", "child", "below", *NODE_INPUTS[2:])
        return self.emit_program(g, "walk", [X, rows], *tables)

    def emit_values(self, g: Any, X: str, table: npt.NDArray[np.floating]) -> str | None:
        """Every tree's leaf value ``(N, n_trees)`` from ``table`` where the group can give
        them without the leaf rows (the tree operator), else None: the graph gathers them."""
        return None

    def planned_for(self, rows: int) -> contextlib.AbstractContextManager[None]:
        """The group laid out for batches of ``rows`` rows while emitting (the tree
        operator's node sizes), as it was afterwards; no change by default."""
        return contextlib.nullcontext()

    def emit_top(self, g: Any, X: str) -> str:
        """Emit the positions where the strategy's own top levels leave each walker
        ``(N, trees)`` (leaf rows where no levels follow)."""
        raise NotImplementedError

    def emit_program(self, g: Any, name: str, values: list[str], *tables: str) -> str:
        """Emit program ``name`` with the missing-value rule (a graph has no data-dependent
        fast path) on ``values`` and then the tables called ``tables``, of which only
        those the program reads become constants."""
        program = self.programs[name, True]
        used = {a for step in program.steps for a in step.args}
        n = len(values)
        read = [g.const(getattr(self, t)) if n + i in used else "" for i, t in enumerate(tables)]
        (out,) = g.program(program, *values, *read)
        return out
