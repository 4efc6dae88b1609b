"""The ONNX graph of a lowered forest: a builder of nodes and constants, and the forest's nodes.

Each strategy's group plan emits its own nodes through :class:`GraphBuilder` (``emit_onnx``,
mirroring its torch module's ``forward``); :func:`emit_module` adds what every strategy shares: the
folded-missing input, the exact sum in the native order and type (or the tree operator's own
sum where it is exact), the post-transform. :mod:`treecomp.onnx.export` wraps these in a
model with its inputs and named outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from treecomp import links, sums
from treecomp.arrays import CASTS, Program, Step, evaluate, record
from treecomp.errors import UnsupportedModelError
from treecomp.passes import extended_input

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as exc:  # pragma: no cover - exercised only without onnx
    raise ImportError(
        "ONNX export needs the onnx package (and onnxruntime for backend='onnx'): "
        "pip install 'treecomp[onnx]'"
    ) from exc

if TYPE_CHECKING:
    import strategies

# ONNX element types of the graph's tensors, by NumPy name.
ELEMENT = {
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "bool": TensorProto.BOOL,
}


class GraphBuilder:
    """Accumulates ONNX nodes and constants; names are generated.

    ``op(type, *inputs, **attributes)`` returns the output name; ``const(array)`` adds an
    initializer; ``scalar(value)`` is a 0-d constant of the graph's
    float type; ``rows_by(*dims)`` is the int64 shape ``[N, *dims]`` for Expand;
    ``reshape(x, *dims)`` reshapes to ``[N, *dims]`` with a constant shape (Reshape's 0 copies
    the batch axis), so it costs no shape computation per call: at one row, every node counts.
    """

    def __init__(self, float_type: str, X: str) -> None:
        self.float_type = float_type
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._cache: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self.known: dict[str, np.ndarray] = {}  # the constants' values, by name
        self._X = X
        self._batch: str | None = None
        # Values whose shape past the batch axis is known: a reshape to it is no node.
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._reshaped: dict[str, str] = {}  # a reshape's value -> the value it reshaped
        # A broadcast of a constant row to every row -> the row (for ``column``).
        self.broadcast_rows: dict[str, np.ndarray] = {}

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        if op_type == "Cast":
            attributes["to"] = ELEMENT[attributes["to"]]
        output = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def const(self, value: Any) -> str:
        array = np.array(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        key = (array.dtype.str, array.tobytes(), array.shape)
        if key not in self._cache:
            name = self._name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._cache[key] = name
            self.known[name] = array
        return self._cache[key]

    def ints(self, values: list[int]) -> str:
        return self.const(np.array(values, dtype=np.int64))

    def scalar(self, value: float) -> str:
        return self.const(np.array(value, dtype=self.float_type))

    def rows_by(self, *dims: int) -> str:
        if self._batch is None:
            shape = self.op("Shape", self._X)
            self._batch = self.op("Slice", shape, self.ints([0]), self.ints([1]))
        return self.op("Concat", self._batch, self.ints(list(dims)), axis=0)

    def used_initializers(self, outputs: list[str]) -> list[onnx.TensorProto]:
        """The constants some node (in a branch too) or one of ``outputs`` reads: those a
        folded step (:func:`emit_program`) consumed are left out."""
        read = set(outputs)
        nodes = list(self.nodes)
        while nodes:
            node = nodes.pop()
            read.update(node.input)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    nodes.extend(attribute.g.node)
                    read.update(o.name for o in attribute.g.output)
        return [t for t in self.initializers if t.name in read]

    def branch(self, emit: Callable[[], str | None], element: int) -> onnx.GraphProto | None:
        """The nodes that ``emit`` adds, as a subgraph (an ``If`` branch) whose output is the
        value it returns (None if it returns None). Constants stay initializers of the main
        graph, which a subgraph sees; so do the values made before, but nothing made inside
        is seen outside."""
        start, batch = len(self.nodes), self._batch
        out = emit()
        nodes = self.nodes[start:]
        del self.nodes[start:]
        self._batch = batch
        if out is None:
            return None
        nodes = live_nodes(nodes, [out])
        if not any(out in node.output for node in nodes):
            copy = self._name("identity")
            nodes.append(helper.make_node("Identity", [out], [copy]))
            out = copy
        output = helper.make_tensor_value_info(out, element, None)
        return helper.make_graph(nodes, self._name("branch"), [], [output])

    def reshape(self, x: str, *dims: int) -> str:
        if self.shapes.get(x) == dims:
            return x
        # A reshape of a reshape reshapes its source (the first one is left to live_nodes).
        source = self._reshaped.get(x, x)
        if self.shapes.get(source) == dims:
            return source
        out = self.op("Reshape", source, self.ints([0, *dims]))
        self.shapes[out] = dims
        self._reshaped[out] = source
        return out

    def reshaped_from(self, x: str) -> str | None:
        """The value ``x`` is a :meth:`reshape` of, if it is one."""
        return self._reshaped.get(x)

    def prune(self, outputs: list[str]) -> None:
        """Drop the nodes that none of ``outputs`` needs (:func:`live_nodes`)."""
        self.nodes[:] = live_nodes(self.nodes, outputs)

    def program(self, program: Program, *inputs: str) -> list[str]:
        """The outputs of ``program`` on the values ``inputs`` (:func:`emit_program`)."""
        return emit_program(self, program, *inputs)


def live_nodes(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """``nodes`` (in order) that ``outputs`` need, directly or through a subgraph's nodes:
    ONNX Runtime runs every node of a graph, needed or not."""
    needed = set(outputs)
    kept = []
    for node in reversed(nodes):
        if not needed.intersection(node.output):
            continue
        kept.append(node)
        needed.update(node.input)
        inner = [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        while inner:
            graph = inner.pop()
            for sub in graph.node:
                needed.update(sub.input)
                inner.extend(a.g for a in sub.attribute if a.type == onnx.AttributeProto.GRAPH)
    return kept[::-1]


def emit_module(
    g: GraphBuilder,
    plan: strategies.ForestPlan,
    X: str,
    *,
    scores: bool = True,
    leaf_ids: bool = False,
    link: bool = True,
    operator_sums: bool = False,
    large_batch_rows: int | None = None,
) -> tuple[str | None, str | None, str | None]:
    """Emit the forward of ``plan`` (its torch module's) and/or ``leaf_ids``; returns (raw,
    transformed, leaf ids), sums in the accumulation type (the outputs widen what they give
    out).

    ``link``: emit the post-transform (else ``transformed`` is None: the onnx backend links
    the raw sums itself, with the C library's exp).
    ``operator_sums``: let the tree operator add the trees where it can
    (:func:`_emit_operator_sums`: exact on one thread only).
    ``large_batch_rows``: batches of this many rows or more take a tree operator node per
    tree and chains of Adds (:func:`_emit_tree_chains`) where the forest allows it, smaller
    ones the sum below, chosen by an ``If`` on the batch size (exact either way).

    Only what is asked for is emitted: ONNX Runtime runs every node of a graph, whichever
    outputs a call fetches.
    """
    forest = plan.forest
    groups: list[Any] = list(plan.groups)
    if plan.folded:  # the extended input of treecomp.passes.fold_missing
        extend = record(lambda x: extended_input(x, plan.fold_columns), g.float_type)
        g.shapes[X] = (forest.n_features,)
        (X,) = emit_program(g, extend, X)
    identity = plan.in_forest_order

    def in_forest_order(parts: list[str]) -> str:
        """Back to forest order: the inverse of the groups' concatenated tree order."""
        joined = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1)
        return joined if identity else g.op("Gather", joined, g.const(plan.inverse), axis=1)

    rows: dict[int, str] = {}  # each group's leaf rows, emitted once

    def leaf_rows(i: int) -> str:
        if i not in rows:
            rows[i] = groups[i].emit_onnx(g, X)
        return rows[i]

    ids = None
    if leaf_ids:
        ids = in_forest_order(
            [g.op("Gather", g.const(group.leaf_id), leaf_rows(i)) for i, group in enumerate(groups)]
        )
    if not scores:
        return None, None, ids
    sum_plan = plan.sum_plan
    sum_tables = [g.const(table) for table in sum_plan.tables().values()]

    def summed() -> str:
        values = []
        for i, group in enumerate(groups):
            direct = group.emit_values(g, X, group.leaf_value)
            if direct is None:
                direct = g.op("Gather", g.const(group.leaf_value), leaf_rows(i))
                g.shapes[direct] = (len(group.columns), int(group.leaf_value.shape[1]))
            values.append(direct)
        # In order, step m of output j is column m * k + j of the values: a reshape.
        flat = g.reshape(in_forest_order(values), forest.n_trees * sum_plan.width)
        return emit_program(g, sums.program(sum_plan), flat, *sum_tables)[0]

    raw = None
    if operator_sums:
        raw = _emit_operator_sums(g, plan, X)
    elif large_batch_rows is not None and _tree_chain_layout(plan) is not None:
        element = ELEMENT[forest.accumulation]
        n = g.op("Shape", X, end=1)

        def by_size() -> str:
            small = g.branch(summed, element)
            large = g.branch(
                lambda: _emit_tree_chains(g, plan, X),
                element,
            )
            few = g.op("Less", n, g.ints([large_batch_rows]))
            return g.op("If", few, then_branch=small, else_branch=large)

        # The branches plan their operator nodes for small batches; the leaf ids above keep
        # the batch size's plan, and so does the plan itself afterwards.
        with groups[0].planned_for(large_batch_rows - 1):
            # A single row of a one-output forest: the operator's own sum, in fewer nodes
            # than the scan. Exact there on any number of threads: ONNX Runtime adds one
            # row's trees in their order, walked on one thread or, from 80 trees, on all of
            # them into a score per tree (treecomp.onnx.engine.PARALLEL_TREES; several
            # outputs would add per-thread partial sums). Measured: see LARGE_BATCH_ROWS in
            # treecomp.onnx.export.
            single = None
            if forest.n_outputs == 1 and large_batch_rows > 1:
                single = g.branch(
                    lambda: _emit_operator_sums(g, plan, X),
                    element,
                )
            if single is None:
                raw = by_size()
            else:
                one = g.op("Less", n, g.ints([2]))
                raw = g.op("If", one, then_branch=single, else_branch=g.branch(by_size, element))
    if raw is None:
        raw = summed()
    transformed = None
    if link:
        post = forest.post_transform
        linked = links.program(post.kind, float(post.scale), forest.accumulation)
        transformed = raw if linked is None else emit_program(g, linked, raw)[0]
    return raw, transformed, ids


