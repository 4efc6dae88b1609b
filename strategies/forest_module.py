"""The module every backend runs: input casts, strategy groups, aggregation, post-transform.

Strategies produce leaf rows; everything after that is shared, so any strategy composes
with any aggregation (sum or average, base score) and any post-transform.

Aggregation adds, for each output, the base score and then every contributing leaf value in
tree order, in float64, as the native libraries do: a gather lays the contributions of each
output side by side and ``cumsum`` (a sequential scan on CPU) adds them. The result equals
the NumPy reference bit for bit on CPU, so argmax ties (a random forest's 0.5 / 0.5) resolve
exactly as natively. A matmul would add in a blocked order and could break such ties.
"""

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from strategies import eager
from strategies.nodes import TreeGroup, tensor
from strategies.programs import _compiling, run_steps, take
from treecomp import links
from treecomp.arrays import Value, record
from treecomp.inputs import native_values
from treecomp.passes import extended_input

if TYPE_CHECKING:
    from treecomp.ir import Forest

# float32 holds every integer up to 2**24 exactly; past it, integers round to even neighbours.
FLOAT32_EXACT_INTEGERS = 1 << 24
# Inductor adds a float32 reduction of more than 4096 terms in cascaded chunks (codegen/
# cpp.py, need_use_acc_helper), not one term after the other.
SEQUENTIAL_TERMS = 4096


