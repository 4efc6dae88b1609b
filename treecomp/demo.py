"""Demo: compile one model of each library and show it reproduces the native predictions.

Run with ``python -m treecomp.demo`` (needs the ``demo`` extra: torch, scikit-learn,
XGBoost, LightGBM). Exits non-zero if any compiled model disagrees with its native model.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import treecomp


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

    failures = 0
    print(
        f"{'model':<46} {'trees':>5} {'convert':>8}  {'strategy':<22} labels  leaves  max |Δ proba|"
    )
    for name, make in _models():
        model = make().fit(X_train, y_train)
        start = time.perf_counter()
        cm = treecomp.convert(model)  # the fastest exact backend installed, strategy by cost
        elapsed = time.perf_counter() - start
        labels_equal = np.array_equal(cm.predict(X_eval), model.predict(X_eval))
        leaves = "n/a"
        native = _native_leaves(model, X_eval)
        if native is not None:
            leaves = "equal" if np.array_equal(cm.apply(X_eval), native) else "DIFFER"
        delta = float(np.max(np.abs(cm.predict_proba(X_eval) - model.predict_proba(X_eval))))
        ok = labels_equal and leaves != "DIFFER" and delta < 1e-5
        failures += not ok
        print(
            f"{name:<46} {cm.forest.n_trees:>5} {elapsed * 1e3:>6.0f}ms  {cm.strategy:<22} "
            f"{'equal' if labels_equal else 'DIFFER':<6}  {leaves:<6}  {delta:.1e}"
        )
    print(
        "all compiled models match their native models"
        if not failures
        else f"{failures} mismatches"
    )
    return 1 if failures else 0


def _native_leaves(model: Any, X: np.ndarray) -> np.ndarray | None:
    module = type(model).__module__.partition(".")[0]
    if module == "lightgbm":
        return np.asarray(model.predict(X, pred_leaf=True))
    if hasattr(model, "apply"):
        return np.asarray(model.apply(X))
    return None


if __name__ == "__main__":
    sys.exit(main())