def _tree_chain_layout(plan: strategies.ForestPlan) -> str | None:
    """How :func:`_emit_tree_chains` adds this forest's trees: ``"rows"`` (every tree adds
    its leaf row to all outputs, one chain of row Adds), ``"outputs"`` (scalar leaves, one
    chain per output), or None where it does not apply."""
    forest, groups = plan.forest, plan.groups
    if len(groups) != 1 or not groups[0].tree_operator or not plan.in_forest_order:
        return None
    k, width = forest.n_outputs, plan.sum_plan.width
    steps = plan.sum_plan.steps  # (steps, outputs): flat tree * width + w, or a pad
    if width == k and np.array_equal(steps, np.arange(forest.n_trees * k).reshape(-1, k)):
        return "rows"
    if width == 1 and (steps[0] < forest.n_trees).all():  # every output has a tree
        return "outputs"
    return None


def _emit_tree_chains(g: GraphBuilder, plan: strategies.ForestPlan, X: str) -> str:
    """The raw sums from one tree operator node per tree, added by a chain of ``Add`` nodes
    per output in tree order, in the table's (the accumulation) type: the native sum, on any
    number of threads (``TreeEnsemble.emit_tree_values``). The base score starts each
    chain unless folded into the first tree's leaves; averages divide the sum afterwards.

    Faster than the scan of :func:`treecomp.sums.program` on large batches, where ONNX Runtime's
    per-node cost is spread over the rows: the operator keeps no score vector per row and
    tree, and nothing of ``(N, trees)`` is materialised. 10 000 rows, 2 threads, against
    ONNX-ML's own graph: see ``LARGE_BATCH_ROWS`` in :mod:`treecomp.onnx.export`.
    """
    group: Any = plan.groups[0]  # the tree operator (_tree_chain_layout)
    values = group.emit_tree_values(g, X, group.leaf_value)
    forest = plan.forest
    k = forest.n_outputs
    sum_plan = plan.sum_plan
    base = sum_plan.base.reshape(k, 1) if sum_plan.base_first else None

    def chain(terms: list[str], start: np.ndarray | None) -> str:
        total = terms[0] if start is None else g.op("Add", g.const(start), terms[0])
        for term in terms[1:]:
            total = g.op("Add", total, term)
        return total

    if _tree_chain_layout(plan) == "rows":
        raw = chain(values, None if base is None else base.reshape(1, k))
    else:
        steps = sum_plan.steps
        totals = [
            chain(
                [values[t] for t in steps[:, j].tolist() if t < forest.n_trees],
                None if base is None else base[j].reshape(1, 1),
            )
            for j in range(k)
        ]
        raw = totals[0] if k == 1 else g.op("Concat", *totals, axis=1)
    return _emit_mean(g, sum_plan, raw)


