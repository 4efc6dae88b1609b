"""A slow, obvious NumPy evaluator of the IR: the test oracle and the ``"numpy"`` backend.

It walks every tree level by level for all rows at once, following exactly the decision
semantics documented in :mod:`treecomp.ir`. Inputs must already be prepared by
:func:`treecomp.inputs.prepare` (float array, native dtype applied, missing value mapped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from treecomp.ir_schema import ZERO_THRESHOLD

if TYPE_CHECKING:
    from treecomp.ir import Forest, PostTransform, Tree


def go_left(
    tree: Tree,
    nodes: npt.NDArray[np.intp],
    x: npt.NDArray[np.floating],
    comparison: str,
    category_domain: str = "truncate",
) -> npt.NDArray[np.bool_]:
    """Decide, for rows sitting at internal ``nodes`` with feature values ``x``, who goes left."""
    threshold = tree.threshold[nodes]
    missing = np.isnan(x) | (tree.zero_is_missing[nodes] & (np.abs(x) <= ZERO_THRESHOLD))
    with np.errstate(invalid="ignore"):
        numeric = x < threshold if comparison == "<" else x <= threshold
    left = np.where(missing, tree.default_left[nodes], numeric)
    categorical = tree.is_categorical[nodes] & ~missing
    if np.any(categorical):
        rows = np.flatnonzero(categorical)
        left[rows] = _in_categories(tree, nodes[rows], x[rows], category_domain)
    return left


def _in_categories(
    tree: Tree, nodes: npt.NDArray[np.intp], values: npt.NDArray[np.floating], domain: str
) -> npt.NDArray[np.bool_]:
    """Whether ``trunc(value)`` is listed at each node, for values in the category domain."""
    span = int(tree.category_values.max(initial=0)) + 2
    owner = np.repeat(np.arange(tree.n_nodes, dtype=np.int64), np.diff(tree.category_offsets))
    listed = owner * span + tree.category_values
    with np.errstate(invalid="ignore"):
        lower = values > -1.0 if domain == "truncate" else values >= 0.0
        ok = lower & (values < span - 1)  # also drops NaN, ±inf and huge values
    codes = np.trunc(np.where(ok, values, 0.0)).astype(np.int64)
    return ok & np.isin(nodes.astype(np.int64) * span + codes, listed)


def leaf_nodes(forest: Forest, X: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    """Node id of the leaf each row reaches in each tree, shape ``(n_rows, n_trees)``."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    out = np.empty((n, forest.n_trees), dtype=np.int64)
    rows = np.arange(n)
    for t, tree in enumerate(forest.trees):
        node = np.zeros(n, dtype=np.intp)
        active = tree.left_child[node] >= 0
        while np.any(active):
            idx = rows[active]
            cur = node[idx]
            left = go_left(
                tree, cur, X[idx, tree.feature[cur]], forest.comparison, forest.category_domain
            )
            node[idx] = np.where(left, tree.left_child[cur], tree.right_child[cur])
            active = tree.left_child[node] >= 0
        out[:, t] = node
    return out


