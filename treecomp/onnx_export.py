"""ONNX export and the ``"onnx"`` backend (ONNX Runtime).

The graph is emitted directly with ``onnx.helper`` from the lowered strategies: each strategy
has an ``emit_onnx`` method mirroring its ``forward``, and this module adds the shared input
casts, aggregation, post-transform and named outputs. We do not trace the torch module with
``torch.onnx.export``: torch 2.13's exporter goes through ``torch.export`` and onnxscript,
whose output depends on the exporter's version, and it cannot follow the module's
data-dependent NaN fast path. Emitting the graph ourselves gives standard operators only,
a fixed opset, a dynamic batch axis and a graph we test, whatever the torch version.

Graph inputs and outputs:

* ``input``: ``(N, n_features)`` float (``precision="float32"``) or double; numbers as the
  native model sees them (pandas categorical columns as their category codes).
Traversal strategies are unrolled one level per step (a graph has no data-dependent loop
here): a forest of very deep trees (hundreds of levels) makes a large graph that ONNX Runtime
is slow to load; GEMM or a shallower model suits ONNX serving better there.

* classifiers: ``label`` ``(N,)`` (the class labels' type) and ``probabilities`` ``(N, C)``;
  regressors and rankers: ``scores`` ``(N,)`` or ``(N, K)``; outlier detectors: ``label``
  (``-1``/``1``), ``scores`` (``score_samples``) and ``decision`` (``decision_function``);
  ``leaf_indices`` ``(N, n_trees)`` int64 on request (the native leaf numbers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from treecomp.errors import UnsupportedModelError
from treecomp.inputs import Precision, check_positive
from treecomp.ir import Forest, tree_depths
from treecomp.passes import float32_thresholds

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as exc:  # pragma: no cover - exercised only without onnx
    raise ImportError(
        "ONNX export needs the onnx package (and onnxruntime for backend='onnx'): "
        "pip install 'treecomp[onnx]'"
    ) from exc

import strategies
from treecomp.batching import SlicePool, rows_per_chunk, score_in_chunks, side_by_side

OPSET = 17
# IR version 8 is what opset 17 shipped with; runtimes from 2022 on load it.
IR_VERSION = 8
# The onnx backend scores calls of fewer rows than this with a graph planned for one row
# (see strategies.tree_ensemble.SPLIT_FROM_ROWS, where the plans part).
SMALL_BATCH = 5_000
# Tree walks (rows x trees) per thread, at least, before the onnx backend splits a call.
PARALLEL_WALKS = 50_000
# ONNX Runtime walks the trees of one row on all its threads from this many trees in a node
# on (its parallel_tree_ setting): the onnx backend then scores single rows in a session of
# several threads, with a graph whose sums are exact there. 2 threads, distinct rows, one
# process each, session calls in us, one thread / several: XGBoost 500 trees 27.5 / 20.2,
# LightGBM 300 trees 38.4 / 23.1 (ONNX-ML's graphs: 17.9, 20.3); with one tree a target
# (several outputs), 10 classes x 100 rounds 57.5 / 32.2 and RandomForest 100 trees
# 31.4 / 19.2 (ONNX-ML's: 33.5, 15.0).
PARALLEL_TREES = 80
# Graphs with ONNX-ML's TreeEnsemble (ai.onnx.ml opset 5, onnx 1.16 and ONNX Runtime 1.19 on)
# declare the IR version that shipped with it.
ML_DOMAIN, ML_OPSET, ML_IR_VERSION = "ai.onnx.ml", 5, 10
_ELEMENT = {
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "bool": TensorProto.BOOL,
}


class GraphBuilder:
    """Accumulates ONNX nodes and constants; names are generated.

    ``op(type, *inputs, **attributes)`` returns the output name; ``const(array)`` adds an
    initializer (torch tensors accepted); ``scalar(value)`` is a 0-d constant of the graph's
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
        self._X = X
        self._batch: str | None = None
        # Values whose shape past the batch axis is known: a reshape to it is no node.
        self.shapes: dict[str, tuple[int, ...]] = {}

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        if op_type == "Cast":
            attributes["to"] = _ELEMENT[attributes["to"]]
        output = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def const(self, value: Any) -> str:
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        array = np.array(array, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        key = (array.dtype.str, array.tobytes(), array.shape)
        if key not in self._cache:
            name = self._name("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._cache[key] = name
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

    def reshape(self, x: str, *dims: int) -> str:
        if self.shapes.get(x) == dims:
            return x
        out = self.op("Reshape", x, self.ints([0, *dims]))
        self.shapes[out] = dims
        return out


def _emit_module(
    g: GraphBuilder,
    module: strategies.ForestModule,
    forest: Forest,
    X: str,
    *,
    scores: bool = True,
    leaf_ids: bool = False,
    widen: bool = True,
    operator_sums: bool = False,
) -> tuple[str | None, str | None, str | None]:
    """Emit ``module``'s forward and/or ``leaf_ids``; returns (raw, transformed, leaf ids).

    ``widen``: float32 sums come out as double (the serving outputs); else they stay float32.
    ``operator_sums``: let the tree operator add the trees where it can
    (:func:`_emit_operator_sums`: exact on one thread only).

    Only what is asked for is emitted: ONNX Runtime runs every node of a graph, whichever
    outputs a call fetches.
    """
    groups: list[Any] = list(module.groups)
    if module.folded:  # the extended input of strategies.nodes.fold_missing
        axis = g.ints([2])
        parts = [X, g.op("Neg", X)]
        if module.fold_columns == 3:
            parts.append(g.op("Where", g.op("IsNaN", X), X, g.scalar(0.0)))
        stacked = g.op("Concat", *[g.op("Unsqueeze", p, axis) for p in parts], axis=2)
        X = g.reshape(stacked, module.fold_columns * forest.n_features)
    # Back to forest order: the inverse of the groups' concatenated tree order.
    inverse = np.argsort(np.concatenate([group.columns.numpy() for group in groups]))
    identity = bool(np.array_equal(inverse, np.arange(inverse.size)))

    def in_forest_order(parts: list[str]) -> str:
        joined = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1)
        return joined if identity else g.op("Gather", joined, g.const(inverse), axis=1)

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
    tables = [group.leaf_value.numpy() for group in groups]
    folded = _fold_base_score(module, groups, tables)
    raw = None
    if operator_sums:
        raw = _emit_operator_sums(g, module, forest, X, groups, tables, base_folded=folded)
    if raw is None:
        values = []
        for i, group in enumerate(groups):
            direct = group.emit_values(g, X, tables[i]) if hasattr(group, "emit_values") else None
            if direct is None:
                direct = g.op("Gather", g.const(tables[i]), leaf_rows(i))
                g.shapes[direct] = (len(group.columns), int(tables[i].shape[1]))
            values.append(direct)
        raw = _emit_sum(g, module, forest, in_forest_order(values), base_folded=folded)
    transformed = _emit_transform(g, forest, raw)
    if forest.accumulation == "float32" and widen:
        raw, transformed = g.op("Cast", raw, to="float64"), g.op("Cast", transformed, to="float64")
    return raw, transformed, ids


def _fold_base_score(
    module: strategies.ForestModule, groups: list[Any], tables: list[np.ndarray]
) -> bool:
    """Add each output's base score to the leaves of its first contributing tree, in place.

    The native sum starts ``base + v0``; rounding that once into the leaf values of the first
    tree (in the accumulation type) leaves every later partial sum unchanged and saves
    materialising a base-score column per row. Only for groups that say where a tree's leaf
    rows are (``tree_rows``); returns False, changing nothing, when any group cannot.
    """
    if module.average:
        return False
    width = module.leaf_width
    first = module.steps[0].numpy()  # step 0 of each output: the flat tree * width + w column
    if (first >= module.n_trees * width).any():  # an output without trees
        return False
    where = {}  # forest tree -> (group, local index)
    for i, group in enumerate(groups):
        for local, tree in enumerate(group.columns.tolist()):
            where[tree] = (i, local)
    plans = []
    for output, column in enumerate(first.tolist()):
        i, local = where[column // width]
        rows = groups[i].tree_rows(local) if hasattr(groups[i], "tree_rows") else None
        if rows is None:
            return False
        plans.append((i, rows, column % width, module.base_score[output, 0].item()))
    for i in {i for i, *_ in plans}:
        tables[i] = tables[i].copy()
    for i, rows, w, base in plans:
        table = tables[i]
        table[rows, w] = table.dtype.type(base) + table[rows, w]
    return True


def _emit_sum(
    g: GraphBuilder,
    module: strategies.ForestModule,
    forest: Forest,
    values: str,
    *,
    base_folded: bool = False,
) -> str:
    """Base score plus every ``(N, trees, width)`` leaf value, in the native order and type.

    The terms are laid out ``(N, steps, outputs)`` and scanned along the steps: ONNX Runtime's
    CumSum adds in the tensor's type, one step after another, so float32 accumulation is
    XGBoost's sequential float32 sum. Scanning axis 1 needs no transpose for multi-output
    forests, whose steps are stored step-major (10 classes x 100 rounds, 10 000 rows: the
    transpose to ``(N, outputs, steps)`` took 25 ms of 220).
    """
    acc = np.float32 if forest.accumulation == "float32" else np.float64
    k = forest.n_outputs
    order = module.steps.contiguous()  # (steps, outputs)
    n_terms = int(order.shape[0])
    axis = g.const(np.array(1, np.int64))

    def scan_last(terms: str) -> str:
        return g.op("Gather", g.op("CumSum", terms, axis), g.const(np.array(n_terms - 1)), axis=1)

    def gathered(first: str | None) -> str:
        """The terms by ``order`` (a zero pads shorter outputs), ``first`` as step 0."""
        flat = _pad_zero(g, g.reshape(values, forest.n_trees * module.leaf_width), acc)
        if first is None:
            return g.op("Gather", flat, g.const(order), axis=1)
        steps = np.concatenate([np.zeros((1, k), np.int64), order + 1])
        return g.op("Gather", g.op("Concat", first, flat, axis=1), g.const(steps), axis=1)

    # In order, step m of output j is column m * k + j of the values: a reshape, no gather.
    if module.average:
        terms = g.reshape(values, n_terms, k) if module.steps_in_order else gathered(None)
        return _emit_mean(g, module, scan_last(terms))
    if base_folded:
        return scan_last(g.reshape(values, n_terms, k) if module.steps_in_order else gathered(None))
    start = g.op("Expand", g.const(module.base_score.reshape(1, -1)), g.rows_by(k))
    if module.steps_in_order:
        flat = g.reshape(values, forest.n_trees * module.leaf_width)
        terms = g.reshape(g.op("Concat", start, flat, axis=1), n_terms + 1, k)
    else:
        terms = gathered(start)
    return g.op("Gather", g.op("CumSum", terms, axis), g.const(np.array(n_terms)), axis=1)


def _emit_operator_sums(
    g: GraphBuilder,
    module: strategies.ForestModule,
    forest: Forest,
    X: str,
    groups: list[Any],
    tables: list[np.ndarray],
    *,
    base_folded: bool,
) -> str | None:
    """The raw sums added by one tree-operator node, each output a target, or None where the
    forest does not allow it (see ``TreeEnsemble.emit_sums``).

    The operator starts each target at zero and adds its trees' leaves in tree order, in
    the input's type, when it runs on one thread: the native sum, provided the base score
    went into the first tree's leaves (or is zero) and each tree adds one value to one
    output. Averages divide the sum afterwards, as :func:`_emit_sum` does.
    """
    if len(groups) != 1 or not hasattr(groups[0], "emit_sums") or module.leaf_width != 1:
        return None
    group = groups[0]
    if not np.array_equal(group.columns.numpy(), np.arange(forest.n_trees)):
        return None
    if not (module.average or base_folded or not module.base_score.any()):
        return None
    targets = np.array([tree.output_index for tree in forest.trees], dtype=np.int64)
    sums = group.emit_sums(g, X, tables[0], targets, forest.n_outputs)
    if sums is None or not module.average:
        return sums
    return _emit_mean(g, module, sums)


def _emit_mean(g: GraphBuilder, module: strategies.ForestModule, total: str) -> str:
    """An averaging forest's output from the sum of its trees: divided, plus the base."""
    mean = g.op("Div", total, g.const(module.divisor.reshape(1, -1)))
    if not module.base_score.any():  # + 0.0 changes nothing but the sign of a zero
        return mean
    return g.op("Add", mean, g.const(module.base_score.reshape(1, -1)))


def _pad_zero(g: GraphBuilder, flat: str, acc: Any) -> str:
    """``flat`` with a zero column appended (the pad of shorter contribution lists)."""
    zero = g.op(
        "ConstantOfShape", g.rows_by(1), value=numpy_helper.from_array(np.zeros(1, dtype=acc))
    )
    return g.op("Concat", flat, zero, axis=1)


def _emit_transform(g: GraphBuilder, forest: Forest, raw: str) -> str:
    kind, scale = forest.post_transform.kind, float(forest.post_transform.scale)
    acc = np.float32 if forest.accumulation == "float32" else np.float64

    def double(value: float) -> str:
        return g.const(np.array(value, dtype=acc))

    if kind == "identity":
        return raw
    if acc == np.float32 and kind in ("sigmoid", "softmax", "exp"):
        return _emit_xgboost_float32_link(g, kind, scale, raw)
    if kind == "sigmoid":
        # 1 / (1 + exp(-x)), as scipy's expit and LightGBM compute it: ONNX Runtime's
        # Sigmoid kernel loses the relative precision of tiny probabilities (1.11e-15 for
        # LightGBM's 1.0e-15 at a margin of -34.5).
        scaled = raw if scale == 1.0 else g.op("Mul", raw, double(scale))
        return g.op("Div", double(1.0), g.op("Add", double(1.0), g.op("Exp", g.op("Neg", scaled))))
    if kind == "softmax":
        return g.op("Softmax", raw, axis=1)
    if kind == "exp":
        return g.op("Exp", raw)
    if kind == "softplus":
        return g.op("Log", g.op("Add", g.op("Exp", raw), double(1.0)))
    if kind == "signed_square":
        return g.op("Mul", g.op("Sign", raw), g.op("Mul", raw, raw))
    if kind == "isolation":
        if scale == 0.0:  # a one-sample fit: scikit-learn scores every row 2**-1
            return g.op("Sub", g.op("Mul", raw, double(0.0)), double(0.5))
        return g.op("Neg", g.op("Pow", double(2.0), g.op("Neg", g.op("Div", raw, double(scale)))))
    raise UnsupportedModelError(f"post-transform {kind!r} has no ONNX lowering")


def _emit_xgboost_float32_link(g: GraphBuilder, kind: str, scale: float, raw: str) -> str:
    """XGBoost's float32 links (see ``treecomp.reference``): exp in double, rounded once."""

    def expf(x: str) -> str:
        return g.op("Cast", g.op("Exp", g.op("Cast", x, to="float64")), to="float32")

    def f32(value: float) -> str:
        return g.const(np.array(value, dtype=np.float32))

    if kind == "sigmoid":
        scaled = raw if scale == 1.0 else g.op("Mul", raw, f32(scale))
        clamped = g.op("Min", g.op("Neg", scaled), f32(88.7))
        return g.op("Div", f32(1.0), g.op("Add", expf(clamped), f32(1.0)))
    if kind == "exp":
        return expf(raw)
    e = expf(g.op("Sub", raw, g.op("ReduceMax", raw, axes=[1], keepdims=1)))
    total = g.op("CumSum", g.op("Cast", e, to="float64"), g.const(np.array(1, np.int64)))
    last = g.op("Gather", total, g.const(np.array([-1], np.int64)), axis=1)
    return g.op("Div", e, g.op("Cast", last, to="float32"))


def _emit_inputs(g: GraphBuilder, forest: Forest, X: str, *, encode: bool) -> str:
    """Native casts, optional category encoding, the ``missing=`` value."""
    native = "float32" if forest.input_dtype == "float32" else "float64"
    if encode and forest.categories is not None and forest.category_encoding == "always":
        X = _emit_encoding(g, forest, X)
    if native != g.float_type:
        X = g.op("Cast", X, to=native)
    if not math.isnan(forest.missing_value):
        missing = g.const(np.array(forest.missing_value, dtype=native))
        nan = g.const(np.array(np.nan, dtype=native))
        X = g.op("Where", g.op("Equal", X, missing), nan, X)
    if native != g.float_type:
        X = g.op("Cast", X, to=g.float_type)
    return X


def _emit_encoding(g: GraphBuilder, forest: Forest, X: str) -> str:
    """HistGradientBoosting's OrdinalEncoder: a value's position among the known categories."""
    assert forest.categories is not None  # checked by the caller
    columns = []
    nan = g.scalar(float("nan"))
    for j, known in enumerate(forest.categories):
        column = g.op("Gather", X, g.ints([j]), axis=1)
        if known is None:
            columns.append(column)
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in known):
            raise UnsupportedModelError(
                f"feature {j} has non-numeric categories {list(known)[:5]}: an ONNX graph takes "
                "numbers; encode this column before the graph or export without encoding"
            )
        matches = g.op(
            "Cast",
            g.op("Equal", column, g.const(np.array([known], dtype=g.float_type))),
            to=g.float_type,
        )
        position = g.op("Cast", g.op("ArgMax", matches, axis=1, keepdims=1), to=g.float_type)
        found = g.op("Cast", g.op("ReduceMax", matches, axes=[1], keepdims=1), to="bool")
        columns.append(g.op("Where", found, position, nan))
    return g.op("Concat", *columns, axis=1)


def _label_index(g: GraphBuilder, forest: Forest, raw: str, proba: str) -> str:
    if forest.label_rule == "argmax_proba" or forest.n_outputs > 1:
        source = proba if forest.label_rule == "argmax_proba" else raw
        return g.op("ArgMax", source, axis=1, keepdims=0)
    margin = g.op("Squeeze", raw, g.ints([1]))
    zero = g.const(np.array(0.0, dtype=np.float64))
    positive = g.op(
        "GreaterOrEqual" if forest.label_rule == "margin_ge_zero" else "Greater", margin, zero
    )
    return g.op("Cast", positive, to="int64")


def _class_constant(classes: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], int]:
    if classes.dtype.kind in "USO":
        return np.array([str(c) for c in classes], dtype=object), TensorProto.STRING
    if classes.dtype.kind == "b":
        return classes.astype(bool), TensorProto.BOOL
    if classes.dtype.kind in "iu":
        return classes.astype(np.int64), TensorProto.INT64
    if classes.dtype.kind == "f":
        return classes.astype(classes.dtype), helper.np_dtype_to_tensor_dtype(classes.dtype)
    raise UnsupportedModelError(f"class labels of dtype {classes.dtype} have no ONNX type")


