"""Untrusted model files never kill the command line.

Every format the CLI reads, whole, cut short at several offsets, emptied, replaced with
random bytes or crafted to break LightGBM's and XGBoost's parsers, is given to every
command: each run exits 0, or 2 with exactly one line on stderr; never a traceback, never
a signal. The runs share a few child processes (importing torch per run would take
minutes); a child killed by a signal is reported with the case it was running.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp

ensemble = pytest.importorskip("sklearn.ensemble")
joblib = pytest.importorskip("joblib")
lightgbm = pytest.importorskip("lightgbm")
skops_io = pytest.importorskip("skops.io")
xgboost = pytest.importorskip("xgboost")
pytest.importorskip("pyarrow")

# Runs main() on each case with file descriptor 2 sent to a file of its own, so that what
# native code prints is counted too; reports one JSON line per case, "start" first.
_CHILD = r"""
import faulthandler, json, os, sys, tempfile, traceback
cases, report_path, crash_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
crash_log = open(crash_path, "w")
faulthandler.enable(file=crash_log)
from treecomp.cli import main
with open(report_path, "a", buffering=1) as report:
    for name, argv in cases:
        report.write(json.dumps({"start": name}) + "\n")
        with tempfile.TemporaryFile() as err:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(err.fileno(), 2)
            try:
                code = main(argv)
            except BaseException:
                traceback.print_exc()
                code = "raised"
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        report.write(json.dumps({"name": name, "code": code, "stderr": stderr}) + "\n")
"""


def _run_cases(cases: list[tuple[str, list[str]]], work: Path) -> dict[str, dict[str, Any]]:
    """``{case: {"code": exit code, "stderr": text}}``; a case whose child died has the code
    ``"killed by signal N"`` and the child's crash report as its stderr."""
    results: dict[str, dict[str, Any]] = {}
    remaining = list(cases)
    report, crash = work / "report.jsonl", work / "crash.log"
    while remaining:
        report.write_text("")
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(remaining), str(report), str(crash)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        started = None
        for line in report.read_text().splitlines():
            entry = json.loads(line)
            if "start" in entry:
                started = entry["start"]
            else:
                results[entry["name"]] = entry
                started = None
        if child.returncode == 0 and started is None:
            break
        if started is None:  # died before its first case: nothing to blame but the child
            raise AssertionError(f"the child failed: {child.returncode}\n{child.stderr[-2000:]}")
        results[started] = {
            "code": f"killed by signal {-child.returncode} (exit {child.returncode})",
            "stderr": crash.read_text()[:1500] + child.stderr[-1000:],  # the signal, stack
        }
        remaining = remaining[[name for name, _ in remaining].index(started) + 1 :]
    return results


