"""The exactness matrix: every zoo model on every target and strategy, against the native
model and the reference evaluator.

One test over one table: the zoo's models (:mod:`tests.zoo`) by the targets below, each on
the zoo's inputs (held-out rows, threshold probes, NaN, ±inf and single rows). Leaves and
labels equal, scores within the tolerance table (:mod:`tests.helpers`). What a target adds
is written in its row: the ``onnx`` target's exported file is checked too, and the kernel
must refuse, by name, the forests it does not walk. Each target's other behaviour (batch
shapes, threads, packages, sessions) has its own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import compare_native, kernel_folds, tolerance
from tests.zoo import ONNX_STRATEGIES, STRATEGIES, ZOO, compare_reference, fitted, inputs

# compile=True on every model with the selector's choice, and each traversal on the models
# that exercise the general node rule (categorical and zero-as-missing splits), vector
# leaves and averaging (a compile of a few seconds each: not the whole square).
COMPILED_TRAVERSALS = ("xgboost_binary", "lightgbm_categorical_zero", "sklearn_multi_output")


@dataclass(frozen=True)
class Target:
    """A backend, its strategy and ``compile=``: one column of the matrix."""

    backend: str
    strategy: str | None = None
    compiled: bool = False

    def __str__(self) -> str:
        name = self.backend if self.strategy is None else f"{self.backend}-{self.strategy}"
        return f"{name}-compiled" if self.compiled else name

    def applies_to(self, name: str) -> bool:
        return not self.compiled or self.strategy == "auto" or name in COMPILED_TRAVERSALS

    def convert(self, model: Any) -> treecomp.CompiledModel:
        options: dict[str, Any] = {} if self.strategy is None else {"strategy": self.strategy}
        if self.compiled:
            options["compile"] = True
        return treecomp.convert(model, self.backend, **options)

    def check_plan(self, cm: treecomp.CompiledModel) -> None:
        """What ``cm.strategy`` must say: the strategy asked for (or the selector's groups),
        compiled packages marked as such."""
        if self.compiled:
            assert cm.strategy.endswith("[compiled]"), cm.strategy
        elif self.backend in ("torch", "torchscript"):
            assert cm.strategy in STRATEGIES or "+" in cm.strategy, cm.strategy


TARGETS = [
    *(Target(backend, strategy) for backend in ("torch", "torchscript") for strategy in STRATEGIES),
    *(Target("onnx", strategy) for strategy in ONNX_STRATEGIES),
    Target("kernel"),
    *(Target("torch", strategy, compiled=True) for strategy in STRATEGIES),
]
CASES = [(name, target) for target in TARGETS for name in sorted(ZOO) if target.applies_to(name)]


@pytest.mark.parametrize(("name", "target"), CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_every_target_matches_native_and_reference(name: str, target: Target) -> None:
    model, X_test = fitted(name)
    if target.backend == "kernel":
        from treecomp import kernel

        try:
            kernel.load_kernel()
        except kernel.KernelUnavailable as exc:  # pragma: no cover - machines without cc
            pytest.skip(f"no kernel here: {exc}")
        if not kernel_folds(treecomp.parse(model)):
            with pytest.raises(kernel.KernelUnsupported, match="numerical splits only"):
                target.convert(model)
            return
    cm = target.convert(model)
    ref = treecomp.convert(model, "numpy")
    target.check_plan(cm)
    for X in inputs(model, X_test, cm.forest):
        compare_native(model, cm, X)
        compare_reference(cm, ref, X)
        # The exported file too; XGBoost's pred_leaf (a DMatrix) rejects ±inf, so its
        # leaves on such rows are left to the reference comparison above.
        xgb_inf = tolerance(model) == "xgboost_float32" and np.isinf(np.asarray(X, float)).any()
        if target.backend == "onnx" and not xgb_inf:
            from tests.test_onnx import check_serving

            check_serving(model, cm, X)


def test_the_matrix_covers_every_backend_and_strategy() -> None:
    """Each backend with a strategy option appears with each of its strategies, compiled
    torch with each traversal, on every zoo model where the row applies."""
    from treecomp.names import for_target

    assert {str(t) for t in TARGETS} >= {f"onnx-{s}" for s in ("auto", *for_target("onnx"))}
    assert {str(t) for t in TARGETS} >= {f"torch-{s}" for s in ("auto", *for_target("torch"))}
    assert {n for n, t in CASES if str(t) == "kernel"} == set(ZOO)
