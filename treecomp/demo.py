"""Demo: compile one model of each library, show it reproduces the native predictions, and
time it against the native ``predict_proba``.

Run with ``python -m treecomp.demo`` (needs the ``demo`` extra: torch, ONNX Runtime,
scikit-learn, XGBoost, LightGBM). Exits non-zero if any compiled model disagrees with its
native model. Timings are medians of a few calls, both sides on the same number of threads:
a rough picture; ``treecomp bench`` is the measurement.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from treecomp.bench import TimingSettings, time_calls
from treecomp.container import convert


def _models() -> list[tuple[str, Callable[[], Any]]]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    models: list[tuple[str, Callable[[], Any]]] = [
        (
            "scikit-learn RandomForestClassifier",
            lambda: RandomForestClassifier(100, random_state=0),
        ),
        (
            "scikit-learn HistGradientBoostingClassifier",
            lambda: HistGradientBoostingClassifier(max_iter=100, random_state=0),
        ),
    ]
    try:
        import xgboost

        models.append(
            ("XGBoost XGBClassifier", lambda: xgboost.XGBClassifier(n_estimators=100, max_depth=6))
        )
    except ImportError:
        print("(xgboost not installed: skipping its model)")
    try:
        import lightgbm

        models.append(
            (
                "LightGBM LGBMClassifier",
                lambda: lightgbm.LGBMClassifier(n_estimators=100, verbose=-1),
            )
        )
    except ImportError:
        print("(lightgbm not installed: skipping its model)")
    return models


def main() -> int:
    """Fit, convert and compare; return a process exit status."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.5, random_state=0)
    # Held-out rows, and the same rows with a fifth of their values missing.
    rng = np.random.default_rng(0)
    X_nan = X_test.copy()
    X_nan[rng.random(X_nan.shape) < 0.2] = np.nan
    X_eval = np.vstack([X_test, X_nan]).astype(np.float32)

    X_large = np.tile(X_eval, (-(-SPEED_ROWS // len(X_eval)), 1))[:SPEED_ROWS]
    threads = THREADS

    failures = 0
    print(
        f"{'model':<44} {'trees':>5} {'convert':>8}  {'backend/strategy':<20} labels  leaves "
        f" max |Δ proba|  speed vs native: {SPEED_ROWS:,} rows, 1 row"
    )
    for name, make in _models():
        model = make().fit(X_train, y_train)
        if "n_jobs" in model.get_params():
            model.set_params(n_jobs=threads)
        start = time.perf_counter()
        # The fastest exact backend installed, strategy by cost.
        cm = convert(model, n_threads=threads)
        elapsed = time.perf_counter() - start
        labels_equal = np.array_equal(cm.predict(X_eval), model.predict(X_eval))
        leaves = "n/a"
        native = _native_leaves(model, X_eval)
        if native is not None:
            leaves = "equal" if np.array_equal(cm.apply(X_eval), native) else "DIFFER"
        delta = float(np.max(np.abs(cm.predict_proba(X_eval) - model.predict_proba(X_eval))))
        ok = labels_equal and leaves != "DIFFER" and delta < 1e-5
        failures += not ok
        speed = [
            _median(model.predict_proba, rows) / _median(cm.predict_proba, rows)
            for rows in (X_large, X_large[:1])
        ]
        print(
            f"{name:<44} {cm.forest.n_trees:>5} {elapsed * 1e3:>6.0f}ms  "
            f"{cm.backend + '/' + cm.strategy:<20} {'equal' if labels_equal else 'DIFFER':<6}  "
            f"{leaves:<6}  {delta:>12.1e}  {speed[0]:>8.1f}x {speed[1]:>8.1f}x"
        )
    print(
        "all compiled models match their native models"
        if not failures
        else f"{failures} mismatches"
    )
    print(
        f"speed: native time / treecomp time (above 1: treecomp is faster), medians, "
        f"{threads} thread(s) for both; `treecomp bench` measures each in its own process"
    )
    print(
        "forests of numerical splits run in treecomp's C kernel, compiled once per machine "
        "(README: The kernel), and in ONNX Runtime's tree operator: each batch size, under 8 "
        "rows and from 8 on, goes to whichever of the two measured faster"
    )
    return 1 if failures else 0


# Rows of the larger timed batch, and threads for both sides (at most 4: a demo, not a bench).
SPEED_ROWS = 10_000
THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)


# The benchmark's timing loop, shorter: one warm-up call, 3 to 200 timed calls, ~0.3 s.
_TIMING = TimingSettings(warmup=1, min_runs=3, max_runs=200, budget_s=0.3, max_call_s=60.0)


def _median(method: Callable[[Any], Any], X: np.ndarray) -> float:
    """Median seconds of ``method(X)`` (``treecomp.bench.time_calls``)."""
    times, _, _ = time_calls(method, [X], _TIMING)
    return float(np.median(times))


def _native_leaves(model: Any, X: np.ndarray) -> np.ndarray | None:
    module = type(model).__module__.partition(".")[0]
    if module == "lightgbm":
        return np.asarray(model.predict(X, pred_leaf=True))
    if hasattr(model, "apply"):
        return np.asarray(model.apply(X))
    return None


if __name__ == "__main__":
    sys.exit(main())