def _cut(raw: bytes) -> dict[str, bytes]:
    """The file emptied, cut at several offsets (one byte short included), or random."""
    variants = {f"cut{k}of8": raw[: len(raw) * k // 8] for k in range(1, 8)}
    variants["cutlast"] = raw[:-1]
    variants["empty"] = b""
    variants["random"] = np.random.default_rng(len(raw)).bytes(2000)
    return variants


def _lightgbm_crafted(text: str) -> dict[str, bytes]:
    """LightGBM texts that LightGBM 4.7's own parser aborts on (SIGABRT), crashes on
    (SIGSEGV, SIGFPE), reads out of bounds or misreads without a word (checked one by one
    with ``lightgbm.Booster(model_file=...).dump_model()``)."""
    tree = text.index("Tree=0\n")
    params = text.index("parameters:\n")
    sizes = re.search(r"tree_sizes=([0-9 ]+)\n", text)
    assert sizes is not None
    bigger = " ".join(str(int(s) + 100) for s in sizes.group(1).split())
    # Without tree_sizes LightGBM reads the trees one by one (no abort on the first error),
    # so these reach the unchecked indexing they are about.
    plain = text.replace(sizes.group(0), "")
    crafted = {
        "after_tree_line": text[: tree + len("Tree=0\n")],  # abort
        "inside_tree": text[: tree + 40],  # abort
        "inside_parameters": text[: params + len("parameters:\n[boost")],  # segfault
        "tree_sizes_too_big": text.replace(sizes.group(0), f"tree_sizes={bigger}\n"),  # abort
        "header_only": text[:tree],  # abort
        "zero_trees_per_iteration": text.replace(
            "num_tree_per_iteration=1", "num_tree_per_iteration=0"
        ),  # SIGFPE
        "empty_objective": re.sub(r"objective=[^\n]*", "objective=", text, count=1),  # segfault
        # Indexes past a vector: std::bad_alloc here, a segfault when cut inside the section.
        "parameter_without_colon": text.replace("[boosting: gbdt]", "[boosting"),
        # LightGBM prints the error on stderr as well as raising it: two lines.
        "unknown_objective": re.sub(r"objective=[^\n]*", "objective=nonsense", text, count=1),
        "child_out_of_range": re.sub(
            r"left_child=-?[0-9]+", "left_child=77", plain, count=1
        ),  # segfault
        # Counted into feature_importances past its end: heap corruption, no error.
        "feature_out_of_range": re.sub(r"split_feature=[0-9]+", "split_feature=900", plain),
        # Scanned for '=' past the line's end (into the next line, or past the buffer).
        "tree_line_without_equals": plain.replace("num_cat=0\n", "num_cat\n", 1),
        "not_a_number": plain.replace("split_feature=", "split_feature=x", 1),  # read as 0
        # A binary objective with two trees an iteration: LightGBM scores two sigmoid-less
        # columns without a word; read as a binary classifier, a silent wrong answer.
        "binary_of_two_classes": text.replace("num_class=1", "num_class=2").replace(
            "num_tree_per_iteration=1", "num_tree_per_iteration=2"
        ),
    }
    return {name: value.encode() for name, value in crafted.items()}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bool]]:
    """``(folder, {file name: whether the CLI must read it})``: tiny models of every kind,
    then their broken variants."""
    folder = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    X[:, 2] = rng.integers(0, 8, 200)
    y = ((X[:, 0] + X[:, 1] > 0) | (X[:, 2] == 3)).astype(int)
    header = ",".join(f"Column_{j}" for j in range(4))  # LightGBM's names for them
    np.savetxt(folder / "rows.csv", X[:20], delimiter=",", header=header, comments="")
    lgb = lightgbm.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1, "min_data_per_group": 5},
        lightgbm.Dataset(X, y, categorical_feature=[2]),
        num_boost_round=2,
    )
    lgb.save_model(folder / "model.txt")
    xgb = xgboost.XGBClassifier(n_estimators=2, max_depth=2, nthread=1).fit(X, y)
    xgb.save_model(folder / "model.json")
    xgb.save_model(folder / "model.ubj")
    forest = ensemble.RandomForestClassifier(2, max_depth=2, random_state=0).fit(X, y)
    skops_io.dump(forest, folder / "model.skops")
    (folder / "model.pkl").write_bytes(pickle.dumps(forest))
    joblib.dump(forest, folder / "model.joblib")
    treecomp.convert(forest, backend="numpy").save(folder / "model.tc")

    readable = {}
    for original in sorted(folder.glob("model.*")):
        raw = original.read_bytes()
        readable[original.name] = True
        for variant, data in _cut(raw).items():
            (folder / f"{variant}.{original.name}").write_bytes(data)
            readable[f"{variant}.{original.name}"] = False
    text = (folder / "model.txt").read_text()
    for variant, data in _lightgbm_crafted(text).items():
        (folder / f"{variant}.model.txt").write_bytes(data)
        readable[f"{variant}.model.txt"] = False
    # A file whose line ends were rewritten (git on Windows) is still the same model.
    (folder / "crlf.model.txt").write_bytes(text.replace("\n", "\r\n").encode())
    readable["crlf.model.txt"] = True
    ubj = (folder / "model.ubj").read_bytes()
    count = ubj.index(b"#L") + 2  # cut inside an array's count: XGBoost allocated 20 GB
    (folder / "count_cut.model.ubj").write_bytes(ubj[: count + 3])
    (folder / "deep.model.json").write_bytes(b'{"a":' * 100_000)  # XGBoost: stack overflow
    (folder / "joblib_named.model.pkl").write_bytes((folder / "model.joblib").read_bytes())
    readable |= dict.fromkeys(["count_cut.model.ubj", "deep.model.json"], False)
    readable["joblib_named.model.pkl"] = False
    return folder, readable


