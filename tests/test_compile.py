"""The compiled path (``compile=True``) and the ``.pt2`` package, past the exactness matrix
(tests/test_exactness.py, where every zoo model is compiled): one package for every batch
size and process, its cache and its faults, the exported package on its own."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal, compare_native, lowering_tolerance
from tests.zoo import compare_reference, fitted, inputs, torch


def test_one_package_serves_every_batch_size_and_every_process() -> None:
    from treecomp.torch_backend import package_dir

    model, X_test = fitted("xgboost_multiclass")
    cm = treecomp.convert(model, "torch", compile=True)
    packages = set(package_dir().glob("*.pt2"))
    assert packages
    X = np.array(X_test, dtype=np.float64)
    assert cm._engine.lowered.compiled_block_rows == 8  # shallow: walked in row blocks
    # Sizes around the row blocks, and 75 rows: 10 blocks, as many as the first depth group
    # has trees (where inductor's "+ 0" removal once guarded on the block count).
    for n in (1, 2, 3, 7, 8, 9, 17, len(X)):
        assert_equal(cm.predict(X[:n]), model.predict(X[:n]))
    assert cm.predict_proba(X[:0]).shape == (0, 3)
    tensor = torch.from_numpy(X[:9]).to(torch.float32)  # a float32 tensor, not inference mode
    assert_close(cm.predict_proba(tensor), model.predict_proba(X[:9]), "xgboost_float32")
    # The same model again (as in a new process): its package is loaded, not rebuilt.
    again = treecomp.convert(model, "torch", compile=True)
    assert set(package_dir().glob("*.pt2")) == packages
    assert_equal(again.predict(X), model.predict(X))


def test_package_cache_drops_the_least_recently_used(tmp_path: Path) -> None:
    import os

    from treecomp.torch_backend import trim_packages

    for age, name in enumerate(["new", "mid", "old", "kept"]):
        path = tmp_path / f"{name}.pt2"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1e9 - age * 1000, 1e9 - age * 1000))
    (tmp_path / "w.123.partial.pt2").write_bytes(b"x" * 100)  # another process writing
    trim_packages(tmp_path, keep=tmp_path / "kept.pt2", limit=250)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["kept.pt2", "new.pt2", "w.123.partial.pt2"]


def test_tree_major_compiled_forest_with_vector_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deep forests walk tree-major (one block of every row); averaged vector leaves and
    one-row calls went through reshapes that torch.export refused for a dynamic axis."""
    import strategies

    monkeypatch.setattr(strategies, "block_rows", lambda depths, device: 0)
    model, X_test = fitted("sklearn_rf")
    cm = treecomp.convert(model, "torch", compile=True)
    assert cm._engine.lowered.compiled_block_rows == 0
    ref = treecomp.convert(model, "numpy")
    for X in inputs(model, X_test, cm.forest):
        compare_native(model, cm, X)
        compare_reference(cm, ref, X)
    assert_equal(cm.apply(X_test[:1]), model.apply(X_test[:1]))