def build(forest: Forest, **options: Any) -> onnx.ModelProto:
    """The ONNX model of ``forest``; the options are those of :func:`build_with_plan`."""
    return build_with_plan(forest, **options)[0]


def build_with_plan(
    forest: Forest,
    *,
    precision: Precision = "float32",
    strategy: str = "auto",
    batch_size: int = 10_000,
    leaf_indices: bool = False,
    engine_outputs: str | None = None,
    device: str = "cpu",
    one_thread: bool = False,
    transforms: Any = None,
) -> tuple[onnx.ModelProto, str]:
    """The ONNX model of ``forest`` and a description of the strategies it uses.

    Args:
        forest: A validated forest.
        precision: Float type of the input and of the node tests.
        strategy: As for :func:`strategies.lower`, plus ``"tree_ensemble"``.
        batch_size: Expected rows per call, for the strategy selector.
        leaf_indices: Add the ``leaf_indices`` output.
        engine_outputs: ``"scores"`` (outputs ``raw`` and ``transformed``) or ``"leaf_ids"``
            (output ``leaf_ids``) instead of the serving outputs, with no category encoding:
            the graphs the ``onnx`` backend runs on inputs already prepared by treecomp.
        device: Device the selector plans for.
        one_thread: An engine graph for sessions of one thread (:class:`OnnxEngine`): the
            tree operator adds the trees where it can, exact only there.
        transforms: A Pipeline's row transforms (:mod:`treecomp.transforms`), emitted in
            front of the forest (inputs: see :mod:`treecomp.transform_targets`).
    """
    import torch

    if engine_outputs not in (None, "scores", "leaf_ids"):
        raise ValueError(
            f"engine_outputs must be None, 'scores' or 'leaf_ids', not {engine_outputs!r}"
        )
    if one_thread and engine_outputs is None:
        raise ValueError("one_thread graphs are the onnx backend's; exported graphs are not")
    dtype = torch.float32 if precision == "float32" else torch.float64
    lowered = float32_thresholds(forest) if precision == "float32" else forest
    module, plan = strategies.lower(
        lowered,
        strategy,
        dtype=dtype,
        batch_size=batch_size,
        device=device,
        target="onnx",
        one_thread=one_thread,
    )
    graph_inputs = [
        helper.make_tensor_value_info("input", _ELEMENT[precision], ["N", forest.n_features])
    ]
    if transforms is not None:
        from treecomp.transform_targets import emit_transforms, input_names

        g = GraphBuilder(precision, "input" if engine_outputs else input_names(transforms)[0])
        X, graph_inputs = emit_transforms(
            g, transforms, forest, precision, exported=engine_outputs is None
        )
        if forest.categories is not None and forest.category_encoding == "always":
            X = _emit_encoding(g, forest, X)  # HistGradientBoosting's, on the features
    else:
        g = GraphBuilder(precision, "input")
        # The onnx backend feeds inputs that treecomp.inputs.prepare already cast and cleaned.
        X = "input" if engine_outputs else _emit_inputs(g, forest, "input", encode=True)
    raw, transformed, leaf_ids = _emit_module(
        g,
        module,
        forest,
        X,
        scores=engine_outputs != "leaf_ids",
        leaf_ids=engine_outputs == "leaf_ids" or (leaf_indices and engine_outputs is None),
        widen=engine_outputs is None,  # the onnx backend widens float32 sums itself
        operator_sums=one_thread,
    )
    k, n = forest.n_outputs, forest.n_trees
    outputs: list[onnx.ValueInfoProto] = []
    named: dict[str, str] = {}  # value -> the output name it was given

    def output(name: str, source: str | None, element: int, shape: list[Any]) -> None:
        """Name the node that makes ``source`` after the output (an Identity node costs a
        kernel call, which counts at one row); a value given out twice is copied."""
        assert source is not None  # emitted above for every output asked for
        producer = next((node for node in g.nodes if source in node.output), None)
        if source in named or producer is None:
            g.nodes.append(helper.make_node("Identity", [named.get(source, source)], [name]))
        else:
            for node in g.nodes:
                node.output[:] = [name if v == source else v for v in node.output]
                node.input[:] = [name if v == source else v for v in node.input]
            named[source] = name
        outputs.append(helper.make_tensor_value_info(name, element, shape))

    if engine_outputs == "scores":
        sums = TensorProto.FLOAT if forest.accumulation == "float32" else TensorProto.DOUBLE
        output("raw", raw, sums, ["N", k])
        if transformed != raw:  # an identity link: the backend reads raw twice
            output("transformed", transformed, sums, ["N", k])
    elif engine_outputs == "leaf_ids":
        output("leaf_ids", leaf_ids, TensorProto.INT64, ["N", n])
    elif forest.task == "classifier":
        assert forest.classes is not None and raw is not None and transformed is not None
        proba = transformed
        if forest.proba_columns == 2 and k == 1:
            proba = g.op(
                "Concat", g.op("Sub", g.const(np.array(1.0)), transformed), transformed, axis=1
            )
        labels, element = _class_constant(forest.classes)
        index = _label_index(g, forest, raw, proba)
        output("label", g.op("Gather", g.const(labels), index), element, ["N"])
        output("probabilities", proba, TensorProto.DOUBLE, ["N", forest.proba_columns])
    elif forest.task == "outlier":
        assert transformed is not None
        scores = g.op("Squeeze", transformed, g.ints([1]))
        decision = g.op("Sub", scores, g.const(np.array(forest.decision_offset)))
        inlier = g.op("Less", decision, g.const(np.array(0.0)))
        label = g.op(
            "Where", inlier, g.const(np.array(-1, np.int64)), g.const(np.array(1, np.int64))
        )
        output("label", label, TensorProto.INT64, ["N"])
        output("scores", scores, TensorProto.DOUBLE, ["N"])
        output("decision", decision, TensorProto.DOUBLE, ["N"])
    else:
        assert transformed is not None
        scores = g.op("Squeeze", transformed, g.ints([1])) if k == 1 else transformed
        output("scores", scores, TensorProto.DOUBLE, ["N"] if k == 1 else ["N", k])
    if leaf_indices and engine_outputs is None:
        output("leaf_indices", leaf_ids, TensorProto.INT64, ["N", n])

    graph = helper.make_graph(
        g.nodes,
        "treecomp",
        graph_inputs,
        outputs,
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if any(node.domain == ML_DOMAIN for node in g.nodes):
        opsets.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="treecomp",
        ir_version=IR_VERSION if len(opsets) == 1 else ML_IR_VERSION,
    )
    description = strategies.describe(plan, tree_depths(forest.trees))
    model.doc_string = (
        f"{forest.task} of {forest.n_trees} trees; input: {forest.n_features} features as "
        f"{precision}; depth {int(tree_depths(forest.trees).max())}; strategy {description}"
    )
    helper.set_model_props(model, {"treecomp.strategy": description})
    onnx.checker.check_model(model, full_check=True)
    return model, description


