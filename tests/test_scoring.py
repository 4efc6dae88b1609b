"""treecomp.score and ``treecomp score``: Parquet and CSV files scored batch by batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal, tolerance
from tests.test_ir import small_forest
from tests.zoo import ensemble, fitted, pd, small_pipeline
from treecomp.cli import main
from treecomp.scoring import remove_stale_partials

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def frame_of(model: Any, X: Any, rows: int = 5000) -> Any:
    """``rows`` rows drawn from ``X`` (NaN included), named as at fit time, with an id."""
    rng = np.random.default_rng(0)
    if isinstance(X, pd.DataFrame):
        frame = X.iloc[rng.integers(0, len(X), rows)].reset_index(drop=True)
    else:
        X = np.asarray(X, dtype=np.float64)[rng.integers(0, len(X), rows)]
        X[rng.random(X.shape) < 0.05] = np.nan
        names = getattr(model, "feature_names_in_", None)
        columns = list(names) if names is not None else [f"f{j}" for j in range(X.shape[1])]
        frame = pd.DataFrame(X, columns=columns)
    frame.insert(0, "id", np.arange(rows) * 3)
    return frame


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize(
    "name", ["xgboost_multiclass", "lightgbm_categorical_zero", "sklearn_hgb_nan"]
)
def test_file_scores_equal_in_memory_scores(tmp_path: Path, name: str, fmt: str) -> None:
    model, X_test = fitted(name)
    cm = treecomp.convert(model, "numpy")
    frame = frame_of(model, X_test)
    source = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(source, row_group_size=700)
    else:  # categories travel as their codes (here equal to the category values)
        frame.to_csv(source, index=False)
    features = frame.drop(columns="id")
    methods = ["predict", "predict_proba"] if hasattr(cm, "predict_proba") else ["predict"]
    rows = treecomp.score(
        cm, source, tmp_path / f"out.{fmt}", methods=methods, keep=["id"], batch_rows=1000
    )
    assert rows == len(frame)
    out = (
        pd.read_parquet(tmp_path / "out.parquet")
        if fmt == "parquet"
        else pd.read_csv(tmp_path / "out.csv")
    )
    assert_equal(out["id"].to_numpy(), frame["id"].to_numpy())
    expected = cm.predict(features)
    if expected.dtype.kind == "f":
        assert_close(out["prediction"].to_numpy(), expected, "float64")
    else:
        assert_equal(out["prediction"].to_numpy(), expected)
    if "predict_proba" in methods:
        proba = out[[c for c in out.columns if c.startswith("proba_")]].to_numpy()
        # Parquet keeps every bit; CSV's decimal text round-trips doubles exactly too.
        assert_equal(proba, cm.predict_proba(features))
    assert not list(tmp_path.glob(".*partial"))


def test_apply_and_the_cli(tmp_path: Path, capsys: Any) -> None:
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "onnx")
    cm.save(tmp_path / "model.tc")
    frame = frame_of(model, X_test, rows=1200)
    frame.to_parquet(tmp_path / "in.parquet", row_group_size=500)
    argv = [
        "score",
        str(tmp_path / "model.tc"),
        str(tmp_path / "in.parquet"),
        str(tmp_path / "out.parquet"),
        "--method",
        "apply",
        "--method",
        "predict_proba",
        "--keep",
        "id",
        "--batch-rows",
        "300",
    ]
    assert main(argv) == 0
    assert "scored 1200 rows" in capsys.readouterr().out
    out = pd.read_parquet(tmp_path / "out.parquet")
    features = frame.drop(columns="id")
    leaves = out[[c for c in out.columns if c.startswith("leaf_")]].to_numpy()
    assert_equal(leaves, model.apply(features.to_numpy()))
    proba = out[["proba_0", "proba_1"]].to_numpy()
    assert_close(proba, model.predict_proba(features.to_numpy()), tolerance(model))


def check_fails(tmp_path: Path, cm: Any, source: Path, match: str, **options: Any) -> None:
    out = tmp_path / "out.parquet"
    with pytest.raises(ValueError, match=match):
        treecomp.score(cm, source, out, **options)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_bad_files_fail_clearly_and_leave_no_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(3000, 4)), columns=["a", "b", "c", "d"])
    model = ensemble.GradientBoostingRegressor(n_estimators=5).fit(frame, frame["a"] * 2)
    cm = treecomp.convert(model, "numpy")
    frame.insert(0, "id", np.arange(len(frame)))
    path = tmp_path / "in.parquet"
    frame.drop(columns="b").to_parquet(path)
    check_fails(tmp_path, cm, path, r"missing \['b'\]", keep=["id"])
    frame.assign(extra=1.0).to_parquet(path)
    check_fails(tmp_path, cm, path, r"unexpected \['extra'\]", keep=["id"])
    check_fails(tmp_path, cm, path, r"unexpected \['id', 'extra'\]")
    frame.assign(b=frame["b"].astype(str)).to_parquet(path)
    check_fails(tmp_path, cm, path, "column 'b' has type (large_)?string", keep=["id"])
    check_fails(tmp_path, cm, path, r"key columns \['key'\]", keep=["key"])
    # A model without feature names reads every non-key column, in file order.
    unnamed = treecomp.convert(
        ensemble.GradientBoostingRegressor(n_estimators=5).fit(
            frame[["a", "b"]].to_numpy(), frame["a"]
        ),
        "numpy",
    )
    frame.to_parquet(path)
    check_fails(
        tmp_path, unnamed, path, "4 feature columns .* takes 2 .*no feature names", keep=["id"]
    )
    # A string deep in a numeric CSV column, past the first block: the read stops there.
    csv = tmp_path / "in.csv"
    pd.concat([frame] * 60).to_csv(csv, index=False)
    with csv.open("a") as f:
        f.write(",".join(["1", "oops"] + ["0.5"] * (len(frame.columns) - 2)) + "\n")
    check_fails(tmp_path, cm, csv, "oops", keep=["id"])
    # Bad values for the model: the batch's rows are named.
    frame.assign(b=np.where(np.arange(len(frame)) == 2500, np.inf, frame["b"])).to_parquet(path)
    check_fails(tmp_path, cm, path, r"rows 2000\.\.2999.*infinity", keep=["id"], batch_rows=1000)


def read_output(path: Path) -> Any:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("encoder", ["onehot", "ordinal"])
def test_a_pipeline_reads_its_own_columns(tmp_path: Path, encoder: str, fmt: str) -> None:
    """A converted Pipeline takes the pipeline's input columns (its encoder's strings too),
    not the columns its forest reads after the transforms, and scores as the pipeline."""
    pipeline, rows = small_pipeline(encoder)
    cm = treecomp.convert(pipeline, "numpy")
    frame = rows.assign(id=np.arange(len(rows)) * 3)  # a key column after the features
    source = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(source, row_group_size=700)
    else:
        frame.to_csv(source, index=False)
    out = tmp_path / f"out.{fmt}"
    methods = ["predict", "predict_proba"]
    assert treecomp.score(cm, source, out, methods=methods, keep=["id"], batch_rows=500) == 2000
    scored = read_output(out)
    assert list(scored.columns) == ["id", "prediction", "proba_0", "proba_1"]
    assert_equal(scored["id"].to_numpy(), frame["id"].to_numpy())
    assert_equal(scored["prediction"].to_numpy(), pipeline.predict(rows))
    proba = scored[["proba_0", "proba_1"]].to_numpy()
    assert_close(proba, pipeline.predict_proba(rows), tolerance(pipeline[-1]))


def test_a_pipelines_columns_are_checked(tmp_path: Path) -> None:
    """A Pipeline's columns are checked as a model's features are: by name where it was
    fitted on a DataFrame, else by count in file order; a string where it reads numbers
    is named."""
    pipeline, rows = small_pipeline("onehot")
    cm = treecomp.convert(pipeline, "numpy")
    path = tmp_path / "in.parquet"
    rows.drop(columns="s").to_parquet(path)
    check_fails(tmp_path, cm, path, r"missing \['s'\], unexpected \[\]")
    rows.assign(id=1).to_parquet(path)
    check_fails(tmp_path, cm, path, r"missing \[\], unexpected \['id'\]")
    rows.assign(a="oops").to_parquet(path)
    check_fails(tmp_path, cm, path, r"rows 0\.\.1999: column 'a' holds non-numeric values")
    # Fitted on an array: its columns are every column not kept, by position.
    unnamed_pipeline = pipeline_on_array(pipeline, rows)
    unnamed = treecomp.convert(unnamed_pipeline, "numpy")
    rows.rename(columns={"a": "x", "b": "y", "s": "z"}).assign(id=1).to_parquet(path)
    treecomp.score(unnamed, path, tmp_path / "scored.parquet", keep=["id"])
    scored = pd.read_parquet(tmp_path / "scored.parquet")
    assert_equal(scored["prediction"].to_numpy(), unnamed_pipeline.predict(rows.to_numpy()))
    rows[["a", "s"]].to_parquet(path)
    check_fails(tmp_path, unnamed, path, "2 feature columns .* takes 3 .*no feature names")


def pipeline_on_array(pipeline: Any, rows: Any) -> Any:
    """``pipeline`` refitted on the rows of ``rows`` as an object array: no column names."""
    from sklearn.base import clone

    unnamed = clone(pipeline)
    unnamed.set_params(
        columns__transformers=[
            (name, step, [list(rows.columns).index(c) for c in columns])
            for name, step, columns in pipeline[0].transformers
        ]
    )
    return unnamed.fit(rows.to_numpy(), pipeline.predict(rows))


def test_the_cli_scores_a_saved_pipeline(tmp_path: Path, capsys: Any) -> None:
    """``treecomp score pipeline.skops rows.parquet ...``: the pipeline's columns, a key."""
    skops_io = pytest.importorskip("skops.io")
    pipeline, rows = small_pipeline("ordinal")
    skops_io.dump(pipeline, tmp_path / "pipeline.skops")
    rows.assign(id=np.arange(len(rows))).to_parquet(tmp_path / "in.parquet")
    argv = ["score", str(tmp_path / "pipeline.skops"), str(tmp_path / "in.parquet")]
    argv += [str(tmp_path / "out.csv"), "--method", "predict_proba", "--keep", "id"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "scored 2000 rows" in capsys.readouterr().out
    scored = pd.read_csv(tmp_path / "out.csv")
    proba = scored[["proba_0", "proba_1"]].to_numpy()
    assert_close(proba, pipeline.predict_proba(rows), tolerance(pipeline[-1]))
    rows.drop(columns="b").assign(id=1).to_parquet(tmp_path / "in.parquet")
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("treecomp score: ") and "missing ['b']" in err, err


def test_an_interrupted_run_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "numpy")
    frame_of(model, X_test, rows=3000).to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    out.write_bytes(b"the previous run's output")
    calls = {"n": 0}
    real = cm.outputs

    def failing(X: Any, methods: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(X, methods)

    monkeypatch.setattr(cm, "outputs", failing)
    with pytest.raises(KeyboardInterrupt):
        treecomp.score(
            cm, tmp_path / "in.parquet", out, keep=["id"], batch_rows=1000, overwrite=True
        )
    assert out.read_bytes() == b"the previous run's output"  # untouched, not half-written
    assert not list(tmp_path.glob(".*partial"))


def test_cli_errors_exit_2(tmp_path: Path, capsys: Any) -> None:
    model, X_test = fitted("sklearn_gb")
    treecomp.convert(model, "numpy").save(tmp_path / "model.tc")
    frame_of(model, X_test, rows=10).fillna(0.0).to_parquet(tmp_path / "in.parquet")
    cases = [
        [str(tmp_path / "missing.tc"), str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet")],
        [str(tmp_path / "in.parquet"), str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet")],
        [str(tmp_path / "model.tc"), str(tmp_path / "in.parquet"), str(tmp_path / "o.txt")],
        [str(tmp_path / "model.tc"), str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet")],
        [
            str(tmp_path / "model.tc"),
            str(tmp_path / "nope.csv"),
            str(tmp_path / "o.csv"),
            "--keep",
            "id",
        ],
    ]
    for argv in cases:
        assert main(["score", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("treecomp score: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o.parquet").exists()


def test_empty_input_gives_an_empty_output(tmp_path: Path) -> None:
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "numpy")
    frame_of(model, X_test, rows=10).iloc[:0].to_parquet(tmp_path / "in.parquet")
    assert (
        treecomp.score(
            cm,
            tmp_path / "in.parquet",
            tmp_path / "out.parquet",
            methods=["predict_proba"],
            keep=["id"],
        )
        == 0
    )
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["id", "proba_0", "proba_1"] and len(out) == 0


def test_a_pandas_index_in_the_file_is_kept(tmp_path: Path) -> None:
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "numpy")
    frame = frame_of(model, X_test, rows=600).drop(columns="id")
    frame.index = pd.Index([f"row{i}" for i in range(len(frame))], name="key")
    frame.to_parquet(tmp_path / "in.parquet")
    treecomp.score(cm, tmp_path / "in.parquet", tmp_path / "out.parquet", batch_rows=250)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["key", "prediction"]
    assert_equal(out["key"].to_numpy(), frame.index.to_numpy())
    assert_equal(out["prediction"].to_numpy(), cm.predict(frame))


@pytest.mark.parametrize("name", ["xgboost_multiclass", "sklearn_iforest"])
def test_outputs_runs_the_model_once_per_kind(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CompiledModel.outputs (what file scoring calls per batch): every method's result as
    the method gives it, from one scores pass and one leaf pass."""
    model, X_test = fitted(name)
    cm = treecomp.convert(model, "numpy")
    methods = [m for m in treecomp.ir.METHODS if hasattr(cm, m)]
    expected = {m: getattr(cm, m)(X_test) for m in methods}
    calls = {"scores": 0, "leaf_ids": 0}
    engine = cm._engine
    for kind in calls:
        original = getattr(type(engine), kind)

        def counted(self: Any, X: Any, kind: str = kind, original: Any = original) -> Any:
            calls[kind] += 1
            return original(self, X)

        monkeypatch.setattr(type(engine), kind, counted)
    results = cm.outputs(X_test, methods)
    assert calls == {"scores": 1, "leaf_ids": int("apply" in methods)}
    for method in methods:
        assert_equal(results[method], expected[method])
    with pytest.raises(ValueError, match="unknown method 'transform'"):
        cm.outputs(X_test, ["transform"])
    missing = "predict_proba" if name == "sklearn_iforest" else "score_samples"
    with pytest.raises(AttributeError, match=missing):
        cm.outputs(X_test, [missing])


def two_feature_file(tmp_path: Path) -> tuple[Any, Path]:
    """A tiny model (two features, no names) saved beside a 3000-row Parquet file."""
    cm = treecomp.convert(small_forest(), backend="numpy")
    cm.save(tmp_path / "model.tc")
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(3000, 2)), columns=["a", "b"]).to_parquet(
        tmp_path / "in.parquet", row_group_size=1000
    )
    return cm, tmp_path / "in.parquet"


def test_an_existing_output_is_replaced_only_when_asked(tmp_path: Path, capsys: Any) -> None:
    cm, source = two_feature_file(tmp_path)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"yesterday's scores")
    # refused before any work: the model (here a file that does not exist) is not even read
    with pytest.raises(FileExistsError, match=r"out.parquet exists; pass overwrite=True"):
        treecomp.score(tmp_path / "no-model.tc", source, out)
    assert out.read_bytes() == b"yesterday's scores"
    argv = ["score", str(tmp_path / "model.tc"), str(source), str(out)]
    assert main(argv) == 2
    assert "exists; pass overwrite=True (treecomp score --overwrite)" in capsys.readouterr().err
    assert out.read_bytes() == b"yesterday's scores"
    assert main([*argv, "--overwrite"]) == 0
    assert_equal(pd.read_parquet(out)["prediction"].to_numpy(), cm.predict(pd.read_parquet(source)))
    assert treecomp.score(cm, source, out, overwrite=True) == 3000
    assert not list(tmp_path.glob(".*partial"))


# Scores the first batch, then stalls in the second with the first on disk in the partial file.
STALLING_RUN = """
import sys, time
import treecomp

cm = treecomp.load(sys.argv[1])
real, calls = cm.outputs, []


def stalled(X, methods):
    calls.append(len(X))
    if len(calls) == 2:
        print("stalled", flush=True)
        time.sleep(60)
    return real(X, methods)


cm.outputs = stalled
treecomp.score(cm, sys.argv[2], sys.argv[3], batch_rows=500)
"""


def stalled_run_killed_by(tmp_path: Path, signum: int) -> None:
    """Start a scoring run in a subprocess, wait for it to stall mid-file, send ``signum``."""
    command = [sys.executable, "-c", STALLING_RUN]
    command += [str(tmp_path / n) for n in ("model.tc", "in.parquet", "out.parquet")]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "stalled\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == -signum  # it died of the signal, as it would have
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.skipif(os.name != "posix", reason="sends POSIX signals")
def test_sigterm_mid_file_leaves_nothing(tmp_path: Path) -> None:
    two_feature_file(tmp_path)
    stalled_run_killed_by(tmp_path, signal.SIGTERM)
    assert not (tmp_path / "out.parquet").exists()
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.skipif(os.name != "posix", reason="sends POSIX signals")
def test_a_killed_run_leaves_a_partial_that_the_next_run_removes(tmp_path: Path) -> None:
    cm, source = two_feature_file(tmp_path)
    stalled_run_killed_by(tmp_path, signal.SIGKILL)  # no handler can run: the file stays
    (stale,) = tmp_path.glob(".out.parquet.*.partial")
    assert not (tmp_path / "out.parquet").exists()
    # Partial files of a live process, of another host, and of other destinations are kept;
    # one of a dead process in the old name format (no host) goes.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    kept = [
        tmp_path / f".out.parquet.{host}.{os.getppid()}.0123abcd.partial",
        tmp_path / f".out.parquet.elsewhere.{dead.pid}.0123abcd.partial",
        tmp_path / f".other.parquet.{host}.{dead.pid}.0123abcd.partial",
        tmp_path / f".out.parquet.{host}.{dead.pid}.not-hex.partial",
    ]
    old = tmp_path / f".out.parquet.{dead.pid}.partial"
    for path in [*kept, old]:
        path.write_bytes(b"partial")
    assert treecomp.score(cm, source, tmp_path / "out.parquet") == 3000
    assert not stale.exists() and not old.exists()
    assert all(path.exists() for path in kept)
    assert remove_stale_partials(tmp_path / "out.parquet") == []
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert_equal(out["prediction"].to_numpy(), cm.predict(pd.read_parquet(source)))