@pytest.mark.parametrize("start", [False, True])
def test_compiled_sum_adds_in_order_past_inductors_cascade(start: bool) -> None:
    """A branch-free sum of more float32 terms than inductor adds one after the other
    (it cascades a longer reduction in chunks) is still the sequential float32 sum."""
    from strategies.programs import SEQUENTIAL_TERMS, sequential_sum
    from treecomp.inductor_settings import INDUCTOR_OPTIONS

    rng = np.random.default_rng(5)
    steps = 2 * SEQUENTIAL_TERMS + 300  # three chained reductions
    scale = 10.0 ** rng.integers(-6, 6, size=(1, steps, 2, 3))
    terms = (rng.standard_normal((1, steps, 2, 3)) * scale).astype(np.float32)
    base = rng.standard_normal((1, 2, 3)).astype(np.float32)
    want = base.copy() if start else np.zeros_like(base)
    for step in range(steps):
        want += terms[:, step]
    # As in a package: the rows axis dynamic (with static rows 300x fewer than the terms,
    # inductor would split the reduction between threads), on more threads than cores.
    terms_t, base_t = torch.from_numpy(terms), torch.from_numpy(base)
    torch._dynamo.mark_dynamic(terms_t, 3)
    torch._dynamo.mark_dynamic(base_t, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        run = torch.compile(sequential_sum, options=INDUCTOR_OPTIONS)
        got = run(base_t if start else None, terms_t)
    finally:
        torch.set_num_threads(threads)
    assert_equal(got.numpy(), want)


def test_scalar_code_only_leaves_inductors_isa_list_as_it_was() -> None:
    """During our compiles inductor sees no vector ISA (it probes none, and picks the scalar
    code it would pick anyway); afterwards, even after an error, its own list is back."""
    from torch._inductor import cpu_vec_isa

    from treecomp.inductor_settings import scalar_code_only

    listed = cpu_vec_isa.valid_vec_isa_list
    with pytest.raises(KeyError), scalar_code_only():
        assert cpu_vec_isa.valid_vec_isa_list() == []
        assert not cpu_vec_isa.pick_vec_isa()  # the invalid ISA: scalar code
        raise KeyError("a failed compile")
    assert cpu_vec_isa.valid_vec_isa_list is listed


def test_a_packages_two_objects_compile_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """AOTInductor builds a package's wrapper object, then its kernels' object, then links:
    in objects_side_by_side the first build runs in a thread beside the second, which waits
    for it, so the link finds both; a failure of the first is raised by the next build,
    and other threads' builds run as they are."""
    import threading

    from torch._inductor.cpp_builder import CppBuilder

    from treecomp.inductor_settings import objects_side_by_side

    log: list[tuple[str, str, str]] = []

    class Build:
        def __init__(self, name: str, compile_only: bool = True, fails: bool = False) -> None:
            self.name, self._compile_only, self.fails = name, compile_only, fails

    def build(self: Build) -> None:
        log.append(("start", self.name, threading.current_thread().name))
        time.sleep(0.2)
        if self.fails:
            raise RuntimeError(f"{self.name} did not compile")
        log.append(("end", self.name, threading.current_thread().name))

    monkeypatch.setattr(CppBuilder, "build", build)
    with objects_side_by_side():
        CppBuilder.build(Build("wrapper"))  # type: ignore[arg-type]
        CppBuilder.build(Build("kernels"))  # type: ignore[arg-type]
        assert {("end", "wrapper"), ("end", "kernels")} <= {e[:2] for e in log}
        CppBuilder.build(Build("link", compile_only=False))  # type: ignore[arg-type]
    steps = [event[:2] for event in log]
    # both started before either ended; the link after both
    assert steps.index(("start", "kernels")) < steps.index(("end", "wrapper"))
    assert steps[-2:] == [("start", "link"), ("end", "link")]
    wrapper_thread = next(e[2] for e in log if e[1] == "wrapper")
    assert wrapper_thread.startswith("treecomp-compile")
    assert CppBuilder.build is build  # put back

    log.clear()
    with pytest.raises(RuntimeError, match="wrapper did not compile"), objects_side_by_side():
        CppBuilder.build(Build("wrapper", fails=True))  # type: ignore[arg-type]
        CppBuilder.build(Build("kernels"))  # type: ignore[arg-type]

    log.clear()
    with objects_side_by_side():  # another thread's build is its own
        elsewhere = threading.Thread(target=CppBuilder.build, args=(Build("other"),))
        elsewhere.start()
        elsewhere.join()
        assert [e[:2] for e in log] == [("start", "other"), ("end", "other")]


def test_compiles_build_no_precompiled_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compile writes no precompiled header: inductor would build two at a machine's first
    compile (10 s on 2 cores, 130 MB each, outside its cache directory) for our two source
    files, which compile as fast without them."""
    from torch._inductor import codecache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    headers = tmp_path / "headers"  # where inductor would put them (an empty folder)
    monkeypatch.setattr(codecache, "_HEADER_DIR", str(headers))
    monkeypatch.setattr(codecache, "_HEADER_LOCK_DIR", str(headers / "locks"))
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "torch", compile=True)
    assert not headers.exists() or not any(headers.rglob("*.gch"))
    compare_native(model, cm, X_test)


def test_compile_needs_a_cpp_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """To build a package (a cached one loads without: tests/test_faults.py)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing cached
    model, _ = fitted("sklearn_gb")
    with (
        inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++")}),
        pytest.raises(RuntimeError, match=r"needs a C\+\+ compiler.*compile=False"),
    ):
        treecomp.convert(model, "torch", compile=True)


def test_a_failed_build_is_a_clear_error_never_a_silent_eager_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build that fails with FileNotFoundError (a compiler binary gone missing midway)
    names the failure and the fallback; it is not taken for a package missing from the
    cache, which only the compiled tier's lookups may tolerate."""
    import treecomp.torch_backend as torch_backend

    def missing_binary(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory", "g++")

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch_backend, "export_package", missing_binary)
    model, _ = fitted("sklearn_gb")
    with pytest.raises(RuntimeError, match=r"could not compile.*FileNotFoundError.*compile=False"):
        treecomp.convert(model, "torch", compile=True)


def test_compile_option_is_checked() -> None:
    model, _ = fitted("sklearn_gb")
    with pytest.raises(TypeError, match="compile must be True or False"):
        treecomp.convert(model, "torch", compile="yes")
    for backend in ("numpy", "onnx", "torchscript"):
        with pytest.raises(ValueError, match="compile=True applies to backend='torch'"):
            treecomp.convert(model, backend, compile=True)
        assert treecomp.convert(model, backend, compile=False).backend == backend


def test_compiled_artifact_round_trip(tmp_path: Path) -> None:
    model, X_test = fitted("sklearn_rf")
    cm = treecomp.convert(model, "torch", compile=True)
    cm.save(tmp_path / "m.tc")
    again = treecomp.load(tmp_path / "m.tc")
    assert again.strategy.endswith("[compiled]")
    assert_equal(again.predict(X_test), model.predict(X_test))
    # Other backends ignore the saved compile=True.
    onnx = treecomp.load(tmp_path / "m.tc", backend="onnx")
    assert_equal(onnx.predict(X_test), model.predict(X_test))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["xgboost_binary", "lightgbm_categorical_zero", "sklearn_rf"])