def _emit_operator_sums(g: GraphBuilder, plan: strategies.ForestPlan, X: str) -> str | None:
    """The raw sums added by one tree-operator node, each output a target, or None where the
    forest does not allow it (see ``TreeEnsemble.emit_sums``).

    The operator starts each target at zero and adds its trees' leaves in tree order, in
    the input's type, when it runs on one thread: the native sum, provided the base score
    went into the first tree's leaves (or is zero) and each tree adds one value to one
    output. Averages divide the sum afterwards (:func:`treecomp.sums.mean`).
    """
    groups, forest = plan.groups, plan.forest
    if len(groups) != 1 or not groups[0].tree_operator or plan.sum_plan.width != 1:
        return None
    if not plan.in_forest_order or plan.sum_plan.base_first:
        return None
    targets = np.array([tree.output_index for tree in forest.trees], dtype=np.int64)
    group: Any = groups[0]
    totals = group.emit_sums(g, X, group.leaf_value, targets, forest.n_outputs)
    return None if totals is None else _emit_mean(g, plan.sum_plan, totals)


def _emit_mean(g: GraphBuilder, sum_plan: sums.SumPlan, total: str) -> str:
    """The outputs from sums a tree operator added: an averaging forest's mean
    (:func:`treecomp.sums.mean`), else the sums themselves."""
    if sum_plan.divisor is None:
        return total
    tables = [g.const(table) for table in sum_plan.tables().values()]
    return emit_program(g, sums.mean_program(sum_plan), total, *tables)[0]


