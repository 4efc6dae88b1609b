"""Every strategy x backend x frontend: lowered module == reference == native."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

import strategies.gemm as gemm
import strategies.perfect_tree_traversal as perfect_tree_traversal
import treecomp
from tests.helpers import (
    assert_close,
    assert_equal,
    compare_native,
    lowering_tolerance,
    probe_rows,
    with_missing,
)
from tests.zoo import (
    STRATEGIES,
    ZOO,
    compare_reference,
    ensemble,
    fitted,
    inputs,
    lightgbm,
    load,
    pd,
    torch,
)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "name", ["sklearn_hgb_categorical", "lightgbm_binary_nan", "lightgbm_categorical_zero"]
)
def test_float64_precision_on_float64_inputs(name: str, strategy: str) -> None:
    """Models that compare in double are exact on inputs that are not float32 numbers."""
    model, X_test = fitted(name)
    cm = treecomp.convert(model, "torch", strategy=strategy, precision="float64")
    if isinstance(X_test, pd.DataFrame):
        compare_native(model, cm, X_test)
        return
    X = np.vstack([X_test, probe_rows(cm.forest, X_test, "float64", limit=150)])
    compare_native(model, cm, X)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_batch_and_tensor_inputs(strategy: str) -> None:
    model, X_test = fitted("xgboost_multiclass")
    cm = treecomp.convert(model, "torch", strategy=strategy)
    assert cm.predict(X_test[:0]).shape == (0,)
    assert cm.predict_proba(X_test[:0]).shape == (0, 3)
    assert cm.apply(X_test[:0]).shape == (0, cm.forest.n_trees)
    tensor = torch.from_numpy(X_test)
    assert_equal(cm.predict(tensor), model.predict(X_test))
    assert_equal(cm.apply(tensor.to(torch.float32)), model.apply(X_test))


def test_batches_are_chunked_and_threads_honoured() -> None:
    model, X_test = fitted("sklearn_rf")
    X = np.array(X_test, dtype=np.float64)
    chunked = treecomp.convert(model, "torch", batch_size=7, n_threads=1)
    whole = treecomp.convert(model, "torch")
    assert_equal(chunked.predict_proba(X), whole.predict_proba(X))
    assert_equal(chunked.apply(X), whole.apply(X))
    threads = torch.get_num_threads()
    chunked.predict(X)
    assert torch.get_num_threads() == threads  # restored after the call
    with pytest.raises(ValueError, match="batch_size"):
        treecomp.convert(model, "torch", batch_size=0)


@pytest.mark.parametrize("backend", ["torch", "torchscript"])
def test_eager_chunks_are_scored_in_slices_side_by_side(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the CPU, eager scoring splits each chunk into row slices scored at once on
    threads of one kernel thread each: the answers are those of one slice, for one caller
    or several at once, and torch's thread count is restored."""
    from concurrent.futures import ThreadPoolExecutor

    import treecomp.torch_backend as torch_backend

    monkeypatch.setattr(torch_backend, "MIN_SLICE_ROWS", 4)
    model, X_test = fitted("xgboost_multiclass")
    X = np.concatenate([np.asarray(X_test, dtype=np.float64)] * 3)
    sliced = treecomp.convert(model, backend, n_threads=3, batch_size=40)
    whole = treecomp.convert(model, backend, n_threads=1)
    assert sliced._engine._slices(40) == 3 and whole._engine._slices(len(X)) == 1
    expected = whole.predict_proba(X)
    threads = torch.get_num_threads()
    assert_equal(sliced.predict_proba(X), expected)
    assert_equal(sliced.apply(X), whole.apply(X))
    assert torch.get_num_threads() == threads
    with ThreadPoolExecutor(4) as callers:
        for proba in callers.map(lambda _: sliced.predict_proba(X), range(8)):
            assert_equal(proba, expected)


def test_cuda_request_without_gpu_is_a_clear_error() -> None:
    model, _ = fitted("sklearn_gb")
    if torch.cuda.is_available():
        cm = treecomp.convert(model, "torch", device="cuda")
        assert cm.to("cpu") is cm
        return
    for device in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            treecomp.convert(model, "torch", device=device)
    cm = treecomp.convert(model, "torch")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        cm.to("cuda")
    with pytest.raises(ValueError, match="invalid device"):
        treecomp.convert(model, "torch", device="quantum")


