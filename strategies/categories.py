"""The categories a group's categorical nodes list, laid out in one table.

:class:`CategorySets` is a direct bit table, or a hash table whose memory follows the
listed categories, not their largest code; the lookup in it is part of the node test
(:func:`strategies.nodes.category_member`). The hash table's key and slots are written once
(:func:`category_key`, :func:`hash_slot`), for the table's NumPy arrays here and for the
node test's recorded values alike.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

# Categories lie in [0, 2**31) (Forest.validate): a key row << 31 | code names a listed
# category of category row `row`, and codes at or above 2**31 are never listed.
CODE_BITS = 31
# The hash of a key is bits [32 - bits, 32) of a * code + b * row (see CategorySets): with
# a, b < 2**31 and code, row < 2**31 the sum stays below 2**63, so int64 never overflows.
HASH_BITS = 32
# Categories are looked up in a direct table (one byte per row and code up to the largest)
# while it holds at most this many cells, or no more than twice the hash table's bytes.
DIRECT_CELLS = 1 << 20


def category_key(code: Any, row: Any) -> Any:
    """The hash table's key of category ``code`` at category row ``row``: ``row << 31 |
    code``, as integer arithmetic that NumPy int64 arrays and recorded values
    (:class:`treecomp.arrays.Value`) both have."""
    return code + row * (1 << CODE_BITS)


def hash_slot(code: Any, row: Any, a: int, b: int, shift: int) -> Any:
    """The slot ``((a * code + b * row) mod 2**32) >> shift`` of a key (multiply-shift
    hashing), for NumPy arrays and recorded values alike."""
    return (code * a + row * b) % (1 << HASH_BITS) // (1 << shift)


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
        keys = np.unique(category_key(codes, rows))
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
        key = category_key(codes, rows)
        slots = _slots(rows, codes, self.layout)
        found: npt.NDArray[np.bool_] = (self.table[slots[0]] == key) | (self.table[slots[1]] == key)
        return found


def _slots(
    rows: npt.NDArray[np.int64], codes: npt.NDArray[np.int64], layout: list[int]
) -> npt.NDArray[np.int64]:
    """The two candidate slots ``(2, n)`` of keys ``(rows, codes)`` in a hash ``layout``."""
    a1, b1, a2, b2, shift = layout
    return np.stack([hash_slot(codes, rows, a1, b1, shift), hash_slot(codes, rows, a2, b2, shift)])


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
