"""Node tests shared by every strategy: one scriptable function, the IR's decision rule.

Each strategy gathers, for every (tree, row), the feature value and the node's parameters,
then calls :func:`go_left`. Categorical membership looks ``(category_row, code)`` up in one
table of every categorical node's listed categories (:class:`CategorySets`): direct where
that is small, else a hash table whose memory follows the categories the trees name, not
their largest code; row 0 marks numerical nodes.

Forests of numerical splits are first *folded* (:func:`treecomp.passes.fold_missing`): every
node becomes ``go left iff x' < s`` on the extended input ``x'`` (each column followed by its
negation, and where needed a NaN indicator), with NaN going right, so the missing-value rule
costs nothing at run time and needs no data-dependent branch.
"""

# No `from __future__ import annotations`: TorchScript reads the buffer annotations below
# at run time and cannot resolve them as strings.
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from treecomp.ir_schema import ZERO_THRESHOLD

if TYPE_CHECKING:
    from treecomp.ir import Tree

# Categories lie in [0, 2**31) (Forest.validate): a key row << 31 | code names a listed
# category of category row `row`, and codes at or above 2**31 are never listed.
CODE_BITS = 31
# The hash of a key is bits [32 - bits, 32) of a * code + b * row (see CategorySets): with
# a, b < 2**31 and code, row < 2**31 the sum stays below 2**63, so int64 never overflows.
HASH_BITS = 32
# Categories are looked up in a direct table (one byte per row and code up to the largest)
# while it holds at most this many cells, or no more than twice the hash table's bytes.
DIRECT_CELLS = 1 << 20


