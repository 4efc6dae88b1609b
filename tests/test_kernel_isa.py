"""The kernel built for each x86 instruction set it has a path for: AVX-512 (this machine's
own, where it has it), AVX2 and plain x86-64 (SSE2) walk the same forests to the same bits.

kernel.c steps the top levels of perfect trees with AVX-512 or AVX2 permutes and gathers, and
every other level with the plain loop: a machine only ever runs one of these builds, so each
is built here and compared with the reference on rows that sit on thresholds, NaN and ±inf.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_equal, with_missing
from tests.zoo import compare_reference, fitted, inputs
from treecomp import kernel

X86 = platform.machine() in ("x86_64", "AMD64")
pytestmark = pytest.mark.skipif(not X86, reason="instruction-set builds of x86 only")


def cpu_has(flag: str) -> bool:
    try:
        return f" {flag}" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


ISAS = [
    pytest.param("-march=native", id="native"),
    pytest.param(
        "-march=x86-64-v3",
        id="avx2",
        marks=pytest.mark.skipif(not cpu_has("avx2"), reason="this CPU has no AVX2"),
    ),
    pytest.param("-march=x86-64", id="sse2"),
]


@pytest.fixture(params=ISAS)
def built_for(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The kernel compiled with ``request.param`` in place of -march=native, in a private
    cache; skips where no compiler is here."""
    march = request.param
    try:
        kernel.load_kernel()  # the user's own, loaded before this test changes where to look
    except kernel.KernelUnavailable as exc:  # pragma: no cover - machines without cc
        pytest.skip(f"no kernel here: {exc}")
    flags = tuple(march if f == "-march=native" else f for f in kernel.FLAGS)
    monkeypatch.setattr(kernel, "FLAGS", flags)
    monkeypatch.setenv("TREECOMP_KERNEL_DIR", str(tmp_path))
    # both restored after the test: the process goes on with its own kernel
    monkeypatch.setattr(kernel, "_library", None)
    monkeypatch.setattr(kernel, "loaded_from", None)
    kernel.load_kernel()
    assert kernel.loaded_from is not None and kernel.loaded_from.parent == tmp_path
    return march


@pytest.mark.parametrize("name", ["xgboost_binary", "sklearn_hgb_nan", "sklearn_rf"])
def test_every_instruction_set_gives_the_reference_bits(built_for: str, name: str) -> None:
    model, X_test = fitted(name)
    forest = treecomp.parse(model)
    ref = treecomp.convert(model, "numpy")
    for precision in ("float32", "float64"):
        cm = treecomp.convert(model, "kernel", precision=precision)
        for X in inputs(model, X_test, forest):
            compare_reference(cm, ref, X)
        # every block shape: 1-3 rows alone, partial blocks, more than one group of blocks
        X = np.asarray(X_test, dtype=np.float64)
        X = with_missing(np.concatenate([X] * (1 + 700 // len(X)))[:700], fraction=0.2, seed=2)
        leaves = ref.apply(X) if hasattr(ref, "apply") else None
        for n in (1, 3, 8, 24, 64, 100, 700):
            if leaves is not None:
                assert_equal(cm.apply(X[:n]), leaves[:n])
            compare_reference(cm, ref, X[:n])


def test_deep_perfect_levels_take_every_step(built_for: str) -> None:
    """A forest of complete trees of depth 7: levels 2-5 take the permuted steps (AVX-512;
    AVX2 to level 4; double comparisons to level 4, AVX-512 only), the levels below the
    plain loop; thresholds drawn so that every node sends rows both ways."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(600, 6)).astype(np.float32)
    y = X @ rng.normal(size=6) + np.sin(3 * X[:, 0])
    xgboost = pytest.importorskip("xgboost")
    model = xgboost.XGBRegressor(n_estimators=12, max_depth=7, min_child_weight=0).fit(X, y)
    forest = treecomp.parse(model)
    assert max(t.n_nodes for t in forest.trees) > 64  # deep enough to reach the plain loop
    ref = treecomp.convert(model, "numpy")
    cm = treecomp.convert(model, "kernel")
    assert "top 7 of 7 levels perfect" in cm.strategy
    rows = with_missing(X.astype(np.float64), fraction=0.1, seed=3)
    assert_equal(cm.apply(rows), ref.apply(rows))
    assert_equal(cm.predict(rows), np.asarray(model.predict(rows.astype(np.float32))))
    compare_reference(cm, ref, rows)
    doubles = treecomp.convert(model, "kernel", precision="float64")
    ref = treecomp.convert(model, "numpy", precision="float64")
    assert_equal(doubles.apply(rows), ref.apply(rows))
    assert_equal(doubles.predict(rows), ref.predict(rows))