def test_unknown_strategy_and_unexpressible_forest() -> None:
    model, _ = fitted("sklearn_gb")
    with pytest.raises(ValueError, match="unknown strategy"):
        treecomp.convert(model, "torch", strategy="magic")
    X, y, _ = load("diabetes")
    deep = ensemble.RandomForestRegressor(60, random_state=0).fit(np.tile(X, (8, 1)), np.tile(y, 8))
    assert treecomp.parse(deep).max_depth() > 20
    # Too deep to pad or multiply whole: the top levels so, child pointers below.
    for backend in ("torch", "onnx"):
        for strategy in ("perfect_tree_traversal", "gemm"):
            top = treecomp.convert(deep, backend, strategy=strategy)
            assert_equal(top.apply(X[:50]), deep.apply(X[:50]))
            assert_close(top.predict(X[:50]), deep.predict(X[:50]), "float64")
    padded = treecomp.convert(deep, "torch", strategy="perfect_tree_traversal")
    module = padded.torch_module.groups[0]
    assert module.rest > 0 and module.depth > 0, (module.depth, module.rest)
    cm = treecomp.convert(deep, "torch")
    # The deepest trees go to tree traversal; shallower ones may still be padded.
    assert cm.strategy.split(" + ")[-1].startswith("tree_traversal")
    assert_equal(cm.apply(X[:50]), deep.apply(X[:50]))