def test_broken_model_files_exit_2_with_one_line(
    model_files: tuple[Path, dict[str, bool]], tmp_path: Path
) -> None:
    folder, readable = model_files
    cases = []
    for n, name in enumerate(sorted(readable)):
        model = str(folder / name)
        trust = ["--trust-pickle"] if name.endswith((".pkl", ".joblib")) else []
        out = str(tmp_path / f"out{n}")
        cases += [
            (f"inspect {name}", ["inspect", model, *trust]),
            (f"convert {name}", ["convert", model, "--to", "artifact", "-o", out + ".tc", *trust]),
            (f"score {name}", ["score", model, str(folder / "rows.csv"), out + ".csv", *trust]),
        ]
    results = _run_cases(cases, tmp_path)
    failures = []
    for case, _ in cases:
        code, stderr = results[case]["code"], results[case]["stderr"]
        must_read = readable[case.split(" ", 1)[1]]
        if code not in ((0,) if must_read else (0, 2)):
            failures.append(f"{case}: exit {code}: {stderr.strip()[-600:]}")
        elif code == 2 and (stderr.count("\n") != 1 or not stderr.strip()):
            failures.append(f"{case}: exit 2 with stderr {stderr!r}")
        elif "Traceback" in stderr:
            failures.append(f"{case}: a traceback: {stderr[-600:]}")
    assert not failures, "\n".join(failures)
    # The broken files were refused for what they are, naming the file.
    for name in ("after_tree_line", "tree_sizes_too_big", "child_out_of_range", "header_only"):
        stderr = results[f"inspect {name}.model.txt"]["stderr"]
        assert f"{name}.model.txt: not a readable LightGBM model (" in stderr, stderr
    assert "cut short" in results["inspect count_cut.model.ubj"]["stderr"]
    assert "nested deeper than" in results["inspect deep.model.json"]["stderr"]
    assert "the file is empty" in results["convert empty.model.skops"]["stderr"]
    assert "not a treecomp model file" in results["score cut4of8.model.tc"]["stderr"]


def test_check_lightgbm_keeps_the_model(model_files: tuple[Path, dict[str, bool]]) -> None:
    """What LightGBM is given instead of the file (line ends normalised, tree_sizes and
    unknown keys left out) is the model the file holds, tree for tree."""
    from treecomp.file_checks import check_lightgbm
    from treecomp.model_files import read_forest

    folder, _ = model_files
    raw = (folder / "model.txt").read_bytes()
    native = lightgbm.Booster(model_file=folder / "model.txt").dump_model()
    # A key LightGBM does not know (it skips them) in each tree, and no tree_sizes.
    extra = re.sub(rb"tree_sizes=.*\n", b"", raw).replace(b"\nnum_cat=", b"\nnew_key=1\nnum_cat=")
    older = raw.replace(b"end of trees\n", b"")  # as LightGBM 2 wrote it
    for source in (raw, (folder / "crlf.model.txt").read_bytes(), extra, older):
        text = check_lightgbm(source)
        assert "tree_sizes=" not in text and "\r" not in text
        assert lightgbm.Booster(model_str=text).dump_model() == native
    forests = [read_forest(folder / name)[0] for name in ("model.txt", "crlf.model.txt")]
    assert forests[0] is not None and forests[1] is not None
    assert forests[0].to_json() == forests[1].to_json()
