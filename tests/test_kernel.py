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
from tests.helpers import assert_equal, compare_native, kernel_folds, with_missing
from tests.zoo import ZOO, compare_reference, fitted, inputs
from treecomp import kernel, kernel_build, kernel_layout

try:
    kernel.load_kernel()
    REASON = ""
except kernel.KernelUnavailable as exc:  # pragma: no cover - machines without cc
    REASON = str(exc)
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"no kernel here: {REASON}")


# The zoo's models the kernel walks: all but those with categorical splits, which it refuses
# by name (tests/test_exactness.py).
WALKED = [name for name in sorted(ZOO) if "categorical" not in name]


@pytest.mark.parametrize("name", WALKED)
def test_float64_rows_and_their_float32_twins(name: str) -> None:
    """The zoo's inputs are in tests/test_exactness.py; here float64 rows no float32 holds
    (what pandas hands over) and float32 rows of the same values."""
    model, X_test = fitted(name)
    assert kernel_folds(treecomp.parse(model))
    cm = treecomp.convert(model, "kernel")
    ref = treecomp.convert(model, "numpy")
    X = np.asarray(X_test, dtype=np.float64) + 1e-9
    for rows in (X, X.astype(np.float32)):
        compare_native(model, cm, rows)
        compare_reference(cm, ref, rows)


@pytest.mark.parametrize(
    "name", ["xgboost_binary", "sklearn_hgb_nan", "lightgbm_multiclass", "sklearn_rf"]
)
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


