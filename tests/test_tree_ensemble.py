"""ONNX Runtime's TreeEnsemble operator as a lowering: exact on every split kind, or refused.

The zoo-wide comparisons (every model, NaN, ±inf, probes, one row) run in ``test_onnx.py``
with ``strategy="tree_ensemble"``; here are the edges of the operator mapping itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import strategies
import strategies.tree_ensemble as tree_ensemble
import treecomp
from tests.helpers import (
    assert_close,
    assert_equal,
    compare_native,
    lowering_tolerance,
    probe_rows,
)
from tests.test_ir import small_forest, small_tree
from tests.zoo import ZOO, compare_reference, fitted, inputs, pd
from treecomp.ir import ZERO_THRESHOLD

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def onnx_models(model: Any, precision: str, **options: Any) -> tuple[Any, Any]:
    cm = treecomp.convert(model, "onnx", strategy="tree_ensemble", precision=precision, **options)
    assert cm.strategy == "tree_ensemble"
    return cm, treecomp.convert(model, "numpy", precision=precision)


def serving(cm: treecomp.CompiledModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """The exported file run by ONNX Runtime alone."""
    proto = cm.to_onnx(leaf_indices=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, {"input": X.astype(cm.export_dtype)})
    return {o.name: v for o, v in zip(session.get_outputs(), values, strict=True)}


def batch_branches(proto: Any) -> tuple[Any, Any]:
    """The exported graph's branches for small and large batches (``LARGE_BATCH_ROWS``)."""
    (node,) = [n for n in proto.graph.node if n.op_type == "If"]
    branches = {a.name: a.g for a in node.attribute}
    return branches["then_branch"], branches["else_branch"]


def operator_nodes(graph: Any) -> list[Any]:
    return [n for n in graph.node if n.op_type == "TreeEnsemble"]


def check(cm: treecomp.CompiledModel, ref: treecomp.CompiledModel, X: np.ndarray) -> None:
    """Backend and exported file against the reference: leaves exactly, scores closely."""
    compare_reference(cm, ref, X)
    out = serving(cm, X)
    if hasattr(ref, "apply"):
        assert_equal(out["leaf_indices"], ref.apply(X).reshape(len(X), -1))
    key = "probabilities" if "probabilities" in out else "scores"
    expected = ref.predict_proba(X) if key == "probabilities" else ref.predict(X)
    assert_close(out[key], expected, lowering_tolerance(cm.forest))


CATEGORY_EDGES = [np.nan, -np.inf, -1e30, -2.0, -1.0, -0.99, -0.5, -0.0, 0.0, 0.3, 0.999, 1.0]
CATEGORY_EDGES += [2.5, 3.0, 3.99, 7.9, 11.0, 11.5, 12.0, 31.0, 1e9, 2.0**24 + 1, 2.0**31, 1e30]
CATEGORY_EDGES += [np.inf]


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("name", ["lightgbm_categorical_zero", "xgboost_categorical"])
def test_categorical_edge_values(name: str, precision: str) -> None:
    """Both category domains: negatives, fractions, unseen, huge codes, ±inf and NaN."""
    model, X_test = fitted(name)
    cm, ref = onnx_models(model, precision)
    X = treecomp.inputs.to_matrix(cm.forest, X_test)[:8].astype(np.float64)
    column = next(
        int(t.feature[n]) for t in cm.forest.trees for n in np.flatnonzero(t.is_categorical)
    )
    X = np.repeat(X, len(CATEGORY_EDGES), axis=0)
    X[:, column] = np.tile(CATEGORY_EDGES, 8)
    check(cm, ref, X)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_category_codes_beyond_float32(precision: str) -> None:
    """Codes float32 cannot hold are never matched by a float32 input, and match in double."""
    huge = [1, 2**24 + 1, 2**30, 2**31 - 1]
    forest = small_forest(small_tree(categories={2: huge}))
    cm, ref = onnx_models(forest, precision)
    values = [float(c) for c in huge] + [2.0**24, 2.0**24 + 2, 2.0**30 + 0.5, 1.5, -0.5]
    X = np.array([[0.9, v] for v in values])
    check(cm, ref, X)
    assert cm.apply(X)[3, 0] == (3 if precision == "float64" else 4)  # 2**31 - 1 listed