@pytest.mark.parametrize("strategy", ["perfect_tree_traversal", "gemm"])
@pytest.mark.parametrize("backend", ["torch", "torchscript", "onnx"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_top_levels_then_child_pointers(
    name: str, backend: str, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past their size limits, perfect-tree traversal pads and GEMM multiplies the top
    levels only, then walk child pointers: exact on every split kind, every backend."""
    monkeypatch.setattr(perfect_tree_traversal, "MAX_PADDED_NODES", 40)
    monkeypatch.setattr(gemm, "MAX_PATH_MATRIX", 100)
    model, X_test = fitted(name)
    cm = treecomp.convert(model, backend, strategy=strategy)
    ref = treecomp.convert(model, "numpy")
    if backend != "onnx":
        (group,) = cm.torch_module.groups
        assert group.rest > 0
    for X in inputs(model, X_test, cm.forest):
        compare_native(model, cm, X)
        compare_reference(cm, ref, X)


@pytest.mark.parametrize("strategy", ["perfect_tree_traversal", "gemm"])
def test_top_levels_compiled(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perfect_tree_traversal, "MAX_PADDED_NODES", 40)
    monkeypatch.setattr(gemm, "MAX_PATH_MATRIX", 100)
    model, X_test = fitted("lightgbm_binary_nan")
    cm = treecomp.convert(model, "torch", strategy=strategy, compile=True)
    ref = treecomp.convert(model, "numpy")
    for X in inputs(model, X_test, cm.forest):
        compare_reference(cm, ref, X)


def test_torch_module_is_exposed() -> None:
    model, X_test = fitted("lightgbm_multiclass")
    cm = treecomp.convert(model, "torch")
    _raw, proba = cm.torch_module(torch.from_numpy(np.asarray(X_test, dtype=np.float64)))
    assert_close(proba.numpy(), model.predict_proba(X_test), "float64")
    with pytest.raises(AttributeError, match="numpy"):
        _ = treecomp.convert(model, "numpy").torch_module


def test_saved_torchscript_runs_without_treecomp(tmp_path: Any) -> None:
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "torchscript", strategy="tree_traversal")
    path = tmp_path / "model.pt"
    torch.jit.save(cm.torch_module, str(path))
    X = np.array(X_test[:20], dtype=np.float64)
    np.save(tmp_path / "x.npy", X)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        module = torch.jit.load({str(path)!r})
        raw, proba = module(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r})))
        leaves = module.leaf_ids(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r})))
        assert "treecomp" not in sys.modules and "strategies" not in sys.modules
        np.save({str(tmp_path / "p.npy")!r}, proba.numpy())
        np.save({str(tmp_path / "l.npy")!r}, leaves.numpy())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    assert_close(np.load(tmp_path / "p.npy")[:, 0], model.predict_proba(X)[:, 1], "xgboost_float32")
    assert_equal(np.load(tmp_path / "l.npy"), model.apply(X))


@pytest.mark.filterwarnings("error::FutureWarning")
def test_torchscript_is_deprecated() -> None:
    """The backend warns once per engine, naming the caller's line (not treecomp's), and the
    CLI's ``--to torchscript`` goes through it; the other backends do not warn."""
    model, _X_test = fitted("xgboost_binary")
    with pytest.warns(FutureWarning, match="'torchscript' backend is deprecated") as caught:
        treecomp.convert(model, "torchscript", strategy="tree_traversal")
    ours = [w for w in caught if "'torchscript' backend" in str(w.message)]
    assert [(w.category, w.filename) for w in ours] == [(FutureWarning, __file__)]
    treecomp.convert(model, "torch", strategy="tree_traversal")  # FutureWarning is an error


# --- Regressions found in review --------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "torchscript"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_zero_as_missing_in_a_batch_without_nan(strategy: str, backend: str) -> None:
    """Zero-as-missing nodes take their own default direction even when no NaN is present."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    X[rng.random(X.shape) < 0.3] = 0.0
    y = X[:, 0] * 2 + (X[:, 1] == 0) * 3 - (X[:, 2] == 0) * 2 + rng.normal(size=2000) * 0.1
    model = lightgbm.LGBMRegressor(n_estimators=20, zero_as_missing=True, verbose=-1, n_jobs=1)
    model.fit(X, y)
    X_test = X[:300]
    assert not np.isnan(X_test).any() and (X_test == 0).any()
    cm = treecomp.convert(model, backend, strategy=strategy)
    assert_equal(cm.apply(X_test), model.predict(X_test, pred_leaf=True))
    assert_close(cm.predict(X_test), model.predict(X_test), "float64")
    one = treecomp.convert(model, backend, strategy=strategy, batch_size=1)
    assert_equal(one.apply(X_test[:20]), model.predict(X_test[:20], pred_leaf=True))


# --- Every post-transform and aggregation through every lowering --------------------------

TRANSFORMS = [
    treecomp.PostTransform("identity"),
    treecomp.PostTransform("sigmoid", 0.7),
    treecomp.PostTransform("softmax"),
    treecomp.PostTransform("exp"),
    treecomp.PostTransform("softplus"),
    treecomp.PostTransform("signed_square"),
    treecomp.PostTransform("isolation", 3.5),
    treecomp.PostTransform("isolation", 0.0),
]


@pytest.mark.parametrize("accumulation", ["float64", "float32"])
@pytest.mark.parametrize("aggregation", ["sum", "average"])
@pytest.mark.parametrize("post", TRANSFORMS, ids=lambda p: f"{p.kind}-{p.scale}")
def test_every_post_transform_through_every_lowering(
    post: treecomp.PostTransform, aggregation: str, accumulation: str
) -> None:
    """Objectives differ only in base score and link: each link, on each lowering."""
    import dataclasses

    model, X_test = fitted("xgboost_multiclass")
    outlier = post.kind == "isolation"  # an outlier detector's link: its score_samples
    method = "score_samples" if outlier else "predict"
    forest = dataclasses.replace(
        treecomp.parse(model),
        post_transform=post,
        aggregation=aggregation,
        accumulation=accumulation,
        task="outlier" if outlier else "regressor",
        methods=(method,),
        classes=None,
        base_score=np.array([0.25, -0.5, 1.0]),
    ).validate()
    X = np.vstack([X_test, with_missing(X_test[:20])])
    expected = getattr(treecomp.convert(forest, "numpy"), method)(X)
    for backend in ("torch", "torchscript", "onnx"):
        for strategy in ("gemm", "tree_traversal", "perfect_tree_traversal"):
            cm = treecomp.convert(forest, backend, strategy=strategy)
            assert_close(getattr(cm, method)(X), expected, lowering_tolerance(forest))


def test_progress_bar_over_chunks(capsys: Any) -> None:
    pytest.importorskip("tqdm")
    model, X_test = fitted("sklearn_gb")
    X = np.array(X_test, dtype=np.float64)
    cm = treecomp.convert(model, "torch", batch_size=50, progress=True)
    assert_equal(cm.predict(X), model.predict(X))
    assert "batch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["sklearn_gb", "lightgbm_multiclass", "sklearn_rf", "xgboost_binary"]
)
def test_outputs_do_not_keep_scratch_memory_alive(name: str) -> None:
    """Each chunk's outputs own just their values: chunks of a big input must not pile up."""
    model, X_test = fitted(name)
    cm = treecomp.convert(model, "torch")
    raw, transformed = cm.torch_module(torch.from_numpy(np.asarray(X_test, dtype=np.float64)))
    for out in (raw, transformed):
        assert out.untyped_storage().nbytes() == out.numel() * out.element_size()


def test_missing_only_splits_fold_onto_a_nan_column() -> None:
    """HistGradientBoosting's "x <= +inf" splits (missing values right) have no strict form:
    they test the NaN column of the extended input, and rows with NaN and ±inf go the
    native way."""
    model, X_test = fitted("sklearn_hgb_nan")
    forest = treecomp.parse(model)
    internal = [t.threshold[t.left_child >= 0] for t in forest.trees]
    assert any(np.isposinf(th).any() for th in internal)
    X = np.array(X_test, dtype=np.float64)
    X[::5, 3] = np.nan
    X[1::5, 3] = np.inf
    X[2::5, 3] = -np.inf
    for strategy in ("gemm", "tree_traversal", "perfect_tree_traversal"):
        cm = treecomp.convert(model, "torch", strategy=strategy)
        assert cm.torch_module.fold_columns == 3
        compare_native(model, cm, X)


def test_order_keys_keep_the_order_of_floats() -> None:
    """The eager walks compare integer keys: their order is the floats' order, -0 equals
    +0 and NaN lies above +inf, in both precisions."""
    from strategies.eager import order_keys

    for dtype in (torch.float32, torch.float64):
        info = torch.finfo(dtype)
        values = torch.tensor(
            [
                -np.inf,
                -info.max,
                -1.5,
                -1.0,
                -info.tiny,
                -info.tiny / 4,
                -0.0,
                0.0,
                info.tiny / 4,
                info.tiny,
                1.0,
                np.nextafter(1.0, 2.0),
                info.max,
                np.inf,
            ],
            dtype=dtype,
        )
        keys = order_keys(values)
        less = values.unsqueeze(1) < values.unsqueeze(0)
        assert torch.equal(keys.unsqueeze(1) < keys.unsqueeze(0), less)
        nan = order_keys(torch.tensor([np.nan, -np.nan], dtype=dtype))
        assert (nan.unsqueeze(1) > keys.unsqueeze(0)).all()


def deep_lightgbm() -> tuple[Any, np.ndarray]:
    """Leaf-wise trees about 10 levels deep whose rows stop at every depth, with NaN."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(900, 6))
    X[rng.random(X.shape) < 0.05] = np.nan
    y = np.nan_to_num(X[:, 0]) * 3 + np.sin(np.nan_to_num(X[:, 1]) * 4) + rng.normal(0, 0.1, 900)
    model = lightgbm.LGBMRegressor(
        n_estimators=6, num_leaves=60, min_child_samples=2, verbose=-1, n_jobs=1
    )
    return model.fit(X[:600], y[:600]), X[600:]


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("compact", [0.0, 1.0])
@pytest.mark.parametrize("strategy", ["perfect_tree_traversal", "tree_traversal"])
def test_eager_walks_match_the_general_walk(
    strategy: str, compact: float, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The eager level loops (strategies.eager) reach the same leaves as the strategies'
    general forward, in blocks of a few rows, with walkers leaving the child-pointer walk
    at every chance (0.0) or never (1.0), and past the padding limit (top levels dense,
    then child pointers)."""
    import strategies.eager as eager
    from strategies.forest_module import ForestModule

    model, X_test = deep_lightgbm()
    monkeypatch.setattr(eager, "COMPACT_FRACTION", compact)
    monkeypatch.setattr(perfect_tree_traversal, "MAX_PADDED_NODES", 100)
    cm = treecomp.convert(model, "torch", strategy=strategy, precision=precision)
    module = cm.torch_module
    assert module.folded
    depth = max(getattr(group, "depth", 0) + getattr(group, "rest", 0) for group in module.groups)
    assert depth >= 9
    module.block_rows = 37
    X = np.concatenate([X_test, probe_rows(cm.forest, X_test, precision, limit=100)])
    X = np.concatenate([X, with_missing(X, fraction=0.3, seed=1)])
    leaves = cm.apply(X)
    assert_equal(leaves, model.predict(X, pred_leaf=True))
    monkeypatch.setattr(ForestModule, "_walks_eagerly", lambda self, X: False)
    assert_equal(cm.apply(X), leaves)


def test_eager_blocks_of_vector_leaves_join_on_the_row_axis() -> None:
    """A forest of class-probability leaves scored in many eager blocks."""
    model, X_test = fitted("sklearn_rf")
    cm = treecomp.convert(model, "torch")
    cm.torch_module.block_rows = 5
    assert_close(cm.predict_proba(X_test), model.predict_proba(X_test), "float64")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_base_scores_fold_into_the_first_trees_bit_for_bit(name: str) -> None:
    """``passes.fold_base_score`` changes no raw score's bits (the reference evaluator on
    both forests), and leaves a zero base only where every output has a first tree."""
    from treecomp import reference
    from treecomp.passes import fold_base_score

    model, X_test = fitted(name)
    forest = treecomp.parse(model)
    folded = fold_base_score(forest)
    X = treecomp.inputs.prepare(forest, X_test, "float64")
    nodes = reference.leaf_nodes(forest, X)
    assert_equal(reference.raw_scores(folded, nodes), reference.raw_scores(forest, nodes))
    if forest.aggregation == "sum":
        assert not folded.base_score.any()
    else:  # the mean comes first: the base is added after it
        assert_equal(folded.base_score, forest.base_score)


@pytest.mark.parametrize("accumulation", ["float32", "float64"])
def test_base_score_folds_in_the_accumulation_type(accumulation: str) -> None:
    """The first add, base + leaf, is rounded in the accumulation type: 1 + 2**-30 is 1 in
    float32 (XGBoost's sum), itself in float64."""
    from treecomp import reference
    from treecomp.passes import fold_base_score

    leaf = 2.0**-30
    tree = treecomp.Tree.build(
        left_child=[1, -1, -1],
        right_child=[2, -1, -1],
        feature=[0, 0, 0],
        threshold=[0.5, np.nan, np.nan],
        value=[0.0, leaf, -leaf],
    )
    forest = treecomp.Forest(
        trees=(tree,),
        n_features=1,
        n_outputs=1,
        comparison="<",
        base_score=np.array([1.0]),
        accumulation=accumulation,
    )
    folded = fold_base_score(forest)
    acc = np.float32 if accumulation == "float32" else np.float64
    assert folded.trees[0].value[1, 0] == acc(1.0) + acc(leaf)
    assert (folded.trees[0].value[1, 0] == 1.0) == (accumulation == "float32")
    X = np.array([[0.0], [1.0]])
    nodes = reference.leaf_nodes(forest, X)
    assert_equal(reference.raw_scores(folded, nodes), reference.raw_scores(forest, nodes))


@pytest.mark.parametrize("backend", ["auto", "numpy", "onnx", "torch"])
def test_bfloat16_tensors_are_widened_exactly(backend: str) -> None:
    """A dtype NumPy lacks (bfloat16) is widened to float32, which holds it exactly, on every
    backend: the same answers as the widened rows."""
    model, X_test = fitted("xgboost_multiclass")
    cm = treecomp.convert(model, backend)
    tensor = torch.from_numpy(np.asarray(X_test, dtype=np.float32)).to(torch.bfloat16)
    widened = tensor.float().numpy()
    assert_equal(cm.predict(tensor), model.predict(widened))
    assert_equal(cm.predict_proba(tensor), cm.predict_proba(widened))
