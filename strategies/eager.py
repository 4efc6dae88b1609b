"""The traversal strategies' level loops written for eager kernels, over integer keys.

In eager mode every tensor operation is a kernel of its own, and what costs is the number of
kernels per level, the memory each one allocates and the dtype conversions between them, not
the arithmetic. The compiled path fuses the same walk into one loop and never comes here.

Three choices make a level cheap here. 500 random trees of depth 8, a block of 1 048 rows,
2 threads: a level of the general loop (``forward``) is 9 kernels and took 3.0 ms, a level
of this one is 6 kernels and took 1.4 ms.

- **Integer keys.** Folded trees (:func:`treecomp.passes.fold_missing`) test ``x' < s`` and
  send NaN right. Floats map to integers of their width whose order is the floats' order
  (:func:`order_keys`: -0 taken as +0, NaN above +inf), so the walker goes right iff
  ``key(x') >= key(s)``, NaN included, and the comparison writes the 0/1 step straight into
  an integer tensor. A float comparison writes bool through a scalar loop, and adding a
  bool to an index converts it in a copy first: 2-4x the time of the integer kernels.
- **Heap positions.** Walker ``q`` of a perfect tree moves to ``2 q + right``: with every
  level's nodes stored one after the other, tree by tree, ``T`` slots ahead of the first
  (``T`` trees), no per-level offset is added. One fused ``add(right, q, alpha=2)``.
- **Scratch buffers.** Every level writes into buffers kept per thread (``out=``), so no
  kernel allocates: a fresh 2 MiB result costs page faults that took as long as the
  kernel itself (36 us in place, 105 us allocated).

And two that do less work:

- **The roots' columns copied whole.** Every row of a tree tests its root: the roots'
  feature columns are copied as rows (one copy a tree) and compared at once, instead of
  three gathers a walker. Levels 1 and 2 walked the same way (every node's test for every
  row, then one gather a walker) did not pay. 10 000 rows, 2 threads, in ms: 500 trees of
  depth 8 took 60 with no level walked so, 58.5 with the roots, 58.9 with level 1 too and
  66 with level 2 too; 1 000 trees of depth 6 took 100, 93, 95 and 109.
- **Walkers leave at their leaf.** A walk by child pointers (deep, leaf-wise trees) drops
  the walkers that reached a leaf every ``COMPACT_EVERY`` levels: LightGBM's trees of
  255 leaves run 38 levels deep at most, and most rows stop before 15.
"""

from __future__ import annotations

import threading

import torch

# Child-pointer walks look for finished walkers this often (levels) ...
COMPACT_EVERY = 4
# ... and drop them once at least this fraction has finished (a compaction costs about one
# level: a comparison, a nonzero and three gathers).
COMPACT_FRACTION = 0.25

_KEY_TYPES = {torch.float32: torch.int32, torch.float64: torch.int64}
_local = threading.local()


def supports(X: torch.Tensor) -> bool:
    """Whether an eager block of ``X`` ``(rows, columns)`` can walk here: float32 or
    float64, and flat offsets that fit int32."""
    return X.dtype in _KEY_TYPES and X.numel() < 2**31 - 1


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """Integers whose order is the order of ``values`` (float32 to int32, float64 to int64):
    -0 maps to +0's key and every NaN to the largest key, above +inf's.

    A float's bits, read as a signed integer, are ordered for non-negative floats;
    negative floats have the sign bit set and their other bits in reverse order, which
    flipping those bits restores.
    """
    key_type = _KEY_TYPES[values.dtype]
    top = torch.iinfo(key_type).max
    bits = (values.detach() + 0.0).view(key_type)  # -0.0 + 0.0 == +0.0
    keys = bits ^ ((bits >> (bits.element_size() * 8 - 1)) & top)
    return keys.masked_fill_(torch.isnan(values), top)


