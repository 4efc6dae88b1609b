"""Triton model repositories (treecomp.triton, ``treecomp convert --to triton``): the
config.pbtxt parsed with Triton's own ModelConfig protobuf and checked against the graph, and
the repository's model.onnx run in ONNX Runtime against the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal, lowering_tolerance
from tests.zoo import ensemble, lightgbm, xgboost
from treecomp.cli import main
from treecomp.triton import write_repository

onnx = pytest.importorskip("onnx", reason="the repository holds an ONNX graph")
ort = pytest.importorskip("onnxruntime", reason="the graph is checked in ONNX Runtime")

ROWS = 200


def model_config_pb2() -> Any:
    """Triton's ModelConfig protobuf module, or a skip where tritonclient[grpc] is absent."""
    try:
        from tritonclient.grpc import model_config_pb2 as module
    except (ImportError, RuntimeError) as exc:  # tritonclient without grpc raises RuntimeError
        pytest.skip(f"parsing config.pbtxt needs tritonclient[grpc] ({exc})")
    return module


def parse(folder: Path) -> Any:
    from google.protobuf import text_format

    config = model_config_pb2().ModelConfig()
    return text_format.Parse((folder / "config.pbtxt").read_text(), config)


def data(seed: int = 0) -> np.ndarray:
    X = np.random.default_rng(seed).normal(size=(ROWS, 4))
    X[::17, 1] = np.nan  # missing values take each node's default way
    return X


def classifier() -> treecomp.CompiledModel:
    X = np.nan_to_num(data())
    y = np.array(["low", "mid", "high"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    forest = ensemble.RandomForestClassifier(4, max_depth=3, random_state=0).fit(X, y)
    return treecomp.convert(forest, "numpy")


def int_classifier() -> treecomp.CompiledModel:
    X = data()
    y = (X[:, 0] + X[:, 2] > 0).astype(int)
    return treecomp.convert(xgboost.XGBClassifier(n_estimators=4, max_depth=3).fit(X, y), "numpy")


def regressor() -> treecomp.CompiledModel:
    X = data()
    y = X[:, 0] * 2 - np.nan_to_num(X[:, 1])
    params = {"n_estimators": 4, "num_leaves": 6, "min_child_samples": 5, "verbose": -1}
    return treecomp.convert(lightgbm.LGBMRegressor(**params).fit(X, y), "numpy")


def multi_output() -> treecomp.CompiledModel:
    X = np.nan_to_num(data())
    y = np.c_[X[:, 0], X[:, 1] - X[:, 2]]
    forest = ensemble.RandomForestRegressor(3, max_depth=3, random_state=0).fit(X, y)
    return treecomp.convert(forest, "numpy")


def outlier() -> treecomp.CompiledModel:
    X = np.nan_to_num(data())
    return treecomp.convert(
        ensemble.IsolationForest(n_estimators=4, random_state=0).fit(X), "numpy"
    )


MODELS = {
    "classifier": classifier,
    "int_classifier": int_classifier,
    "regressor": regressor,
    "multi_output": multi_output,
    "outlier": outlier,
}


def expected(cm: treecomp.CompiledModel, X: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs, from the model's own methods."""
    if cm.forest.task == "classifier":
        return {"label": cm.predict(X), "probabilities": cm.predict_proba(X)}
    if cm.forest.task == "outlier":
        return {
            "label": cm.predict(X),
            "scores": cm.score_samples(X),
            "decision": cm.decision_function(X),
        }
    return {"scores": cm.predict(X)}


def check_graph(folder: Path, cm: treecomp.CompiledModel, X: np.ndarray) -> None:
    """The version-1 graph, run in ONNX Runtime, gives the model's answers: labels exactly,
    scores within the lowering's named tolerance."""
    session = ort.InferenceSession(
        str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"input": X.astype(cm.export_dtype)})))
    wanted = expected(cm, X)
    assert sorted(outputs) == sorted(wanted)
    for name, value in wanted.items():
        if name == "label":
            assert_equal(outputs[name], value)
        else:
            assert_close(outputs[name], value, lowering_tolerance(cm.forest))