def test_compiled_on_cuda(name: str) -> None:
    model, X_test = fitted(name)
    cm = treecomp.convert(model, "torch", compile=True, device="cuda")
    for X in inputs(model, X_test, cm.forest):
        compare_native(model, cm, X)


# --- .pt2 packages -------------------------------------------------------------------------

PT2_MODELS = ["xgboost_binary", "lightgbm_categorical_zero", "sklearn_multi_output"]


def test_pt2_package_runs_without_treecomp(tmp_path: Path) -> None:
    """One package per library family, loaded and run in a process with torch alone."""
    expected: dict[str, Any] = {}
    for name in PT2_MODELS:
        model, X_test = fitted(name)
        cm = treecomp.convert(model, "torch")
        cm.export_pt2(tmp_path / f"{name}.pt2", leaf_indices=True)
        batches = [
            np.asarray(cm._prepare(X)[1], dtype=cm.forest.input_dtype)  # as natively seen
            for X in inputs(model, X_test, cm.forest)
        ]
        for i, X in enumerate(batches):
            np.save(tmp_path / f"{name}-{i}.npy", X)
        expected[name] = (cm, len(batches))
    script = textwrap.dedent(
        f"""
        import sys, time, numpy as np, torch
        folder = {str(tmp_path)!r}
        for name, count in {[(n, expected[n][1]) for n in PT2_MODELS]!r}:
            start = time.perf_counter()
            run = torch._inductor.aoti_load_package(f"{{folder}}/{{name}}.pt2")
            print(name, "loaded in", time.perf_counter() - start)
            for i in range(count):
                X = torch.from_numpy(np.load(f"{{folder}}/{{name}}-{{i}}.npy"))
                assert run.get_metadata()["treecomp.input_dtype"] == str(X.dtype)[6:]
                raw, transformed, leaves = run(X)
                np.save(f"{{folder}}/{{name}}-{{i}}-out.npy", transformed.numpy())
                np.save(f"{{folder}}/{{name}}-{{i}}-leaves.npy", leaves.numpy())
            # The other float type, and rows that are not contiguous, are refused (not read
            # as other numbers) without AOTI_RUNTIME_CHECK_INPUTS in the environment.
            other = X.to(torch.float32 if X.dtype == torch.float64 else torch.float64)
            strided = torch.cat([X, X], dim=1)[:, : X.shape[1]]
            for bad, word in ((other, "dtype"), (strided, "stride")):
                try:
                    run(bad)
                except RuntimeError as exc:
                    assert word in str(exc), exc
                else:
                    raise AssertionError(f"{{name}}: a {{word}} mismatch was not refused")
        assert "treecomp" not in sys.modules and "strategies" not in sys.modules
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "AOTI_RUNTIME_CHECK_INPUTS"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    for name in PT2_MODELS:
        cm, count = expected[name]
        ref = treecomp.convert(cm.forest, "numpy")
        for i in range(count):
            X = np.load(tmp_path / f"{name}-{i}.npy")
            transformed = np.load(tmp_path / f"{name}-{i}-out.npy").astype(np.float64)
            leaves = np.load(tmp_path / f"{name}-{i}-leaves.npy")
            _, ref_transformed = ref._engine.scores(X)
            assert_close(transformed, ref_transformed, lowering_tolerance(cm.forest))
            assert_equal(leaves, ref._engine.leaf_ids(X))


def test_pt2_needs_a_torch_backend(tmp_path: Path) -> None:
    model, _ = fitted("sklearn_gb")
    for backend in ("numpy", "onnx"):
        cm = treecomp.convert(model, backend)
        with pytest.raises(AttributeError, match="export_pt2 needs a torch backend"):
            cm.export_pt2(tmp_path / "m.pt2")


def test_default_backend_tiers_up_to_the_compiled_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backend="auto" on the CPU starts on the tree operator. Its first large batch looks
    for the compiled package (none in a new cache); once large batches kept it busy
    (BUILD_AFTER_S, here 0) a child process builds it, and large batches then run it,
    exactly. The next convert of the forest finds it in the cache."""
    from tests.test_ir import small_forest
    from treecomp import compiled_tier

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiled_tier, "MIN_COMPILED_LEVELS", 1)
    # No build before the lookup is seen to miss: a lookup done while the batch is still
    # scored (quick once torch._inductor is imported) would let a later note start it.
    monkeypatch.setattr(compiled_tier, "BUILD_AFTER_S", float("inf"))
    monkeypatch.setattr(compiled_tier, "COMPILED_FROM_ROWS", 50)
    forest = small_forest()  # a numerical and a categorical split
    rng = np.random.default_rng(0)
    X = np.stack([rng.normal(0.5, 1, 300), rng.integers(-1, 5, 300)], axis=1)
    X[::7] = np.nan
    X[::11, 0] = 0.5  # on the threshold
    expected = treecomp.convert(forest, "numpy").predict(X)
    cm = treecomp.convert(forest, n_threads=2)
    assert cm.backend == "onnx" and cm.strategy == "tree_ensemble"
    tier = cm._engine.tier
    assert tier.state == "idle"
    cm.predict(X[:10])  # small: stays on the operator, looks for nothing
    assert tier.state == "idle"
    operator = cm.predict(X)
    tier._join(120)
    assert tier.state == "missing"
    monkeypatch.setattr(compiled_tier, "BUILD_AFTER_S", 0.0)
    cm.predict(X)  # busy for BUILD_AFTER_S: the build starts
    tier._join(600)
    assert tier.state == "ready", tier.state
    assert cm.strategy.startswith("tree_ensemble; batches of 50+ rows: ")
    assert cm.strategy.endswith("[compiled]")
    assert list(tmp_path.glob("treecomp_packages/*.pt2"))
    assert_equal(cm.predict(X), operator)
    assert_close(operator, expected, lowering_tolerance(forest))
    again = treecomp.convert(forest, n_threads=2)
    assert again.tier_up(120) and again._engine.tier.state == "ready"
    assert_equal(again.predict(X), operator)


