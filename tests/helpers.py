"""Shared test helpers: the tolerance table, the comparison helpers, and probe rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from treecomp.ir import Forest


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


# The one tolerance table. Labels and leaf indices are never compared with a tolerance.
TOLERANCES = {
    # Both sides compute in float64; only the order of the additions may differ.
    "float64": Tolerance(rtol=1e-12, atol=1e-12),
    # XGBoost accumulates tree outputs and applies its link in float32 (about 24 bits), so its
    # scores differ from an exact float64 sum by a few float32 ulps per 100 trees. (Partial
    # sums far from unit scale need rescaled targets: the absolute part assumes unit scale.)
    "xgboost_float32": Tolerance(rtol=2e-5, atol=2e-6),
    # Both sides add in float32 in the same order (bit-identical margins); only the link's
    # exp differs between implementations (NumPy, torch's SLEEF, ONNX Runtime's MLAS), by at
    # most an ulp each: 4 float32 ulps relative, and 4 ulps of a probability near 1 absolute,
    # which a complement (1 - p, the first column of a binary predict_proba) carries.
    "float32_link": Tolerance(rtol=4 * 2.0**-23, atol=4 * 2.0**-24),
}


def tolerance(model: Any) -> str:
    """The entry for a compiled model against its native library: XGBoost's float32
    scores, float64 otherwise."""
    return "xgboost_float32" if type(model).__module__.startswith("xgboost") else "float64"


def native_output(model: Any, method: str, X: Any) -> Any:
    """The native model's answer; ``apply`` is LightGBM's ``predict(pred_leaf=True)``."""
    if method == "apply" and type(model).__module__.startswith("lightgbm"):
        return model.predict(X, pred_leaf=True)
    return getattr(model, method)(X)


def native_apply(model: Any, X: Any) -> npt.NDArray[Any]:
    return np.asarray(native_output(model, "apply", X))


def compare_native(
    model: Any,
    cm: Any,
    X: Any,
    *,
    tolerance_name: str | None = None,
    methods: tuple[str, ...] | None = None,
    native: Callable[[Any, str, Any], Any] = native_output,
) -> None:
    """Every method of the compiled model against the native one, the one helper for it:
    labels and leaf indices exactly, scores within ``tolerance_name`` (default: the
    library's, :func:`tolerance`). ``methods``: the native methods that apply (default:
    those the native model has, and ``apply`` wherever ``cm`` has it); every other one
    must be missing on ``cm`` too. ``native(model, method, X)`` gives the native answer.

    XGBoost's ``apply`` goes through a DMatrix, which rejects ±inf (its predict does not):
    with infinities in ``X`` its leaves are left to the tests against the reference.
    """
    name = tolerance(model) if tolerance_name is None else tolerance_name
    xgb_inf = tolerance(model) == "xgboost_float32" and bool(
        np.isinf(np.asarray(X, dtype=float)).any()
    )
    for method in ("predict", "predict_proba", "decision_function", "score_samples", "apply"):
        listed = hasattr(model, method) if methods is None else method in methods
        if method == "apply" and methods is None:
            listed = hasattr(cm, "apply")
        if not listed:
            assert not hasattr(cm, method), f"{method}: the native model has none"
            continue
        if method == "apply" and xgb_inf:
            continue
        expected = np.asarray(native(model, method, X))
        actual = getattr(cm, method)(X)
        if method == "apply" or (method == "predict" and expected.dtype.kind not in "f"):
            assert_equal(actual, expected)
        else:
            assert_close(actual, expected, name)


def kernel_folds(forest: Forest) -> bool:
    """Whether the kernel walks ``forest``: its trees fold (numerical splits only)."""
    from treecomp.passes import fold_missing

    less_equal = forest.comparison == "<="
    return fold_missing(forest.trees, less_equal=less_equal, dtype="float64") is not None


def lowering_tolerance(forest: Forest) -> str:
    """The entry for a lowered model against the reference evaluator of the same forest."""
    return "float32_link" if forest.accumulation == "float32" else "float64"


def assert_close(actual: Any, expected: Any, tolerance: str) -> None:
    """Compare scores: shape first, both floating, then values within ``TOLERANCES[tolerance]``."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype.kind == "f" and expected.dtype.kind == "f", (actual.dtype, expected.dtype)
    tol = TOLERANCES[tolerance]
    np.testing.assert_allclose(actual, expected.astype(np.float64), rtol=tol.rtol, atol=tol.atol)


def assert_equal(actual: Any, expected: Any) -> None:
    """Exact comparison for labels and leaf indices, shape and values."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    np.testing.assert_array_equal(actual, expected)


def thresholds(forest: Forest) -> list[tuple[int, float]]:
    """Every (feature, threshold) pair of the forest's numerical splits."""
    pairs = set()
    for tree in forest.trees:
        numeric = (tree.left_child >= 0) & ~tree.is_categorical
        pairs.update(zip(tree.feature[numeric].tolist(), tree.threshold[numeric].tolist()))
    return sorted(pairs)


def probe_values(t: float, dtype: str) -> list[float]:
    """Values at, just below and just above ``t``.

    ``dtype="float32"`` gives only float32-representable values (the neighbours of ``t``
    in float32), for models or precisions that see float32 inputs; ``"float64"`` adds the
    float64 neighbours.
    """
    t32 = np.float32(t)
    values = {
        float(t32),
        float(np.nextafter(t32, np.float32(-np.inf))),
        float(np.nextafter(t32, np.float32(np.inf))),
    }
    if dtype == "float64":
        values |= {t, float(np.nextafter(t, -np.inf)), float(np.nextafter(t, np.inf))}
    return sorted(v for v in values if np.isfinite(v))


def probe_rows(
    forest: Forest, base: npt.NDArray[np.floating], dtype: str, *, limit: int = 400, seed: int = 0
) -> npt.NDArray[np.float64]:
    """Rows of ``base`` with one feature moved onto, just below or just above a threshold."""
    rng = np.random.default_rng(seed)
    pairs = thresholds(forest)
    if len(pairs) > limit:
        pairs = [pairs[i] for i in rng.choice(len(pairs), size=limit, replace=False)]
    rows = []
    for feature, t in pairs:
        for v in probe_values(t, dtype):
            row = np.array(base[rng.integers(len(base))], dtype=np.float64)
            row[feature] = v
            rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, base.shape[1])


def with_missing(
    X: npt.NDArray[np.floating], *, fraction: float = 0.2, seed: int = 0
) -> npt.NDArray[np.float64]:
    """A float64 copy of ``X`` with a random fraction of entries set to NaN, plus an all-NaN row."""
    rng = np.random.default_rng(seed)
    out = np.array(X, dtype=np.float64)
    out[rng.random(out.shape) < fraction] = np.nan
    return np.vstack([out, np.full((1, out.shape[1]), np.nan)])


def special_rows(n_features: int) -> npt.NDArray[np.float64]:
    """Rows of zeros, negative zeros, ±inf and huge values."""
    return np.array(
        [
            np.zeros(n_features),
            np.full(n_features, -0.0),
            np.full(n_features, np.inf),
            np.full(n_features, -np.inf),
            np.full(n_features, 1e30),
            np.full(n_features, -1e30),
        ]
    )
