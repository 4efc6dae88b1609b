"""The vocabulary of treecomp.arrays and the links written in it, on every renderer.

Each program runs three ways: NumPy (``Program.run``), torch (``run_steps``, eager and
scripted) and ONNX (``emit_program`` in an ONNX Runtime session). The links are checked
against the reference evaluator, the oracle they must agree with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal
from tests.zoo import ZOO, fitted, pd
from treecomp import arrays, links, reference, sums
from treecomp.arrays import Program, record
from treecomp.ir import PostTransform

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from strategies.programs import run_steps  # noqa: E402
from treecomp.onnx.graph import ELEMENT, GraphBuilder, emit_program  # noqa: E402


def run_torch(
    program: Program, x: npt.NDArray[Any], *tables: npt.NDArray[Any], scripted: bool = False
) -> Any:
    assert list(program.outputs) == [len(program.inputs) + len(program.steps) - 1]
    run = torch.jit.script(run_steps) if scripted else run_steps
    return run(program.flat(), [torch.from_numpy(a) for a in (x, *tables)]).numpy()


def run_onnx(program: Program, x: npt.NDArray[Any], *tables: npt.NDArray[Any]) -> Any:
    """The program as a graph of input ``x`` (its width known), ``tables`` its constants."""
    dtype = str(x.dtype)
    g = GraphBuilder(dtype, "x")
    g.shapes["x"] = (x.shape[1],)
    (out,) = emit_program(g, program, "x", *[g.const(table) for table in tables])
    output_type = program.steps[-1].dtype if program.steps else dtype
    rank = np.ndim(program.run(x, *tables)[0])
    if out == "x":
        out = g.op("Identity", "x")
    graph = onnx.helper.make_graph(
        g.nodes,
        "program",
        [onnx.helper.make_tensor_value_info("x", ELEMENT[dtype], ["N", x.shape[1]])],
        [
            onnx.helper.make_tensor_value_info(
                out, ELEMENT[output_type], ["N"] + [None] * (rank - 1)
            )
        ],
        initializer=g.initializers,
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8
    )
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


RENDERERS = {
    "numpy": lambda program, *inputs: program.run(*inputs)[0],
    "torch": run_torch,
    "torchscript": lambda program, *inputs: run_torch(program, *inputs, scripted=True),
    "onnx": run_onnx,
}


def rows(dtype: str) -> npt.NDArray[np.floating]:
    """Sums a link meets: ordinary, large of both signs, tiny, zero, and (in float64) exp's
    overflow. (float32 sums are XGBoost's, whose links never meet exp's float32 overflow:
    they clamp, or subtract the row's largest sum first.)"""
    values = [-800.0, -40.0, -3.5, -1e-12, 0.0, 1e-12, 0.25, 2.0, 30.0, 800.0]
    if dtype == "float32":
        values = [-60.0, -40.0, -3.5, -1e-12, 0.0, 1e-12, 0.25, 2.0, 30.0, 60.0]
    x = np.array(values, dtype=np.float64)
    return np.stack([x, -x[::-1] / 3, np.linspace(-5, 5, x.size)], axis=1).astype(dtype)


LINKS = [
    PostTransform("sigmoid", 1.0),
    PostTransform("sigmoid", 0.7),
    PostTransform("softmax"),
    PostTransform("exp"),
    PostTransform("softplus"),
    PostTransform("signed_square"),
    PostTransform("isolation", 3.5),
    PostTransform("isolation", 0.0),
]


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
@pytest.mark.parametrize("accumulation", ["float64", "float32"])
@pytest.mark.parametrize("post", LINKS, ids=lambda p: f"{p.kind}-{p.scale}")
def test_links_agree_with_the_reference(
    post: PostTransform, accumulation: str, renderer: str
) -> None:
    program = links.program(post.kind, post.scale, accumulation)
    assert program is not None
    x = rows(accumulation)
    if post.kind == "isolation":
        x = np.abs(x[:-1])  # path lengths: finite, not negative
    forest = type("Forest", (), {"post_transform": post, "accumulation": accumulation})
    expected = reference.link(forest, x)  # type: ignore[arg-type]
    actual = np.asarray(RENDERERS[renderer](program, x), dtype=np.float64)
    assert actual.shape == expected.shape
    # float32 links: the exps differ by an ulp between implementations
    assert_close(actual, expected, "float32_link" if accumulation == "float32" else "float64")


def test_identity_is_no_program() -> None:
    assert links.program("identity", 1.0, "float64") is None
    with pytest.raises(ValueError, match="unknown post-transform 'probit'"):
        links.program("probit", 1.0, "float64")


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_log1p_keeps_tiny_values(renderer: str) -> None:
    """log1p(x) is x where 1 + x rounds to 1 (ONNX has no log1p: its rendering corrects
    log(1 + x)), and infinite where x is."""
    x = np.array([[1e-300, 1e-20, 1e-9, 0.5, 1e20, np.inf, 0.0]])
    program = record(arrays.log1p, "float64")
    actual = RENDERERS[renderer](program, x)
    finite = x[:, :-2]
    assert_close(actual[:, :-2], np.log1p(finite), "float64")
    assert actual[0, -2] == np.inf and actual[0, -1] == 0.0


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_row_sum_adds_in_column_order(renderer: str) -> None:
    """A sequential sum in the values' type: in float32, 2**24 + 1 is 2**24 again, so the
    order of the adds shows in the result (a pairwise sum gives 1 in the first row, this
    order 0)."""
    big = np.float32(2.0**24)
    x = np.array([[big, 1, 1, -big], [1, 1, big, -big]], dtype=np.float32)
    program = record(arrays.row_sum, "float32")
    actual = RENDERERS[renderer](program, x)
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(actual, [[0.0], [2.0]])


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_ordered_sum_adds_each_outputs_terms_in_order(renderer: str) -> None:
    """Two outputs, terms step-major, from a start per output (a table, as the forests'
    base scores): in float32 the order of the adds shows (2**24 + 1 is 2**24 again)."""
    big = np.float32(2.0**24)
    # output 0's terms: 1, 1, -big; output 1's: big, 1, -big (after starts big and 1)
    x = np.array([[1, big, 1, 1, -big, -big]], dtype=np.float32)
    start = np.array([big, 1], dtype=np.float32)
    program = record(lambda v, s: arrays.ordered_sum(v, 2, s), "float32", "float32", names=["sums"])
    actual = RENDERERS[renderer](program, x, start)
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(actual, [[0.0, 0.0]])
    no_start = RENDERERS[renderer](record(lambda v: arrays.ordered_sum(v, 3), "float32"), x)
    np.testing.assert_array_equal(no_start, [[1 + np.float32(1), big - big, 1 - big]])


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_columns_at_pads_one_past_the_last_with_zeros(renderer: str) -> None:
    x = np.array([[1.5, -2.0, np.nan], [0.25, 4.0, -np.inf]])
    positions = np.array([2, 3, 0, 3, 1], dtype=np.int64)
    program = record(arrays.columns_at, "float64", "int64")
    expected = [[np.nan, 0.0, 1.5, 0.0, -2.0], [-np.inf, 0.0, 0.25, 0.0, 4.0]]
    np.testing.assert_array_equal(RENDERERS[renderer](program, x, positions), expected)


def finite_halves(x: Any) -> Any:
    """``x`` without NaN (as 0), then its columns halved and negated: (rows, 6)."""
    y = arrays.where(arrays.isnan(x), 0.0, x)
    return arrays.concat(y, -y * 0.5)


def counts(x: Any) -> Any:
    """Integers from 0 up, made of ``x``."""
    return arrays.int64(arrays.where(x > 0.0, x, 0.0) * 4.0)


# An idea per operation of the vocabulary that uses it, on one float64 input.
ONE_OPERATION: dict[str, Any] = {
    "const": lambda x: x + 2.5,
    "neg": lambda x: -x,
    "add": lambda x: x + 0.75,
    "sub": lambda x: 0.75 - x,
    "mul": lambda x: x * 0.75,
    "div": lambda x: 0.75 / x,
    "pow": lambda x: x**0.75,
    "minimum": lambda x: arrays.minimum(x, 0.75),
    "less": lambda x: x < 0.75,
    "greater": lambda x: x > 0.75,
    "greater_equal": lambda x: x >= 2.0,
    "where": lambda x: arrays.where(x > 0.0, x, 0.5),
    "float32": lambda x: arrays.float64(arrays.float32(x * 0.1)),
    "float64": lambda x: arrays.float64(arrays.float32(x)),
    "int64": lambda x: arrays.int64(x > 0.0),
    "concat": lambda x: arrays.concat(x, -x),
    "squeeze": lambda x: arrays.squeeze(arrays.row_max(x)),
    "equal": lambda x: arrays.equal(x, 0.0),
    "abs": abs,
    "mod": lambda x: counts(x) % 4,
    "floordiv": lambda x: counts(x) // 4,
    "less_equal": lambda x: x <= 0.75,
    "and": lambda x: (x > 0.0) & (x < 2.0),
    "or": lambda x: (x > 0.0) | arrays.isnan(x),
    "not": lambda x: ~(x > 0.0),
    "take": lambda x: arrays.take(arrays.squeeze(arrays.row_max(x)), counts(x) % 3),
    "column": lambda x: arrays.column(x, arrays.int32(counts(x) % 3)),
    "broadcast": lambda x: arrays.broadcast(arrays.row_max(x), x),
    "int32": lambda x: arrays.int32(x > 0.0),
    "interleave": lambda x: arrays.interleave(x, -x, arrays.where(arrays.isnan(x), x, 0.0)),
    "ordered_sum": lambda x: arrays.ordered_sum(arrays.concat(x, x * 0.5), 2, arrays.row_max(x)),
    "columns_at": lambda x: arrays.columns_at(x, arrays.squeeze(counts(arrays.row_max(x)) % 4)),
    "group_matmul": (
        lambda x, path: arrays.float64(
            arrays.group_matmul(arrays.float32(arrays.concat(x, -x) > 0.0), path)
        ),
        (np.array([[[1, -1], [0, 1], [-1, 0]], [[0, 0], [1, 1], [1, -1]]], dtype=np.float32),),
    ),
    "group_argmax": lambda x: arrays.group_argmax(finite_halves(x), 3, 2),
}


@pytest.mark.parametrize("renderer", sorted(set(RENDERERS) - {"numpy"}))
def test_every_operation_renders_as_numpy_computes_it(renderer: str) -> None:
    x = np.array([[0.3, -1.7, 2.0], [0.0, 4.5, -0.25], [np.nan, -np.inf, 0.75]])
    for op in arrays.OPERATIONS:
        entry = ONE_OPERATION.get(op, getattr(arrays, op, None))
        idea, tables = entry if isinstance(entry, tuple) else (entry, ())
        program = record(idea, "float64", *[str(table.dtype) for table in tables])
        assert op in {step.op for step in program.steps}
        expected = program.run(x, *tables)[0]
        actual = RENDERERS[renderer](program, x, *tables)
        assert actual.shape == expected.shape, op
        if expected.dtype.kind == "f":
            assert_close(actual, expected, "float64")
        else:
            assert_equal(actual, expected)


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_integer_mod_and_floordiv_by_any_divisor(renderer: str) -> None:
    """Powers of two take the torch renderer's mask and shift, other divisors its
    remainder and floor division: the same numbers either way."""
    x = np.array([[0.0, 0.3, 1.7, 2.0, 4.5, 1e9, np.nan]])
    for divisor in (1, 2, 3, 4, 7, 1 << 20):
        for idea in (lambda v, d=divisor: counts(v) % d, lambda v, d=divisor: counts(v) // d):
            program = record(idea, "float64")
            assert_equal(RENDERERS[renderer](program, x), program.run(x)[0])


def test_integer_constants_and_operations_are_checked_when_recorded() -> None:
    with pytest.raises(TypeError, match="no int32 constant"):
        record(lambda x: arrays.int32(x > 0.0) % (1 << 32), "float64")
    with pytest.raises(TypeError, match="no int64 constant"):
        record(lambda x: counts(x) + (2**53 + 2), "float64")
    with pytest.raises(TypeError, match="cast them to a float type"):
        record(lambda x: counts(x) / 2, "float64")
    with pytest.raises(TypeError, match="mod of float64"):
        record(lambda x: x % 2.0, "float64")


def test_types_are_checked_when_recorded() -> None:
    with pytest.raises(TypeError, match="cast one first"):
        record(lambda x, y: x + y, "float32", "float64")
    with pytest.raises(TypeError, match="cast one first"):
        record(lambda x: arrays.float64(x) + arrays.float32(x), "float32")
    # a float32 widened and rounded back is itself, and steps no output needs are dropped
    program = record(lambda x: arrays.float32(arrays.float64(x)) * 2.0 < 1.0, "float32")
    assert [(s.op, s.dtype) for s in program.steps] == [
        ("const", "float32"),
        ("mul", "float32"),
        ("const", "float32"),
        ("less", "bool"),
    ]


# --- The native outputs (treecomp.outputs), NumPy and ONNX against their meaning ----------


def output_cases() -> list[tuple[str, dict[str, Any]]]:
    """Forests' output fields: every task, label rule and probability layout."""
    base = {"decision_offset": 0.0, "accumulation": "float64", "proba_columns": 0}
    return [
        (
            "binary-ge",
            {
                **base,
                "task": "classifier",
                "n_outputs": 1,
                "proba_columns": 2,
                "label_rule": "margin_ge_zero",
            },
        ),
        (
            "binary-gt",
            {
                **base,
                "task": "classifier",
                "n_outputs": 1,
                "proba_columns": 2,
                "label_rule": "margin_gt_zero",
            },
        ),
        (
            "binary-proba-f32",
            {
                **base,
                "task": "classifier",
                "n_outputs": 1,
                "proba_columns": 2,
                "label_rule": "argmax_proba",
                "accumulation": "float32",
            },
        ),
        (
            "multi-margin",
            {
                **base,
                "task": "classifier",
                "n_outputs": 3,
                "proba_columns": 3,
                "label_rule": "margin_ge_zero",
            },
        ),
        (
            "multi-proba",
            {
                **base,
                "task": "classifier",
                "n_outputs": 3,
                "proba_columns": 3,
                "label_rule": "argmax_proba",
            },
        ),
        (
            "outlier",
            {
                **base,
                "task": "outlier",
                "n_outputs": 1,
                "label_rule": "argmax_proba",
                "decision_offset": -0.5,
            },
        ),
        ("regressor", {**base, "task": "regressor", "n_outputs": 1, "label_rule": "argmax_proba"}),
        (
            "multi-regressor",
            {**base, "task": "regressor", "n_outputs": 3, "label_rule": "argmax_proba"},
        ),
    ]


def expected_outputs(f: Any, raw: Any, transformed: Any) -> dict[str, Any]:
    """What each output means, written plainly (the old hand-written outputs)."""
    if f.task == "regressor":
        return {"scores": transformed[:, 0] if f.n_outputs == 1 else transformed}
    if f.task == "outlier":
        decision = transformed[:, 0] - f.decision_offset
        return {
            "label": np.where(decision < 0, -1, 1),
            "scores": transformed[:, 0],
            "decision": decision,
        }
    proba = transformed
    if f.proba_columns == 2:
        p = transformed[:, 0]
        q = (np.float32(1.0) - p.astype(np.float32)) if f.accumulation == "float32" else 1.0 - p
        proba = np.stack([np.asarray(q, dtype=np.float64), p], axis=1)
    if f.label_rule == "argmax_proba":
        index = np.argmax(proba, axis=1)
    elif f.n_outputs > 1:
        index = np.argmax(raw, axis=1)
    else:
        index = (raw[:, 0] >= 0) if f.label_rule == "margin_ge_zero" else (raw[:, 0] > 0)
    decision = raw[:, 0] if f.n_outputs == 1 else raw
    return {"label_index": index.astype(np.int64), "probabilities": proba, "decision": decision}


@pytest.mark.parametrize("renderer", ["numpy", "onnx"])
@pytest.mark.parametrize(("case", "fields"), output_cases(), ids=[c for c, _ in output_cases()])
def test_native_outputs_mean_what_they_say(
    case: str, fields: dict[str, Any], renderer: str
) -> None:
    from types import SimpleNamespace

    from treecomp import outputs

    f = SimpleNamespace(**fields)
    k = f.n_outputs
    # margins at zero, ties between columns, and ordinary values
    raw = np.array([[0.0, 0.0, 0.0], [-0.0, 1.0, 1.0], [2.5, -1.0, 2.5], [-3.0, 0.5, -0.1]])
    raw = raw[:, :k]
    transformed = 1.0 / (1.0 + np.exp(-raw)) if k == 1 else np.exp(raw) / 3.0
    if f.accumulation == "float32":
        transformed = transformed.astype(np.float32).astype(np.float64)
    expected = expected_outputs(f, raw, transformed)
    program = outputs.program(f)  # type: ignore[arg-type]
    assert set(program.names) == set(expected)
    if renderer == "numpy":
        actual = dict(zip(program.names, program.run(raw, transformed), strict=True))
    else:
        actual = {
            name: run_onnx_outputs(program.only(name), raw, transformed) for name in program.names
        }
    for name, want in expected.items():
        assert_equal(np.asarray(actual[name]), want)
        assert np.asarray(actual[name]).dtype.kind == np.asarray(want).dtype.kind, name


def run_onnx_outputs(program: Program, raw: Any, transformed: Any) -> Any:
    g = GraphBuilder("float64", "raw")
    (out,) = emit_program(g, program, "raw", "transformed")
    if out in ("raw", "transformed"):
        out = g.op("Identity", out)
    rank = np.ndim(program.run(raw, transformed)[0])
    element = ELEMENT[program.steps[-1].dtype] if program.steps else ELEMENT["float64"]
    inputs = [
        onnx.helper.make_tensor_value_info(name, ELEMENT["float64"], ["N", raw.shape[1]])
        for name in ("raw", "transformed")
    ]
    graph = onnx.helper.make_graph(
        g.nodes,
        "outputs",
        inputs,
        [onnx.helper.make_tensor_value_info(out, element, ["N"] + [None] * (rank - 1))],
        initializer=g.initializers,
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"raw": raw, "transformed": transformed})[0]


@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_group_argmax_takes_the_first_of_equal_values(renderer: str) -> None:
    x = np.array([[1.0, 1.0, 0.0, -np.inf, -np.inf, 2.0], [0.0, 0.0, 0.0, 5.0, 5.0, 5.0]])
    program = record(lambda v: arrays.group_argmax(v, 2, 3), "float64")
    np.testing.assert_array_equal(RENDERERS[renderer](program, x), [[0, 2], [0, 0]])


@pytest.mark.parametrize("folded", [False, True], ids=["base", "base-folded"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_sum_program_is_the_reference_sum(name: str, folded: bool) -> None:
    """treecomp.sums' program, run by NumPy on the leaf values the reference evaluator
    reaches, equals the reference's own sum bit for bit: the same terms, order and type
    (with the base as the first term, or folded into the first trees' leaves)."""
    from treecomp.passes import fold_base_score

    model, X = fitted(name)
    forest = treecomp.convert(model, "numpy").forest
    if folded:
        forest = fold_base_score(forest)
    rows = treecomp.inputs.to_matrix(forest, X) if isinstance(X, pd.DataFrame) else X
    nodes = reference.leaf_nodes(forest, np.asarray(rows, dtype=np.float64))
    plan = sums.plan(forest)
    acc = np.float32 if forest.accumulation == "float32" else np.float64
    values = np.zeros((nodes.shape[0], forest.n_trees * plan.width), dtype=acc)
    for t, tree in enumerate(forest.trees):
        leaf = tree.value[nodes[:, t]].astype(acc)
        values[:, t * plan.width : t * plan.width + leaf.shape[1]] = leaf
    (total,) = sums.program(plan).run(values, *plan.tables().values())
    assert total.dtype == acc
    np.testing.assert_array_equal(total, reference.raw_scores(forest, nodes))
