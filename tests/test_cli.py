"""The ``treecomp`` command: convert, inspect and their errors (exit code 2, one line)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal
from tests.zoo import ensemble, lightgbm, load, xgboost
from treecomp.cli import main

ort = pytest.importorskip("onnxruntime")
skops_io = pytest.importorskip("skops.io")
joblib = pytest.importorskip("joblib")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return load("breast_cancer")


def serve(path: Path, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The file in onnxruntime alone, fed the float type its input declares (double for
    LightGBM, which compares doubles; float otherwise)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64}[
        session.get_inputs()[0].type
    ]
    label, proba = session.run(["label", "probabilities"], {"input": X.astype(dtype)})
    return label, proba


def run(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_model_files_convert_to_onnx_with_native_labels(
    tmp_path: Path, data: Any, capsys: Any
) -> None:
    X, y, X_test = data
    X_test = X_test.astype(np.float32)
    booster = xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(X, y)
    booster.save_model(tmp_path / "model.json")
    lgbm = lightgbm.LGBMClassifier(n_estimators=8, num_leaves=8, verbose=-1).fit(X, y)
    lgbm.booster_.save_model(tmp_path / "model.txt")
    forest = ensemble.RandomForestClassifier(6, max_depth=5, random_state=0).fit(X, y)
    skops_io.dump(forest, tmp_path / "model.skops")
    for name, native in (("model.json", booster), ("model.txt", lgbm), ("model.skops", forest)):
        out = tmp_path / f"{name}.onnx"
        code, stdout, stderr = run(
            ["convert", str(tmp_path / name), "--to", "onnx", "-o", str(out)], capsys
        )
        assert code == 0 and f"wrote {out}" in stdout, stderr
        if name != "model.skops":  # the file holds no labels: said, and numbered natively
            assert "holds no class labels" in stderr
        label, proba = serve(out, X_test)
        assert_equal(label, native.predict(X_test))
        tolerance = "xgboost_float32" if name == "model.json" else "float64"
        assert_close(proba, native.predict_proba(X_test), tolerance)
    labelled = tmp_path / "labelled.onnx"
    argv = ["convert", str(tmp_path / "model.json"), "--to", "onnx", "-o", str(labelled)]
    code, _, stderr = run([*argv, "--classes", "benign,benign"], capsys)
    assert code == 2 and "--classes lists ['benign'] more than once" in stderr
    assert run([*argv, "--classes", "benign,malignant"], capsys)[0] == 0
    label, _ = serve(labelled, X_test)
    assert_equal(label, np.array(["benign", "malignant"])[booster.predict(X_test)])


def test_other_targets_and_inspect(tmp_path: Path, data: Any, capsys: Any) -> None:
    X, y, X_test = data
    model = xgboost.XGBRegressor(n_estimators=4, max_depth=3).fit(X, y)
    model.save_model(tmp_path / "model.ubj")
    source = str(tmp_path / "model.ubj")
    for target, name in (("artifact", "m.tc"), ("torchscript", "m.pt")):
        code, _, stderr = run(
            ["convert", source, "--to", target, "-o", str(tmp_path / name)], capsys
        )
        assert code == 0, stderr
    import torch

    import treecomp

    assert_close(
        treecomp.load(tmp_path / "m.tc").predict(X_test), model.predict(X_test), "xgboost_float32"
    )
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    raw, _ = scripted(torch.from_numpy(X_test.astype(np.float32)))
    assert_close(raw[:, 0].numpy(), model.predict(X_test), "xgboost_float32")
    code, stdout, _ = run(["inspect", str(tmp_path / "m.tc")], capsys)
    assert code == 0
    assert (
        "trees:       4" in stdout
        and "strategy:    onnx  cpu  batch  10000: tree_ensemble" in stdout
    )
    # The cost model's estimate of each strategy, under every standard-operator plan.
    assert stdout.count("estimates for the whole forest: gemm ") == 6
    (tmp_path / "forest.json").write_text(treecomp.parse(model).to_json())
    assert run(["inspect", str(tmp_path / "forest.json")], capsys)[0] == 0


def test_convert_to_pt2_runs_with_torch_alone(tmp_path: Path, data: Any, capsys: Any) -> None:
    """``--to pt2``: a torch.export + AOTInductor package loaded by torch (tiny forest: the
    AOT compile takes seconds)."""
    X, y, X_test = data
    model = xgboost.XGBClassifier(n_estimators=2, max_depth=2).fit(X, y)
    model.save_model(tmp_path / "model.json")
    out = tmp_path / "model.pt2"
    code, stdout, stderr = run(
        ["convert", str(tmp_path / "model.json"), "--to", "pt2", "-o", str(out)], capsys
    )
    assert code == 0 and f"wrote {out}" in stdout, stderr
    # the compile says what it does while it works, with its time
    assert "treecomp: compiling 2 trees" in stderr and "treecomp: compiled in" in stderr
    import torch

    package = torch._inductor.aoti_load_package(str(out))
    raw, proba = package(torch.from_numpy(X_test.astype(np.float32)))
    assert_close(raw[:, 0].numpy(), model.predict(X_test, output_margin=True), "xgboost_float32")
    assert_close(proba[:, 0].numpy(), model.predict_proba(X_test)[:, 1], "xgboost_float32")


def test_version(capsys: Any) -> None:
    assert run(["--version"], capsys)[:2] == (0, f"treecomp {treecomp.__version__}\n")


def test_pickle_needs_trust(tmp_path: Path, data: Any, capsys: Any) -> None:
    X, y, X_test = data
    model = ensemble.ExtraTreesClassifier(3, max_depth=3, random_state=0).fit(X, y)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    # joblib writes NumPy arrays after the pickle stream: pickle.load cannot read it.
    joblib.dump(model, tmp_path / "model.joblib")
    for name in ("model.pkl", "model.joblib"):
        out = tmp_path / f"{name}.onnx"
        argv = ["convert", str(tmp_path / name), "--to", "onnx", "-o", str(out)]
        code, _, stderr = run(argv, capsys)
        assert code == 2 and "--trust-pickle" in stderr and stderr.count("\n") == 1
        assert not out.exists()
        code, _, stderr = run([*argv, "--trust-pickle"], capsys)
        assert code == 0, stderr
        label, _ = serve(out, X_test)
        assert_equal(label, model.predict(X_test))


def test_bad_input_exits_2_with_one_line(tmp_path: Path, data: Any, capsys: Any) -> None:
    X, y, _ = data
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "model.weird").write_text("hello")
    skops_io.dump(ensemble.AdaBoostClassifier(n_estimators=2).fit(X, y), tmp_path / "ada.skops")
    xgboost.XGBClassifier(n_estimators=2).fit(X, y).save_model(tmp_path / "ok.json")
    out = str(tmp_path / "o.onnx")
    cases = {
        "missing file": ["convert", str(tmp_path / "none.json"), "--to", "onnx", "-o", out],
        "unknown format": ["convert", str(tmp_path / "model.weird"), "--to", "onnx", "-o", out],
        "corrupt file": ["convert", str(tmp_path / "garbage.json"), "--to", "onnx", "-o", out],
        "unsupported model": ["convert", str(tmp_path / "ada.skops"), "--to", "onnx", "-o", out],
        "wrong class count": [
            "convert",
            str(tmp_path / "ok.json"),
            "--to",
            "onnx",
            "-o",
            out,
            "--classes",
            "a,b,c",
        ],
        "unknown target": ["convert", str(tmp_path / "ok.json"), "--to", "excel", "-o", out],
        "missing option": ["convert", str(tmp_path / "ok.json"), "--to", "onnx"],
        "inspect missing": ["inspect", str(tmp_path / "none.txt")],
    }
    for what, argv in cases.items():
        code, _, stderr = run(argv, capsys)
        assert code == 2, what
        assert stderr.strip() and "Traceback" not in stderr, (what, stderr)
        if not what.startswith(("unknown target", "missing option")):  # argparse's usage
            assert stderr.count("\n") == 1, (what, stderr)
    assert not (tmp_path / "o.onnx").exists()
