"""ONNX export, the onnx backend, and saved artifacts."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal, native_apply, tolerance
from tests.zoo import ZOO, fitted, inputs, pd

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def serving_input(model: Any, cm: treecomp.CompiledModel, X: Any) -> np.ndarray:
    """What a serving client feeds the graph: numbers, pandas categories as their codes.

    HistGradientBoosting's graph encodes category values itself, so it gets the raw values.
    """
    if isinstance(X, pd.DataFrame):
        if cm.forest.category_encoding == "always":
            return X.astype(float).to_numpy()
        return treecomp.inputs.to_matrix(cm.forest, X)
    return np.asarray(X, dtype=np.float64)


def run_serving(
    proto: Any, X: np.ndarray, precision: str, options: Any = None
) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(
        proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    outputs = session.run(None, {"input": X.astype(precision)})
    return {o.name: value for o, value in zip(session.get_outputs(), outputs, strict=True)}


def check_serving(
    model: Any, cm: treecomp.CompiledModel, X: Any, proto: Any = None, options: Any = None
) -> dict[str, np.ndarray]:
    """The exported graph's named outputs (``cm.to_onnx(leaf_indices=True)`` unless given)
    equal the native model's answers; returns them."""
    if proto is None:
        proto = cm.to_onnx(leaf_indices=True)
    out = run_serving(proto, serving_input(model, cm, X), cm.export_dtype, options)
    forest = cm.forest
    if forest.task == "classifier":
        assert_equal(out["label"], model.predict(X))
        assert_close(out["probabilities"], model.predict_proba(X), tolerance(model))
    elif forest.task == "outlier":
        assert_equal(out["label"], model.predict(X))
        assert_close(out["scores"], model.score_samples(X), tolerance(model))
        assert_close(out["decision"], model.decision_function(X), tolerance(model))
    else:
        assert_close(out["scores"], model.predict(X), tolerance(model))
    if hasattr(cm, "apply"):
        expected = native_apply(model, X).reshape(len(out["leaf_indices"]), -1)
        assert_equal(out["leaf_indices"], expected)
    return out


# Below the default LARGE_BATCH_ROWS, so that the zoo's batches take both branches.
LARGE_ROWS = 40


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_large_batches_are_exact_under_any_session_options(name: str, precision: str) -> None:
    """From ``large_batch_rows`` rows on, the exported graph adds one tree operator node per
    tree in a chain of Adds; under it, it scans the operator's values. Either way the
    answers are the native model's, bit for bit the same on 1, 2 or 4 threads with the
    graph optimised or not, and the same as the graph without the large-batch branch."""
    from strategies import plan_forest
    from treecomp.onnx.export import build

    model, X_test = fitted(name)
    cm = treecomp.convert(model, "numpy", precision=precision)
    options = {
        "lower": plan_forest,
        "precision": cm.export_dtype,
        "strategy": "auto",
        "batch_size": 10_000,
        "leaf_indices": True,
        "transforms": cm.transforms,
    }
    proto = build(cm.forest, large_batch_rows=LARGE_ROWS, **options)
    assert "If" in {node.op_type for node in proto.graph.node}  # every zoo forest has it
    scan_only = build(cm.forest, large_batch_rows=None, **options)
    sessions = []
    for threads in (1, 2, 4):
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
            session = ort.SessionOptions()
            session.intra_op_num_threads = threads
            session.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            sessions.append(session)
    large = 0
    for X in inputs(model, X_test, cm.forest):
        if tolerance(model) == "xgboost_float32" and np.isinf(np.asarray(X, dtype=float)).any():
            continue  # as in test_onnx_backend_and_export_match_native
        large += len(X) >= LARGE_ROWS
        for n in sorted({1, LARGE_ROWS - 1, LARGE_ROWS, len(X)} & set(range(1, len(X) + 1))):
            rows = X.iloc[:n] if isinstance(X, pd.DataFrame) else X[:n]
            expected = check_serving(model, cm, rows, scan_only, sessions[0])
            for session in sessions:
                out = check_serving(model, cm, rows, proto, session)
                for key, value in expected.items():
                    assert_equal(out[key], value)
                    assert out[key].tobytes() == value.tobytes()  # zeros' signs too
    assert large  # the held-out rows at least


def one_row_nodes(graph: Any) -> int:
    """The nodes a one-row call runs: each If's first branch is the one for fewer rows."""
    total = 0
    for node in graph.node:
        total += 1
        if node.op_type == "If":
            total += one_row_nodes(next(a.g for a in node.attribute if a.name == "then_branch"))
    return total