def check_tensors(configured: Any, graph: Any, batched: bool, pb2: Any) -> None:
    """Config entries name the graph's values in order, with their types and shapes."""
    types = {
        onnx.TensorProto.FLOAT: pb2.TYPE_FP32,
        onnx.TensorProto.DOUBLE: pb2.TYPE_FP64,
        onnx.TensorProto.INT64: pb2.TYPE_INT64,
        onnx.TensorProto.STRING: pb2.TYPE_STRING,
    }
    assert [c.name for c in configured] == [v.name for v in graph]
    for entry, value in zip(configured, graph):
        tensor = value.type.tensor_type
        assert entry.data_type == types[tensor.elem_type], entry.name
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        assert shape[0] == -1  # the batch axis is symbolic
        if not batched:
            assert list(entry.dims) == shape and not entry.HasField("reshape")
        elif len(shape) == 1:  # one value per row: [1] for Triton, reshaped to the graph's
            assert list(entry.dims) == [1] and entry.HasField("reshape")
            assert list(entry.reshape.shape) == []
        else:
            assert list(entry.dims) == shape[1:] and not entry.HasField("reshape")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_config_matches_graph_and_graph_matches_model(tmp_path: Path, kind: str) -> None:
    pb2 = model_config_pb2()
    cm = MODELS[kind]()
    folder = write_repository(cm, tmp_path / "repo", name=kind, max_batch_size=64)
    assert folder == tmp_path / "repo" / kind
    config = parse(folder)
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    assert config.name == kind and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64 and config.HasField("dynamic_batching")
    check_tensors(config.input, graph.input, True, pb2)
    check_tensors(config.output, graph.output, True, pb2)
    precision = pb2.TYPE_FP32 if cm.export_dtype == "float32" else pb2.TYPE_FP64
    assert config.input[0].data_type == precision
    assert list(config.input[0].dims) == [cm.forest.n_features]
    cpu = pb2.ModelInstanceGroup.KIND_CPU
    assert [(g.kind, g.count) for g in config.instance_group] == [(cpu, 1)]
    check_graph(folder, cm, data(seed=1))


def test_config_types_per_model() -> None:
    """The data types the models above need, spelled out (string labels, int labels, the
    feature precision of each library)."""
    pb2 = model_config_pb2()
    from treecomp.triton import model_config

    def config(cm: treecomp.CompiledModel) -> Any:
        from google.protobuf import text_format

        text = model_config(cm.to_onnx(), name="m", max_batch_size=8)
        return text_format.Parse(text, pb2.ModelConfig())

    strings = config(classifier())
    assert [o.data_type for o in strings.output] == [pb2.TYPE_STRING, pb2.TYPE_FP64]
    assert list(strings.output[1].dims) == [3]  # three classes
    assert strings.input[0].data_type == pb2.TYPE_FP32  # scikit-learn reads float32
    ints = config(int_classifier())
    assert [o.data_type for o in ints.output] == [pb2.TYPE_INT64, pb2.TYPE_FP64]
    assert list(ints.output[1].dims) == [2]
    lgbm = config(regressor())
    assert lgbm.input[0].data_type == pb2.TYPE_FP64  # LightGBM reads doubles
    assert [(o.name, list(o.dims)) for o in lgbm.output] == [("scores", [1])]
    multi = config(multi_output())
    assert [(o.name, list(o.dims)) for o in multi.output] == [("scores", [2])]
    iforest = config(outlier())
    assert [(o.name, o.data_type) for o in iforest.output] == [
        ("label", pb2.TYPE_INT64),
        ("scores", pb2.TYPE_FP64),
        ("decision", pb2.TYPE_FP64),
    ]


def test_no_batching_keeps_the_graphs_shapes(tmp_path: Path) -> None:
    pb2 = model_config_pb2()
    cm = classifier()
    folder = write_repository(cm, tmp_path, name="unbatched", max_batch_size=0)
    config = parse(folder)
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    check_tensors(config.input, graph.input, False, pb2)
    check_tensors(config.output, graph.output, False, pb2)
    assert list(config.input[0].dims) == [-1, 4]