def many_trees(kind: str) -> tuple[Any, np.ndarray]:
    """A forest of PARALLEL_TREES trees or more, whose rows under 4 are walked by two threads
    (kernel.c's helper): XGBoost 3 classes (one-value leaves, 40 rounds of 3 trees), or a
    random forest of 5 classes (five-value leaves); with NaN in the held-out rows."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(600, 12, n_informative=6, n_classes=3 if kind == "xgb" else 5,
                               random_state=0)  # fmt: skip
    if kind == "xgb":
        import xgboost

        model: Any = xgboost.XGBClassifier(n_estimators=40, max_depth=4, n_jobs=1)
        model.fit(with_missing(X, fraction=0.1, seed=2)[:-1], y)
    else:
        model = RandomForestClassifier(n_estimators=70, max_depth=7, random_state=0).fit(X, y)
    assert treecomp.parse(model).n_trees >= PARALLEL_TREES
    return model, with_missing(X[:60], fraction=0.2, seed=4)


# kernel.c's PARALLEL_TREES: small batches of forests this large are walked by two threads.
PARALLEL_TREES = 64


@pytest.mark.parametrize("kind", ["xgb", "rf"])
def test_two_threads_walking_a_row_give_one_threads_bits(kind: str) -> None:
    """Rows under 4 of a large forest are walked by the caller and kernel.c's helper thread,
    each taking pieces of the trees as it goes; the leaves are then added in tree order: the
    same bits as one thread and the reference, leaves and scores."""
    model, X = many_trees(kind)
    ref = treecomp.convert(model, "numpy")
    method = "predict_proba"
    one, two = (treecomp.convert(model, "kernel", n_threads=k) for k in (1, 2))
    for n in (1, 2, 3):
        for first in range(0, 30, n):
            rows = X[first : first + n]
            assert_equal(two.apply(rows), ref.apply(rows))
            assert_equal(getattr(two, method)(rows), getattr(ref, method)(rows))
            assert_equal(getattr(one, method)(rows), getattr(ref, method)(rows))


def test_a_forked_child_walks_with_a_helper_of_its_own() -> None:
    """The helper thread does not survive fork: a child of a process that used it scores
    small batches exactly (with its own helper) instead of waiting for a thread it lacks."""
    import multiprocessing

    model, X = many_trees("xgb")
    cm = treecomp.convert(model, "kernel", n_threads=2)
    expected = treecomp.convert(model, "numpy").predict_proba(X[:20])
    for i in range(20):  # the parent's helper is running, or spinning
        cm.predict_proba(X[i : i + 1])
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, on purpose
        with context.Pool(1) as pool:
            got = pool.apply_async(_score_rows_one_by_one, (cm, X[:20])).get(timeout=60)
    assert_equal(got, expected)


def _score_rows_one_by_one(cm: Any, X: np.ndarray) -> np.ndarray:
    return np.concatenate([cm.predict_proba(X[i : i + 1]) for i in range(len(X))])


@pytest.mark.parametrize("name", ["xgboost_multiclass", "sklearn_rf", "many_xgb"])
def test_small_batches_from_many_threads_each_get_their_own_answer(name: str) -> None:
    """Batches of up to SMALL_ROWS rows go through each thread's buffers: callers on eight
    threads get exactly their rows' answers, and an answer already handed back does not
    change at the next call (and one caller at a time shares kernel.c's helper thread)."""
    model, X_test = many_trees("xgb") if name == "many_xgb" else fitted(name)
    X = np.asarray(X_test, dtype=np.float64)[:40]
    cm = treecomp.convert(model, "kernel")
    method = "predict_proba" if hasattr(cm, "predict_proba") else "predict"
    expected = getattr(treecomp.convert(model, "numpy"), method)(X)
    failures: list[str] = []

    def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        kept = []
        for _ in range(150):
            first = int(rng.integers(0, len(X) - kernel.SMALL_ROWS))
            n = int(rng.integers(1, kernel.SMALL_ROWS + 1))
            got = getattr(cm, method)(X[first : first + n])
            kept.append((first, n, got))
        for first, n, got in kept:
            if not np.array_equal(got, expected[first : first + n]):
                failures.append(f"thread {seed}: rows {first}..{first + n}")

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


def test_the_kernels_links_are_the_references() -> None:
    """kernel.c's links (kernel.LINKS) against treecomp.reference.link, bit for bit, on
    margins of every size, at the float32 sigmoid's clamp, and on NaN and infinities."""
    from types import SimpleNamespace

    from treecomp import reference
    from treecomp.ir import PostTransform

    library = kernel.load_kernel()
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 88.7, -88.7, 88.70001, 104.0, -104.0, 745.0, -746.0, 1e-40]
    special += [np.nan, np.inf, -np.inf]
    for acc, kinds in kernel.LINKS.items():
        dtype = np.float32 if acc == "f32" else np.float64
        for kind, code in kinds.items():
            for scale in (1.0, 0.7):
                values = np.concatenate([rng.normal(0, 20, 3000), special, rng.normal(0, 1, 7)])
                raw = values.astype(dtype).reshape(-1, 1 if kind != "softmax" else 4)
                forest: Any = SimpleNamespace(
                    post_transform=PostTransform(kind, scale),
                    accumulation="float32" if acc == "f32" else "float64",
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    expected = reference.link(forest, raw)
                out = np.empty(raw.shape)
                function = getattr(library, f"treecomp_link_{acc}")
                function(code, scale, raw.ctypes.data, out.ctypes.data, *raw.shape)
                assert_equal(out, expected)
                # What the torch and onnx engines call: their sums come widened to float64.
                link = kernel.link_for(forest)
                assert_equal(link(raw.astype(np.float64)), expected)
                assert_equal(link(raw[:3].astype(np.float64)), expected[:3])  # in Python


def test_link_for_falls_back_to_the_references_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """link_for loads the kernel once, with the engine; where it cannot be built or loaded
    (no compiler, a broken cache), the link is the reference's. Where it loads, calls of 64
    values or more in two dimensions run in C, smaller ones and other shapes in Python; a
    link kernel.c lacks (float64 softmax) runs the reference's code with the C exps."""
    from types import SimpleNamespace

    from treecomp import reference
    from treecomp.ir import PostTransform

    rng = np.random.default_rng(1)
    for acc in ("float32", "float64"):
        forest: Any = SimpleNamespace(
            post_transform=PostTransform("softmax", 1.0), accumulation=acc
        )
        raw = rng.normal(0, 3, (500, 10)).astype(np.float32 if acc == "float32" else np.float64)
        expected = reference.link(forest, raw)
        assert_equal(kernel.link_for(forest)(raw), expected)
        for error in (kernel.KernelUnavailable("no C compiler here"), OSError("read-only")):
            calls: list[str] = []

            def broken(error: Exception = error, calls: list[str] = calls) -> Any:
                calls.append("load")
                raise error

            monkeypatch.setattr(kernel, "load_kernel", broken)
            link = kernel.link_for(forest)
            assert_equal(link(raw), expected)
            assert_equal(link(raw[:2]), expected[:2])
            assert calls == ["load"]
            monkeypatch.undo()

    forest = SimpleNamespace(post_transform=PostTransform("sigmoid", 1.0), accumulation="float32")
    raw = rng.normal(0, 3, (500, 1)).astype(np.float32)
    expected = reference.link(forest, raw)
    in_c: list[tuple[int, ...]] = []
    c_link = kernel.CLink.__call__

    def counted(self: Any, r: np.ndarray) -> np.ndarray:
        in_c.append(r.shape)
        return c_link(self, r)

    monkeypatch.setattr(kernel.CLink, "__call__", counted)
    link = kernel.link_for(forest)
    assert_equal(link(raw[:2]), expected[:2])
    assert in_c == []
    assert_equal(link(raw), expected)
    assert in_c == [raw.shape]
    # Other shapes than rows of outputs go to the reference, never misread by kernel.c.
    assert_equal(link(raw.reshape(-1)), reference.link(forest, raw.reshape(-1)))
    cube = raw.reshape(50, 5, 2)
    assert_equal(link(cube), reference.link(forest, cube))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_engines_of_other_libraries_link_large_batches_in_c(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The onnx and torch engines sum in ONNX Runtime and torch, then link the sums: large
    batches go through the kernel's C link (the native bits, 40x faster than a ctypes call
    of expf per value, which took 44 of a compiled 10-class XGBoost model's 102 ms at 10 000
    rows), single rows through the reference's."""
    from treecomp import reference

    model, X_test = fitted("xgboost_multiclass")
    X = np.concatenate([np.asarray(X_test, dtype=np.float32)] * 4)
    cm = treecomp.convert(model, backend)
    expected = model.predict_proba(X)
    per_value: list[int] = []
    python_expf = reference.libm_expf

    def counted(x: np.ndarray) -> np.ndarray:
        per_value.append(np.size(x))
        return python_expf(x)

    monkeypatch.setattr(reference, "libm_expf", counted)
    assert_equal(cm.predict_proba(X), expected)
    assert per_value == []
    assert_equal(cm.predict_proba(X[:1]), expected[:1])
    assert per_value == [model.n_classes_]


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
    assert rebuilt.name.endswith(f"-{kernel_build._sha256(rebuilt)}.so")


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
    monkeypatch.setattr(kernel_layout, "MAX_PERFECT_LEVELS", perfect)
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


def test_tier_up_builds_each_row_types_engine_of_a_double_library() -> None:
    """Under precision="auto" a double library's model scores float64 rows in one engine and
    float32 rows in another, built at their first call; tier_up() builds both now, the
    operator of each too, so no first call builds anything. Exact after it."""
    from treecomp import tiered

    model, X_test = fitted("lightgbm_binary_nan")
    cm = treecomp.convert(model, n_threads=2)
    assert set(cm._engines) == {"float64"}
    assert cm.tier_up(120)
    assert set(cm._engines) == {"float32", "float64"}
    for engine in cm._engines.values():
        assert isinstance(engine, tiered.TieredEngine) and engine.operator_state == "ready"
    X = np.asarray(X_test, dtype=np.float64)
    for rows in (X, X.astype(np.float32), X[:1].astype(np.float32)):
        compare_native(model, cm, rows)
    xgb_model, _ = fitted("xgboost_binary")  # reads float32: one engine serves both
    xgb = treecomp.convert(xgb_model, n_threads=2)
    assert xgb.tier_up(120) and set(xgb._engines) == {"float32"}


def test_each_side_of_the_small_race_takes_its_trials_in_one_run() -> None:
    """The small-batch race times all of one side's calls, then the other's: ONNX Runtime's
    threads spin after its calls, so a kernel call right after one would be timed without
    its helper thread's core. Large batches still alternate."""
    from treecomp import tiered

    def sides(race: tiered.Race, calls: int) -> str:
        chosen = []
        for _ in range(calls):
            side = race.choose()
            race.record(side, 1e-6 if side == "kernel" else 2e-6, 1)
            chosen.append("k" if side == "kernel" else "o")
        return "".join(chosen)

    small = tiered.Race("kernel", trials=4, trial_rows=4, run=4)
    assert sides(small, 10) == "kkkkoooo" + "kk" and small.winner == "kernel"
    large = tiered.Race("kernel", trials=2, trial_rows=1)
    assert sides(large, 5) == "kokok" and large.winner == "kernel"
    engine = treecomp.convert(fitted("xgboost_binary")[0], n_threads=2)._engine
    assert isinstance(engine, tiered.TieredEngine)
    assert engine.small_race.run == tiered.SMALL_TRIALS


@pytest.mark.parametrize("rows", [1, 3, 700])
def test_a_walk_that_could_not_allocate_raises(rows: int) -> None:
    """kernel.c returns 1 where its buffers could not be allocated: every batch size raises
    MemoryError rather than reading sums the walk never wrote (small batches' buffers hold
    the previous call's)."""
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "kernel")
    X = np.resize(np.asarray(X_test, dtype=np.float64), (rows, np.shape(X_test)[1]))
    cm.predict_proba(X)  # the buffers now hold sums
    engine = cm._engine_for("float32")
    engine._walk = engine._small = lambda *args: 1  # large batches' call, small ones'
    with pytest.raises(MemoryError, match="could not allocate"):
        cm.predict_proba(X)