def emit_program(g: GraphBuilder, program: Program, *inputs: str) -> list[str]:
    """The outputs of ``program`` (:mod:`treecomp.arrays`) on the values ``inputs``. An
    integer or bool step of constants, or a gather of a constant table at constant
    positions, is computed here, a constant of the graph (exact in any renderer: positions'
    arithmetic, such as a level's offsets, and GEMM's node parameters)."""
    values = list(inputs)
    for step in program.steps:
        args = [values[a] for a in step.args]
        known = [g.known[a] for a in args if a in g.known]
        foldable = step.dtype in _FOLDED or step.op == "take"  # a gather copies exactly
        if step.op != "const" and foldable and args and len(known) == len(args):
            values.append(g.const(evaluate(step, *known)))
        else:
            values.append(_emit_step(g, step, args))
    return [values[i] for i in program.outputs]


_FOLDED = frozenset(("int32", "int64", "bool"))


# The operations that are one ONNX node of the same name, by operation.
_NODES = {"neg": "Neg", "exp": "Exp", "sign": "Sign", "add": "Add", "sub": "Sub", "mul": "Mul"}
_NODES |= {"div": "Div", "pow": "Pow", "minimum": "Min", "less": "Less", "greater": "Greater"}
_NODES |= {"greater_equal": "GreaterOrEqual", "where": "Where", "equal": "Equal", "isnan": "IsNaN"}
_NODES |= {"less_equal": "LessOrEqual", "and": "And", "or": "Or", "not": "Not", "abs": "Abs"}
_NODES |= {"take": "Gather", "mod": "Mod", "floordiv": "Div"}  # Div of ints >= 0 floors


