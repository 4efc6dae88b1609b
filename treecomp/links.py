"""The forests' links (``treecomp.ir.POST_TRANSFORMS``), each written once.

:func:`program` records a link in :mod:`treecomp.arrays`' vocabulary; the torch module and
the ONNX graph render that program. :mod:`treecomp.reference` keeps its own NumPy links: it
is the oracle the others are tested against. The kernel computes its common links in C.
In-process engines compute NumPy's links (``PostTransform.in_numpy``) with the reference
alone; these programs render them only into exported graphs (within the tolerance table).
"""

from __future__ import annotations

from treecomp.arrays import (
    Program,
    Value,
    exp,
    float32,
    float64,
    log1p,
    minimum,
    record,
    row_max,
    row_sum,
    sign,
    softmax,
)


def program(kind: str, scale: float, accumulation: str) -> Program | None:
    """The link ``kind`` (with its ``scale``) of sums ``(rows, outputs)`` in the
    ``accumulation`` type, computed in that type; None for the identity."""
    if kind == "identity":
        return None
    if kind not in _LINKS:
        raise ValueError(f"unknown post-transform {kind!r}")
    float32_sums = accumulation == "float32"
    if float32_sums and kind in _XGBOOST_FLOAT32:
        idea = _XGBOOST_FLOAT32[kind]
    else:
        idea = _LINKS[kind]
    return record(lambda raw: idea(raw, float(scale)), accumulation)


def _scaled(raw: Value, scale: float) -> Value:
    return raw if scale == 1.0 else raw * scale  # x * 1 is x: no step


def _sigmoid(raw: Value, scale: float) -> Value:
    # 1 / (1 + exp(-x)), as SciPy's expit and LightGBM compute it: ONNX Runtime's Sigmoid
    # kernel loses the relative precision of tiny probabilities (1.11e-15 for LightGBM's
    # 1.0e-15 at a margin of -34.5).
    return 1.0 / (1.0 + exp(-_scaled(raw, scale)))


def _isolation(raw: Value, scale: float) -> Value:
    # scikit-learn divides by the expected path length of the full sample, and uses a ratio
    # of 1 when that length is 0 (a forest fit on a single sample): every score is -2**-1.
    # (The path lengths are finite: raw * 0 is 0.)
    if scale == 0.0:
        return raw * 0.0 - 0.5
    return -(2.0 ** -(raw / scale))


_LINKS = {
    "sigmoid": _sigmoid,
    "softmax": lambda raw, scale: softmax(raw),
    "exp": lambda raw, scale: exp(raw),
    "softplus": lambda raw, scale: log1p(exp(raw)),
    "signed_square": lambda raw, scale: sign(raw) * raw * raw,
    "isolation": _isolation,
}


def _expf(x: Value) -> Value:
    """C's ``expf``, correctly rounded: the double exp rounded once to float32 (torch's and
    ONNX Runtime's float32 exps are off by an ulp on some inputs, enough to move p == 0.5
    ties)."""
    return float32(exp(float64(x)))


def _xgboost_softmax(raw: Value, scale: float) -> Value:
    # expf(x - max), summed in double, divided by that sum rounded to float32.
    e = _expf(raw - row_max(raw))
    return e / float32(row_sum(float64(e)))


# XGBoost's links, step by step in float32 (src/common/math.h).
_XGBOOST_FLOAT32 = {
    "sigmoid": lambda raw, scale: 1.0 / (_expf(minimum(-_scaled(raw, scale), 88.7)) + 1.0),
    "exp": lambda raw, scale: _expf(raw),
    "softmax": _xgboost_softmax,
}