def test_a_failed_build_names_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A linker says why on the line before the driver's summary: both reach the error."""
    said = (
        "/usr/bin/ld: final link failed: No space left on device\n"
        "collect2: error: ld returned 1 exit status\n"
    )
    monkeypatch.setattr(
        kernel_build.subprocess,
        "run",
        lambda command, **_: subprocess.CompletedProcess(command, 1, "", said),
    )
    with pytest.raises(kernel.KernelUnavailable, match=r"No space left on device.*collect2"):
        kernel._build("cc", tmp_path, "key")
    assert list(tmp_path.iterdir()) == []  # nothing half-built left


@pytest.mark.parametrize("threads", [1, 2, 3, 8, 64])
def test_a_batch_splits_over_threads_in_whole_blocks_of_256_rows_or_more(threads: int) -> None:
    """kernel.c's treecomp_slices, the one split of a call's rows over threads (the engine's
    and the packages'): as many slices as threads, but none under 256 rows; every slice
    starts on a 64-row block; the slices cover the rows once, in order."""
    library = kernel.load_kernel()
    bounds = np.full(threads + 1, -1, dtype=np.int64)
    for n in (0, 1, 255, 256, 511, 512, 767, 1000, 10_000, 100_001, 2**31 + 5):
        slices = int(library.treecomp_slices(n, threads, bounds.ctypes.data))
        assert slices == max(1, min(threads, n // 256)), (n, slices)
        edges = bounds[: slices + 1]
        assert edges[0] == 0 and edges[-1] == n
        assert (np.diff(edges) >= (256 if slices > 1 else 0)).all()
        assert (edges[:-1] % 64 == 0).all()
