"""The node test (strategies.nodes.node_test), written once, on every renderer, against the
reference evaluator's decision: every kind of node (numerical, zero-as-missing,
categorical in a direct and in a hash table), both comparisons and both category domains,
on values at and around the thresholds and codes, NaN, ±inf and huge values."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers import assert_equal
from treecomp import reference
from treecomp.arrays import Program, record
from treecomp.ir import Tree
from treecomp.ir_schema import ZERO_THRESHOLD

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from strategies.categories import CategorySets  # noqa: E402
from strategies.nodes import NODE_INPUTS, NodeArrays, NodeRule, node_test  # noqa: E402
from strategies.programs import run_steps  # noqa: E402
from treecomp.onnx.graph import ELEMENT, GraphBuilder  # noqa: E402


def stump(kind: str, threshold: float, default_left: bool, codes: list[int]) -> Tree:
    """A tree of one test (node 0) and two leaves."""
    categorical = kind == "categorical"
    offsets = np.array([0, len(codes), len(codes), len(codes)] if categorical else [0, 0, 0, 0])
    return Tree(
        left_child=np.array([1, -1, -1], np.int32),
        right_child=np.array([2, -1, -1], np.int32),
        feature=np.array([0, -1, -1], np.int32),
        threshold=np.array([np.nan if categorical else threshold, np.nan, np.nan]),
        default_left=np.array([default_left, False, False]),
        zero_is_missing=np.array([kind == "zero_missing", False, False]),
        is_categorical=np.array([categorical, False, False]),
        category_offsets=offsets.astype(np.int64),
        category_values=np.array(sorted(codes), np.int64),
        value=np.array([[0.0], [1.0], [2.0]]),
        leaf_id=np.array([-1, 1, 2], np.int64),
    )


def stumps(layout: str) -> list[Tree]:
    rng = np.random.default_rng(7)
    big = 2**31 - 1 if layout == "hash" else 40  # a hash table for huge codes
    trees = []
    for i in range(24):
        kind = ("numerical", "zero_missing", "categorical")[i % 3]
        codes = sorted({int(c) for c in rng.integers(0, 12, 4)} | ({big} if i % 2 else set()))
        trees.append(stump(kind, float(rng.choice([-1.5, 0.0, 0.25, 3.0])), bool(i % 4 < 2), codes))
    return trees


def values(check_missing: bool) -> npt.NDArray[np.float64]:
    x = [-2.0, -1.5, -1.0, -0.5, -0.0, 0.0, ZERO_THRESHOLD, -ZERO_THRESHOLD, 1e-30, 0.25]
    x += [0.2500001, 1.0, 2.5, 3.0, 7.0, 11.99, 2.0**31 - 1, 2.0**31, 1e300, np.inf, -np.inf]
    if check_missing:
        x.append(np.nan)
    return np.array(x)


def run_torch(program: Program, inputs: list[Any], scripted: bool) -> Any:
    run = torch.jit.script(run_steps) if scripted else run_steps
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
    return run(program.flat(), tensors).numpy()


def run_onnx(program: Program, inputs: list[Any]) -> Any:
    g = GraphBuilder("float64", NODE_INPUTS[0])
    (out,) = g.program(program, *NODE_INPUTS)
    used = {a for step in program.steps for a in step.args}
    graph_inputs = [
        onnx.helper.make_tensor_value_info(name, ELEMENT[str(a.dtype)], list(a.shape))
        for i, (name, a) in enumerate(zip(NODE_INPUTS, inputs, strict=True))
        if i in used
    ]
    graph = onnx.helper.make_graph(
        g.nodes,
        "node_test",
        graph_inputs,
        [onnx.helper.make_tensor_value_info(out, onnx.TensorProto.BOOL, ["N", "T"])],
        initializer=g.initializers,
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8
    )
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {
        name: a for i, (name, a) in enumerate(zip(NODE_INPUTS, inputs, strict=True)) if i in used
    }
    return session.run(None, feed)[0]


RENDERERS = {
    "numpy": lambda program, inputs: program.run(*inputs)[0],
    "torch": lambda program, inputs: run_torch(program, inputs, scripted=False),
    "torchscript": lambda program, inputs: run_torch(program, inputs, scripted=True),
    "onnx": run_onnx,
}


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize("layout", ["direct", "hash"])
@pytest.mark.parametrize("comparison", ["<", "<="])
@pytest.mark.parametrize("domain", ["truncate", "nonnegative"])
@pytest.mark.parametrize("check_missing", [True, False])
def test_node_test_decides_as_the_reference(
    renderer: str, layout: str, comparison: str, domain: str, check_missing: bool
) -> None:
    trees = stumps(layout)
    nodes = NodeArrays(trees)
    nodes.categories = CategorySets(
        [t.categories(0) for t in trees if t.is_categorical[0]], kind=layout
    )
    x = values(check_missing)
    rule = NodeRule(
        folded=False,
        less_equal=comparison == "<=",
        zero_missing=nodes.has_zero_missing,
        categorical=nodes.has_categorical,
        nonnegative_categories=domain == "nonnegative",
        category_layout=tuple(nodes.categories.layout),
        check_missing=check_missing,
    )
    table = nodes.categories.table
    types = ("float64", "int32", "float64", "bool", "bool", "int64", str(table.dtype))
    program = record(lambda *v: node_test(rule, *v), *types, names=("left", "right"))
    # every value at every tree's test: (values, trees)
    pos = np.tile((np.arange(len(trees)) * 3).astype(np.int32), (x.size, 1))
    xs = np.repeat(x[:, None], len(trees), axis=1)
    tables = [nodes.threshold, nodes.default_left, nodes.zero_is_missing, nodes.category_row, table]
    inputs = [xs, pos, *tables]
    expected = np.stack(
        [
            reference.go_left(tree, np.zeros(x.size, np.intp), x, comparison, domain)
            for tree in trees
        ],
        axis=1,
    )
    left = RENDERERS[renderer](program.only("left"), inputs)
    right = RENDERERS[renderer](program.only("right"), inputs)
    assert_equal(np.asarray(left, dtype=bool), expected)
    assert_equal(np.asarray(right, dtype=bool), ~expected)


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_folded_nodes_send_nan_right(renderer: str) -> None:
    """Folded trees: every node is x < t, NaN right, nothing else read."""
    rule = NodeRule(True, False, False, False, False, (1,), True)
    types = ("float32", "int32", "float32", "bool", "bool", "int64", "bool")
    program = record(lambda *v: node_test(rule, *v), *types, names=("left", "right"))
    read = {a for s in program.steps for a in s.args if a < len(types)}
    assert read == {0, 1, 2}  # x, pos and the thresholds
    x = np.array([[-1.0, 0.5, 0.5, np.nan, np.inf, -np.inf]], np.float32)
    threshold = np.array([0.5, 0.5000001], np.float32)
    pos = np.array([[0, 0, 1, 1, 0, 1]], np.int32)
    unused = [np.zeros(2, bool), np.zeros(2, bool), np.zeros(2, np.int64), np.zeros(1, bool)]
    inputs = [x, pos, threshold, *unused]
    left = RENDERERS[renderer](program.only("left"), inputs)
    right = RENDERERS[renderer](program.only("right"), inputs)
    assert_equal(np.asarray(left, dtype=bool), [[True, False, True, False, False, True]])
    assert_equal(np.asarray(right, dtype=bool), [[False, True, False, True, True, False]])