def test_compiled_tier_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which conversions tier up to the compiled package: the default backend only, forests
    the kernel does not walk (here: no kernel), with enough tree levels and none too deep,
    not with TREECOMP_BACKGROUND_COMPILE=0; a tier that cannot compile leaves the operator
    serving and says why (checked before a build process starts)."""
    import treecomp.torch_backend as torch_backend
    from tests.test_ir import small_forest
    from treecomp import compiled_tier, kernel, tiered

    def no_kernel() -> None:
        raise kernel.KernelUnavailable("no C compiler here")

    monkeypatch.setattr(kernel, "load_kernel", no_kernel)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing cached
    model, X_test = fitted("xgboost_binary")
    forest = treecomp.convert(model, "numpy").forest
    assert not compiled_tier.worth_compiling(forest)  # 20 trees of depth 4: too few levels
    monkeypatch.setattr(compiled_tier, "MIN_COMPILED_LEVELS", 1)
    assert compiled_tier.worth_compiling(forest)
    monkeypatch.setattr(compiled_tier, "MAX_COMPILED_DEPTH", 3)
    assert not compiled_tier.worth_compiling(forest)  # too deep
    monkeypatch.setattr(compiled_tier, "MAX_COMPILED_DEPTH", 16)
    Tiered = tiered.TieredEngine
    assert not isinstance(treecomp.convert(model, "onnx")._engine, Tiered)  # explicit backend
    assert isinstance(treecomp.convert(small_forest())._engine, Tiered)
    monkeypatch.setenv("TREECOMP_BACKGROUND_COMPILE", "0")
    assert not isinstance(treecomp.convert(model)._engine, Tiered)
    monkeypatch.delenv("TREECOMP_BACKGROUND_COMPILE")

    def no_compiler(device: Any) -> None:
        raise RuntimeError("torch.compile needs a C++ compiler: none found")

    monkeypatch.setattr(torch_backend, "check_compiler", no_compiler)
    cm = treecomp.convert(model)
    assert not cm.tier_up(60)
    assert "no compiled tier: RuntimeError: torch.compile needs a C++ compiler" in cm.strategy
    compare_native(model, cm, np.asarray(X_test, dtype=np.float32))
    assert not treecomp.convert(model, "torch").tier_up()  # other backends have no tier


class Kernel:
    """A stand-in for a compiled engine: the operator's exact answers (computed once:
    the tests score one batch again and again), ``delay`` later."""

    strategy = "kernel [compiled]"

    def __init__(self, scores: Any, delay: float) -> None:
        self.score, self.delay, self.calls, self.answer = scores, delay, 0, None

    def scores(self, rows: np.ndarray) -> Any:
        self.calls += 1
        if self.answer is None:
            self.answer = self.score(rows)
        time.sleep(self.delay)
        return self.answer


def test_compiled_tier_serves_only_where_it_measured_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the package is loaded, large batches alternate between it and the operator
    for TRIALS batches each; then the faster per row serves, and cm.strategy says which
    (the depth rules come from one CPU: on another the kernel can lose)."""
    from tests.test_ir import small_forest
    from treecomp import compiled_tier, tiered

    monkeypatch.setattr(compiled_tier, "MIN_COMPILED_LEVELS", 1)
    monkeypatch.setattr(compiled_tier, "COMPILED_FROM_ROWS", 50)
    forest = small_forest()
    X = np.stack([np.linspace(-2, 3, 300), np.arange(300) % 5 - 1.0], axis=1)
    for delay, winner in ((0.05, "operator"), (0.0, "compiled")):
        cm = treecomp.convert(forest, n_threads=1)
        tier, race, operator = cm._engine.tier, cm._engine.race, cm._engine.operator
        if winner == "compiled":  # an operator slower than the kernel
            run = operator._run

            def slow(*args: Any, run: Any = run) -> Any:
                time.sleep(0.05)
                return run(*args)

            monkeypatch.setattr(operator, "_run", slow)
        expected = cm.predict(X[:10])  # small: the operator, never the tier
        plain = treecomp.convert(forest, "onnx", n_threads=1)._engine  # no tier of its own
        kernel = Kernel(plain.scores, delay)
        tier.engine, tier.state = kernel, "ready"
        for _ in range(2 * tiered.TRIALS + 3):
            assert_equal(cm.predict(X)[:10], expected)
        assert race.winner == winner
        assert all(len(times) == tiered.TRIALS for times in race.trials.values())  # bounded
        if winner == "operator":
            assert kernel.calls == tiered.TRIALS
            # Which tier lost, by how much (its best time a row over the operator's), and both.
            ratio = min(race.trials["compiled"]) / min(race.trials["operator"])
            assert ratio > 1.0
            assert f"(compiled tier measured slower, {ratio:.2f}x the operator's time: " in (
                cm.strategy
            )
            assert cm._engine.large_batches == "operator"
        else:
            assert kernel.calls > tiered.TRIALS and cm.strategy.endswith("[compiled]")


