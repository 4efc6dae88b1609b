"""ONNX export: the model of a forest, its inputs, outputs and opsets, checked.

The graph is emitted directly with ``onnx.helper`` from the lowering's plan
(:class:`strategies.ForestPlan`, see :mod:`treecomp.onnx.graph`), with no torch; this module
adds the input casts, the category encoding and the named outputs. We do not trace the torch
module with ``torch.onnx.export``: torch 2.13's exporter goes through ``torch.export`` and
onnxscript, whose output depends on the exporter's version, and it cannot follow the
module's data-dependent NaN fast path. Emitting the graph ourselves gives standard operators
only, a fixed opset, a dynamic batch axis and a graph we test, whatever the torch version,
and export needs no torch installed.

Graph inputs and outputs:

* ``input``: ``(N, n_features)`` float (``precision="float32"``) or double; numbers as the
  native model sees them (pandas categorical columns as their category codes).
* classifiers: ``label`` ``(N,)`` (the class labels' type) and ``probabilities`` ``(N, C)``;
  regressors and rankers: ``scores`` ``(N,)`` or ``(N, K)``; outlier detectors: ``label``
  (``-1``/``1``), ``scores`` (``score_samples``) and ``decision`` (``decision_function``);
  ``leaf_indices`` ``(N, n_trees)`` int64 on request (the native leaf numbers).

Traversal strategies are unrolled one level per step (a graph has no data-dependent loop
here): a forest of very deep trees (hundreds of levels) makes a large graph that ONNX Runtime
is slow to load; GEMM or a shallower model suits ONNX serving better there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

from treecomp.arrays import record
from treecomp.engine import Plan
from treecomp.errors import UnsupportedModelError
from treecomp.inputs import Precision, native_values
from treecomp.ir_shapes import tree_depths
from treecomp.onnx.graph import ELEMENT, GraphBuilder, emit_module, emit_program
from treecomp.outputs import OUTPUTS, program

if TYPE_CHECKING:
    from treecomp.ir import Forest

OPSET = 17
# IR version 8 is what opset 17 shipped with; runtimes from 2022 on load it.
IR_VERSION = 8
# Graphs with ONNX-ML's TreeEnsemble (ai.onnx.ml opset 5, onnx 1.16 and ONNX Runtime 1.19 on)
# declare the IR version that shipped with it.
ML_DOMAIN, ML_OPSET, ML_IR_VERSION = "ai.onnx.ml", 5, 10
# Exported graphs score batches of this many rows or more with a tree operator node per tree
# and Adds in tree order (treecomp.onnx.graph._emit_tree_chains), smaller ones with one
# operator node of per-tree values and one scan, an If on the batch size choosing. Best ms on
# 2 threads, one node + scan / a node per tree, treecomp.bench.models' xgb-binary (500 trees),
# lgbm-regression (300 x 255 leaves), rf-classifier: 128 rows 1.95 / 2.92, 2.72 / 5.32,
# 3.14 / 3.49; 256 rows 6.54 / 6.42, 21.8 / 8.25, 15.9 / 12.6; 1024 rows 26.6 / 19.7,
# 32.2 / 16.4, 39.3 / 19.3 (load 1.6-6.5). At 10 000 rows against ONNX-ML's graph: 1.14x,
# 1.34x, 1.37x (the scan alone: 0.76x, 0.83x, 0.97x; load 1.5-2.2). A single row of one
# output takes the operator's own sum (emit_module): best us, the scan alone / this graph,
# 29.2 / 27.0, 32.4 / 20.9; several outputs pay the If, rf-classifier 20.0 / 23.7.
LARGE_BATCH_ROWS = 256


def _emit_inputs(g: GraphBuilder, forest: Forest, X: str, *, encode: bool) -> str:
    """Optional category encoding, then the native casts and the ``missing=`` value
    (:func:`treecomp.inputs.native_values`)."""
    if encode and forest.categories is not None and forest.category_encoding == "always":
        X = _emit_encoding(g, forest, X)
    # A float32 input of a model that reads doubles is read back unchanged: no casts (ONNX
    # Runtime would remove such a pair of casts itself, even with optimizations off, and
    # then the If branches of emit_module that read its output would miss their input).
    prepared = record(lambda x: native_values(x, forest, g.float_type), g.float_type)
    (X,) = emit_program(g, prepared, X)
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


def _domains(nodes: Any) -> set[str]:
    """The operator domains of ``nodes`` and of their subgraphs (``If`` branches)."""
    found = set()
    for node in nodes:
        found.add(node.domain)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found |= _domains(attribute.g.node)
    return found


def build(forest: Forest, *, lower: Plan, **options: Any) -> onnx.ModelProto:
    """The ONNX model of ``forest``; the options are those of :func:`build_with_plan`."""
    return build_with_plan(forest, lower=lower, **options)[0]


def build_with_plan(
    forest: Forest,
    *,
    lower: Plan,
    precision: Precision = "float32",
    strategy: str = "auto",
    batch_size: int = 10_000,
    leaf_indices: bool = False,
    engine_outputs: str | None = None,
    device: str = "cpu",
    one_thread: bool = False,
    transforms: Any = None,
    large_batch_rows: int | None = LARGE_BATCH_ROWS,
) -> tuple[onnx.ModelProto, str]:
    """The ONNX model of ``forest`` and a description of the strategies it uses.

    Args:
        forest: A validated forest.
        lower: The lowering to run (:func:`strategies.plan_forest`).
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
            front of the forest (inputs: see :mod:`treecomp.onnx.transforms`).
        large_batch_rows: Exported graphs only: from this many rows on, a batch takes one
            tree operator node per tree (``LARGE_BATCH_ROWS``); None: every batch the
            graph for small ones. The onnx backend's sessions run its own plans per batch
            size.
    """
    if engine_outputs not in (None, "scores", "leaf_ids"):
        raise ValueError(
            f"engine_outputs must be None, 'scores' or 'leaf_ids', not {engine_outputs!r}"
        )
    if one_thread and engine_outputs is None:
        raise ValueError("one_thread graphs are the onnx backend's; exported graphs are not")
    plan = lower(
        forest,
        precision,
        strategy,
        batch_size=batch_size,
        device=device,
        target="onnx",
        one_thread=one_thread,
    )
    graph_inputs = [
        helper.make_tensor_value_info("input", ELEMENT[precision], ["N", forest.n_features])
    ]
    if transforms is not None:
        from treecomp.onnx.transforms import emit_transforms, input_names

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
    raw, transformed, leaf_ids = emit_module(
        g,
        plan,
        X,
        scores=engine_outputs != "leaf_ids",
        leaf_ids=engine_outputs == "leaf_ids" or (leaf_indices and engine_outputs is None),
        link=engine_outputs is None,  # the onnx backend links the sums itself
        operator_sums=one_thread,
        large_batch_rows=large_batch_rows if engine_outputs is None else None,
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
        output("raw", raw, sums, ["N", k])  # the backend links them (OnnxEngine.scores)
    elif engine_outputs == "leaf_ids":
        output("leaf_ids", leaf_ids, TensorProto.INT64, ["N", n])
    else:  # the native outputs, the program of treecomp.outputs
        assert raw is not None and transformed is not None  # emitted for these outputs
        # float32 sums stay float32 until the outputs widen them: XGBoost's wrapper
        # subtracts 1 - p in float32, and no node widens a sum no output reads
        scores = forest.accumulation
        names = OUTPUTS[forest.task]
        if forest.task == "classifier":
            names = ("label_index", "probabilities")
        values = dict(
            zip(names, emit_program(g, program(forest, scores, *names), raw, transformed))
        )
        if forest.task == "classifier":
            assert forest.classes is not None
            labels, element = _class_constant(forest.classes)
            label = g.op("Gather", g.const(labels), values["label_index"])
            output("label", label, element, ["N"])
            output(
                "probabilities",
                values["probabilities"],
                TensorProto.DOUBLE,
                ["N", forest.proba_columns],
            )
        elif forest.task == "outlier":
            output("label", values["label"], TensorProto.INT64, ["N"])
            output("scores", values["scores"], TensorProto.DOUBLE, ["N"])
            output("decision", values["decision"], TensorProto.DOUBLE, ["N"])
        else:
            output("scores", values["scores"], TensorProto.DOUBLE, ["N"] if k == 1 else ["N", k])
    if leaf_indices and engine_outputs is None:
        output("leaf_indices", leaf_ids, TensorProto.INT64, ["N", n])

    g.prune([o.name for o in outputs])
    graph = helper.make_graph(
        g.nodes,
        "treecomp",
        graph_inputs,
        outputs,
        initializer=g.used_initializers([o.name for o in outputs]),
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if ML_DOMAIN in _domains(g.nodes):
        opsets.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="treecomp",
        ir_version=IR_VERSION if len(opsets) == 1 else ML_IR_VERSION,
    )
    depths = tree_depths(forest.trees)  # 25 ms for 300 trees of 255 leaves: once
    model.doc_string = (
        f"{forest.task} of {forest.n_trees} trees; input: {forest.n_features} features as "
        f"{precision}; depth {int(depths.max())}; strategy {plan.description}"
    )
    helper.set_model_props(model, {"treecomp.strategy": plan.description})
    onnx.checker.check_model(model, full_check=True)
    return model, plan.description
