"""The torch module of a forest's plan: input casts, strategy groups, aggregation, links.

Strategies produce leaf rows; everything after that is shared, so any strategy composes
with any aggregation (sum or average, base score) and any post-transform.

Aggregation is :mod:`treecomp.sums`' program: for each output, the base score and then every
contributing leaf value in tree order, in the native type (``ordered_sum``, rendered by
:func:`strategies.programs.ordered_sum`). The result equals the NumPy reference bit for bit
on CPU, so argmax ties (a random forest's 0.5 / 0.5) resolve exactly as natively. A matmul
would add in a blocked order and could break such ties.
"""

from typing import TYPE_CHECKING

import numpy as np
import torch

from strategies import eager
from strategies.programs import _compiling, run_steps, take
from strategies.torch_groups import GroupModule, group_module, tensor
from treecomp import links, sums
from treecomp.arrays import Value, record
from treecomp.inputs import native_values
from treecomp.passes import extended_input

if TYPE_CHECKING:
    from strategies.forest_plan import ForestPlan


class ForestModule(torch.nn.Module):
    """A forest's plan (:class:`strategies.forest_plan.ForestPlan`) as a torch module:
    ``forward(X) -> (raw margins, transformed scores)``.

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
            inside the graph).
        block_rows: Rows per block of the eager traversal.
        compiled_block_rows: Rows per block of a branch-free module; 0 walks all rows as
            one block, tree-major (:func:`strategies.selector.block_rows`).
    """

    sum_order: torch.Tensor
    sum_base: torch.Tensor
    sum_divisor: torch.Tensor
    inverse: torch.Tensor
    leaf_columns: torch.Tensor
    link_steps: list[tuple[str, int, int, int, float]]
    input_steps: list[tuple[str, int, int, int, float]]
    sum_steps: list[tuple[str, int, int, int, float]]

    def __init__(self, plan: "ForestPlan") -> None:
        super().__init__()
        forest = plan.forest
        fold_columns = plan.fold_columns
        self.groups = torch.nn.ModuleList([group_module(group) for group in plan.groups])
        self.n_features = forest.n_features
        self.n_trees = forest.n_trees
        self.input_dtype = torch.float32 if forest.input_dtype == "float32" else torch.float64
        self.dtype = torch.float32 if plan.precision == "float32" else torch.float64
        # Columns of the extended input per feature when the trees are folded (0: not).
        self.fold_columns = fold_columns
        self.folded = fold_columns > 0
        self.branch_free = False
        # Rows per eager block: about 2**19 walkers (2 MiB per int32 (trees, rows) tensor).
        # 500 trees of depth 8, 10 000 rows, 1 thread: blocks of 256 to 1 000 rows took
        # 200 ms, 2 000 to 4 000 rows 230 ms, one block of 10 000 rows 355 ms.
        self.block_rows = max(256, (1 << 19) // max(1, forest.n_trees))
        self.compiled_block_rows = plan.compiled_block_rows  # selector rule 5
        post = forest.post_transform
        link = links.program(post.kind, float(post.scale), forest.accumulation)
        self.link_steps = [] if link is None else link.flat()
        self.sum_plan = plan.sum_plan
        self.leaf_width = self.sum_plan.width
        self.sum_steps = sums.program(self.sum_plan).flat()
        tables = self.sum_plan.tables()
        self.register_buffer("sum_order", tensor(tables["order"]))
        # Per-output tables along the outputs of row blocks (blocks, outputs, block_rows).
        self.register_buffer("sum_base", tensor(tables["base"]).reshape(-1, 1))
        self.register_buffer("sum_divisor", tensor(tables["divisor"]).reshape(-1, 1))

        def prepared(x: Value) -> Value:
            values = native_values(x, forest, plan.precision)
            return extended_input(values, fold_columns) if fold_columns else values

        self.input_steps = record(prepared, forest.input_dtype).flat()
        self.in_forest_order = plan.in_forest_order
        self.register_buffer("inverse", tensor(plan.inverse))
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
        group: GroupModule
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
        # Compiled vector leaves add one tree's leaf row a step: RandomForest, 100 trees of
        # 5-wide leaves, 10 000 rows, 2 threads: 47 ms so, 70 ms as a reduction (its first
        # compile 18.9 s against 13.4). Scalar leaves reduce: 10 classes x 100 rounds, 141 ms
        # against 163 (compile 12.2 s against 16.4).
        inputs = [flat, self.sum_order, self.sum_base, self.sum_divisor]
        totals = run_steps(self.sum_steps, inputs, self.leaf_width > 1)
        raw = self._rows(totals, n)
        return raw, self.link(raw)

    def link(self, raw: torch.Tensor) -> torch.Tensor:
        """The transformed scores of raw scores ``(rows, outputs)``: the forest's link."""
        return run_steps(self.link_steps, [raw])

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


def _gather(table: torch.Tensor, index: torch.Tensor, into: torch.Tensor | None) -> torch.Tensor:
    """``table[index]`` (:func:`strategies.programs.take`), written into ``into`` if given."""
    if into is None:
        return take(table, index)
    torch.index_select(table, 0, index.reshape(-1), out=into.view(-1))
    return into