class OnnxEngine:
    """Runs the engine graph of a forest in an ONNX Runtime session."""

    def __init__(
        self,
        forest: Forest,
        *,
        precision: Precision,
        strategy: str = "auto",
        device: Any = "cpu",
        batch_size: int | None = None,
        n_threads: int | None = None,
        progress: bool = False,
        compiled_tier: bool = False,
        transforms: Any = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(
                "backend='onnx' needs onnxruntime: pip install 'treecomp[onnx]'"
            ) from exc
        check_positive("batch_size", batch_size)
        check_positive("n_threads", n_threads)
        self.forest = forest
        self.precision = precision
        kind = str(device).split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"invalid device {device!r} for backend='onnx': use 'cpu' or 'cuda'")
        providers: list[Any] = ["CPUExecutionProvider"]
        if kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    f"device {str(device)!r} was requested but onnxruntime has no CUDA execution "
                    f"provider here (available: {ort.get_available_providers()}); use device='cpu'"
                )
            index = int(str(device).split(":")[1]) if ":" in str(device) else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        self.options: dict[str, Any] = {
            "precision": precision,
            "strategy": strategy,
            "batch_size": batch_size or 10_000,
            "device": kind,
        }
        self.session_options = ort.SessionOptions()
        self.threads = 1
        if kind == "cpu":
            # Sessions of one thread, run side by side on slices of the rows: the tree
            # operator then adds trees in their order (the native sum, see
            # _emit_operator_sums) and takes its leanest loops. ONNX Runtime's own threads
            # would split the trees of every node between them and merge per-row score
            # vectors. XGBoost, 500 trees of depth 8, 10 000 rows, 2 threads: 65 ms on two
            # one-thread sessions, 111 ms for the exported graph on ONNX Runtime's threads
            # (ONNX-ML's graph: 82 ms).
            import torch

            self.threads = n_threads or torch.get_num_threads()
            self.session_options.intra_op_num_threads = 1
            self.session_options.inter_op_num_threads = 1
            self.options["one_thread"] = True
        elif n_threads is not None:
            self.session_options.intra_op_num_threads = n_threads
        self._pool = SlicePool(self.threads - 1, "treecomp-onnx")
        self._run_options = ort.RunOptions()
        # A pipeline's graph reads the encoded rows (treecomp.transforms) in float64.
        self._dtype = np.dtype(precision if transforms is None else "float64")
        if transforms is not None:
            self.options["transforms"] = transforms
        k = forest.n_outputs
        identity = forest.post_transform.kind == "identity"
        self._score_outputs = (["raw"], [k]) if identity else (["raw", "transformed"], [k, k])
        self.providers = providers
        self.model, self.plan = build_with_plan(forest, engine_outputs="scores", **self.options)
        # backend="auto": large batches move to the kernel, or to the compiled torch package
        # once it is loaded, for the forests that profit (treecomp.tiered).
        self.tier: Any = None
        self.tier_rows = 0
        if compiled_tier and kind == "cpu" and transforms is None:
            from treecomp import tiered

            options = {"batch_size": batch_size, "n_threads": n_threads}
            self.tier = tiered.tier_for(forest, precision=precision, options=options)
            self.tier_rows = 0 if self.tier is None else self.tier.from_rows
        self.session = self._session(self.model)
        # Built on first use: the leaf-id graph, the scores graph planned for calls of
        # fewer than SMALL_BATCH rows (where the plan for the expected batch size differs),
        # and the one for single rows on several threads (PARALLEL_TREES).
        self._leaf_session: Any = None
        self._small_session: Any = None
        self._row_session: Any = None
        self._row_threads = kind == "cpu" and self.threads > 1 and forest.n_trees >= PARALLEL_TREES
        # Scratch per row: the operator's or the traversal's (rows, trees) tensors, the terms
        # and their scan, in at most 8 bytes each, and the input's copies.
        per_row = 48 * forest.n_trees * max(t.leaf_width for t in forest.trees)
        self.batch_size = rows_per_chunk(per_row + 24 * forest.n_features, batch_size)
        # Rows of the smallest slice worth running beside others (see _parts), and the
        # rows below which _parts is 1: checked inline on every call (a call costs 0.4 us).
        self._rows_per_part = -(-PARALLEL_WALKS // forest.n_trees)
        self._serial_rows = 2 * self._rows_per_part if self.threads > 1 else self.batch_size + 1
        self.progress = progress

    @property
    def strategy(self) -> str:
        """The plan of the graph, and the compiled tier's, once it serves large batches."""
        if self.tier is not None and self.tier.state.startswith("failed"):
            return f"{self.plan} (no compiled tier: {self.tier.state.removeprefix('failed: ')})"
        if self.tier is None or self.tier.engine is None:
            return self.plan
        if self.tier.winner == "operator":
            return f"{self.plan} (compiled tier measured slower: {self.tier.verdict})"
        return f"{self.plan}; batches of {self.tier_rows}+ rows: {self.tier.engine.strategy}"

    def _session(self, model: onnx.ModelProto) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(
            model.SerializeToString(), sess_options=self.session_options, providers=self.providers
        )

    def _scores_session(self, rows: int) -> Any:
        if rows == 1 and self._row_threads:
            if self._row_session is None:
                import onnxruntime as ort

                # One output: ONNX Runtime walks a row's trees on its threads into one
                # score per tree, then adds those in tree order, so the operator's own sum
                # stays the native one. Several: it adds per-thread partial sums, so the
                # graph gets one tree a target and adds them in standard operators.
                one_sum = self.forest.n_outputs == 1
                options = {**self.options, "batch_size": 1, "one_thread": one_sum}
                self.row_model, _ = build_with_plan(self.forest, engine_outputs="scores", **options)
                threads = ort.SessionOptions()
                threads.intra_op_num_threads = self.threads
                threads.inter_op_num_threads = 1
                self._row_session = ort.InferenceSession(
                    self.row_model.SerializeToString(),
                    sess_options=threads,
                    providers=self.providers,
                )
            return self._row_session
        if rows >= SMALL_BATCH or self.options["batch_size"] < SMALL_BATCH:
            return self.session
        if self._small_session is None:
            options = {**self.options, "batch_size": 1}
            self.small_model, _ = build_with_plan(self.forest, engine_outputs="scores", **options)
            same = self.small_model.SerializeToString() == self.model.SerializeToString()
            self._small_session = self.session if same else self._session(self.small_model)
        return self._small_session

    def _run(
        self,
        session: Callable[[int], Any],
        names: list[str],
        widths: list[int],
        X: npt.NDArray[np.floating],
        dtype: Any,
    ) -> list[np.ndarray]:
        """Run ``names`` on ``X`` chunk by chunk, each in the session ``session(rows)`` gives,
        into outputs allocated once (see :mod:`treecomp.batching`)."""
        X = np.ascontiguousarray(X, dtype=self._dtype)
        n = X.shape[0]
        if n == 0:
            return [np.zeros((0, w), dtype=dtype) for w in widths]
        if n <= self.batch_size and n < self._serial_rows:  # one call: what a row costs
            return [out.astype(dtype, copy=False) for out in self._call(session(n), names, X)]

        pool = self._pool.get()

        def score(rows: slice) -> list[np.ndarray]:
            chunk = X[rows]
            run = session(len(chunk))
            parts = self._parts(len(chunk))
            if parts == 1:
                return self._call(run, names, chunk)
            # ONNX Runtime releases the GIL while it runs: one slice per thread.
            return side_by_side(lambda part: self._call(run, names, part), chunk, parts, pool)

        return score_in_chunks(
            X.shape[0],
            self.batch_size,
            widths,
            [dtype] * len(widths),
            score,
            progress=self.progress,
        )

    def _call(self, session: Any, names: list[str], X: np.ndarray) -> list[np.ndarray]:
        """``session.run`` on the CPU without the Python wrapper's per-call checks (input
        names, provider fallback: neither can fail here), 1.6 us of a 4.5 us call."""
        binding = getattr(session, "_sess", None) if self.options["device"] == "cpu" else None
        if binding is None:
            return list(session.run(names, {"input": X}))
        return list(binding.run(names, {"input": X}, self._run_options))

    def _parts(self, rows: int) -> int:
        """Slices to run side by side for a chunk of ``rows`` rows: one per thread, each of
        at least PARALLEL_WALKS tree walks (a hand-over costs tens of microseconds)."""
        return max(1, min(self.threads, rows // self._rows_per_part))

    def leaf_ids(self, X: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        if self._leaf_session is None:
            model, _ = build_with_plan(self.forest, engine_outputs="leaf_ids", **self.options)
            self._leaf_session = self._session(model)
        n_trees = self.forest.n_trees
        return self._run(lambda rows: self._leaf_session, ["leaf_ids"], [n_trees], X, np.int64)[0]

    def scores(
        self, X: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        large = self.tier is not None and X.shape[0] >= self.tier_rows
        side = "operator"
        if large and self.tier.engine is not None:
            side = self.tier.choose()  # measured against the operator before it commits
            trial = self.tier.trial_slice(X.shape[0]) if side == "operator" else 0
            if trial:  # racing on a large batch: the operator times a slice, the tier scores
                # The slice in the large batches' session (the small one would be built).
                start = time.perf_counter()
                self._run(lambda rows: self.session, *self._score_outputs, X[:trial], np.float64)
                self.tier.record(side, time.perf_counter() - start, trial)
                side = "compiled"
            if side == "compiled":
                start = time.perf_counter()
                out = self.tier.engine.scores(X)
                self.tier.record(side, time.perf_counter() - start, X.shape[0])
                return out
        # float32 sums come out float32 and are widened (exactly) as they are copied out:
        # cheaper than in the graph.
        if X.shape[0] == 1 and X.dtype == self._dtype and X.flags.c_contiguous:
            # One row, as treecomp.inputs.prepare gives it: straight to its session.
            outputs = self._call(self._scores_session(1), self._score_outputs[0], X)
            raw = outputs[0].astype(np.float64, copy=False)
            return raw, raw if len(outputs) == 1 else outputs[1].astype(np.float64, copy=False)
        start = time.perf_counter()
        outputs = self._run(self._scores_session, *self._score_outputs, X, np.float64)
        if large:  # the operator's time on large batches decides when the tier builds
            elapsed = time.perf_counter() - start
            self.tier.note(elapsed)
            if self.tier.engine is not None:  # timed against the loaded package only
                self.tier.record(side, elapsed, X.shape[0])
        return outputs[0], outputs[-1]  # an identity link: the graph outputs raw alone


def make_engine(forest: Forest, *, precision: Precision, **options: Any) -> OnnxEngine:
    return OnnxEngine(forest, precision=precision, **options)