@pytest.mark.parametrize("strategy", [None, "gemm", "perfect_tree_traversal"])
def test_gpu_group_comment_says_what_the_graph_needs(tmp_path: Path, strategy: Any) -> None:
    pb2 = model_config_pb2()
    cm = int_classifier()
    folder = write_repository(cm, tmp_path, name="m", strategy=strategy)
    text = (folder / "config.pbtxt").read_text()
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    # The exported graph's If branches hold its tree operator nodes (LARGE_BATCH_ROWS).
    branches = [a.g for n in graph.node if n.op_type == "If" for a in n.attribute]
    ml_nodes = [n for g in [graph, *branches] for n in g.node if n.domain == "ai.onnx.ml"]
    if strategy is None:  # the CPU default: ONNX Runtime's tree operator
        assert ml_nodes and "TreeEnsemble" in text and "--strategy gemm" in text
    else:
        assert not ml_nodes and "standard operators only" in text and strategy in text
    # The commented group, uncommented in place of the CPU one, is a valid configuration.
    gpu = next(line for line in text.splitlines() if "KIND_GPU" in line)
    start = text.index("instance_group [")
    cpu_group = text[start : text.index("]", start) + 1]
    from google.protobuf import text_format

    config = text_format.Parse(text.replace(cpu_group, gpu.lstrip("# ")), pb2.ModelConfig())
    assert [g.kind for g in config.instance_group] == [pb2.ModelInstanceGroup.KIND_GPU]
    check_graph(folder, cm, data(seed=2))


def test_rewrite_replaces_one_version_and_keeps_others(tmp_path: Path) -> None:
    first, second = int_classifier(), regressor()
    write_repository(first, tmp_path, name="m", version=1)
    write_repository(second, tmp_path, name="m", version=2, max_batch_size=8)
    write_repository(second, tmp_path, name="m", version=1, max_batch_size=8)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "config.pbtxt"]
    assert [p.name for p in (tmp_path / "m" / "1").iterdir()] == ["model.onnx"]  # no temp files
    check_graph(tmp_path / "m", second, data(seed=3))
    assert "max_batch_size: 8" in (tmp_path / "m" / "config.pbtxt").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "../escape"}, "not a Triton model folder name"),
        ({"name": ""}, "not a Triton model folder name"),
        ({"name": ".hidden"}, "not a Triton model folder name"),
        ({"name": "m", "max_batch_size": -1}, "max_batch_size must be an integer >= 0"),
        ({"name": "m", "max_batch_size": True}, "max_batch_size must be an integer >= 0"),
        ({"name": "m", "version": 0}, "version must be an integer >= 1"),
        ({"name": "m", "instances": 0}, "instances must be an integer >= 1"),
    ],
)
def test_bad_options_are_refused_before_writing(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_repository(int_classifier(), tmp_path / "repo", **options)
    assert not (tmp_path / "repo").exists()


def test_not_a_compiled_model(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"expected a treecomp\.CompiledModel, got dict"):
        write_repository({}, tmp_path, name="m")  # type: ignore[arg-type]


def test_cli_writes_a_repository(tmp_path: Path, capsys: Any) -> None:
    cm = int_classifier()
    artifact = tmp_path / "churn.tc"
    cm.save(artifact)
    repo = tmp_path / "repo"
    argv = ["convert", str(artifact), "--to", "triton", "-o", str(repo)]
    code = main([*argv, "--max-batch-size", "32", "--strategy", "gemm"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {repo / 'churn'}" in captured.out  # the name defaults to the file's stem
    text = (repo / "churn" / "config.pbtxt").read_text()
    assert "max_batch_size: 32" in text and "standard operators only (gemm)" in text
    check_graph(repo / "churn", cm, data(seed=4))
    assert main([*argv, "--name", "named"]) == 0
    assert (repo / "named" / "1" / "model.onnx").is_file()
    capsys.readouterr()
    assert main([*argv, "--name", "a/b"]) == 2
    assert "not a Triton model folder name" in capsys.readouterr().err
    assert main([*argv, "--max-batch-size", "-4"]) == 2
    assert "max_batch_size must be an integer >= 0" in capsys.readouterr().err