def test_empty_category_set_sends_every_value_right() -> None:
    forest = small_forest(small_tree(categories={2: []}))
    assert forest.trees[0].is_categorical[2]
    cm, ref = onnx_models(forest, "float64")
    X = np.array([[0.9, v] for v in (0.0, 1.0, 3.0, -1.0, np.inf, np.nan)])
    check(cm, ref, X)
    assert_equal(cm.apply(X)[:, 0], [4, 4, 4, 4, 4, 4])  # NaN: this node's default is right


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_zero_as_missing_near_zero(precision: str) -> None:
    """|x| <= kZeroThreshold follows the default direction; just beyond it does not."""
    model, X_test = fitted("lightgbm_categorical_zero")
    cm, ref = onnx_models(model, precision)
    tiny = [0.0, -0.0, 5e-324, 1e-36, ZERO_THRESHOLD, -ZERO_THRESHOLD, np.nan]
    tiny += [float(np.nextafter(v, s)) for v in (ZERO_THRESHOLD, -ZERO_THRESHOLD) for s in (-1, 1)]
    X = treecomp.inputs.to_matrix(cm.forest, X_test)[:4].astype(np.float64)
    rows = []
    for j in range(X.shape[1]):
        for v in tiny:
            row = X[len(rows) % len(X)].copy()
            row[j] = v
            rows.append(row)
    check(cm, ref, np.array(rows))


@pytest.mark.parametrize("name", ["lightgbm_binary_nan", "sklearn_hgb_nan", "xgboost_binary"])
def test_float64_precision(name: str) -> None:
    """Double inputs and splits, on rows that are not float32 numbers."""
    model, X_test = fitted(name)
    cm, ref = onnx_models(model, "float64")
    X = np.vstack([X_test, probe_rows(cm.forest, X_test, "float64", limit=150)])
    check(cm, ref, X)
    compare_native(model, cm, X)


def single_leaf_tree() -> treecomp.Tree:
    """A tree that is one leaf (value 4), with a default direction set."""
    return small_tree(
        left_child=[-1],
        right_child=[-1],
        feature=[0],
        threshold=[0.0],
        value=[4.0],
        categories={},
        default_left=[True],
    )


def test_single_leaf_trees() -> None:
    stump = single_leaf_tree()
    forest = small_forest(trees=(small_tree(), stump, small_tree()), leaf_shape=(3,))
    cm, ref = onnx_models(forest, "float32")
    X = np.array([[0.5, 1.0], [np.nan, np.nan], [np.inf, -np.inf], [2.0, 3.0]])
    check(cm, ref, X)
    assert_equal(cm.apply(X)[:, 1], [0, 0, 0, 0])