@pytest.mark.parametrize("name", sorted(ZOO))
def test_one_row_runs_no_more_nodes_than_the_scan(name: str) -> None:
    """At one row every node counts (microseconds each). Against the graph without the
    large-batch If: one-output forests run no more nodes (the operator's own sum, exact on
    one row, replaces the scan); several outputs run the If's three (Shape, Less, If)."""
    from strategies import plan_forest
    from treecomp.onnx.export import build

    model, _ = fitted(name)
    cm = treecomp.convert(model, "numpy")
    options = {"precision": cm.export_dtype, "batch_size": 10_000, "transforms": cm.transforms}
    options["lower"] = plan_forest
    scan = one_row_nodes(build(cm.forest, large_batch_rows=None, **options).graph)
    now = one_row_nodes(cm.to_onnx().graph)
    assert now <= scan + (0 if cm.forest.n_outputs == 1 else 3), (now, scan)


# The nodes a one-row call of each zoo model's exported graph runs (cm.to_onnx(), the
# defaults), as of 2026-12-07. Every node costs microseconds at one row: a redesign of the
# emitters may lower these, never raise them (issue 21). Lower a count here when it falls.
ONE_ROW_NODES = {
    "lightgbm_binary_nan": 12,
    "lightgbm_categorical_zero": 21,
    "lightgbm_multiclass": 10,
    "sklearn_gb": 15,
    "sklearn_hgb_categorical": 24,
    "sklearn_hgb_nan": 14,
    "sklearn_iforest": 13,
    "sklearn_multi_output": 9,
    "sklearn_rf": 11,
    "xgboost_binary": 16,
    "xgboost_categorical": 14,
    "xgboost_multiclass": 20,
}


def test_one_row_node_counts_are_pinned() -> None:
    assert set(ONE_ROW_NODES) == set(ZOO)  # a new zoo model gets its count here
    counts = {}
    for name in sorted(ZOO):
        model, _ = fitted(name)
        counts[name] = one_row_nodes(treecomp.convert(model, "numpy").to_onnx().graph)
    grew = {name: (n, ONE_ROW_NODES[name]) for name, n in counts.items() if n > ONE_ROW_NODES[name]}
    assert grew == {}, f"one-row graphs grew (now, pinned): {grew}"
    fell = {name: (n, ONE_ROW_NODES[name]) for name, n in counts.items() if n < ONE_ROW_NODES[name]}
    assert fell == {}, f"one-row graphs shrank: lower ONE_ROW_NODES to {fell}"


def test_builder_folds_reshapes_and_drops_nodes_no_output_needs() -> None:
    """A reshape of a reshape reads the first one's source; the first one, which nothing
    reads then, is dropped with every other node no output needs, while nodes that only an
    If branch reads stay."""
    from treecomp.onnx.graph import GraphBuilder

    g = GraphBuilder("float32", "x")
    flat = g.reshape("x", 6)
    again = g.reshape(flat, 3, 2)
    dead = g.op("Neg", "x")
    g.op("Abs", dead)
    inside = g.op("Exp", "x")  # read only inside the branch below
    branch = g.branch(lambda: g.op("Identity", inside), onnx.TensorProto.FLOAT)
    chosen = g.op(
        "If",
        g.op("Less", g.op("Shape", "x", end=1), g.ints([2])),
        then_branch=branch,
        else_branch=branch,
    )
    g.prune([again, chosen])
    ops = [node.op_type for node in g.nodes]
    assert ops == ["Reshape", "Exp", "Shape", "Less", "If"]
    assert g.nodes[0].input[0] == "x"  # the second reshape reads the source
    assert g.reshaped_from(again) == "x"


@pytest.mark.parametrize("strategy", ["perfect_tree_traversal", "tree_traversal", "gemm"])
@pytest.mark.parametrize("name", ["lightgbm_categorical_zero", "xgboost_binary"])
def test_graphs_hold_only_constants_their_nodes_read(name: str, strategy: str) -> None:
    """Steps of constants are folded when the graph is built (a level's offsets are one
    constant, not arithmetic on the tree numbers: no node reads constants alone), and the
    constants they consumed are left out: ONNX Runtime would warn about each one."""
    model, _ = fitted(name)
    proto = treecomp.convert(model, "numpy").to_onnx(strategy=strategy)
    read = {value for node in proto.graph.node for value in node.input}
    for node in proto.graph.node:  # If branches read the main graph's constants too
        for attribute in node.attribute:
            read.update(i for n in attribute.g.node for i in n.input)
    constants = {t.name for t in proto.graph.initializer}
    assert constants <= read
    unfolded = [n.op_type for n in proto.graph.node if n.input and set(n.input) <= constants]
    assert unfolded == []


