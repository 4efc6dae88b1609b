"""The torch renderer of :mod:`treecomp.arrays` programs, and the gather it is built on.

:func:`run_steps` knows the vocabulary's operations and none of the ideas written in it (the
links, the inputs' preparation, the node test): eager torch runs it step by step,
TorchScript scripts it, and ``torch.export`` / Dynamo unroll its loop into the graph the
compiler sees.
"""

# No `from __future__ import annotations`: TorchScript reads the annotations at run time.
import torch


def _compiling() -> bool:
    """Under ``torch.compile`` or ``torch.export`` (never true in eager or TorchScript)."""
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def take(
    buffer: torch.Tensor, index: torch.Tensor, column: torch.Tensor | None = None
) -> torch.Tensor:
    """``buffer[index]`` for a 1-D or 2-D buffer, via ``index_select``; compiled, ``column``
    is a 1-D buffer's ``buffer.unsqueeze(1)`` where the caller has made it already.

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
            table = buffer.unsqueeze(1) if column is None else column
            return torch.nn.functional.embedding(index, table).squeeze(-1)
        return torch.nn.functional.embedding(index, buffer)
    flat = buffer.index_select(0, index.reshape(-1))
    return flat.reshape(list(index.shape) + list(buffer.shape[1:]))


def feature_values(
    X: torch.Tensor, columns: torch.Tensor, turned: torch.Tensor | None = None
) -> torch.Tensor:
    """``X[i, b, columns[i, j, b]]`` for ``X`` of row blocks ``(blocks, rows, features)`` and
    int32 ``columns`` of shape ``(blocks, k, rows)`` (tree-major within a block).

    Eager: an ``index_select`` on the flattened input with int32 offsets, half the memory
    traffic of int64 and ``torch.gather``'s int64-only indices. Compiled, and for inputs too
    large for int32 offsets (never a chunk of the default size): ``torch.gather``, which
    keeps X's own indexing (inductor divided a flattened X back into block, row and column
    in every load) and lowers without a wrap of negative indices.
    """
    if X.dim() == 2:  # rows (rows, features), columns (rows, k): as NumPy and ONNX lay them
        return torch.gather(X, 1, columns.to(torch.int64))
    blocks, n, width = X.shape[0], X.shape[1], X.shape[2]
    if not _compiling() and columns.stride(0) == 0 and columns.stride(2) == 0:
        # The same columns in every row (GEMM's node tests): one index_select of them.
        return X.index_select(2, columns[0, :, 0]).transpose(1, 2)
    if not _compiling() and blocks * n * width < 2**31 - 1:
        rows = torch.arange(blocks * n, dtype=torch.int32, device=X.device) * width
        return take(X.reshape(-1), rows.reshape(blocks, 1, n) + columns)
    if turned is None:  # compiled, the caller may have turned X already
        turned = X.transpose(1, 2)
    if _compiling():  # a copy without the assertion torch.export adds to .to
        return torch.gather(turned, 1, torch.ops.aten._to_copy(columns, dtype=torch.int64))
    return torch.gather(turned, 1, columns.to(torch.int64))


# Inductor adds a float32 reduction of more than 4096 terms in cascaded chunks (codegen/
# cpp.py, need_use_acc_helper), not one term after the other.
SEQUENTIAL_TERMS = 4096


def ordered_sum(
    x: torch.Tensor, outputs: int, start: torch.Tensor | None, by_step: bool = False
) -> torch.Tensor:
    """The sums of ``outputs`` outputs whose terms are ``x``'s columns, step-major, added one
    after the other from ``start`` (where given) in ``x``'s type: ``(rows, outputs)``, or
    ``(blocks, outputs, block_rows)`` for row blocks ``(blocks, columns, block_rows)``.

    Eagerly, a scan in float64 (a sum adds in a blocked order) and adds in place in float32
    (torch's CPU scan adds float32 in double); compiled, :func:`sequential_sum`, as one add
    per step where ``by_step`` (else a reduction where it is exact).
    """
    steps = x.shape[1] // outputs
    terms = x.reshape([x.shape[0], steps, outputs] + list(x.shape[2:]))  # noqa: RUF005
    if start is not None:
        start = start.expand_as(terms[:, 0])
    if not torch.jit.is_scripting():  # TorchScript never compiles sequential_sum
        if _compiling():
            return sequential_sum(start, terms, reduction=not by_step)
    if x.dtype == torch.float32 or steps < 2:
        total = terms[:, 0].clone() if start is None else start + terms[:, 0]
        for step in range(1, steps):
            total.add_(terms[:, step])
        return total
    if start is not None:
        terms = torch.cat([start.unsqueeze(1), terms], 1)
    # Cloned: the result owns its memory, so that chunks of a big input do not keep their
    # scratch tensors alive.
    return torch.cumsum(terms, dim=1)[:, -1].clone()


def sequential_sum(
    start: torch.Tensor | None, terms: torch.Tensor, reduction: bool = True
) -> torch.Tensor:
    """``start + terms[:, 0] + terms[:, 1] + ...`` (``start`` None: from zero), added in
    that order, in a branch-free graph.

    On the CPU, a reduction over the steps: inductor's C++ adds a reduction in index order,
    one term after the other, in scalar code (``cpp.simdlen 1``, :data:`treecomp.
    inductor_settings.INDUCTOR_OPTIONS`); past :data:`SEQUENTIAL_TERMS`, chained reductions,
    each starting with the total so far. The rows axis is dynamic in a package, so inductor
    never splits the reduction itself between threads (it does where the loops around it
    are static and 300x shorter: partial sums). One add per step made the first compile of
    500 trees of depth 8 2.6x slower (30.9 s against 11.7). With a start (a base score not
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


def group_matmul(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``x``'s columns (axis 1) in groups, each group times its matrix of ``table``
    ``(groups, a, b)``: one batched product over the groups.

    Eager row blocks: one row as ``(groups, 1, a) @ table``, more as ``table``'s transpose
    times ``(groups, a, rows)``, which gives the block's layout. LightGBM-like groups of 300
    trees (31 x 32 matrices), 2 threads: 39 us against 100 for one row; 50 trees of depth
    3, 2000 rows: 134 us against 163 (and the transpose's copy).
    """
    groups, a, b = table.shape[0], table.shape[1], table.shape[2]
    if x.dim() == 2:  # (rows, groups * a)
        products = torch.bmm(x.reshape(x.shape[0], groups, a).transpose(0, 1), table)
        return products.transpose(0, 1).reshape(x.shape[0], groups * b)
    blocks, rows = x.shape[0], x.shape[2]
    by_group = x.reshape(blocks, groups, a, rows)
    if _compiling():
        # A sum over a that the compiler fuses: a batched product over blocks and groups
        # reshapes them into one axis, which guards on the block count.
        products = (by_group.unsqueeze(3) * table.unsqueeze(3)).sum(2)
        return products.reshape(blocks, groups * b, rows)
    if blocks == 1 and rows == 1:
        return torch.bmm(by_group[0].transpose(1, 2), table).reshape(1, groups * b, 1)
    across = table.transpose(1, 2)
    if blocks == 1:  # the eager module walks one block at a time
        return torch.bmm(across, by_group[0]).reshape(1, groups * b, rows)
    each = [torch.bmm(across, by_group[i]) for i in range(blocks)]
    return torch.stack(each).reshape(blocks, groups * b, rows)


def group_argmax(x: torch.Tensor, groups: int, size: int) -> torch.Tensor:
    """In each of ``groups`` groups of ``size`` columns (axis 1) of ``x``, the position of
    the largest value, the first of equal ones.

    Where the groups' columns lie last (rows, or row blocks of one row), argmax's fast path;
    else max's indices, several times faster than argmax over a middle axis (50 groups of 8,
    2000 rows: 5.1 ms against 25)."""
    if x.dim() == 2:
        return x.reshape(x.shape[0], groups, size).argmax(2)
    if not _compiling() and x.shape[2] == 1:  # eager single rows (a compiler would guard)
        return x.reshape(x.shape[0], groups, size).argmax(2).unsqueeze(2)
    return x.reshape(x.shape[0], groups, size, x.shape[2]).max(2).indices


def columns_at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x``'s columns (axis 1, rows or row blocks) at ``positions``, after a zero column
    (the position one past the last)."""
    shape = [x.shape[0], 1] + list(x.shape[2:])  # noqa: RUF005 (TorchScript: no *)
    zero = torch.zeros(shape, dtype=x.dtype, device=x.device)
    return torch.cat([x, zero], 1).index_select(1, positions)


def _constant(value: float, kind: int, device: torch.device) -> torch.Tensor:
    """``value`` as a 0-d tensor of the type ``treecomp.arrays.TYPES[kind]``: built from
    the number, so that a compiler sees a literal (read from a buffer, it loads it)."""
    if kind == 0:
        return torch.scalar_tensor(value, dtype=torch.float32, device=device)
    if kind == 1:
        return torch.scalar_tensor(value, dtype=torch.float64, device=device)
    if kind == 2:
        return torch.scalar_tensor(value, dtype=torch.int64, device=device)
    if kind == 3:
        return torch.scalar_tensor(value, dtype=torch.int32, device=device)
    return torch.scalar_tensor(value, dtype=torch.bool, device=device)


def run_steps(
    steps: list[tuple[str, int, int, int, float]],
    inputs: list[torch.Tensor],
    sums_by_step: bool = False,
) -> torch.Tensor:
    """The program of :class:`treecomp.arrays.Program` ``steps`` (from ``Program.flat``)
    on ``inputs``, in torch: each operation as its contract in
    :data:`treecomp.arrays.OPERATIONS` says; the last input itself if there are none.
    ``sums_by_step``: compile ``ordered_sum`` as one add per step (:func:`ordered_sum`).

    One function, the walks' operations first: TorchScript's interpreter pays for every
    call and comparison (a step of a tiny tensor costs 2.6 us so, 4.8 us through a function
    per kind of operation). Eagerly, a value is let go after its last use: a walk of many
    levels keeps one level's tensors, not all of them (a compiler sees their lives itself;
    a small batch's tensors are not worth it).
    """
    values: list[torch.Tensor] = []
    for value in inputs:
        values.append(value)
    first = len(values)
    # Small tensors are not worth the bookkeeping (a one-row call: most of its time).
    compiling = _compiling()
    # Compiled, each table's column view (take) and X's transpose (feature_values) are made
    # once, not at every level: the graph a compiler traces is a quarter smaller (LightGBM,
    # 300 trees of depth 11 to 37: 2918 nodes -> 2041, its first compile 41.9 -> 36.0 s),
    # with the same kernels (their C++ identical).
    views: dict[int, torch.Tensor] = {}
    eager = not compiling and values[0].numel() >= 4096
    last: list[int] = [-1] * (first + len(steps))
    if eager:
        for i in range(len(steps)):
            op, a, b, c, number = steps[i]
            if op != "const":  # a, b, c: values, or -1 for none
                last[a] = i
                if b >= 0:
                    last[b] = i
                if c >= 0:
                    last[c] = i
    freed = torch.empty(0)
    device = values[0].device
    # Each value's number where a constant step made it, else 0 (a mod or floordiv by a
    # power of two is then a mask or a shift: 1M int64 values, 0.8 ms against 5 ms).
    numbers: list[int] = [0] * len(values)
    for i in range(len(steps)):
        op, a, b, c, number = steps[i]
        if op == "const":
            y = _constant(number, a, device)
        elif op == "take":
            if compiling and values[a].dim() == 1:
                if a not in views:
                    views[a] = values[a].unsqueeze(1)
                y = take(values[a], values[b], views[a])
            else:
                y = take(values[a], values[b])
        elif op == "column":
            if compiling and values[a].dim() == 3:
                if a not in views:
                    views[a] = values[a].transpose(1, 2)
                y = feature_values(values[a], values[b], views[a])
            else:
                y = feature_values(values[a], values[b])
        elif op == "less":
            y = values[a] < values[b]
        elif op == "not":
            y = torch.bitwise_not(values[a])
        elif op == "int32":
            if compiling:  # a copy without torch.export's assertion that .to adds
                y = torch.ops.aten._to_copy(values[a], dtype=torch.int32)
            else:
                y = values[a].to(torch.int32)
        elif op == "mul":
            y = values[a] * values[b]
        elif op == "add":
            y = values[a] + values[b]
        elif op == "broadcast":
            y = values[a].expand_as(values[b])
        elif op == "and":
            y = values[a] & values[b]
        elif op == "or":
            y = values[a] | values[b]
        elif op == "where":
            y = torch.where(values[a], values[b], values[c])
        elif op == "isnan":
            y = torch.isnan(values[a])
        elif op == "less_equal":
            y = values[a] <= values[b]
        elif op == "greater":
            y = values[a] > values[b]
        elif op == "greater_equal":
            y = values[a] >= values[b]
        elif op == "equal":
            y = values[a] == values[b]
        elif op == "sub":
            y = values[a] - values[b]
        elif op == "div":
            y = values[a] / values[b]
        elif op == "neg":
            y = -values[a]
        elif op == "abs":
            y = values[a].abs()
        elif op == "mod":
            d = numbers[b]
            if d > 0 and d & (d - 1) == 0:
                y = values[a] & (d - 1)
            else:
                y = torch.remainder(values[a], values[b])
        elif op == "floordiv":
            d = numbers[b]
            if d > 0 and d & (d - 1) == 0:
                shift = 0
                while (1 << shift) < d:
                    shift += 1
                y = values[a] >> shift
            else:
                y = torch.div(values[a], values[b], rounding_mode="floor")
        elif op == "minimum":
            y = torch.minimum(values[a], values[b])
        elif op == "pow":
            y = torch.pow(values[a], values[b])
        elif op == "exp":
            y = torch.exp(values[a])
        elif op == "log1p":
            y = torch.log1p(values[a])
        elif op == "sign":  # torch's sign of NaN is 0
            u = values[a]
            y = torch.where(torch.isnan(u), u, torch.sign(u))
        elif op == "float32":
            y = values[a].to(torch.float32)
        elif op == "float64":
            y = values[a].to(torch.float64)
        elif op == "int64":
            y = values[a].to(torch.int64)
        elif op == "softmax":
            y = torch.softmax(values[a], dim=1)
        elif op == "row_max":
            y = values[a].max(dim=1, keepdim=True)[0]
        elif op == "ordered_sum":
            y = ordered_sum(values[a], numbers[b], None if c < 0 else values[c], sums_by_step)
        elif op == "columns_at":
            y = columns_at(values[a], values[b])
        elif op == "group_matmul":
            y = group_matmul(values[a], values[b])
        elif op == "group_argmax":
            y = group_argmax(values[a], numbers[b], numbers[c])
        elif op == "argmax":
            y = torch.argmax(values[a], dim=1)
        elif op == "squeeze":
            y = values[a][:, 0]
        elif op == "concat":
            y = torch.cat([values[a], values[b]], 1)
        elif op == "interleave":  # as (rows, columns, parts), read row by row
            u = values[a]
            parts = [u, values[b]] if c < 0 else [u, values[b], values[c]]
            y = torch.stack(parts, 2).reshape(u.shape[0], len(parts) * u.shape[1])
        else:
            raise ValueError("unknown operation " + op)
        values.append(y)
        numbers.append(int(number) if op == "const" and a in (2, 3) else 0)  # int64, int32
        if eager and op != "const":  # let go of the arguments this step used last
            if a >= first and last[a] == i:
                values[a] = freed
            if b >= first and last[b] == i:
                values[b] = freed
            if c >= first and last[c] == i:
                values[c] = freed
    return values[-1]