def test_leaf_rows_beyond_the_float_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past float32's exact count, rows are per-tree positions plus offsets; a tree with more
    leaves than that is walked in double; past double's count the lowering is refused and
    the selector falls back."""
    model, X_test = fitted("lightgbm_multiclass")
    forest = treecomp.parse(model)
    widest = max(int((t.left_child < 0).sum()) for t in forest.trees)
    for limit, splits in ((widest, onnx.TensorProto.FLOAT), (widest - 1, onnx.TensorProto.DOUBLE)):
        monkeypatch.setitem(tree_ensemble.EXACT_COUNT, "float32", limit)
        cm, ref = onnx_models(model, "float32")
        for X in inputs(model, X_test, cm.forest):
            check(cm, ref, np.asarray(X, dtype=np.float64))
        small, large = batch_branches(cm.to_onnx())
        assert len(operator_nodes(small)) == 1
        assert len(operator_nodes(large)) == cm.forest.n_trees  # a node per tree
        # Small batches find positions (float32 while they are exact); the large batches'
        # nodes return the double leaf weights themselves, the tests widened to double.
        for nodes, data_type in ((small, splits), (large, onnx.TensorProto.DOUBLE)):
            for node in operator_nodes(nodes):
                (attribute,) = [a for a in node.attribute if a.name == "nodes_splits"]
                assert attribute.t.data_type == data_type
    monkeypatch.setitem(tree_ensemble.EXACT_COUNT, "float64", widest - 1)
    with pytest.raises(ValueError, match=f"has {widest} leaves.*double counts"):
        treecomp.convert(model, "onnx", strategy="tree_ensemble", precision="float64")
    fallback = treecomp.convert(model, "onnx", precision="float64")
    assert "tree_ensemble" not in fallback.strategy
    assert "tree_ensemble" not in fallback.to_onnx().metadata_props[0].value
    compare_reference(fallback, treecomp.convert(model, "numpy", precision="float64"), X_test)


def test_trees_split_over_operator_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree_ensemble, "TREES_PER_NODE", 4)
    model, X_test = fitted("xgboost_multiclass")
    cm, ref = onnx_models(model, "float32")
    proto = cm.to_onnx(leaf_indices=True)
    # The leaf ids, planned for 10 000 rows; the scores' branch for batches under
    # LARGE_BATCH_ROWS plans for them (one node), the other has a node per tree.
    assert len(operator_nodes(proto.graph)) == -(-cm.forest.n_trees // 4)
    small, large = batch_branches(proto)
    assert len(operator_nodes(small)) == 1
    assert len(operator_nodes(large)) == cm.forest.n_trees
    for X in inputs(model, X_test, cm.forest):
        compare_native(model, cm, X)
        check(cm, ref, X)


def test_only_the_onnx_target_takes_it() -> None:
    model, _ = fitted("sklearn_gb")
    for backend in ("torch", "torchscript"):
        with pytest.raises(ValueError, match=r"ONNX Runtime operator.*backend='onnx'"):
            treecomp.convert(model, backend, strategy="tree_ensemble")
    with pytest.raises(ValueError, match="ONNX Runtime operator"):
        treecomp.convert(model, "torch", strategy="tree_ensemble", compile=True)
    torch_model = treecomp.convert(model, "torch")
    assert "tree_ensemble" not in torch_model.strategy
    # The torch model still exports the operator graph: the ONNX target plans on its own.
    assert torch_model.to_onnx().metadata_props[0].value == "tree_ensemble"


def test_cuda_graphs_keep_standard_operators() -> None:
    """ONNX Runtime's CUDA provider has no TreeEnsemble kernel."""
    model, _ = fitted("xgboost_binary")
    forest = treecomp.passes.float32_thresholds(treecomp.parse(model))
    plan = strategies.lower(forest, device="cuda", target="onnx")
    assert all(name != "tree_ensemble" for name, _ in plan.layout)
    plan = strategies.lower(forest, target="onnx")
    assert [name for name, _ in plan.layout] == ["tree_ensemble"]


def test_dataframe_categories_in_the_backend() -> None:
    model, X_test = fitted("lightgbm_categorical_zero")
    cm = treecomp.convert(model, "onnx")
    assert cm.strategy == "tree_ensemble"
    frame = X_test.copy()
    frame.loc[::3, "b"] = 0.0
    frame.loc[::4, "c"] = np.nan
    assert isinstance(frame, pd.DataFrame)
    compare_native(model, cm, frame)