def native_leaf_ids(forest: Forest, nodes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Map leaf node ids to the numbers the native ``apply`` reports."""
    out = np.empty_like(nodes)
    for t, tree in enumerate(forest.trees):
        out[:, t] = tree.leaf_id[nodes[:, t]]
    return out


def raw_scores(forest: Forest, nodes: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Aggregated margins plus base score, shape ``(n_rows, n_outputs)``."""
    average = forest.aggregation == "average"
    dtype = np.float32 if forest.accumulation == "float32" else np.float64
    # Summing forests start from the base score and add trees in order, in the native
    # precision, as the native boosters do, so that results match them bit for bit.
    out = np.zeros((nodes.shape[0], forest.n_outputs), dtype=dtype)
    if not average:
        out += forest.base_score.astype(dtype)
    for t, tree in enumerate(forest.trees):
        lo = tree.output_index
        out[:, lo : lo + tree.leaf_width] += tree.value[nodes[:, t]].astype(dtype)
    if average:
        out /= forest.trees_per_output().astype(dtype)
        out += forest.base_score.astype(dtype)
    return out


# The C library's exp over an array, double or float (libm_exp, libm_expf, or the kernel's).
Exp = Callable[[npt.NDArray[np.floating]], npt.NDArray[Any]]


def link(
    forest: Forest, raw: npt.NDArray[np.floating], exp: Exp | None = None, expf: Exp | None = None
) -> npt.NDArray[np.float64]:
    """The forest's post-transform of raw scores ``(n_rows, n_outputs)`` (in the
    accumulation type, or widened from it), computed in the accumulation type, as float64.

    ``exp`` and ``expf``: the double and float exp to call (default :func:`libm_exp` and
    :func:`libm_expf`; the kernel has faster ones), unless the link is NumPy's
    (``functions="numpy"``)."""
    if forest.post_transform.kind == "identity":
        return np.asarray(raw, dtype=np.float64)
    acc = np.float32 if forest.accumulation == "float32" else np.float64
    # Contiguous: NumPy's SIMD exp runs on contiguous arrays, its scalar one on the others.
    raw = np.ascontiguousarray(raw, dtype=acc)
    out = _transform(forest.post_transform, raw, exp or libm_exp, expf or libm_expf)
    return np.asarray(out, dtype=np.float64)


def _transform(
    post: PostTransform, raw: npt.NDArray[np.floating], exp: Exp, expf: Exp
) -> npt.NDArray[np.floating]:
    """The post-transform of raw scores, in their precision."""
    kind, scale = post.kind, post.scale
    with np.errstate(over="ignore"):
        if post.functions == "numpy":
            exp = np.exp  # NumPy's ufunc, in raw's type
        elif raw.dtype == np.float32 and kind in ("sigmoid", "softmax", "exp"):
            return _xgboost_float32_link(kind, scale, raw, expf)
        if kind == "sigmoid":
            return _sigmoid(scale * raw, exp)
        if kind == "softmax":
            shifted = exp(raw - raw.max(axis=1, keepdims=True))
            return shifted / _row_sum(shifted, post.row_sum)
        if kind == "exp":
            return exp(raw)
        if kind == "softplus":
            return libm_log1p(exp(raw))
        if kind == "signed_square":
            return np.sign(raw) * raw * raw
        if kind == "isolation":
            # scikit-learn divides by the expected path length of the full sample, and uses
            # a ratio of 1 when that length is 0 (a forest fit on a single sample).
            ratio = raw / scale if scale != 0 else np.ones_like(raw)
            return -np.power(2.0, -ratio)
    raise ValueError(f"unknown post-transform {kind!r}")


# exp(x) is inf from here on; Python's math.exp raises OverflowError instead.
EXP_OVERFLOW = math.log(np.finfo(np.float64).max)


def libm_exp(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """The C library's double ``exp``, element-wise: what SciPy's ``expit`` (scikit-learn's
    binary links) and LightGBM (C++) call for their float64 links (scikit-learn's log link
    and softmax call NumPy's: ``PostTransform.functions``). NumPy's own float64 exp is another
    implementation where it runs its AVX-512 code: there it differs by an ulp on 4.6 % of
    normal inputs (200 000 measured on an AMD EPYC), enough to move a probability."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1).tolist()
    exp, top = math.exp, EXP_OVERFLOW
    values = [math.inf if v > top else exp(v) for v in flat]  # NaN passes through exp
    return np.array(values, dtype=np.float64).reshape(np.shape(x))


def _row_sum(x: npt.NDArray[np.floating], order: str) -> npt.NDArray[np.floating]:
    """Each row's sum of ``x`` as a column, in ``x``'s type: added from the first column to
    the last (``"sequential"``), or as ``np.sum`` adds a C-ordered row (``"numpy"``: pairwise,
    eight partial sums from 8 columns on)."""
    if order == "numpy":
        out: npt.NDArray[np.floating] = np.ascontiguousarray(x).sum(axis=1, keepdims=True)
        return out
    return np.cumsum(x, axis=1)[:, -1:]


def libm_log1p(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """The C library's ``log1p``, element-wise: LightGBM's softplus calls it (NumPy's log1p
    differs from it by an ulp on 4 % of inputs, AVX-512 measured)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1).tolist()
    return np.array([math.log1p(v) for v in flat], dtype=np.float64).reshape(np.shape(x))


def _sigmoid(z: npt.NDArray[np.floating], exp: Exp) -> npt.NDArray[np.float64]:
    """``1 / (1 + exp(-z))`` with the C library's exp (SciPy's ``expit``, which
    scikit-learn's binary links call, computes exactly this, and fast, where it is
    installed; LightGBM writes the same with ``z = sigmoid * raw``)."""
    try:
        from scipy.special import expit
    except ImportError:
        return 1.0 / (1.0 + exp(-np.asarray(z, dtype=np.float64)))
    out: npt.NDArray[np.float64] = expit(np.asarray(z, dtype=np.float64))
    return out


_libm: Any = None


def libm_expf(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """The C library's float ``expf``, element-wise: what XGBoost's float32 links call.

    It is not the correctly rounded exp (the double exp rounded once to float32): glibc's
    differs from it on 31 of 30 000 softmax probabilities of a 10-class XGBoost model.
    NumPy's float32 exp is a third function, off by an ulp on many inputs. One call
    through ctypes per value; where no C library is found (Windows), the correctly
    rounded exp."""
    global _libm
    if _libm is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("m")
        _libm = ctypes.CDLL(name) if name else False
        if _libm:
            _libm.expf.restype = ctypes.c_float
            _libm.expf.argtypes = [ctypes.c_float]
    values = np.asarray(x, dtype=np.float32)
    if not _libm:
        return np.exp(values.astype(np.float64)).astype(np.float32)
    expf = _libm.expf
    flat = [expf(v) for v in values.reshape(-1).tolist()]
    return np.array(flat, dtype=np.float32).reshape(values.shape)


def _xgboost_float32_link(
    kind: str,
    scale: float,
    raw: npt.NDArray[np.floating],
    expf: Exp,
) -> npt.NDArray[np.floating]:
    """XGBoost's links, step by step in float32 (src/common/math.h)."""
    one = np.float32(1.0)
    if kind == "sigmoid":  # 1 / (expf(min(-x, 88.7)) + 1)
        clamped = np.minimum(-(raw * np.float32(scale)), np.float32(88.7))
        out: npt.NDArray[np.floating] = one / (expf(clamped) + one)
        return out
    if kind == "exp":
        return expf(raw)
    # softmax: expf(x - max), summed in double, divided by that sum rounded to float32.
    e = expf(raw - raw.max(axis=1, keepdims=True))
    total = np.cumsum(e.astype(np.float64), axis=1)[:, -1:].astype(np.float32)
    out = e / total
    return out
