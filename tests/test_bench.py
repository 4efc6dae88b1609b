"""The benchmark command: a tiny model through the real worker processes, and its report."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import TOLERANCES, assert_close
from treecomp import bench, cli
from treecomp.bench import runners

pytest.importorskip("sklearn", reason="the bench makes its data with scikit-learn")
pytest.importorskip("xgboost", reason="the bench's tiny model is an XGBoost classifier")
pytest.importorskip("torch", reason="the treecomp systems below run on the torch backend")

BATCH = 64
SYSTEMS = ("native", "treecomp-torch-gemm", "treecomp-torch-no_such_strategy")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One bench run: the tiny model, one batch size, two systems and one that fails."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--models", "tiny", "--batch-sizes", str(BATCH), "--systems", ",".join(SYSTEMS)]
    argv += ["--budget", "0.01", "--out", str(out)]
    assert bench.main(argv) == 0
    return out, json.loads((out / bench.RESULTS_FILE).read_text())


def test_results_have_one_record_per_system_and_batch(run: tuple[Path, dict[str, Any]]) -> None:
    _, doc = run
    assert {"machine", "settings", "models", "results"} <= doc.keys()
    assert doc["machine"]["threads"] == 2 and doc["machine"]["cpu_count"] >= 1
    assert {"torch", "xgboost", "scikit-learn", "onnxruntime"} <= doc["machine"]["versions"].keys()
    assert [(r["system"], r["batch"]) for r in doc["results"]] == [(s, BATCH) for s in SYSTEMS]
    fields = {"model", "system", "batch", "median_s", "runs", "ratio_to_fastest_peer"}
    fields |= {"ratio_to_native", "max_abs_dev", "label_mismatches", "convert_s"}
    fields |= {"peak_rss_mb", "error"}
    for record in doc["results"]:
        assert fields <= record.keys()
        assert record["model"] == "tiny"


def test_treecomp_matches_native_and_is_timed(run: tuple[Path, dict[str, Any]]) -> None:
    _, doc = run
    native, gemm, _ = doc["results"]
    for record in (native, gemm):
        assert record["status"] == "ok" and record["error"] is None
        assert record["runs"] >= 5 and record["median_s"] > 0
        assert record["label_mismatches"] == 0
        assert record["peak_rss_mb"] > 0
    # Both sides add the same float32 leaf values in the same order; only the link differs.
    assert gemm["max_abs_dev"] <= TOLERANCES["float32_link"].atol
    assert gemm["convert_s"] > 0 and gemm["strategy"] == "gemm"
    assert native["ratio_to_fastest_peer"] == pytest.approx(1.0)  # the only peer here
    assert gemm["ratio_to_native"] == pytest.approx(native["median_s"] / gemm["median_s"])


def test_a_failing_system_is_an_error_cell(run: tuple[Path, dict[str, Any]]) -> None:
    _, doc = run
    failed = doc["results"][2]
    assert failed["status"] == "error" and failed["median_s"] is None
    assert "unknown strategy 'no_such_strategy'" in failed["error"]
    assert failed["ratio_to_fastest_peer"] is None


def test_plot_is_written(run: tuple[Path, dict[str, Any]]) -> None:
    pytest.importorskip("matplotlib", reason="the bench's plot needs matplotlib")
    out, _ = run
    assert (out / bench.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_worker_past_its_timeout_is_an_error(tmp_path: Path) -> None:
    prepared = bench.prepare_model(bench.TINY, tmp_path, quick=True, threads=1, n_test=BATCH)
    system = bench.parse_system("native")
    settings = bench.TimingSettings(threads=1)
    result = bench.run_system(
        prepared, system, [1, BATCH], settings, directory=tmp_path, timeout_s=0.01
    )
    assert result["status"] == "error" and "timed out" in result["error"]
    assert [c["status"] for c in result["cells"]] == ["error", "error"]


def test_seconds_read_in_the_unit_they_round_to() -> None:
    assert [bench.format_seconds(t) for t in (None, 12.34e-6, 0.99996e-3, 4.567e-3)] == [
        "-",
        "12.3µs",
        "1ms",
        "4.57ms",
    ]
    assert [bench.format_seconds(t) for t in (0.9996, 1.234)] == ["1s", "1.23s"]


def test_system_names() -> None:
    assert bench.parse_system("treecomp-torch-auto-compiled") == bench.System(
        "treecomp-torch-auto-compiled", "treecomp", "torch", "auto", compiled=True
    )
    assert bench.parse_system("treecomp-onnx").strategy == "auto"
    assert bench.parse_system("treecomp-numpy").strategy is None
    assert bench.parse_system("treecomp-kernel").strategy is None
    with pytest.raises(ValueError, match="no strategies"):
        bench.parse_system("treecomp-kernel-gemm")
    assert bench.parse_system("onnxml").peer
    # The defaults of treecomp.convert: no backend, no strategy, tiered up before timing.
    assert bench.parse_system("treecomp") == bench.System("treecomp", "treecomp")
    assert "treecomp" in bench.DEFAULT_SYSTEMS and "treecomp" in bench.all_systems()
    with pytest.raises(ValueError, match="unknown backend"):
        bench.parse_system("treecomp-cuda-auto")
    with pytest.raises(ValueError, match="unknown system"):
        bench.parse_system("xgboost")
    # The compilers are peers of the default run; --quick leaves their compiles out.
    for peer in ("lleaves", "tl2cgen"):
        assert bench.parse_system(peer) == bench.System(peer, peer)
        assert bench.parse_system(peer).peer and peer in bench.DEFAULT_SYSTEMS
        assert peer not in bench.QUICK_SYSTEMS
    everything = [s.name for s in bench.resolve_systems("all", quick=False)]
    assert "treecomp-torchscript-perfect_tree_traversal" in everything
    assert not any(n.endswith("-compiled") and "-torch-" not in n for n in everything)


def test_ratio_is_fastest_peer_over_system() -> None:
    def result(system: str, median: float | None) -> dict[str, Any]:
        cell = {"batch": 10, "status": "ok", "error": None, "median_s": median}
        return {"model": "m", "system": system, "cells": [cell]}

    systems = [bench.parse_system(n) for n in ("native", "onnxml", "treecomp-torch-auto")]
    records = bench.build_records(
        [result("native", 4.0), result("onnxml", 2.0), result("treecomp-torch-auto", 1.0)],
        systems,
    )
    ratios = {r["system"]: (r["ratio_to_fastest_peer"], r["ratio_to_native"]) for r in records}
    assert ratios == {"native": (0.5, 1.0), "onnxml": (1.0, 2.0), "treecomp-torch-auto": (2, 4)}
    table = bench.format_tables(records, ["m"], [s.name for s in systems])
    assert "R > 1 means faster than every peer" in table and "x2" in table


def test_cli_forwards_to_the_bench(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "usage: treecomp bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--systems", "nonsense"])
    assert exit_info.value.code == 2


def test_a_peer_that_cannot_run_is_skipped_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def runner(model: Any, system: str) -> runners.Runner:
        return runners.make_runner(
            model, bench.parse_system(system), classifier=True, threads=1, n_features=8
        )

    xgb_model = bench.make_estimator(bench.TINY, quick=True, threads=1)  # unfitted is enough
    lgbm_model = pytest.importorskip("lightgbm").LGBMClassifier()
    with pytest.raises(runners.SkippedError, match="lleaves compiles LightGBM models only"):
        runner(xgb_model, "lleaves")
    # Not installed: the reason names the install command (lleaves needs an older llvmlite).
    find_spec = importlib.util.find_spec
    absent = {"lleaves", "tl2cgen"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in absent else find_spec(name, *a),
    )
    with pytest.raises(
        runners.SkippedError, match=r"tl2cgen is not installed \(pip install tl2cgen"
    ):
        runner(xgb_model, "tl2cgen")
    with pytest.raises(runners.SkippedError, match=r"lleaves is not installed .*'llvmlite<0.45'"):
        runner(lgbm_model, "lleaves")


@pytest.mark.parametrize(
    ("system", "library", "tolerance"),
    [("lleaves", "lightgbm", "float64"), ("tl2cgen", "xgboost", "xgboost_float32")],
)
def test_compiling_peers_give_native_outputs(system: str, library: str, tolerance: str) -> None:
    """Each compiles a five-tree binary classifier, in under a second here."""
    pytest.importorskip(system, reason=f"{system} is an optional peer of the bench")
    X_train, y_train, X = bench.make_data(bench.TINY, 500, BATCH)
    if library == "lightgbm":
        lightgbm = pytest.importorskip("lightgbm")
        model = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=7, n_jobs=1, verbose=-1)
    else:
        model = bench.make_estimator(bench.TINY, quick=True, threads=1)
    model.fit(X_train, y_train)
    runner = runners.make_runner(
        model, bench.parse_system(system), classifier=True, threads=1, n_features=X.shape[1]
    )
    assert_close(runner.scores(X), model.predict_proba(X), tolerance)
    assert runner.labels is not None
    np.testing.assert_array_equal(runner.labels(X), model.predict(X))


def test_the_exported_file_runs_in_a_plain_session_and_matches_native() -> None:
    """``treecomp-export``: ``cm.to_onnx()`` of convert's defaults in ONNX Runtime alone, its
    strategy read from the graph; a regressor (one output) and a classifier (labels too)."""
    pytest.importorskip("onnxruntime", reason="the exported file runs in ONNX Runtime")
    system = bench.parse_system(bench.EXPORTED)
    assert system == bench.System("treecomp-export", "treecomp", "onnx")
    assert bench.EXPORTED in bench.DEFAULT_SYSTEMS and not system.peer
    X_train, y_train, X = bench.make_data(bench.TINY, 500, BATCH)
    classifier = bench.make_estimator(bench.TINY, quick=True, threads=1).fit(X_train, y_train)
    xgboost = pytest.importorskip("xgboost")
    regressor = xgboost.XGBRegressor(n_estimators=5, max_depth=3).fit(X_train, y_train * 2.5)
    for model, is_classifier in ((classifier, True), (regressor, False)):
        runner = runners.make_runner(
            model, system, classifier=is_classifier, threads=1, n_features=X.shape[1]
        )
        assert runner.strategy == "tree_ensemble"
        native = model.predict_proba(X) if is_classifier else model.predict(X)
        assert_close(runner.scores(X), native, "xgboost_float32")
        if is_classifier:
            assert runner.labels is not None
            np.testing.assert_array_equal(runner.labels(X), model.predict(X))


FRESH_SYSTEMS = ("native", "treecomp")


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """``--fresh`` on the tiny model: two processes a system, two batches each, warm caches."""
    out = tmp_path_factory.mktemp("fresh")
    argv = ["--models", "tiny", "--batch-sizes", str(BATCH), "--systems", ",".join(FRESH_SYSTEMS)]
    argv += ["--fresh", "--fresh-processes", "2", "--fresh-batches", "2", "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert bench.main(argv) == 0
    return printed.getvalue(), json.loads((out / bench.RESULTS_FILE).read_text())


def test_fresh_results_hold_each_process_s_first_batches(
    fresh_run: tuple[str, dict[str, Any]],
) -> None:
    _, doc = fresh_run
    assert doc["mode"] == "fresh" and doc["complete"]
    assert doc["settings"]["fresh"] == {"processes": 2, "batches": 2, "cold_caches": False}
    assert doc["settings"]["caches"].startswith("warm, as a user's second job finds them")
    assert {"cpu_model", "isa", "threads"} <= doc["machine"].keys()
    assert doc["fields"].keys() == bench.FRESH_RECORD_FIELDS.keys()
    assert [(r["system"], r["batch"]) for r in doc["results"]] == [
        (s, BATCH) for s in FRESH_SYSTEMS
    ]
    native, treecomp = doc["results"]
    for record in (native, treecomp):
        assert doc["fields"].keys() <= record.keys()
        assert record["status"] == "ok" and record["error"] is None
        assert record["processes"] == 2 and [len(b) for b in record["batch_s"]] == [2, 2]
        assert all(t > 0 for times in record["batch_s"] for t in times)
        assert record["label_mismatches"] == 0 and record["load_s"] > 0
    assert native["convert_s"] is None and native["kernel_built"] == [None, None]
    assert treecomp["convert_s"] > 0 and "kernel" in treecomp["strategy"]
    # Warm caches: the priming process built whatever kernel was missing, the timed ones none.
    assert treecomp["kernel_built"] == [False, False]
    assert treecomp["max_abs_dev"] <= TOLERANCES["float32_link"].atol


def test_fresh_ratios_are_native_s_first_batch_over_each_median(
    fresh_run: tuple[str, dict[str, Any]],
) -> None:
    _, doc = fresh_run
    native, treecomp = doc["results"]
    for record in (native, treecomp):
        firsts = [times[0] for times in record["batch_s"]]
        rests = [t for times in record["batch_s"] for t in times[1:]]
        assert record["first_s"] == statistics.median(firsts)
        assert record["rest_s"] == statistics.median(rests)
        assert record["first_ratio_to_native"] == pytest.approx(
            native["first_s"] / record["first_s"]
        )
        assert record["rest_ratio_to_native"] == pytest.approx(native["first_s"] / record["rest_s"])
    assert native["first_ratio_to_native"] == 1.0


def test_fresh_report_says_what_its_numbers_mean(fresh_run: tuple[str, dict[str, Any]]) -> None:
    printed, doc = fresh_run
    machine = doc["machine"]
    assert f"{machine['cpu_model']} ({machine['isa'] or 'ISA unknown'})" in printed
    assert f"{machine['threads']} threads" in printed
    assert "no warm-up" in printed and "native's first-batch median / this median" in printed
    assert "Caches: warm" in printed
    treecomp = doc["results"][1]
    ratio = f"x{treecomp['first_ratio_to_native']:.2f}"
    if treecomp["first_ratio_to_native"] >= 10:
        ratio = f"x{treecomp['first_ratio_to_native']:.3g}"
    assert f"{bench.format_seconds(treecomp['first_s'])} {ratio}" in printed


def test_fresh_cold_caches_build_the_kernel_in_each_process(tmp_path: Path) -> None:
    argv = ["--models", "tiny", "--batch-sizes", str(BATCH), "--systems", "treecomp-kernel"]
    argv += ["--fresh", "--fresh-processes", "1", "--fresh-batches", "1", "--cold-caches"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert bench.main([*argv, "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / bench.RESULTS_FILE).read_text())
    assert doc["settings"]["caches"].startswith("cold")
    (record,) = doc["results"]
    assert record["status"] == "ok" and record["kernel_built"] == [True]
    assert record["rest_s"] is None and record["first_ratio_to_native"] is None  # no native


def test_fresh_options_need_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    for option in (["--cold-caches"], ["--fresh-batches", "2"], ["--fresh-processes", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--models", "tiny", *option])
        assert exit_info.value.code == 2
        assert "go with --fresh" in capsys.readouterr().err


def test_fresh_records_leave_out_priming_and_failed_processes() -> None:
    def process(system: str, times: list[float], status: str = "ok", **extra: Any) -> Any:
        return {
            "model": "m",
            "system": system,
            "batch": 10,
            "status": status,
            "error": None if status == "ok" else "boom",
            "batch_s": times,
            "load_s": 0.5,
            "convert_s": None if system == "native" else 1.0,
            "max_abs_dev": 0.0,
            "label_mismatches": None,
            "kernel_built": None,
            "strategy": None,
            **extra,
        }

    records = bench.build_fresh_records(
        [
            process("treecomp", [9.0], prime=True),
            process("native", [4.0, 2.0]),
            process("treecomp", [1.0, 0.5]),
            process("native", [6.0, 3.0]),
            process("treecomp", [3.0, 1.5]),
            process("treecomp", [], status="error"),
        ]
    )
    native, treecomp = records
    assert (native["first_s"], native["rest_s"]) == (5.0, 2.5)
    assert (treecomp["first_s"], treecomp["rest_s"]) == (2.0, 1.0)
    assert (treecomp["first_ratio_to_native"], treecomp["rest_ratio_to_native"]) == (2.5, 5.0)
    assert treecomp["status"] == "error" and treecomp["processes"] == 2
    assert treecomp["error"] == "boom"


def test_rounds_take_turns_and_report_the_median_of_their_medians(tmp_path: Path) -> None:
    """--rounds 3: each system runs three times, the systems taking turns; a cell is the
    median of its rounds' medians (kept in round_medians_s), its runs their sum."""
    argv = ["--models", "tiny", "--batch-sizes", "1,8", "--systems", "native,treecomp-kernel"]
    argv += ["--budget", "0.01", "--rounds", "3", "--out", str(tmp_path)]
    output, progress = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(progress):
        assert bench.main(argv) == 0
    assert "treecomp-kernel round 3/3 ok" in progress.getvalue()
    assert "Median over 3 rounds (the systems taking turns)" in output.getvalue()
    doc = json.loads((tmp_path / bench.RESULTS_FILE).read_text())
    assert doc["settings"]["rounds"] == 3
    assert [(r["system"], r["batch"]) for r in doc["results"]] == [
        (s, b) for s in ("native", "treecomp-kernel") for b in (1, 8)
    ]
    for record in doc["results"]:
        assert record["status"] == "ok" and len(record["round_medians_s"]) == 3
        assert record["median_s"] == statistics.median(record["round_medians_s"])
        assert record["runs"] >= 15 and record["max_abs_dev"] <= 1e-6


def test_a_failed_round_is_reported_as_it_failed() -> None:
    from treecomp.bench.timing import merge_rounds

    def result(status: str, *cells: dict[str, Any]) -> dict[str, Any]:
        return {"status": status, "model": "m", "system": "s", "cells": list(cells)}

    def ok(median: float) -> dict[str, Any]:
        return {"batch": 1, "status": "ok", "median_s": median, "min_s": median / 2,
                "runs": 5, "max_abs_dev": median, "label_mismatches": 0}  # fmt: skip

    broken = {"batch": 1, "status": "error", "error": "boom"}
    merged = merge_rounds([result("ok", ok(3.0)), result("ok", ok(1.0)), result("ok", ok(2.0))])
    cell = merged["cells"][0]
    assert (cell["median_s"], cell["min_s"], cell["runs"], cell["max_abs_dev"]) == (
        2.0,
        0.5,
        15,
        3.0,
    )
    assert merge_rounds([result("ok", ok(1.0)), result("ok", broken)])["cells"] == [broken]
    crashed = result("error")
    assert merge_rounds([result("ok", ok(1.0)), crashed]) is crashed