def _emit_step(g: GraphBuilder, step: Step, args: list[str]) -> str:
    op, dtype = step.op, step.dtype
    if op == "const":
        return g.const(np.array(step.value, dtype=dtype))
    if op == "where" and dtype == "bool":  # ONNX Runtime's Where takes no bools
        condition, x, y = args
        known = g.known.get(condition)
        otherwise = g.op("Not", condition) if known is None else g.const(~known)
        return g.op("Or", g.op("And", condition, x), g.op("And", otherwise, y))
    if op in _NODES:
        return g.op(_NODES[op], *args)
    if op == "concat":
        return g.op("Concat", *args, axis=1)
    if op == "column":
        row = g.broadcast_rows.get(args[1])
        if row is not None:  # the same columns in every row: one Gather of them
            return g.op("Gather", args[0], g.const(row.reshape(-1)), axis=1)
        return g.op("GatherElements", *args, axis=1)
    if op == "ordered_sum":
        return _ordered_sum(g, *args)
    if op == "columns_at":
        return _columns_at(g, step, *args)
    if op == "group_matmul":
        return _group_matmul(g, *args)
    if op == "group_argmax":
        groups, size = int(g.known[args[1]]), int(g.known[args[2]])
        return g.op("ArgMax", g.reshape(args[0], groups, size), axis=2, keepdims=0)
    if op == "broadcast":
        out = g.op("Expand", args[0], g.op("Shape", args[1]))
        row = g.known.get(args[0])
        if row is not None and row.ndim == 2 and row.shape[0] == 1:
            g.broadcast_rows[out] = row
        return out
    if op == "interleave":  # as (rows, columns, parts), read row by row
        # The width must be known: a Reshape to [0, -1] cannot tell it for 0 rows.
        (width,) = g.shapes[args[0]]
        axis = g.ints([2])
        stacked = g.op("Concat", *[g.op("Unsqueeze", part, axis) for part in args], axis=2)
        return g.reshape(stacked, len(args) * width)
    (x,) = args
    if op in CASTS:
        return g.op("Cast", x, to=op)
    if op == "argmax":
        return g.op("ArgMax", x, axis=1, keepdims=0)
    if op == "squeeze":
        return g.op("Squeeze", x, g.ints([1]))
    if op == "softmax":
        return g.op("Softmax", x, axis=1)
    if op == "row_max":
        return g.op("ReduceMax", x, axes=[1], keepdims=1)
    if op == "log1p":
        # ONNX has no log1p, and log(1 + x) is 0 where 1 + x rounds to 1: the classic
        # correction log(u) * x / (u - 1), u = 1 + x; x itself where u - 1 is 0, log(u)
        # where u - 1 is x (large x, infinity too).
        one, zero = g.const(np.array(1.0, dtype)), g.const(np.array(0.0, dtype))
        u = g.op("Add", x, one)
        d = g.op("Sub", u, one)
        ratio = g.op("Where", g.op("Equal", d, x), one, g.op("Div", x, d))
        return g.op("Where", g.op("Equal", d, zero), x, g.op("Mul", g.op("Log", u), ratio))
    raise UnsupportedModelError(f"operation {op!r} has no ONNX rendering")