class ForestModule(torch.nn.Module):
    """A compiled forest: ``forward(X) -> (raw margins, transformed scores)``.

    ``X`` is ``(n_rows, n_features)``, any real dtype; it is cast the way the native library
    casts inputs, then to the module's precision. ``leaf_ids(X)`` gives the native leaf
    numbers ``(n_rows, n_trees)``. The module needs only torch to run (TorchScript-able).

    Everything inside works on row blocks and is tree-major within a block: leaf rows and
    values are ``(blocks, trees, block_rows)`` slabs (eager: one block per row block).

    Attributes:
        branch_free: Build one graph for every input, as ``torch.compile`` and
            ``torch.export`` need: no look at the data (folded forests never need one; the
            others then always apply the missing-value rule, which is also exact), no
            Python loop over row blocks (rows walk in ``compiled_block_rows`` blocks
            inside the graph), and sums written as one add per step, which the compiler
            fuses.
        block_rows: Rows per block of the eager traversal.
        compiled_block_rows: Rows per block of a branch-free module; 0 walks all rows as
            one block, tree-major (:func:`strategies.selector.block_rows`).
    """

    base_score: torch.Tensor
    divisor: torch.Tensor
    steps: torch.Tensor
    inverse: torch.Tensor
    leaf_columns: torch.Tensor
    link_steps: list[tuple[str, int, int, int, float]]
    input_steps: list[tuple[str, int, int, int, float]]

    def __init__(
        self,
        forest: "Forest",
        groups: list[TreeGroup],
        dtype: torch.dtype,
        *,
        fold_columns: int = 0,
    ) -> None:
        super().__init__()
        warn_float32_categories(forest, dtype)
        self.groups = torch.nn.ModuleList(groups)
        self.n_features = forest.n_features
        self.n_trees = forest.n_trees
        self.input_dtype = torch.float32 if forest.input_dtype == "float32" else torch.float64
        self.dtype = dtype
        # Columns of the extended input per feature when the trees are folded (0: not).
        self.fold_columns = fold_columns
        self.folded = fold_columns > 0
        self.branch_free = False
        # Rows per eager block: about 2**19 walkers (2 MiB per int32 (trees, rows) tensor).
        # 500 trees of depth 8, 10 000 rows, 1 thread: blocks of 256 to 1 000 rows took
        # 200 ms, 2 000 to 4 000 rows 230 ms, one block of 10 000 rows 355 ms.
        self.block_rows = max(256, (1 << 19) // max(1, forest.n_trees))
        self.compiled_block_rows = 0  # set by strategies.lower (selector rule 5)
        self.average = forest.aggregation == "average"
        post = forest.post_transform
        link = links.program(post.kind, float(post.scale), forest.accumulation)
        self.link_steps = [] if link is None else link.flat()
        self.leaf_width = max(t.leaf_width for t in forest.trees)
        # float32 accumulation (XGBoost) adds in float32, one contribution at a time: torch's
        # CPU cumsum would accumulate float32 in double.
        self.sequential_float32 = forest.accumulation == "float32"
        acc = torch.float32 if self.sequential_float32 else torch.float64
        for group in groups:
            group.leaf_value = group.leaf_value.to(acc)
        self.register_buffer("base_score", tensor(forest.base_score, acc).unsqueeze(1))
        precision = "float32" if dtype == torch.float32 else "float64"

        def prepared(x: Value) -> Value:
            values = native_values(x, forest, precision)
            return extended_input(values, fold_columns) if fold_columns else values

        self.input_steps = record(prepared, forest.input_dtype).flat()
        # Sums start at zero: averages add the base after the mean, and strategies.lower
        # folds base scores into the first trees' leaves (treecomp.passes.fold_base_score).
        self.zero_start = self.average or not forest.base_score.any()
        self.register_buffer(
            "divisor",
            tensor(np.maximum(forest.trees_per_output(), 1).astype(np.float64), acc).unsqueeze(1),
        )
        order = contribution_order(forest)
        # steps[m, k]: the flat (tree * leaf_width + w) row added to output k at step m.
        self.register_buffer("steps", tensor(np.ascontiguousarray(order.T)))
        # When the steps walk the leaf rows in storage order (one output, or one tree per
        # output in turn: XGBoost and LightGBM multi-class), the terms are a view, no gather.
        self.steps_in_order = bool(
            np.array_equal(order.T.reshape(-1), np.arange(order.size))
            and order.size == forest.n_trees * self.leaf_width
        )
        columns = np.concatenate([g.columns.numpy() for g in groups])
        self.in_forest_order = bool(np.array_equal(columns, np.arange(columns.size)))
        self.register_buffer("inverse", tensor(np.argsort(columns).astype(np.int64)))
        columns_of_leaf = np.arange(self.leaf_width, dtype=np.int32).reshape(1, 1, -1, 1)
        self.register_buffer("leaf_columns", tensor(columns_of_leaf))

    def prepare(self, X: torch.Tensor) -> torch.Tensor:
        """Cast as the native library does, then to this module's precision
        (:func:`treecomp.inputs.native_values`), extended for folded trees
        (:func:`treecomp.passes.extended_input`)."""
        if X.dim() != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected X of shape (n_rows, {self.n_features})")
        X = run_steps(self.input_steps, [X.to(self.input_dtype)])
        return X.contiguous()

    def _check_missing(self, X: torch.Tensor) -> bool:
        if self.folded or self.branch_free:
            return True
        return bool(torch.isnan(X).any())

    def _forest_order(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Group outputs ``(blocks, group trees, rows...)`` joined, in forest tree order."""
        joined = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        if self.in_forest_order:
            return joined
        return joined.index_select(1, self.inverse)

    def _blocks(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` as row blocks ``(n_blocks, block_rows, n_features)``; in a branch-free
        module, copies of the last row fill the last block (their results are cut off)."""
        if not self.branch_free or self.compiled_block_rows == 0:
            return X.unsqueeze(0)
        n = X.shape[0]
        size = self.compiled_block_rows
        blocks = (n + size - 1) // size
        # Built in its final shape: reshaping the dynamic row axis into (blocks, size)
        # guards on the block count, which a graph for every batch size cannot do.
        first = torch.arange(blocks, device=X.device).unsqueeze(1) * size
        rows = (first + torch.arange(size, device=X.device)).clamp(max=n - 1)
        return torch.nn.functional.embedding(rows, X)

    def _per_tree(self, X: torch.Tensor, check_missing: bool, ids: bool) -> torch.Tensor:
        """Every tree's leaf values ``(blocks, trees, leaf_width, block_rows)`` (no width
        axis for scalar leaves) or native leaf numbers (``ids``) ``(blocks, trees,
        block_rows)``, in forest order.

        A branch-free module walks all row blocks in one graph. Eager kernels walk one block
        of ``block_rows`` at a time (as one block), so that each level's tensors stay in
        cache, and write its leaves into the block's slab of the result (copies of the last
        row fill the last block; :meth:`_rows` cuts them off).
        """
        n = X.shape[0]
        if self.branch_free or n <= self.block_rows:
            return self._lookup(self._blocks(X), check_missing, ids, None)
        size = self.block_rows
        count = (n + size - 1) // size
        if count * size > n:
            X = torch.cat([X, X[n - 1 :].expand(count * size - n, X.shape[1])])
        blocks = X.view(count, size, X.shape[1])
        first = self._lookup(blocks[:1], check_missing, ids, None)
        shape = list(first.shape)
        shape[0] = count
        result = torch.empty(shape, dtype=first.dtype, device=first.device)
        result[:1] = first
        for b in range(1, count):
            self._lookup(blocks[b : b + 1], check_missing, ids, result[b : b + 1])
        return result

    @torch.jit.unused
    def _walks_eagerly(self, X: torch.Tensor) -> bool:
        """Whether the groups walk row block ``X`` in :mod:`strategies.eager`'s kernels:
        eager (not branch-free, not under a compiler), one block, folded trees."""
        return (
            self.folded
            and not self.branch_free
            and not _compiling()
            and X.shape[0] == 1
            and eager.supports(X[0])
        )

    @torch.jit.unused
    def _walk_eagerly(self, X: torch.Tensor, check_missing: bool) -> list[torch.Tensor]:
        """Every group's leaf rows ``(1, trees, rows)`` for one eager block ``X``."""
        block = eager.KeyedBlock(X[0])
        walked = []
        group: TreeGroup
        for group in self.groups:  # type: ignore[assignment]
            rows = group.walk_eager(block)
            walked.append(group(X, check_missing) if rows is None else rows.unsqueeze(0))
        return walked

    def _lookup(
        self, X: torch.Tensor, check_missing: bool, ids: bool, into: torch.Tensor | None
    ) -> torch.Tensor:
        """Leaf values or ids of row blocks ``X`` (see :meth:`_per_tree`), written into
        ``into`` where given (a block's slab of the result: no copy for one group)."""
        walked: list[torch.Tensor] = []
        if not torch.jit.is_scripting() and self._walks_eagerly(X):
            walked = self._walk_eagerly(X, check_missing)
        alone = into if len(self.groups) == 1 else None
        parts: list[torch.Tensor] = []
        for i, group in enumerate(self.groups):
            # each gives (blocks, trees, rows) rows into its leaf tables
            rows = walked[i] if len(walked) > 0 else group(X, check_missing)
            if ids:
                parts.append(_gather(group.leaf_id, rows, alone))  # type: ignore[arg-type]
            elif self.leaf_width == 1:
                table = group.leaf_value.reshape(-1)  # type: ignore[operator]
                parts.append(_gather(table, rows, alone))
            else:
                # Gathered straight into (blocks, trees, width, rows): a permute of the rows
                # to the last axis would then reshape as a view only for one row, which a
                # dynamic batch axis cannot guard on (torch.export refuses it).
                slots = rows.unsqueeze(2) * self.leaf_width + self.leaf_columns
                table = group.leaf_value.reshape(-1)  # type: ignore[operator]
                parts.append(_gather(table, slots, alone))
        joined = self._forest_order(parts)
        if into is None or alone is not None:
            return joined
        into.copy_(joined)
        return into

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        X = self.prepare(X)
        n = X.shape[0]
        # Row blocks walk the trees; the sum below then runs once over all blocks.
        values = self._per_tree(X, self._check_missing(X), ids=False)
        blocks, rows = values.shape[0], values.shape[-1]
        flat = values.reshape(blocks, self.n_trees * self.leaf_width, rows)
        m, k = self.steps.shape[0], self.steps.shape[1]
        if self.steps_in_order:
            terms = flat.reshape(blocks, m, k, rows)
        else:
            # A zero row pads the outputs that have fewer contributions.
            zero = torch.zeros((blocks, 1, rows), dtype=flat.dtype, device=X.device)
            padded = torch.cat([flat, zero], 1)
            terms = padded.index_select(1, self.steps.reshape(-1)).reshape(blocks, m, k, rows)
        base = self.base_score.unsqueeze(0).expand(blocks, k, rows)
        if self.branch_free:
            total = self._branch_free_sum(base, terms)
        elif self.sequential_float32:
            # Eager: the same sum in place (a kernel per step, but no allocation per step).
            total = torch.zeros_like(terms[:, 0])
            if not self.average:
                total.copy_(base)
            for step in range(m):
                total.add_(terms[:, step])
        elif self.average:
            total = torch.cumsum(terms, dim=1)[:, m - 1].clone()
        else:
            total = torch.cumsum(torch.cat([base.unsqueeze(1), terms], 1), dim=1)[:, m].clone()
        if self.average:
            total = total / self.divisor + self.base_score
        # The scans are cloned above and this is a copy: the result owns its memory, so
        # chunks of a big input do not keep their scratch tensors alive.
        raw = self._rows(total, n)
        return raw, run_steps(self.link_steps, [raw])

    @torch.jit.unused
    def _branch_free_sum(self, base: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
        """The sum of a branch-free module (never scripted: TorchScript runs eagerly).

        Vector leaves add one add per tree: RandomForest, 100 trees of 5-wide leaves, 10 000
        rows, 2 threads, alternating runs: 47-49 ms so, 50-68 ms as a reduction (its first
        compile 15.4 s against 11.5). Scalar leaves reduce: XGBoost, 500 trees, 40 ms
        against 49, compiled in 10.4 s against 37.9."""
        start = None if self.zero_start else base
        return sequential_sum(start, terms, reduction=self.leaf_width == 1)

    def _rows(self, by_block: torch.Tensor, n: int) -> torch.Tensor:
        """``(blocks, columns, block_rows)`` as ``(n, columns)``, a copy of its own."""
        if not self.branch_free:  # eager blocks of block_rows, the last one filled up
            if by_block.shape[0] == 1:
                return by_block[0].t().contiguous()
            return by_block.transpose(1, 2).reshape(-1, by_block.shape[1])[:n]  # a copy
        # A gather rather than a transpose (whose copy checks for one row) or a reshape of
        # the blocks into the dynamic row axis (which guards on the block count): a graph
        # for every batch size must not look at either.
        rows = torch.arange(n, device=by_block.device)
        size = self.compiled_block_rows
        if size == 0:
            return by_block[torch.zeros_like(rows), :, rows]
        return by_block[rows // size, :, rows % size]

    @torch.jit.export
    def leaf_ids(self, X: torch.Tensor) -> torch.Tensor:
        """Native leaf numbers reached in every tree, ``(n_rows, n_trees)`` int64."""
        X = self.prepare(X)
        return self._rows(self._per_tree(X, self._check_missing(X), ids=True), X.shape[0])


def warn_float32_categories(forest: "Forest", dtype: torch.dtype) -> None:
    """Warn when float32 tests cannot tell apart the category codes a float64 model reads.

    The native library (LightGBM) truncates a double to its code; a float32 input has
    already rounded codes from 2**24 on to an even neighbour, so a listed code can be read
    for an unlisted one next to it, or never at all. Every float32 lowering is exact for
    the rounded input (the reference evaluator's answer at that precision), which is not
    the native answer: the warning says which precision is.
    """
    if dtype != torch.float32 or forest.input_dtype == "float32":
        return  # float64 tests, or a library that rounds its inputs to float32 itself
    largest = max(int(t.category_values.max(initial=-1)) for t in forest.trees)
    if largest >= FLOAT32_EXACT_INTEGERS:
        warnings.warn(
            f"this model lists categories up to {largest}, but precision='float32' tells "
            f"integer codes apart only below 2**24 = {FLOAT32_EXACT_INTEGERS}: larger codes "
            "are rounded to an even neighbour before the test and may take the other branch "
            "than in the native model; use precision='float64' to compare them as it does",
            UserWarning,
            stacklevel=2,
        )


def _gather(table: torch.Tensor, index: torch.Tensor, into: torch.Tensor | None) -> torch.Tensor:
    """``table[index]`` (:func:`strategies.programs.take`), written into ``into`` if given."""
    if into is None:
        return take(table, index)
    torch.index_select(table, 0, index.reshape(-1), out=into.view(-1))
    return into


def sequential_sum(
    start: torch.Tensor | None, terms: torch.Tensor, *, reduction: bool = True
) -> torch.Tensor:
    """``start + terms[:, 0] + terms[:, 1] + ...`` (``start`` None: from zero), added in
    that order, in a branch-free graph.

    On the CPU, a reduction over the steps: inductor's C++ adds a reduction in index order,
    one term after the other, in scalar code (``cpp.simdlen 1``, :data:`treecomp.
    torch_backend.INDUCTOR_OPTIONS`); past :data:`SEQUENTIAL_TERMS`, chained reductions,
    each starting with the total so far. The rows axis is dynamic in a package, so inductor
    never splits the reduction itself between threads (it does where the loops around it
    are static and 300x shorter: partial sums). One add per step made the first compile of 500
    trees of depth 8 2.6x slower (30.9 s against 11.7). With a start (a base score not
    folded into the leaves) the terms are first copied behind it: 56 ms at 10 000 rows on 2
    threads, against 41 ms from zero, where inductor reduces the walk's leaf values where
    the walk wrote them. Elsewhere (Triton reduces in a tree of partial sums), or without
    ``reduction``, one add per step, which the compiler fuses into one loop.
    """
    if not reduction or terms.device.type != "cpu":
        total = torch.zeros_like(terms[:, 0]) if start is None else start
        for step in range(terms.shape[1]):
            total = total + terms[:, step]
        return total
    if start is None:
        total, first = terms[:, :SEQUENTIAL_TERMS].sum(1), SEQUENTIAL_TERMS
    else:
        total, first = start, 0
    chunk = SEQUENTIAL_TERMS - 1  # and the total so far
    for begin in range(first, terms.shape[1], chunk):
        total = torch.cat([total.unsqueeze(1), terms[:, begin : begin + chunk]], 1).sum(1)
    return total


def contribution_order(forest: "Forest") -> np.ndarray:
    """For each output, the flat ``tree * leaf_width + w`` columns that add to it, in tree order.

    Shorter lists are padded with the index of an all-zero column (one past the last).
    """
    width = max(t.leaf_width for t in forest.trees)
    lists: list[list[int]] = [[] for _ in range(forest.n_outputs)]
    for t, tree in enumerate(forest.trees):
        for w in range(tree.leaf_width):
            lists[tree.output_index + w].append(t * width + w)
    pad = forest.n_trees * width
    longest = max(len(lst) for lst in lists)
    return np.array([lst + [pad] * (longest - len(lst)) for lst in lists], dtype=np.int64)