def test_one_thread_sessions_walk_vector_leaves_in_small_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backend's sessions have one thread each: trees with vector leaves go in nodes of
    ONE_THREAD_TREES_PER_NODE for large batches, exact on slices run side by side; calls
    under SMALL_BATCH rows get a graph of one node. Exported graphs keep ONNX Runtime's
    threads and their own node sizes."""
    monkeypatch.setattr(tree_ensemble, "ONE_THREAD_TREES_PER_NODE", 5)
    model, X_test = fitted("sklearn_rf")
    cm, ref = onnx_models(model, "float32", n_threads=2)
    engine = cm._engine

    def operators(model: Any) -> int:
        return sum(node.op_type == "TreeEnsemble" for node in model.graph.node)

    assert cm.forest.trees[0].leaf_width > 1
    assert operators(engine.model) == -(-cm.forest.n_trees // 5)
    assert engine.session_options.intra_op_num_threads == 1
    X = np.asarray(X_test, dtype=np.float64)
    rows = 2 * treecomp.onnx.engine.PARALLEL_WALKS // cm.forest.n_trees
    large = np.tile(X, (-(-rows // len(X)), 1))
    assert engine._parts(len(large)) == 2
    for n in range(1, 3 * engine._rows_per_part):  # the inline check is _parts' rule
        assert (n < engine._serial_rows) == (engine._parts(n) == 1)
    compare_reference(cm, ref, large)
    assert engine._small_session is None
    compare_reference(cm, ref, X[:1])
    assert operators(engine.small_model) == 1
    # Planned for 10 000 rows on ONNX Runtime's threads: under LARGE_BATCH_ROWS one node,
    # from there one node per tree.
    small, large = batch_branches(cm.to_onnx())
    assert len(operator_nodes(small)) == 1
    assert len(operator_nodes(large)) == cm.forest.n_trees


def test_the_default_backend_is_the_fastest_exact_path_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, X_test = fitted("lightgbm_binary_nan")
    cm = treecomp.convert(model)
    assert cm.backend == "onnx" and cm.strategy.startswith("tree_ensemble")
    compare_native(model, cm, X_test)
    assert treecomp.backends.choose_backend({"device": "cuda"}) == "torch"
    assert treecomp.backends.choose_backend({"compile": True}) == "torch"
    versions = {"onnx": "1.17.0", "onnxruntime": "1.18.1", "torch": "2.13.0"}
    monkeypatch.setattr(treecomp.backends, "_installed", versions.get)
    assert treecomp.backends.choose_backend({}) == "torch"  # no tree operator before 1.21
    versions["onnxruntime"] = "1.21.0"
    assert treecomp.backends.choose_backend({"device": "cpu"}) == "onnx"
    del versions["torch"]
    assert treecomp.backends.choose_backend({}) == "onnx"  # the graph needs no torch
    del versions["onnxruntime"]
    assert treecomp.backends.choose_backend({}) == "numpy"  # nothing but the core installed
    # Options only torch and onnx take: the torch backend then names what is missing.
    assert treecomp.backends.choose_backend({"strategy": "gemm"}) == "torch"


def order_sensitive(kind: str) -> tuple[Any, np.ndarray]:
    """A boosted model whose leaf values span many magnitudes, so that adding its trees in
    any other order than theirs changes the rounded sums."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(600, 6)).astype(np.float32)
    y = np.exp(3 * X[:, 0]) * 1e4 + X[:, 1] * 1e-3
    if kind == "xgboost":
        xgb = pytest.importorskip("xgboost")
        model = xgb.XGBRegressor(n_estimators=120, max_depth=3, learning_rate=0.9)
    else:
        lgb = pytest.importorskip("lightgbm")
        model = lgb.LGBMRegressor(n_estimators=120, num_leaves=8, learning_rate=0.9, verbose=-1)
    return model.fit(X[:400], y[:400]), X[400:]