def test_export_pt2_names_its_suffix_and_devices_are_checked(tmp_path: Path) -> None:
    """A package path without .pt2 (which AOTInductor refuses after the trace, naming a
    temporary file) and a device no engine runs on are refused up front."""
    from tests.test_ir import small_forest

    cm = treecomp.convert(small_forest(), "torch")
    with pytest.raises(ValueError, match=r"name the file \*\.pt2"):
        cm.export_pt2(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="device 'meta' is not supported"):
        treecomp.convert(small_forest(), "torch", device="meta")


def _wrapper_source(package: Path) -> str:
    """The C++ of a package's wrapper, which AOTInductor keeps in the package."""
    with zipfile.ZipFile(package) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".wrapper.cpp")]
        return archive.read(name).decode()


KERNEL_SHIM_CALL = "aoti_torch_cpu_treecomp_forest_sums("


@pytest.mark.parametrize(
    "name", ["xgboost_binary", "sklearn_rf", "lightgbm_multiclass", "sklearn_hgb_nan"]
)
def test_cpu_packages_take_their_sums_from_the_kernel(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU package of a forest the kernel walks calls kernel.c for its sums (the C shim
    of treecomp/kernel_op.py's operator, linked into the package): its raw scores are the
    kernel engine's and the eager module's bit for bit (sums, float64 sums, averages), on
    held-out, threshold, NaN, infinite and single rows, and on 2 000 rows split between
    two threads; its answers are native's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # built here, not found
    model, X_test = fitted(name)
    cm = treecomp.convert(model, "torch", compile=True, n_threads=2)
    (package,) = (tmp_path / "treecomp_packages").glob("*.pt2")
    assert KERNEL_SHIM_CALL in _wrapper_source(package)
    eager = treecomp.convert(model, "torch")
    kernel = treecomp.convert(model, "kernel")
    batches = inputs(model, X_test, cm.forest)
    batches.append(np.resize(np.asarray(batches[0]), (2000, np.shape(batches[0])[1])))
    for X in batches:
        compare_native(model, cm, X)
        rows = cm._prepare(X)[1]  # as the engines see them
        raw, _ = cm._engine.scores(rows)
        assert_equal(raw, eager._engine.scores(rows)[0])
        assert_equal(raw, kernel._engine.scores(rows)[0])


def test_packages_walk_in_inductors_code_where_the_kernel_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the kernel's archive cannot be built (no C++ compiler for its shim, say), a
    package walks its trees in inductor's code, exactly, and says so at INFO; a forest the
    kernel does not walk (categorical and zero-as-missing splits) always does."""
    from treecomp import kernel_op
    from treecomp.kernel_build import KernelUnavailable

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))

    def no_archive(build: bool = True) -> Path:
        raise KernelUnavailable("no C++ compiler here")

    monkeypatch.setattr(kernel_op, "archive", no_archive)
    model, X_test = fitted("xgboost_binary")
    with caplog.at_level(logging.INFO, logger="treecomp.torch_backend"):
        cm = treecomp.convert(model, "torch", compile=True)
    assert "inductor's code (no C++ compiler here)" in caplog.text
    (package,) = (tmp_path / "treecomp_packages").glob("*.pt2")
    assert KERNEL_SHIM_CALL not in _wrapper_source(package)
    for X in inputs(model, X_test, cm.forest):
        compare_native(model, cm, X)
    model, _ = fitted("lightgbm_categorical_zero")
    assert treecomp.convert(model, "torch")._engine._kernel() is None


def test_an_unwritable_kernel_cache_builds_the_archive_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the kernel cache cannot be written, the package's archive is built in a
    temporary directory once per process (the compile's thread and its link both ask for
    it), and linked."""
    from treecomp import kernel_op

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    monkeypatch.setattr(kernel_op, "kernel_dir", lambda: blocked)
    monkeypatch.setattr(kernel_op, "_elsewhere", {}, raising=False)
    builds: list[Path] = []
    build = kernel_op.build_cached

    def counted(directory: Path, *args: Any) -> Path:
        builds.append(directory)
        return build(directory, *args)

    monkeypatch.setattr(kernel_op, "build_cached", counted)
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "torch", compile=True)
    assert [directory == blocked for directory in builds] == [True, False]
    (package,) = (tmp_path / "inductor" / "treecomp_packages").glob("*.pt2")
    assert KERNEL_SHIM_CALL in _wrapper_source(package)
    compare_native(model, cm, X_test)


def test_a_machines_first_compile_builds_the_archive_beside_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine whose kernel cache has no archive, compile=True starts its build in a
    thread of its own as the conversion starts (beside the kernel library's build, the
    lowering and the trace); the compile then links that archive. The next conversion
    finds it cached: no build."""
    import threading

    from treecomp import kernel_op

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(kernel_op, "kernel_dir", lambda: tmp_path / "kernels")
    builds: list[str] = []
    build = kernel_op.build_cached

    def counted(directory: Path, *args: Any) -> Path:
        builds.append(threading.current_thread().name)
        return build(directory, *args)

    monkeypatch.setattr(kernel_op, "build_cached", counted)
    model, X_test = fitted("xgboost_binary")
    cm = treecomp.convert(model, "torch", compile=True)
    assert builds == ["treecomp-archive"]
    assert len(list((tmp_path / "kernels").glob("forest-op-*.a"))) == 1
    (package,) = (tmp_path / "inductor" / "treecomp_packages").glob("*.pt2")
    assert KERNEL_SHIM_CALL in _wrapper_source(package)
    compare_native(model, cm, X_test)
    treecomp.convert(model, "torch", compile=True)  # the archive cached: no build
    assert builds == ["treecomp-archive"]


def test_a_cached_kernel_package_loads_without_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package with the kernel's sums, once cached, loads where neither the kernel's
    archive nor a C++ compiler is at hand: running a package needs neither."""
    import torch._inductor.config as inductor_config

    from treecomp import kernel_op
    from treecomp.kernel_build import KernelUnavailable

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model, X_test = fitted("xgboost_binary")
    treecomp.convert(model, "torch", compile=True)  # built, and cached

    def no_archive() -> Path:
        raise KernelUnavailable("no C++ compiler here")

    monkeypatch.setattr(kernel_op, "archive", no_archive)
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
        cm = treecomp.convert(model, "torch", compile=True)
    assert cm.strategy.startswith("sums by the kernel"), cm.strategy
    for X in inputs(model, X_test, cm.forest):
        compare_native(model, cm, X)


def test_a_kernel_that_does_not_link_leaves_the_package_to_inductors_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A kernel cache whose folder name holds LIBRARY_PATH's separator still links; an
    archive that does not link leaves the package to inductor's walk, exactly, with a
    warning, instead of failing the compile."""
    from treecomp import kernel_op, torch_backend

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "first"))
    monkeypatch.setenv("TREECOMP_KERNEL_DIR", str(tmp_path / "kernels:of-this-machine"))
    model, X_test = fitted("xgboost_binary")
    treecomp.convert(model, "torch", compile=True)
    (package,) = (tmp_path / "first" / "treecomp_packages").glob("*.pt2")
    assert KERNEL_SHIM_CALL in _wrapper_source(package)

    @contextlib.contextmanager
    def unlinkable(kernel: Any) -> Iterator[dict[str, Any]]:
        if kernel is None:
            yield {}
            return
        shims = {torch.ops.treecomp.treecomp_forest_sums.default: [kernel_op.DECLARATION]}
        yield {
            "aot_inductor.custom_ops_to_c_shims": shims,
            "aot_inductor.custom_op_libs": [":no-such-archive.a"],
        }

    monkeypatch.setattr(torch_backend, "linked", unlinkable)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "second"))
    with caplog.at_level(logging.WARNING, logger="treecomp.torch_backend"):
        cm = treecomp.convert(model, "torch", compile=True)
    assert "walk their trees in inductor's code (InductorError" in caplog.text
    (package,) = (tmp_path / "second" / "treecomp_packages").glob("*.pt2")
    assert KERNEL_SHIM_CALL not in _wrapper_source(package)
    for X in inputs(model, X_test, cm.forest):
        compare_native(model, cm, X)