def scratch(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A buffer of ``shape`` kept for this thread and reused by every call that asks for
    ``name``: its contents are whatever the last user left. Per thread, so that modules
    called from several threads at once (Dask's threaded scheduler) never share one."""
    buffers: dict[tuple[str, torch.dtype, torch.device, bool], torch.Tensor] | None
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    numel = 1
    for size in shape:
        numel *= size
    # Buffers made in inference mode cannot be written outside it.
    key = (name, dtype, device, torch.is_inference_mode_enabled())
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = torch.empty(numel, dtype=dtype, device=device)
    return buffer[:numel].view(shape)


class KeyedBlock:
    """One eager row block of the (folded) input as keys, in the layouts the walks read.

    Attributes:
        rows, width: The block's rows and (extended) columns.
        flat: Keys in row-major order, flat: walker ``(tree, row)`` reads column ``c`` at
            ``row * width + c``.
        row_offsets: ``row * width`` as int32 ``(1, rows)``.
    """

    def __init__(self, X: torch.Tensor) -> None:
        self.rows, self.width = int(X.shape[0]), int(X.shape[1])
        self.device = X.device
        self.keys = order_keys(X.contiguous())
        self.flat = self.keys.reshape(-1)
        offsets = torch.arange(self.rows, dtype=torch.int32, device=X.device) * self.width
        self.row_offsets = offsets.unsqueeze(0)
        self._by_column: torch.Tensor | None = None

    @property
    def by_column(self) -> torch.Tensor:
        """Keys column by column ``(width, rows)``, for copying whole columns."""
        if self._by_column is None:
            self._by_column = self.keys.t().contiguous()
        return self._by_column


def walk_levels(
    block: KeyedBlock,
    position: torch.Tensor,
    levels: range,
    feature: torch.Tensor,
    threshold: torch.Tensor,
) -> None:
    """Walk ``position`` ``(trees, rows)`` int32 heap positions in place through ``levels``:
    ``feature`` (int32) and ``threshold`` (keys) are indexed by position."""
    shape = tuple(position.shape)
    device = block.device
    column = scratch("column", shape, torch.int32, device)
    value = scratch("value", shape, block.keys.dtype, device)
    # int32 keys: the thresholds overwrite the columns once read, and the steps the values,
    # three buffers instead of five (less to keep in cache).
    narrow = block.keys.dtype == torch.int32
    bound = column if narrow else scratch("bound", shape, block.keys.dtype, device)
    right = value if narrow else scratch("right", shape, torch.int32, device)
    at = position.view(-1)
    for _ in levels:
        torch.index_select(feature, 0, at, out=column.view(-1))
        column.add_(block.row_offsets)
        torch.index_select(block.flat, 0, column.view(-1), out=value.view(-1))
        torch.index_select(threshold, 0, at, out=bound.view(-1))
        torch.ge(value, bound, out=right)
        torch.add(right, position, alpha=2, out=position)


def walk_roots(
    block: KeyedBlock,
    position: torch.Tensor,
    roots: torch.Tensor,
    feature: torch.Tensor,
    threshold: torch.Tensor,
) -> None:
    """Walk the first level of a perfect layout into ``position`` ``(trees, rows)``, where
    every row of a tree tests the same node: the roots' feature columns copied whole
    (``feature``, int32, one a tree) and compared with their thresholds (keys ``(trees,
    1)``), from the roots' heap positions ``roots`` ``(trees, 1)``."""
    value = scratch("value", tuple(position.shape), block.keys.dtype, block.device)
    torch.index_select(block.by_column, 0, feature, out=value)
    tests = scratch("right", tuple(position.shape), torch.int32, block.device)
    torch.ge(value, threshold, out=tests)
    torch.add(tests, roots, alpha=2, out=position)


def walk_pointers(
    block: KeyedBlock,
    node: torch.Tensor,
    levels: int,
    feature: torch.Tensor,
    threshold: torch.Tensor,
    child: torch.Tensor,
) -> torch.Tensor:
    """Walk ``levels`` levels by child pointers from int32 nodes ``(trees, rows)``; returns
    the nodes reached, ``(trees, rows)``, a tensor of its own. ``feature`` (int32) and
    ``threshold`` (keys) are indexed by node, ``child[2 * node + right]`` is the next node
    (leaves point to themselves). Walkers at a leaf leave the walk (``COMPACT_EVERY``)."""
    shape = tuple(node.shape)
    device = block.device
    # Two buffers of nodes: each level reads names[0] and writes names[1], then they swap.
    names = ("node_a", "node_b")
    narrow = block.keys.dtype == torch.int32  # buffers shared as in walk_levels
    here = scratch(names[0], (node.numel(),), torch.int32, device)
    here.view(shape).copy_(node)
    # Each walker's row offset, and (once walkers have left) its place in the result.
    offsets = block.row_offsets.expand(shape).reshape(-1)
    place: torch.Tensor | None = None
    result: torch.Tensor | None = None
    for level in range(levels):
        alive = here.numel()
        column = scratch("column", (alive,), torch.int32, device)
        value = scratch("value", (alive,), block.keys.dtype, device)
        bound = column if narrow else scratch("bound", (alive,), block.keys.dtype, device)
        step = value if narrow else scratch("right", (alive,), torch.int32, device)
        torch.index_select(feature, 0, here, out=column)
        column.add_(offsets)
        torch.index_select(block.flat, 0, column, out=value)
        torch.index_select(threshold, 0, here, out=bound)
        torch.ge(value, bound, out=step)
        torch.add(step, here, alpha=2, out=step)
        following = scratch(names[1], (alive,), torch.int32, device)
        torch.index_select(child, 0, step, out=following)
        if level % COMPACT_EVERY == COMPACT_EVERY - 1 and level < levels - 1:
            moving = torch.ne(following, here).nonzero().squeeze(1)
            if moving.numel() <= (1.0 - COMPACT_FRACTION) * alive:
                if result is None:
                    result = following.clone()
                else:
                    result.index_copy_(0, place, following)  # type: ignore[arg-type]
                place = moving if place is None else place.index_select(0, moving)
                offsets = offsets.index_select(0, moving)
                # Into the buffer of the nodes just read, which stays names[0].
                here = scratch(names[0], (moving.numel(),), torch.int32, device)
                torch.index_select(following, 0, moving, out=here)
                if moving.numel() == 0:
                    break
                continue
        here, names = following, (names[1], names[0])
    if result is None:
        return here.clone().view(shape)
    if here.numel():
        result.index_copy_(0, place, here)  # type: ignore[arg-type]
    return result.view(shape)