@pytest.mark.parametrize("kind", ["xgboost", "lightgbm"])
def test_the_backend_adds_trees_in_the_operator_in_native_order(kind: str) -> None:
    """The onnx backend lets the operator add scalar leaves (one-thread sessions, slices of
    the rows side by side): margins equal the native ones bit for bit, on slices split over
    threads and on one row, although another order would round differently."""
    model, X_test = order_sensitive(kind)
    cm = treecomp.convert(model, "onnx", n_threads=2)
    nodes = [n.op_type for n in cm._engine.model.graph.node]
    assert nodes[-1:] == ["TreeEnsemble"] and set(nodes) <= {"Cast", "TreeEnsemble"}, nodes
    X = np.tile(X_test, (-(-2 * treecomp.onnx.engine.PARALLEL_WALKS // len(X_test)), 1))
    assert cm._engine._parts(len(X)) == 2
    X[::5, 2] = np.nan
    native = model.predict(X, output_margin=True) if kind == "xgboost" else model.predict(X)
    for rows in (X, X[:1], X[:2]):
        assert_equal(cm.predict(rows), native[: len(rows)].astype(np.float64))
    # The same leaves added in halves, then together: another sum on some rows.
    forest = cm.forest
    dtype = np.float32 if forest.accumulation == "float32" else np.float64
    nodes = treecomp.reference.leaf_nodes(forest, X.astype(np.float64))
    halves = [np.zeros(len(X), dtype) for _ in range(2)]
    for t, tree in enumerate(forest.trees):
        halves[2 * t // forest.n_trees] += tree.value[nodes[:, t], 0].astype(dtype)
    split = (dtype(forest.base_score[0]) + halves[0]) + halves[1]
    assert (split != native).any()


def test_multiclass_sums_per_class_in_the_operator() -> None:
    model, X_test = fitted("xgboost_multiclass")
    cm, ref = onnx_models(model, "float32", n_threads=2)
    ops = [n.op_type for n in cm._engine.model.graph.node]
    assert ops.count("TreeEnsemble") == 1 and "CumSum" not in ops[: ops.index("TreeEnsemble")]
    X = np.tile(np.asarray(X_test, dtype=np.float32), (200, 1))
    raw, _ = cm._engine.scores(X)
    expected, _ = ref._engine.scores(X)
    assert_equal(raw, expected)  # float32 margins, bit for bit


def many_trees(name: str) -> tuple[Any, np.ndarray]:
    """150 XGBoost trees, one output or three: enough for ONNX Runtime to split one row's
    trees between threads."""
    import xgboost

    from tests.zoo import load

    X, y, X_test = load("breast_cancer" if name == "many_trees" else "wine")
    rounds = 150 if name == "many_trees" else 50
    model = xgboost.XGBClassifier(n_estimators=rounds, max_depth=3, learning_rate=0.1)
    return model.fit(X, y), X_test


@pytest.mark.parametrize(
    "name",
    [
        "many_trees",
        "many_trees_3_classes",
        "xgboost_binary",
        "lightgbm_multiclass",
        "sklearn_rf",
        "sklearn_hgb_nan",
    ],
)
def test_single_rows_walk_the_trees_on_every_thread(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single row goes to a session of several threads (ONNX Runtime then splits the
    trees between them) whose graph adds the trees in standard operators: row by row, the
    same sums, bit for bit, as the one-thread sessions give the whole batch."""
    from treecomp.inputs import prepare
    from treecomp.onnx import engine as onnx_engine

    if name.startswith("many_trees"):
        model, X_test = many_trees(name)
        assert treecomp.convert(model, "numpy").forest.n_trees >= onnx_engine.PARALLEL_TREES
    else:
        monkeypatch.setattr(onnx_engine, "PARALLEL_TREES", 1)
        model, X_test = fitted(name)
    cm = treecomp.convert(model, "onnx", n_threads=2)
    engine = cm._engine
    assert engine._row_threads
    X = np.asarray(X_test, dtype=np.float32)[:30]
    if name == "sklearn_hgb_nan":
        X[::3, 3] = np.nan
    rows = prepare(cm.forest, X, "float32")
    raw = engine.scores(rows)[0]
    assert_equal(np.concatenate([engine.scores(rows[i : i + 1])[0] for i in range(30)]), raw)
    assert engine._row_session is not None
    for i in range(3):
        compare_native(model, cm, X[i : i + 1])


def reference_copies(trees: list[Any]) -> dict[tuple[int, bool, bool], int]:
    """The operator column of each input variant, in the order of its first node."""
    copies: dict[tuple[int, bool, bool], int] = {}
    for tree in trees:
        for n in range(tree.n_nodes):
            key = (
                int(tree.feature[n]),
                bool(tree.zero_is_missing[n]),
                bool(tree.is_categorical[n]),
            )
            if tree.left_child[n] >= 0 and (key[1] or key[2]):
                copies.setdefault(key, len(copies))
    return copies


def reference_attributes(
    group: tree_ensemble.TreeEnsemble,
    lo: int,
    hi: int,
    weights: np.ndarray,
    targets: np.ndarray | None = None,
    n_targets: int = 0,
) -> dict[str, Any]:
    """The operator attributes of trees ``lo:hi`` written node by node, as the module
    docstring states the mapping: the oracle of the vectorised :meth:`attributes`."""
    precision = group.dtype
    copies = reference_copies(group.trees)
    rows: list[tuple[int, int, float, int, int, int, int, int]] = []
    leaf_targets: list[int] = []
    roots: list[int] = []
    members: list[float] = []
    for t in range(lo, hi):
        tree = group.trees[t]
        internal = [n for n in range(tree.n_nodes) if tree.left_child[n] >= 0]
        leaves = [n for n in range(tree.n_nodes) if tree.left_child[n] < 0]
        node_at = {n: len(rows) + i for i, n in enumerate(internal or [0])}
        leaf_at = {n: len(leaf_targets) + i for i, n in enumerate(leaves)}

        def child(n: int) -> tuple[int, int]:
            return (leaf_at[n], 1) if n in leaf_at else (node_at[n], 0)  # noqa: B023

        roots.append(len(rows))
        leaf_targets += [t - lo if targets is None else int(targets[t])] * len(leaves)
        if not internal:  # one node whose both branches reach the single leaf
            rows.append((tree_ensemble.BRANCH_LEQ, 0, 0.0, 0, *child(0), *child(0)))
            continue
        for n in internal:
            zero, categorical = bool(tree.zero_is_missing[n]), bool(tree.is_categorical[n])
            feature = int(tree.feature[n])
            column = copies[(feature, zero, categorical)] if zero or categorical else None
            column = len(copies) + feature if column is None else column
            mode = tree_ensemble.BRANCH_LEQ if group.less_equal else tree_ensemble.BRANCH_LT
            split = float(tree.threshold[n])
            if categorical:
                codes = [int(c) for c in tree.categories(n) if int(precision(c)) == c]
                mode, split = (
                    (tree_ensemble.BRANCH_MEMBER, 0.0)
                    if codes
                    else (tree_ensemble.BRANCH_LT, -np.inf)
                )
                members += [*map(float, codes), np.nan] if codes else []
            branches = (*child(int(tree.left_child[n])), *child(int(tree.right_child[n])))
            rows.append((mode, column, split, int(tree.default_left[n]), *branches))
    modes, features, splits, tracks, true, true_leaf, false, false_leaf = map(list, zip(*rows))
    first = int(group.offsets[lo])
    last = int(group.offsets[hi]) if hi < len(group.trees) else weights.size
    expected: dict[str, Any] = {
        "n_targets": hi - lo if targets is None else n_targets,
        "aggregate_function": 1,
        "post_transform": 0,
        "tree_roots": roots,
        "nodes_modes": np.array(modes, dtype=np.uint8),
        "nodes_featureids": features,
        "nodes_splits": np.array(splits, dtype=weights.dtype),
        "nodes_truenodeids": true,
        "nodes_trueleafs": true_leaf,
        "nodes_falsenodeids": false,
        "nodes_falseleafs": false_leaf,
        "nodes_missing_value_tracks_true": tracks,
        "leaf_targetids": leaf_targets,
        "leaf_weights": weights[first:last],
    }
    if members:
        expected["membership_values"] = np.array(members[:-1], dtype=weights.dtype)
    return expected


def reference_forests() -> dict[str, treecomp.Forest]:
    """Every zoo forest, and the edges the zoo does not fit: single-leaf trees (one with a
    default direction), empty category sets, codes past float32, a categorical node that
    also reads zero as missing, a strict comparison."""
    forests = {name: treecomp.parse(fitted(name)[0]) for name in ZOO}
    stump = single_leaf_tree()
    trees = (
        stump,
        small_tree(categories={2: [1, 2**24 + 1, 2**30, 2**31 - 1]}),
        small_tree(categories={2: []}),
        small_tree(zero_is_missing=[True, False, True, False, False]),
        stump,
    )
    forests["edges"] = small_forest(trees=trees, leaf_shape=(5,))
    forests["edges_strict"] = small_forest(trees=trees, leaf_shape=(5,), comparison="<")
    return forests


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_attributes_match_the_node_by_node_mapping(precision: str) -> None:
    """The vectorised attributes equal the per-node oracle on every zoo forest, in both
    weight types, for every slice of trees the operator nodes take and for summed targets."""
    from onnx import numpy_helper

    covered = {"single": False, "zero": False, "member": False, "empty": False, "vector": False}
    for name, forest in reference_forests().items():
        if precision == "float32":
            forest = treecomp.passes.float32_thresholds(forest)
        trees = list(forest.trees)
        options = strategies.nodes.GroupOptions(
            less_equal=forest.comparison == "<=",
            precision=precision,
            leaf_width=max(t.leaf_width for t in trees),
            nonnegative_categories=forest.category_domain == "nonnegative",
        )
        group = tree_ensemble.TreeEnsemble(trees, list(range(len(trees))), options)
        assert list(group.copies.items()) == list(reference_copies(trees).items()), name
        slices = [(lo, min(lo + 3, len(trees))) for lo in range(0, len(trees), 3)]
        for weights in (
            (np.arange(group.leaf_id.size) * 0.25 - 7).astype(np.float32),
            np.arange(group.leaf_id.size, dtype=np.float64),
        ):
            targets = np.array([t.output_index for t in trees])
            calls = [(lo, hi, None, 0) for lo, hi in [(0, len(trees)), *slices]]
            calls.append((0, len(trees), targets, forest.n_outputs))
            for lo, hi, tree_targets, n_targets in calls:
                actual = group.attributes(lo, hi, weights, tree_targets, n_targets)
                expected = reference_attributes(group, lo, hi, weights, tree_targets, n_targets)
                assert actual.keys() == expected.keys(), name
                for key, value in expected.items():
                    if isinstance(value, np.ndarray):  # bit for bit, NaN separators included
                        got = numpy_helper.to_array(actual[key])
                        assert got.dtype == value.dtype, (name, key)
                        assert got.tobytes() == value.tobytes(), (name, key)
                    else:
                        assert actual[key] == value, (name, key)
                modes = numpy_helper.to_array(actual["nodes_modes"])
                covered["single"] |= any(t.n_nodes == 1 for t in trees[lo:hi])
                covered["zero"] |= any(bool(t.zero_is_missing.any()) for t in trees[lo:hi])
                covered["member"] |= bool((modes == tree_ensemble.BRANCH_MEMBER).any())
                covered["empty"] |= bool(
                    np.isneginf(numpy_helper.to_array(actual["nodes_splits"])).any()
                )
                covered["vector"] |= group.leaf_width > 1
    assert all(covered.values()), covered


@pytest.mark.parametrize("name", ["many_trees", "many_trees_3_classes"])
def test_exported_rows_on_any_threads(name: str) -> None:
    """The exported graph of 150 trees (ONNX Runtime splits one row's trees between threads):
    a single row takes the operator's own sum where there is one output, the scan where
    there are several; batches from LARGE_BATCH_ROWS rows a node per tree. On 1, 2 or 4
    threads, optimised or not, bit for bit the answers of the graph without its If."""
    from strategies import plan_forest
    from treecomp.onnx.export import LARGE_BATCH_ROWS, build

    model, X_test = many_trees(name)
    cm = treecomp.convert(model, "numpy", precision="float32")
    proto = cm.to_onnx()
    scan = build(
        cm.forest, lower=plan_forest, precision="float32", batch_size=10_000, large_batch_rows=None
    )
    X = np.asarray(X_test, dtype=np.float32)
    X = np.tile(X, (-(-LARGE_BATCH_ROWS // len(X)), 1))

    def run(graph: Any, rows: np.ndarray, threads: int = 1, level: str = "DISABLE_ALL") -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_{level}")
        session = ort.InferenceSession(
            graph.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"input": rows})

    label, proba = run(scan, X)
    assert_equal(label, model.predict(X))
    assert_close(proba, model.predict_proba(X), "xgboost_float32")
    for threads in (1, 2, 4):
        for level in ("DISABLE_ALL", "ENABLE_ALL"):
            for rows in [slice(0, len(X))] + [slice(i, i + 1) for i in range(5)]:
                for out, expected in zip(run(proto, X[rows], threads, level), (label, proba)):
                    assert out.tobytes() == expected[rows].tobytes()