@pytest.mark.parametrize("strategy", ["auto", "tree_traversal"])
def test_graph_contract(strategy: str) -> None:
    model, X_test = fitted("sklearn_rf")
    proto = treecomp.convert(model, "numpy").to_onnx(leaf_indices=True, strategy=strategy)
    onnx.checker.check_model(proto, full_check=True)
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets[""] >= 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["label", "probabilities", "leaf_indices"]
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "N"  # a dynamic batch axis
    schemas = {(s.domain, s.name) for s in onnx.defs.get_all_schemas()}
    used = {(node.domain, node.op_type) for node in proto.graph.node}
    assert used <= schemas  # no custom operators
    # The CPU default finds leaves with ONNX-ML's TreeEnsemble; forced strategies use the
    # standard domain only. Either way the graph says which strategy it holds.
    expected = "tree_ensemble" if strategy == "auto" else strategy
    assert {p.key: p.value for p in proto.metadata_props}["treecomp.strategy"] == expected
    assert (("ai.onnx.ml", "TreeEnsemble") in used) == (expected == "tree_ensemble")
    assert ("ai.onnx.ml" in opsets) == (expected == "tree_ensemble")
    for rows in (0, 1):
        out = run_serving(proto, np.asarray(X_test[:rows], dtype=np.float64), "float32")
        assert out["label"].shape == (rows,)
        assert out["probabilities"].shape == (rows, 3)
        assert out["leaf_indices"].shape == (rows, 12)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_fresh_process_with_only_onnxruntime_scores_the_file(
    tmp_path: Path, precision: str
) -> None:
    model, X_test = fitted("lightgbm_binary_nan")
    cm = treecomp.convert(model, "numpy", precision=precision)
    cm.export_onnx(tmp_path / "model.onnx")
    X = np.array(X_test, dtype=np.float64)
    X[::5, 3] = np.nan
    np.save(tmp_path / "x.npy", X.astype(precision))
    script = textwrap.dedent(
        """
        import sys, numpy as np, onnxruntime as ort
        session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
        label, proba = session.run(["label", "probabilities"], {"input": np.load("x.npy")})
        assert not any(m in sys.modules for m in ("treecomp", "torch", "lightgbm", "sklearn"))
        np.save("label.npy", label)
        np.save("proba.npy", proba)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    X_native = X.astype(precision).astype(np.float64)
    assert_equal(np.load(tmp_path / "label.npy"), model.predict(X_native))
    assert_close(np.load(tmp_path / "proba.npy"), model.predict_proba(X_native), "float64")


def test_the_onnx_target_needs_no_torch(tmp_path: Path) -> None:
    """Conversion to the onnx backend, export with every strategy and ``treecomp convert
    --to onnx``, of a model and of a Pipeline, run in a process where ``import torch``
    fails: the lowering is NumPy, the graph is built from it."""
    ort = pytest.importorskip("onnxruntime")
    from tests.test_pipeline import TEST, fitted_pipeline, onnx_feeds

    model, X_test = fitted("lightgbm_binary_nan")
    X = np.array(X_test, dtype=np.float64)
    X[::5, 3] = np.nan
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    model.booster_.save_model(tmp_path / "model.txt")
    np.save(tmp_path / "x.npy", X)
    pipeline = fitted_pipeline("random_forest")
    (tmp_path / "pipeline.pkl").write_bytes(pickle.dumps((pipeline, TEST)))
    script = textwrap.dedent(
        """
        import pickle, sys, numpy as np, onnxruntime as ort

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        import treecomp

        model = pickle.load(open("model.pkl", "rb"))
        X = np.load("x.npy")
        cm = treecomp.convert(model, "onnx")
        np.save("backend.npy", cm.predict_proba(X))
        for strategy in ("auto", "gemm", "tree_traversal", "perfect_tree_traversal"):
            graph = cm.to_onnx(strategy=strategy).SerializeToString()
            session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
            rows = X.astype(cm.export_dtype)  # the graph's input type
            (proba,) = session.run(["probabilities"], {"input": rows})
            np.save(f"{strategy}.npy", proba)
        np.save("rows.npy", rows)
        from treecomp.cli import main

        assert main(["convert", "model.txt", "--to", "onnx", "-o", "cli.onnx"]) == 0
        session = ort.InferenceSession("cli.onnx", providers=["CPUExecutionProvider"])
        np.save("cli.npy", session.run(["probabilities"], {"input": rows})[0])
        pipeline, test = pickle.load(open("pipeline.pkl", "rb"))
        cm = treecomp.convert(pipeline, "onnx")
        np.save("pipeline.npy", cm.predict_proba(test))
        cm.export_onnx("pipeline.onnx")
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    assert_close(np.load(tmp_path / "backend.npy"), model.predict_proba(X), "float64")
    X_native = np.load(tmp_path / "rows.npy").astype(np.float64)
    for name in ("auto", "gemm", "tree_traversal", "perfect_tree_traversal", "cli"):
        proba = np.load(tmp_path / f"{name}.npy")
        assert_close(proba, model.predict_proba(X_native), "float64")
    expected = pipeline.predict_proba(TEST)
    assert_close(np.load(tmp_path / "pipeline.npy"), expected, "float64")
    session = ort.InferenceSession(str(tmp_path / "pipeline.onnx"))
    (proba,) = session.run(["probabilities"], onnx_feeds(session, TEST))
    assert_close(proba, expected, "float64")


def test_the_default_backend_leaves_torch_unimported(tmp_path: Path) -> None:
    """A fresh process's ``convert(model)`` on the CPU (the tree operator, the kernel for
    large batches) never imports torch, installed or not: 1.4 s and some 180 MB."""
    pytest.importorskip("onnxruntime")
    model, X_test = fitted("xgboost_binary")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    np.save(tmp_path / "x.npy", np.asarray(X_test, dtype=np.float64))
    script = textwrap.dedent(
        """
        import pickle, sys, numpy as np
        import treecomp

        model = pickle.load(open("model.pkl", "rb"))
        X = np.load("x.npy")
        cm = treecomp.convert(model)
        np.save("proba.npy", np.vstack([cm.predict_proba(X[:1]), cm.predict_proba(X[1:])]))
        print(cm.backend, "torch" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.stdout.split() == ["onnx", "False"]
    X = np.load(tmp_path / "x.npy")
    assert_close(np.load(tmp_path / "proba.npy"), model.predict_proba(X), tolerance(model))


def test_a_plan_emits_the_same_graph_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forest's plan is data: emitting it (here twice) leaves it as it was, though the
    small-batch branch plans its tree-operator nodes its own way while it is emitted."""
    import strategies
    import strategies.tree_ensemble as tree_ensemble
    from treecomp.onnx.export import build

    monkeypatch.setattr(tree_ensemble, "TREES_PER_NODE", 4)  # large batches: 5 nodes
    model, _ = fitted("xgboost_binary")
    forest = treecomp.parse(model)
    plan = strategies.plan_forest(forest, "float32", target="onnx")
    graphs = [
        build(forest, lower=lambda *args, **options: plan, leaf_indices=True).SerializeToString()
        for _ in range(2)
    ]
    assert graphs[0] == graphs[1]
    fresh = build(forest, lower=strategies.plan_forest, leaf_indices=True)
    assert fresh.SerializeToString() == graphs[0]


def test_string_labels_travel_in_the_graph() -> None:
    ensemble = pytest.importorskip("sklearn.ensemble")
    model, X_test = fitted("sklearn_rf")
    X = np.array(X_test, dtype=np.float64)
    labels = np.array(["cat", "dog", "owl"])[model.predict(X) % 3]
    strings = ensemble.RandomForestClassifier(5, random_state=0).fit(X, labels)
    out = run_serving(treecomp.convert(strings, "numpy").to_onnx(), X, "float32")
    assert_equal(out["label"].astype(str), strings.predict(X))


def test_onnx_cuda_request_without_provider_is_a_clear_error() -> None:
    model, _ = fitted("sklearn_gb")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: covered by the GPU run")  # pragma: no cover
    with pytest.raises(RuntimeError, match="CUDA execution provider"):
        treecomp.convert(model, "onnx", device="cuda")


# --- save / load -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch", "torchscript", "onnx"])
def test_save_load_round_trip(tmp_path: Path, backend: str) -> None:
    model, X_test = fitted("xgboost_categorical")
    cm = treecomp.convert(model, backend, precision="float64")
    path = tmp_path / "model.tc"
    cm.save(path)
    again = treecomp.load(path)
    assert again.backend == backend and again.precision == "float64"
    assert again.forest == cm.forest
    assert_close(again.predict(X_test), model.predict(X_test), "xgboost_float32")
    for other in ("numpy", "torch", "onnx"):
        moved = treecomp.load(path, backend=other, device="cpu")
        assert_equal(moved.apply(X_test), cm.apply(X_test))


def test_saved_options_survive_and_can_be_overridden(tmp_path: Path) -> None:
    model, _ = fitted("sklearn_gb")
    cm = treecomp.convert(model, "torch", strategy="gemm", batch_size=64)
    cm.save(tmp_path / "m.tc")
    assert treecomp.load(tmp_path / "m.tc").strategy == "gemm"
    assert treecomp.load(tmp_path / "m.tc", strategy="tree_traversal").strategy == "tree_traversal"


def saved(tmp_path: Path) -> Path:
    model, _ = fitted("sklearn_gb")
    path = tmp_path / "model.tc"
    treecomp.convert(model, "numpy").save(path)
    return path


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(treecomp.InvalidArtifactError, match="not a treecomp model file"):
        treecomp.load(path)


def test_tampered_file_is_a_clear_error(tmp_path: Path) -> None:
    path = saved(tmp_path)
    doc = json.loads(path.read_bytes())
    doc["forest"]["base_score"]["data"] = "AAAAAAAA8D8="  # 1.0 instead of the prior
    path.write_text(json.dumps(doc))
    with pytest.raises(treecomp.InvalidArtifactError, match="checksum"):
        treecomp.load(path)


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n\x00\x00", pickle.dumps({"forest": 1}), b'{"hello": "world"}', b"[1, 2]"],
    ids=["png", "pickle", "json-object", "json-list"],
)
def test_foreign_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.tc"
    path.write_bytes(content)
    with pytest.raises(treecomp.InvalidArtifactError, match="not a treecomp model file"):
        treecomp.load(path)


def test_newer_format_names_both_versions(tmp_path: Path) -> None:
    path = saved(tmp_path)
    doc = json.loads(path.read_bytes())
    doc["version"] = 7
    path.write_text(json.dumps(doc))
    with pytest.raises(treecomp.InvalidArtifactError, match=r"version 7.*up to 2"):
        treecomp.load(path)


def test_unknown_options_in_a_file_are_refused(tmp_path: Path) -> None:
    """Nothing in a file is executed or passed on unchecked, checksum or not."""
    from treecomp import artifact

    path = saved(tmp_path)
    doc = json.loads(path.read_bytes())
    doc["options"] = {"strategy": "auto", "__class__": "os.system"}
    body = {k: v for k, v in doc.items() if k != "sha256"}
    doc["sha256"] = artifact.hashlib.sha256(artifact._canonical(body)).hexdigest()
    path.write_text(json.dumps(doc))
    with pytest.raises(treecomp.InvalidArtifactError, match="unexpected options"):
        treecomp.load(path)


def _rewrite(path: Path, change: Any) -> None:
    """Apply ``change`` to the document and re-sign it, as a forger would."""
    from treecomp import artifact

    doc = json.loads(path.read_bytes())
    change(doc)
    body = {k: v for k, v in doc.items() if k != "sha256"}
    doc["sha256"] = artifact.hashlib.sha256(artifact._canonical(body)).hexdigest()
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["options"].update(n_threads=100_000),
        lambda d: d["options"].update(batch_size=-5),
        lambda d: d["options"].update(strategy="bogus"),
        lambda d: d["forest"].update(n_features=10**30),
        lambda d: d["forest"].update(leaf_shape=[-1, -25]),
        lambda d: d["forest"]["base_score"].update(shape=[2**70]),
        lambda d: d["forest"].update(n_features=float("inf")),
    ],
    ids=["threads", "batch", "strategy", "features", "leaf-shape", "shape-overflow", "inf"],
)
def test_forged_but_signed_files_raise_only_invalid_artifact(tmp_path: Path, change: Any) -> None:
    path = saved(tmp_path)
    _rewrite(path, change)
    with pytest.raises(treecomp.InvalidArtifactError):
        treecomp.load(path)


def test_deeply_nested_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.tc"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(treecomp.InvalidArtifactError):
        treecomp.load(path)


@pytest.mark.parametrize("backend", ["numpy", "torch", "onnx"])
def test_pickle_carries_the_safe_artifact(backend: str) -> None:
    """A pickled CompiledModel is its JSON artifact: rebuilt, never unpickled torch state."""
    model, X_test = fitted("lightgbm_categorical_zero")
    cm = treecomp.convert(model, backend, strategy="auto" if backend != "numpy" else None)
    data = pickle.dumps(cm)
    assert b"torch.nn" not in data and b"InferenceSession" not in data
    again = pickle.loads(data)
    assert (again.backend, again.precision, again.forest) == (cm.backend, cm.precision, cm.forest)
    assert_equal(again.predict(X_test), cm.predict(X_test))
    assert_equal(treecomp.loads(cm.dumps()).apply(X_test), cm.apply(X_test))
    with pytest.raises(treecomp.InvalidArtifactError, match="checksum"):
        treecomp.loads(cm.dumps().replace(b'"task":"regressor"', b'"task":"ranker"'))