def _ordered_sum(g: GraphBuilder, x: str, outputs: str, start: str = "") -> str:
    """``ordered_sum``: the terms as ``(N, steps, outputs)`` (one output: ``x`` itself),
    ``start`` as step 0, and the last of their CumSum, which adds in order in x's type."""
    k = int(g.known[outputs])
    axis = g.const(np.array(1, np.int64))
    source = g.reshaped_from(x)
    if k == 1 and not start and source is not None and g.shapes.get(source) == (*g.shapes[x], 1):
        # x flattened (N, terms, 1) values: scan those, the flattening left unused
        return g.op("Gather", g.op("CumSum", source, axis), g.const(np.array(-1)), axis=1)
    if k == 1:  # (N, terms): the last column of the scan, kept as a column
        terms = x if not start else g.op("Concat", _rows_of(g, start, 1), x, axis=1)
        return g.op("Gather", g.op("CumSum", terms, axis), g.ints([-1]), axis=1)
    if x in g.shapes:
        (width,) = g.shapes[x]
        terms = g.reshape(x, width // k, k)
    else:  # a Reshape to [0, -1, k] cannot tell the steps for 0 rows
        terms = g.op("Reshape", x, g.ints([0, -1, k]))
    if start:
        terms = g.op("Concat", _rows_of(g, start, 1, k), terms, axis=1)
    return g.op("Gather", g.op("CumSum", terms, axis), g.const(np.array(-1, np.int64)), axis=1)


def _rows_of(g: GraphBuilder, values: str, *dims: int) -> str:
    """Values per output (a constant table of them, or any array that broadcasts to
    ``(N, k)``) for every row: ``(N, *dims)``."""
    if values in g.known:
        return g.op("Expand", g.const(g.known[values].reshape(1, *dims)), g.rows_by(*dims))
    rows = g.op("Expand", values, g.rows_by(dims[-1]))
    return rows if len(dims) == 1 else g.op("Reshape", rows, g.ints([0, *dims]))


def _columns_at(g: GraphBuilder, step: Step, x: str, positions: str) -> str:
    """``columns_at``: a Gather of the columns, after a zero column where a position may
    ask for it."""
    index = g.known.get(positions)
    width = g.shapes.get(x)
    if index is None or width is None or (index.size and int(index.max()) >= width[0]):
        zero = numpy_helper.from_array(np.zeros(1, dtype=step.dtype))
        x = g.op("Concat", x, g.op("ConstantOfShape", g.rows_by(1), value=zero), axis=1)
    out = g.op("Gather", x, positions, axis=1)
    if index is not None:
        g.shapes[out] = (int(index.size),)
    return out


def _group_matmul(g: GraphBuilder, x: str, table: str) -> str:
    """``group_matmul``: ``(groups, N, a)`` times the table, as ``(N, groups * b)``. ONNX
    Runtime's batched MatMul crashes on an empty batch: one extra row of zeros goes through
    and is sliced off."""
    groups, a, b = g.known[table].shape
    padded = g.op("Concat", g.const(np.zeros((1, groups * a), np.float32)), x, axis=0)
    by_group = g.op("Transpose", g.op("Reshape", padded, g.ints([-1, groups, a])), perm=[1, 0, 2])
    products = g.op("Transpose", g.op("MatMul", by_group, table), perm=[1, 0, 2])
    rows = g.op("Slice", products, g.ints([1]), g.ints([2**62]), g.ints([0]))
    g.shapes[rows] = (groups, b)
    return g.reshape(rows, groups * b)
