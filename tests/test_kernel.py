"""The kernel backend: every foldable zoo forest exact against the native library and the
reference, at every block shape and thread count; a damaged cached kernel is built again,
never loaded; a forest it cannot walk, or a machine without a compiler, is told clearly."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_equal, with_missing
from tests.zoo import ZOO, compare_native, compare_reference, fitted, inputs
from treecomp import kernel
from treecomp.passes import fold_missing

try:
    kernel.load_kernel()
    REASON = ""
except kernel.KernelUnavailable as exc:  # pragma: no cover - machines without cc
    REASON = str(exc)
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"no kernel here: {REASON}")


def folds(forest: treecomp.Forest) -> bool:
    return (
        fold_missing(forest.trees, less_equal=forest.comparison == "<=", dtype="float64")
        is not None
    )


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_kernel_is_exact_on_the_zoo(name: str) -> None:
    model, X_test = fitted(name)
    forest = treecomp.parse(model)
    if not folds(forest):
        with pytest.raises(kernel.KernelUnsupported, match="numerical splits only"):
            treecomp.convert(model, "kernel")
        return
    cm = treecomp.convert(model, "kernel")
    ref = treecomp.convert(model, "numpy")
    for X in inputs(model, X_test, forest):
        compare_native(model, cm, X)
        compare_reference(cm, ref, X)
    # float64 rows (what pandas hands over) and float32 rows of the same values
    X = np.asarray(X_test, dtype=np.float64) + 1e-9
    for rows in (X, X.astype(np.float32)):
        compare_native(model, cm, rows)
        compare_reference(cm, ref, rows)


@pytest.mark.parametrize("name", ["xgboost_binary", "sklearn_hgb_nan", "lightgbm_multiclass"])
def test_every_block_shape_and_thread_count_gives_the_same_bits(name: str) -> None:
    """Blocks of 64 rows walk level by level, fewer than 4 rows one by one, a last block
    repeats its last row, and 512 rows or more split over the threads: every split of the
    rows must give the reference's bits."""
    model, X_test = fitted(name)
    X = np.asarray(X_test, dtype=np.float64)
    X = with_missing(np.concatenate([X] * (1 + 700 // len(X)))[:700], fraction=0.2, seed=1)
    ref = treecomp.convert(model, "numpy")
    expected = ref.decision_function(X) if hasattr(ref, "decision_function") else None
    leaves = ref.apply(X) if hasattr(ref, "apply") else None
    for threads in (1, 2):
        cm = treecomp.convert(model, "kernel", n_threads=threads)
        for n in (1, 2, 3, 4, 7, 8, 63, 64, 65, 129, 300, 700):
            if leaves is not None:
                assert_equal(cm.apply(X[:n]), leaves[:n])
            if expected is not None:
                assert_equal(cm.decision_function(X[:n]), expected[:n])
            else:
                assert_equal(cm.predict(X[:n]), ref.predict(X[:n]))


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty kernel cache, and no kernel loaded yet in this process."""
    pristine()  # loaded from the user's cache before the test changes where it looks
    monkeypatch.setenv("TREECOMP_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(kernel, "_library", None)
    return tmp_path


def pristine() -> Path:
    """The kernel this process loaded first (built in the user's cache, or found there)."""
    kernel.load_kernel()
    assert kernel.loaded_from is not None
    return kernel.loaded_from


def check(cm: Any) -> None:
    model, X_test = fitted("xgboost_binary")
    assert_equal(cm.apply(X_test), np.asarray(model.apply(X_test)))


def test_a_damaged_kernel_is_built_again_never_loaded(private_cache: Path) -> None:
    original = kernel.loaded_from
    assert original is not None
    built = private_cache / original.name
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF
    built.write_bytes(bytes(data))
    model, _ = fitted("xgboost_binary")
    with pytest.warns(RuntimeWarning, match="is corrupt"):
        cm = treecomp.convert(model, "kernel")
    check(cm)
    (rebuilt,) = private_cache.glob("walk-*.so")
    assert rebuilt.name.endswith(f"-{kernel._sha256(rebuilt)}.so")


def test_a_sound_kernel_is_loaded_as_it_is(private_cache: Path) -> None:
    """A cached kernel whose bytes match its name is used, and partial files of killed
    builds are never read."""
    original = kernel.loaded_from
    assert original is not None
    (private_cache / original.name).write_bytes(original.read_bytes())
    (private_cache / f"{original.name[5:37]}.123.456.partial.so").write_bytes(b"\x7fELF")
    model, _ = fitted("xgboost_binary")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check(treecomp.convert(model, "kernel"))
    assert sorted(p.name for p in private_cache.glob("walk-*.so")) == [original.name]


def test_no_compiler_is_said_clearly(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PATH", str(tmp_path))
    model, _ = fitted("xgboost_binary")
    with pytest.raises(kernel.KernelUnavailable, match="needs a C compiler"):
        treecomp.convert(model, "kernel")


def test_options_the_kernel_does_not_take_are_refused() -> None:
    model, _ = fitted("xgboost_binary")
    with pytest.raises(TypeError, match="takes no options"):
        treecomp.convert(model, "kernel", strategy="gemm")
    with pytest.raises(ValueError, match="CPU only"):
        treecomp.convert(model, "kernel", device="cuda")
    assert "kernel (C" in treecomp.convert(model, "kernel").strategy


def test_the_default_backend_scores_large_batches_in_the_kernel() -> None:
    """backend="auto" keeps single rows on the tree operator and gives batches of
    KERNEL_FROM_ROWS rows or more to the kernel from the first (no build to wait for),
    racing the operator for TRIALS batches (here of 256 rows, past TRIAL_ROWS) before it
    commits; either way exactly."""
    from treecomp import compiled_tier, tiered

    model, X_test = fitted("xgboost_binary")
    X = np.concatenate([np.asarray(X_test, dtype=np.float32)] * 10)
    X = X[: compiled_tier.COMPILED_FROM_ROWS]
    cm = treecomp.convert(model, n_threads=2)
    engine = cm._engine_for("float32")
    assert isinstance(engine, tiered.TieredEngine)
    tier, race = engine.tier, engine.race
    assert isinstance(tier, tiered.KernelTier) and tier.state == "ready" and cm.tier_up(0)
    assert f"batches of {tiered.KERNEL_FROM_ROWS}+ rows: kernel (C" in cm.strategy
    for _ in range(2 * tiered.TRIALS + 1):
        compare_native(model, cm, X)
    assert race.winner is not None
    assert all(len(times) == tiered.TRIALS for times in race.trials.values())


def test_a_kernel_that_loses_the_race_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel slower than the operator (here made so) loses the race: the operator then
    scores large batches, cm.strategy names the kernel tier as the loser with its factor and
    both times (not the compiled tier), and Dask or Spark copies run the operator too."""
    from treecomp import tiered

    model, X_test = fitted("xgboost_binary")
    X = np.concatenate([np.asarray(X_test, dtype=np.float32)] * 10)[: tiered.TRIAL_ROWS]
    cm = treecomp.convert(model, n_threads=1)
    engine = cm._engine_for("float32")
    assert isinstance(engine, tiered.TieredEngine) and cm.batch_backend == "kernel"
    kernel_scores = engine.tier.engine.scores

    def slow(rows: np.ndarray) -> Any:
        time.sleep(0.05)
        return kernel_scores(rows)

    monkeypatch.setattr(engine.tier.engine, "scores", slow)
    for _ in range(2 * tiered.TRIALS + 1):
        compare_native(model, cm, X)
    race = engine.race
    assert race.winner == "operator" and engine.large_batches == "operator"
    ratio = min(race.trials["kernel"]) / min(race.trials["operator"])
    assert ratio > 1.0
    assert f"(kernel tier measured slower, {ratio:.2f}x the operator's time: kernel " in (
        cm.strategy
    )
    assert "compiled" not in cm.strategy and cm.batch_backend == "onnx"


@pytest.mark.parametrize("slow_side", ["kernel", "operator"])
def test_small_batches_race_the_kernel_against_the_operator(
    slow_side: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches under KERNEL_FROM_ROWS rows race too: the side made slow here loses, the
    other serves single rows from then on, cm.strategy says so only where the kernel won,
    and every answer on the way is native's."""
    from treecomp import tiered

    model, X_test = fitted("xgboost_binary")
    X = np.asarray(X_test, dtype=np.float32)
    cm = treecomp.convert(model, n_threads=1)
    engine = cm._engine_for("float32")
    assert isinstance(engine, tiered.TieredEngine)
    slow_engine = engine.tier.engine if slow_side == "kernel" else engine.operator
    scores = slow_engine.scores

    def slow(rows: np.ndarray, **options: Any) -> Any:
        time.sleep(0.002)
        return scores(rows, **options)

    monkeypatch.setattr(slow_engine, "scores", slow)
    for i in range(2 * tiered.SMALL_TRIALS + 1):
        compare_native(model, cm, X[i % len(X) : i % len(X) + 1])
    winner = "operator" if slow_side == "kernel" else "kernel"
    assert engine.small_race.winner == winner
    assert engine.race.winner is None  # large batches have their own race
    said = "batches under 8 rows: the kernel (measured faster)" in cm.strategy
    assert said == (winner == "kernel")


def test_an_engine_built_at_a_call_defers_its_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Float32 rows of a double library (precision="auto") get their engine at their first
    call: that call builds the kernel's layout alone, and the kernel scores it; the
    operator's graphs are built in a thread meanwhile, the kernel scoring every batch (a
    single row too) until they are ready; then single rows go to the operator and large
    batches race. Exact throughout."""
    from treecomp import tiered
    from treecomp.onnx import engine as onnx_engine

    model, X_test = fitted("lightgbm_binary_nan")
    cm = treecomp.convert(model, n_threads=2)
    assert isinstance(cm._engine, tiered.TieredEngine) and cm._engine.operator is not None
    gate = threading.Event()
    build = onnx_engine.OnnxEngine.__init__

    def held(self: Any, *args: Any, **kwargs: Any) -> None:
        assert gate.wait(120)
        build(self, *args, **kwargs)

    monkeypatch.setattr(onnx_engine.OnnxEngine, "__init__", held)
    X = np.concatenate([np.asarray(X_test, dtype=np.float32)] * 4)
    compare_native(model, cm, X)  # the first float32 call: its engine is built
    engine = cm._engine_for("float32")
    assert isinstance(engine, tiered.TieredEngine)
    assert engine.operator is None and engine.operator_state == "building"
    assert "every batch (the tree operator's graph is being built)" in cm.strategy
    compare_native(model, cm, X[:1])  # a single row: the kernel's, with no wait
    assert engine.large_batches == "kernel" and cm.batch_backend == "kernel"
    assert engine.race.trials == {"kernel": [], "operator": []}  # no race without both
    gate.set()
    assert cm.tier_up(120) and engine.operator_state == "ready"
    operator = engine.operator
    assert operator is not None and operator._small_session is not None  # warmed
    compare_native(model, cm, X[:1])
    for _ in range(2 * tiered.TRIALS + 1):
        compare_native(model, cm, X)
    assert engine.race.winner is not None
    assert engine.strategy.startswith("tree_ensemble")  # the operator, raced either way


def test_a_process_ending_after_its_first_call_finishes_the_operator_build() -> None:
    """The deferred operator is built in a thread the process waits for at exit: torn down
    inside ONNX Runtime's session construction, a process that had done its work aborted
    (exit status -6). Here the build is slowed, and the process ends right after its call."""
    script = """
import atexit, time
import numpy as np
import treecomp
from tests.zoo import fitted
from treecomp.onnx import engine as onnx_engine

model, X = fitted("lightgbm_binary_nan")
cm = treecomp.convert(model, n_threads=2)
warm = onnx_engine.OnnxEngine.warm

def slow_warm(self):
    time.sleep(0.5)  # a large forest's graphs take about a second
    warm(self)

onnx_engine.OnnxEngine.warm = slow_warm
cm.predict(np.asarray(X, dtype=np.float32))
engine = cm._engine_for("float32")
atexit.register(lambda: print("operator:", engine.operator_state, flush=True))
"""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "operator: ready" in done.stdout


@pytest.mark.parametrize("perfect", [0, 2])
@pytest.mark.parametrize("name", ["xgboost_multiclass", "sklearn_hgb_nan", "lightgbm_binary_nan"])
def test_child_pointer_walks_are_exact(
    name: str, perfect: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below its perfect levels a tree walks child pointers, only the rows still moving
    (leaf-wise trees); here with no perfect level, or two, on every input of the zoo."""
    monkeypatch.setattr(kernel, "MAX_PERFECT_LEVELS", perfect)
    model, X_test = fitted(name)
    forest = treecomp.parse(model)
    cm = treecomp.convert(model, "kernel")
    assert f"top {perfect} of" in cm.strategy
    ref = treecomp.convert(model, "numpy")
    for X in inputs(model, X_test, forest):
        compare_reference(cm, ref, X)
    X = with_missing(np.concatenate([np.asarray(X_test, np.float64)] * 5), fraction=0.2, seed=2)
    compare_reference(cm, ref, X)


def test_a_worker_without_a_compiler_runs_the_saved_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dask and Spark tasks rebuild the model on cm.batch_backend (the kernel, where the
    model's own large batches run it); a worker that cannot build the kernel warns and runs
    the backend the model was saved with, exactly."""
    from treecomp.container import loads_for_batches

    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model)
    assert cm.backend == "onnx" and cm.batch_backend == "kernel"
    assert loads_for_batches(cm.dumps(), cm.batch_backend).backend == "kernel"

    def no_kernel() -> None:
        raise kernel.KernelUnavailable("no C compiler on this worker")

    monkeypatch.setattr(kernel, "load_kernel", no_kernel)
    with pytest.warns(RuntimeWarning, match="cannot run the kernel"):
        copy = loads_for_batches(cm.dumps(), "kernel")
    assert copy.backend == "onnx"
    compare_native(model, copy, np.asarray(X_test, dtype=np.float32))
    assert treecomp.convert(model, "onnx").batch_backend == "onnx"  # an explicit backend


def test_sound_bytes_that_do_not_load_are_built_again(private_cache: Path) -> None:
    """A file named by its own SHA-256 passes the check, yet may be no library at all:
    deleted with a warning and built again."""
    original = kernel.loaded_from
    assert original is not None
    junk = b"not a shared library"
    name = original.name.rpartition("-")[0] + f"-{hashlib.sha256(junk).hexdigest()}.so"
    (private_cache / name).write_bytes(junk)
    model, _ = fitted("xgboost_binary")
    with pytest.warns(RuntimeWarning, match="does not load"):
        check(treecomp.convert(model, "kernel"))
    assert not (private_cache / name).exists()


def test_the_race_on_large_batches_times_the_operator_on_a_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the kernel races the operator, a batch of 2 * TRIAL_ROWS rows or more is
    scored by the kernel whole, the operator timed on TRIAL_ROWS of its rows only: a fresh
    process's large batches never wait for the slower side, and the answers stay exact."""
    from tests.helpers import assert_close
    from treecomp import tiered

    model, X_test = fitted("xgboost_binary")
    X = np.concatenate([np.asarray(X_test, dtype=np.float32)] * 40)[: 2 * tiered.TRIAL_ROWS]
    cm = treecomp.convert(model, n_threads=1)
    engine = cm._engine_for("float32")
    rows: list[int] = []
    run = engine.operator._run

    def counted(*args: Any) -> Any:
        rows.append(args[-2].shape[0])
        return run(*args)

    monkeypatch.setattr(engine.operator, "_run", counted)
    expected = model.predict_proba(X)
    for _ in range(2 * tiered.TRIALS + 1):
        assert_close(cm.predict_proba(X), expected, "xgboost_float32")
    assert engine.race.winner is not None
    assert rows == [tiered.TRIAL_ROWS] * tiered.TRIALS  # the operator saw slices alone