def _compiling() -> bool:
    """Under ``torch.compile`` or ``torch.export`` (never true in eager or TorchScript)."""
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def take(buffer: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``buffer[index]`` for a 1-D or 2-D buffer, via ``index_select``.

    Advanced indexing (``buffer[index]``) is several times slower on CPU than
    ``index_select`` on the flattened index, and this is the hottest operation of every
    strategy. Under ``torch.compile`` it is the other way round: a gather becomes one load
    in the fused loop, while the flattening made inductor split the loop and divide every
    flat index back into (tree, row): 500 trees of depth 8, 10 000 rows, 1 thread, 140 ms
    with the flat form. The gather is spelled as an embedding lookup: inductor lowers
    ``buffer[index]`` with a wrap of negative indices (``i < 0 ? i + size : i``) on every
    load, a compare and a select per level of every walker, and ``embedding`` without it
    (our indices are never negative). 500 trees of depth 8, 10 000 rows, 2 threads: 53 ms
    with the wrap, 33 ms without (XGBoost's own predict: 34 ms).
    """
    if _compiling():
        if buffer.dim() == 1:
            return torch.nn.functional.embedding(index, buffer.unsqueeze(1)).squeeze(-1)
        return torch.nn.functional.embedding(index, buffer)
    flat = buffer.index_select(0, index.reshape(-1))
    return flat.reshape(list(index.shape) + list(buffer.shape[1:]))


def feature_values(X: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``X[i, b, columns[i, j, b]]`` for ``X`` of row blocks ``(blocks, rows, features)`` and
    int32 ``columns`` of shape ``(blocks, k, rows)`` (tree-major within a block).

    Eager: an ``index_select`` on the flattened input with int32 offsets, half the memory
    traffic of int64 and ``torch.gather``'s int64-only indices. Compiled, and for inputs too
    large for int32 offsets (never a chunk of the default size): ``torch.gather``, which
    keeps X's own indexing (inductor divided a flattened X back into block, row and column
    in every load) and lowers without a wrap of negative indices.
    """
    blocks, n, width = X.shape[0], X.shape[1], X.shape[2]
    if not _compiling() and blocks * n * width < 2**31 - 1:
        rows = torch.arange(blocks * n, dtype=torch.int32, device=X.device) * width
        return take(X.reshape(-1), rows.reshape(blocks, 1, n) + columns)
    return torch.gather(X.transpose(1, 2), 1, columns.to(torch.int64))


def category_member(
    code: torch.Tensor, row: torch.Tensor, table: torch.Tensor, layout: list[int]
) -> torch.Tensor:
    """Whether category ``code`` (int64 in ``[0, 2**31)``) is listed at category row ``row``
    of ``table``, a :class:`CategorySets` of that ``layout``.

    Direct (``layout == [width]``): the bit ``table[row * width + code]``, codes past the
    last column (always empty) reading it. Hash (``layout == [a1, b1, a2, b2, shift]``):
    the key ``row << 31 | code`` sits at one of its two slots of ``table``.
    """
    if len(layout) == 1:
        width = layout[0]
        return take(table, torch.add(torch.clamp(code, max=width - 1), row, alpha=width))
    key = torch.add(code, row, alpha=1 << 31)
    mask = (1 << 32) - 1
    # In place: each fresh (walkers,) int64 tensor costs its page faults in eager mode.
    first = (code * layout[0]).add_(row, alpha=layout[1]).bitwise_and_(mask)
    second = (code * layout[2]).add_(row, alpha=layout[3]).bitwise_and_(mask)
    found = take(table, first.bitwise_right_shift_(layout[4])) == key
    return found.logical_or_(take(table, second.bitwise_right_shift_(layout[4])) == key)


def go_left(
    x: torch.Tensor,
    threshold: torch.Tensor,
    default_left: torch.Tensor,
    less_equal: bool,
    zero_is_missing: torch.Tensor | None,
    category_row: torch.Tensor | None,
    category_table: torch.Tensor | None,
    category_layout: list[int],
    zero_threshold: float,
    check_missing: bool,
    nonnegative_categories: bool,
) -> torch.Tensor:
    """The IR's decision for values ``x`` at nodes described by same-shaped tensors.

    ``zero_threshold`` is ``treecomp.ir.ZERO_THRESHOLD``, passed in because TorchScript
    cannot read module globals. ``check_missing=False`` skips the missing-value rule, for
    batches known to hold no NaN (zero-as-missing nodes are always checked).
    ``nonnegative_categories`` selects the ``"nonnegative"`` category domain (``x >= 0``)
    over ``"truncate"`` (``x > -1``). Categorical nodes look ``trunc(x)`` up in
    ``category_table`` (:func:`category_member`).
    """
    left = x <= threshold if less_equal else x < threshold
    if not check_missing and zero_is_missing is None:
        if category_row is None or category_table is None:
            return left
    missing = torch.isnan(x) if check_missing else torch.zeros_like(left)
    if zero_is_missing is not None:
        missing = missing | (zero_is_missing & (x.abs() <= zero_threshold))
    if category_row is not None and category_table is not None:
        # trunc(x) is listed iff -1 < x < 2**31 (codes at or above it never are; the bound
        # is exact in either float type) and the table lists it; NaN and ±inf fail the range.
        lower = x >= 0.0 if nonnegative_categories else x > -1.0
        in_range = lower & (x < 2147483648.0)  # 2**31 (CODE_BITS)
        code = torch.where(in_range, x, torch.zeros_like(x)).to(torch.int64)
        member = category_member(code, category_row, category_table, category_layout)
        left = torch.where(category_row > 0, member & in_range, left)
    return torch.where(missing, default_left, left)


class CategorySets:
    """The categories listed at every categorical node, in one table of one of two layouts.

    Categorical node ``i`` of a group has category row ``i + 1`` (row 0: numerical nodes).

    * Direct, ``layout == [width]``: a bool table ``(rows + 1, width)``, flattened, whose
      cell ``[row, code]`` is set iff ``code`` is listed at ``row``; ``width`` is the
      largest code + 2, so the last column is empty and larger codes read it. A clamp, an
      add and a gather per lookup, but ``rows x largest code`` cells.
    * Hash, ``layout == [a1, b1, a2, b2, shift]``: a cuckoo hash table of int64 keys
      ``row << 31 | code``, each stored at one of its two slots
      ``((a * code + b * row) mod 2**32) >> shift`` (multiply-shift hashing, odd
      multipliers below 2**31), -1 in empty slots. A lookup reads both slots and compares
      whole keys, so a collision never makes a false member. At least 3 slots per key
      (cuckoo tables fill reliably below 1/2): memory follows the number of listed
      categories, whatever their values.

    The direct table is chosen while it has at most ``DIRECT_CELLS`` cells or takes at
    most twice the hash table's bytes: a lookup was 4-9x faster in it (a million walkers
    in eager torch, 1 thread of a busy 2-core machine: 1.6-2.6 ms against 7-21 ms), and
    the eager traversals of a 100-tree LightGBM model of three 50-level categorical
    features, 10 000 rows, took 1.5-3x as long in hash tables (``python
    benchmarks/categories.py [--hash]``). A LightGBM model listing category 8 225 540 at
    33 nodes gets a hash table of 1 024 slots (8 KiB) instead of a 34 x 8 225 542 one.

    Attributes:
        table: The flattened bool table, or the int64 keys.
        layout: ``[width]`` or ``[a1, b1, a2, b2, shift]``.
    """

    def __init__(self, lists: list[npt.NDArray[np.int64]], *, kind: str = "auto") -> None:
        """The table of ``lists[i]``, the categories of category row ``i + 1``, in
        the layout ``kind``: ``"direct"``, ``"hash"`` or ``"auto"`` (the rule above)."""
        rows = np.repeat(np.arange(1, len(lists) + 1, dtype=np.int64), [len(c) for c in lists])
        codes = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
        width = int(codes.max(initial=-1)) + 2
        bits = max(1, int(np.ceil(np.log2(max(3 * codes.size, 2)))))
        cells = (len(lists) + 1) * width
        if kind not in ("auto", "direct", "hash"):
            raise ValueError(f"unknown layout {kind!r}")
        if kind == "direct" or (kind == "auto" and cells <= max(DIRECT_CELLS, 16 << bits)):
            table = np.zeros(cells, dtype=bool)
            table[rows * width + codes] = True
            self.table: npt.NDArray[np.generic] = table
            self.layout = [width]
            return
        keys = np.unique((rows << CODE_BITS) | codes)
        rows, codes = keys >> CODE_BITS, keys & ((1 << CODE_BITS) - 1)
        rng = np.random.default_rng(0)  # the same forest always gives the same table
        for attempt in range(64):
            if attempt and attempt % 8 == 0:
                bits += 1  # unlucky or structured keys: a sparser table
            if bits > HASH_BITS:
                break
            multipliers = (rng.integers(0, 1 << 30, size=4) * 2 + 1).tolist()
            hashing = [*multipliers, HASH_BITS - bits]
            placed = _cuckoo(_slots(rows, codes, hashing), 1 << bits)
            if placed is not None:
                self.table = np.full(1 << bits, -1, dtype=np.int64)
                self.table[placed] = keys
                self.layout = hashing
                return
        raise ValueError(  # never seen: each try fails with a small probability
            f"could not build a hash table of {keys.size} categorical keys"
        )

    def contains(
        self, rows: npt.NDArray[np.int64], codes: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """Whether each ``code`` (in ``[0, 2**31)``) is listed at ``row`` (NumPy; for tests)."""
        if len(self.layout) == 1:
            width = self.layout[0]
            return self.table[rows * width + np.minimum(codes, width - 1)].astype(bool)
        key = (rows << CODE_BITS) | codes
        slots = _slots(rows, codes, self.layout)
        found: npt.NDArray[np.bool_] = (self.table[slots[0]] == key) | (self.table[slots[1]] == key)
        return found


def _slots(
    rows: npt.NDArray[np.int64], codes: npt.NDArray[np.int64], layout: list[int]
) -> npt.NDArray[np.int64]:
    """The two candidate slots ``(2, n)`` of keys ``(rows, codes)`` in a hash ``layout``."""
    a1, b1, a2, b2, shift = layout
    mask = (1 << HASH_BITS) - 1
    return np.stack(
        [((codes * a1 + rows * b1) & mask) >> shift, ((codes * a2 + rows * b2) & mask) >> shift]
    )


def _cuckoo(slots: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.int64] | None:
    """A slot for every key among its two candidates ``slots`` ``(2, n)``, no two keys
    sharing one, in a table of ``size``; None if the walk does not settle.

    Cuckoo insertion, all pending keys at once: each tries its current candidate, one key
    wins each contested slot and evicts its occupant; losers and evicted keys switch to
    their other candidate and try again in the next round.
    """
    n = slots.shape[1]
    owner = np.full(size, -1, dtype=np.int64)
    choice = np.zeros(n, dtype=np.int64)
    pending = np.arange(n)
    for _ in range(200):
        if pending.size == 0:
            break
        target = slots[choice[pending], pending]
        won_slots, first = np.unique(target, return_index=True)
        winners = pending[first]
        lost = np.ones(pending.size, dtype=bool)
        lost[first] = False
        evicted = owner[won_slots]
        evicted = evicted[evicted >= 0]
        owner[won_slots] = winners
        moving = np.concatenate([pending[lost], evicted])
        choice[moving] ^= 1
        pending = moving
    if pending.size:
        return None
    where = np.empty(n, dtype=np.int64)
    taken = owner >= 0
    where[owner[taken]] = np.flatnonzero(taken)
    return where


class NodeArrays:
    """Per-node parameters of a set of trees, flattened, as NumPy arrays ready for buffers.

    Attributes:
        feature: int32 feature per node (0 at leaves, so that gathers stay in range).
        threshold: float64 threshold (NaN where unused).
        default_left, zero_is_missing: bool per node.
        category_row: int64 category row of each categorical node (0 for numerical nodes).
        categories: The listed categories of every category row (:class:`CategorySets`).
    """

    def __init__(self, trees: "list[Tree]") -> None:
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

    def take(self, slots: npt.NDArray[np.int64]) -> "NodeArrays":
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


def child_pointers(trees: "list[Tree]") -> npt.NDArray[np.int32]:
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


def tensor(array: npt.NDArray[np.generic], dtype: torch.dtype | None = None) -> torch.Tensor:
    """A contiguous tensor copy of a NumPy array (buffers never alias the IR)."""
    out = torch.from_numpy(np.ascontiguousarray(array).copy())
    return out if dtype is None else out.to(dtype)


@dataclass(frozen=True)
class GroupOptions:
    """How a group of trees is lowered: the forest-wide facts every strategy needs.

    Attributes:
        less_equal: Numerical tests are ``x <= t`` (else ``x < t``).
        dtype: Precision of the inputs and thresholds.
        leaf_width: Width of the leaf value rows (the forest's widest leaf).
        nonnegative_categories: The ``"nonnegative"`` category domain (XGBoost's).
        folded: The trees were rewritten by :func:`treecomp.passes.fold_missing`: every test is
            ``x' < t`` and NaN goes right by construction.
        batch_size: Expected rows per call (a strategy may lay itself out for it).
        one_thread: The graph runs in sessions of one thread each (the ``onnx`` backend on
            the CPU, which runs several side by side on slices of the rows).
    """

    less_equal: bool
    dtype: torch.dtype
    leaf_width: int
    nonnegative_categories: bool
    folded: bool = False
    batch_size: int = 10_000
    one_thread: bool = False


class TreeGroup(torch.nn.Module):
    """Base of every strategy's module: a group of trees mapped to rows of a leaf table.

    ``forward(X)`` takes row blocks ``(n_blocks, block_rows, n_features)`` and returns
    ``(n_blocks, n_trees_in_group, block_rows)`` int32 indices into ``leaf_value`` (float64
    ``(n_leaf_rows, leaf_width)``) and ``leaf_id`` (native leaf numbers); ``columns`` holds
    each tree's position in the forest. Tree-major within a block: the walkers of one tree
    sit side by side, so a kernel walks one tree's nodes (a few KiB, in L1) for a run of
    rows whose inputs (a block of a few KiB) stay in L1 for every tree.
    """

    feature: torch.Tensor
    threshold: torch.Tensor
    default_left: torch.Tensor
    zero_is_missing: torch.Tensor
    category_row: torch.Tensor
    category_table: torch.Tensor
    columns: torch.Tensor
    leaf_value: torch.Tensor
    leaf_id: torch.Tensor
    # Set by strategies that walk their deepest levels by child pointers (see
    # walk_child_pointers): the levels so walked, where node parameters start, the pointers.
    rest: int
    node_base: int
    child: torch.Tensor

    def __init__(
        self,
        trees: "list[Tree]",
        columns: list[int],
        nodes: "NodeArrays | None",
        options: GroupOptions,
    ) -> None:
        super().__init__()
        self.less_equal = options.less_equal
        self.folded = options.folded
        self.nonnegative_categories = options.nonnegative_categories
        self.zero_threshold = ZERO_THRESHOLD
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.int64))
        self.leaf_width = options.leaf_width
        if nodes is None:  # a strategy that keeps its node parameters its own way
            return
        self.has_zero_missing = nodes.has_zero_missing
        self.has_categorical = nodes.has_categorical
        self.register_buffer("feature", tensor(nodes.feature))
        self.register_buffer("threshold", tensor(nodes.threshold, options.dtype))
        self.register_buffer("default_left", tensor(nodes.default_left))
        self.register_buffer("zero_is_missing", tensor(nodes.zero_is_missing))
        self.register_buffer("category_row", tensor(nodes.category_row))
        self.register_buffer("category_table", tensor(nodes.categories.table))
        self.category_layout = nodes.categories.layout

    def set_leaves(self, value: npt.NDArray[np.float64], leaf_id: npt.NDArray[np.int64]) -> None:
        """Register the leaf table (rows the strategy's forward indexes into).

        Leaf values stay float64 whatever the precision of the tests: sums then match the
        native libraries' double accumulation, and argmax ties stay ties.
        """
        padded = np.zeros((value.shape[0], self.leaf_width))
        padded[:, : value.shape[1]] = value
        self.register_buffer("leaf_value", tensor(padded, torch.float64))
        self.register_buffer("leaf_id", tensor(leaf_id))

    def forward(self, X: torch.Tensor, check_missing: bool) -> torch.Tensor:
        """Leaf rows ``(n_blocks, n_trees_in_group, block_rows)`` for row blocks ``X``."""
        raise NotImplementedError

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

    def walk_child_pointers(
        self, X: torch.Tensor, node: torch.Tensor, check_missing: bool
    ) -> torch.Tensor:
        """Walk ``self.rest`` levels from global node ids ``node`` by child pointers: the
        deep part of a strategy that lowers only the top levels its own way. Node
        parameters sit at ``node_base + node``; ``child`` is :func:`child_pointers`."""
        for _ in range(self.rest):
            pos = node + self.node_base
            x = feature_values(X, take(self.feature, pos))
            right = self.goes_right(x, pos, check_missing)
            node = take(self.child, node * 2 + right)
        return node

    def goes_right(self, x: torch.Tensor, pos: torch.Tensor, check_missing: bool) -> torch.Tensor:
        """``~decide(...)``, cheaper on folded nodes and on numerical nodes without NaN."""
        if self.folded:  # NaN fails x < t and goes right: no missing-value test at all
            return ~(x < take(self.threshold, pos))
        if not check_missing and not self.has_zero_missing and not self.has_categorical:
            threshold = take(self.threshold, pos)
            return x > threshold if self.less_equal else x >= threshold
        return ~self.decide(x, pos, check_missing)

    def decide(self, x: torch.Tensor, pos: torch.Tensor, check_missing: bool) -> torch.Tensor:
        """Left/right for values ``x`` at flattened node positions ``pos`` (broadcastable)."""
        if self.folded:
            return x < take(self.threshold, pos)
        zero_is_missing: torch.Tensor | None = None
        category_row: torch.Tensor | None = None
        category_table: torch.Tensor | None = None
        if self.has_zero_missing:
            zero_is_missing = take(self.zero_is_missing, pos)
        if self.has_categorical:
            category_row = take(self.category_row, pos)
            category_table = self.category_table
        # Zero-as-missing nodes can send a value the default way even in a NaN-free batch.
        needs_default = check_missing or self.has_zero_missing
        default_left = take(self.default_left, pos) if needs_default else self.default_left[:1]
        return go_left(
            x,
            take(self.threshold, pos),
            default_left,
            self.less_equal,
            zero_is_missing,
            category_row,
            category_table,
            self.category_layout,
            self.zero_threshold,
            check_missing,
            self.nonnegative_categories,
        )

    # ---------------------------------------------------------------------------------
    # ONNX: the same computation, emitted through a graph builder ``g`` (see
    # ``treecomp.onnx.graph.GraphBuilder``: ``g.op``, ``g.const``, ``g.scalar``). NaN is
    # always handled: a graph has no data-dependent fast path. Never called by forward, so
    # TorchScript does not compile these methods.

    def emit_onnx(self, g: Any, X: str) -> str:
        """Emit this group's forward; returns the name of the leaf-row tensor."""
        raise NotImplementedError

    def emit_child_pointers(self, g: Any, X: str, node: str) -> str:
        """Emit :meth:`walk_child_pointers` from int64 global node ids ``node``."""
        feature, two = g.const(self.feature), g.const(np.array(2))
        child = g.const(self.child.numpy().astype(np.int64))
        for _ in range(self.rest):
            pos = g.op("Add", node, g.const(np.array(self.node_base)))
            x = g.op("GatherElements", X, g.op("Gather", feature, pos), axis=1)
            right = g.op("Cast", g.op("Not", self.emit_decide(g, x, pos)), to="int64")
            node = g.op("Gather", child, g.op("Add", g.op("Mul", node, two), right))
        return node

    def emit_decide(self, g: Any, x: str, pos: str) -> str:
        """Emit :func:`go_left` for values ``x`` at node positions ``pos`` (broadcastable)."""
        threshold = g.op("Gather", g.const(self.threshold), pos)
        if self.folded:
            return g.op("Less", x, threshold)
        left = g.op("LessOrEqual" if self.less_equal else "Less", x, threshold)
        missing = g.op("IsNaN", x)
        if self.has_zero_missing:
            small = g.op("LessOrEqual", g.op("Abs", x), g.scalar(self.zero_threshold))
            zero = g.op("And", g.op("Gather", g.const(self.zero_is_missing), pos), small)
            missing = g.op("Or", missing, zero)
        if self.has_categorical:
            lower = (
                g.op("GreaterOrEqual", x, g.scalar(0.0))
                if self.nonnegative_categories
                else g.op("Greater", x, g.scalar(-1.0))
            )
            in_range = g.op("And", lower, g.op("Less", x, g.scalar(float(1 << CODE_BITS))))
            safe = g.op("Where", in_range, x, g.scalar(0.0))
            # trunc for values > -1: floor of max(x, 0).
            code = g.op("Cast", g.op("Floor", g.op("Max", safe, g.scalar(0.0))), to="int64")
            row = g.op("Gather", g.const(self.category_row), pos)
            member = g.op("And", self.emit_category_member(g, code, row), in_range)
            categorical = g.op("Greater", row, g.const(np.array(0, np.int64)))
            left = _select_bool(g, categorical, member, left)
        default_left = g.op("Gather", g.const(self.default_left), pos)
        return _select_bool(g, missing, default_left, left)

    def emit_category_member(self, g: Any, code: str, row: str) -> str:
        """Emit :func:`category_member` for int64 ``code`` and ``row``. Opset 17 has no
        bitwise operators: the hash's mask and shift of non-negative values are Mod and Div."""

        def integer(value: int) -> str:
            return g.const(np.array(value, np.int64))

        table = g.const(self.category_table)
        if len(self.category_layout) == 1:
            width = self.category_layout[0]
            column = g.op("Min", code, integer(width - 1))
            return g.op("Gather", table, g.op("Add", g.op("Mul", row, integer(width)), column))
        a1, b1, a2, b2, shift = self.category_layout
        key = g.op("Add", code, g.op("Mul", row, integer(1 << CODE_BITS)))
        found = []
        for a, b in ((a1, b1), (a2, b2)):
            mixed = g.op("Add", g.op("Mul", code, integer(a)), g.op("Mul", row, integer(b)))
            slot = g.op("Div", g.op("Mod", mixed, integer(1 << HASH_BITS)), integer(1 << shift))
            found.append(g.op("Equal", g.op("Gather", table, slot), key))
        return g.op("Or", *found)


def _select_bool(g: Any, condition: str, a: str, b: str) -> str:
    """``Where(condition, a, b)`` for bool tensors, which ONNX Runtime's Where lacks."""
    return g.op("Or", g.op("And", condition, a), g.op("And", g.op("Not", condition), b))
