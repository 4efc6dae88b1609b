"""The native methods' outputs from a forest's scores: labels, probabilities, margins, anomaly.

An engine scores rows once into ``(raw, transformed)``: raw margins and post-transformed
scores, each ``(n_rows, n_outputs)``. Every prediction method but ``apply`` is a function of
the forest and those scores, written once here as a :mod:`treecomp.arrays` program
(:func:`program`): :class:`~treecomp.CompiledModel` runs it with NumPy, serving several
methods from one pass (``CompiledModel.outputs``), and the exported ONNX graph renders it
(:mod:`treecomp.onnx.export`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from treecomp.arrays import (
    Program,
    Value,
    argmax,
    concat,
    float32,
    float64,
    int64,
    numpy_function,
    record,
    squeeze,
    where,
)

if TYPE_CHECKING:
    from treecomp.ir import Forest


Scores = npt.NDArray[np.float64]

# The outputs of each task's program, and the method each answers.
OUTPUTS = {
    "classifier": ("label_index", "probabilities", "decision"),
    "outlier": ("label", "scores", "decision"),
    "regressor": ("scores",),
    "ranker": ("scores",),
}


def program(forest: Forest, scores: str = "float64", *names: str) -> Program:
    """The outputs :data:`OUTPUTS` of ``forest``'s task (or those ``names`` only), from its
    raw and transformed scores of type ``scores`` (float64, or float32 sums before widening:
    the program widens what it gives out), floats given out as float64."""
    return _program(_key(forest), scores, names)


def _key(forest: Forest) -> tuple[Any, ...]:
    """What of ``forest`` its outputs depend on (hashable, so programs are made once)."""
    return (
        forest.task,
        forest.n_outputs,
        forest.proba_columns,
        forest.accumulation,
        forest.label_rule,
        float(forest.decision_offset),
    )


@functools.cache
def _program(key: tuple[Any, ...], scores: str, names: tuple[str, ...]) -> Program:
    if names:
        return _program(key, scores, ()).only(*names)
    task, n_outputs, proba_columns, accumulation, label_rule, decision_offset = key

    def column(x: Value) -> Value:  # one output's scores as a vector
        return squeeze(x) if n_outputs == 1 else x

    def classifier(raw: Value, transformed: Value) -> tuple[Value, ...]:
        proba = float64(transformed)
        if proba_columns == 2 and n_outputs == 1:
            # [1 - p, p], 1 - p in the accumulation type: XGBoost's wrapper subtracts its
            # float32 p from 1.0 in float32 (1 481 of 3 000 rows of the 500-tree benchmark
            # model differ in float64).
            p = float32(transformed) if accumulation == "float32" else transformed
            proba = float64(concat(1.0 - p, p))
        if label_rule == "argmax_proba":
            index = argmax(proba)
        elif n_outputs > 1:
            index = argmax(raw)
        else:
            margin = squeeze(raw)
            index = int64(margin >= 0.0 if label_rule == "margin_ge_zero" else margin > 0.0)
        return index, proba, float64(column(raw))

    def outlier(raw: Value, transformed: Value) -> tuple[Value, ...]:
        anomaly = float64(squeeze(transformed))  # lower is more abnormal
        decision = anomaly - decision_offset
        return where(decision < 0.0, -1, 1), anomaly, decision

    def regressor(raw: Value, transformed: Value) -> tuple[Value, ...]:
        return (float64(column(transformed)),)

    idea = {"classifier": classifier, "outlier": outlier}.get(task, regressor)
    return record(idea, scores, scores, names=OUTPUTS[task])


class NativeOutputs:
    """The native methods of one forest, from its scores ``(raw, transformed)`` as float64
    arrays: the program of :func:`program`, one NumPy function per method (see
    :func:`treecomp.arrays.numpy_function`)."""

    def __init__(self, forest: Forest) -> None:
        self.classes = forest.classes
        self._functions = {
            name: numpy_function(program(forest, "float64", name)) for name in OUTPUTS[forest.task]
        }
        self._predicts = {"classifier": "label_index", "outlier": "label"}.get(
            forest.task, "scores"
        )

    def _output(self, name: str, raw: Scores, transformed: Scores) -> npt.NDArray[Any]:
        if name not in self._functions:
            raise AttributeError(f"this forest's scores have no {name!r}")
        (out,) = self._functions[name](raw, transformed)
        return np.asarray(out)

    def predict(self, raw: Scores, transformed: Scores) -> npt.NDArray[Any]:
        """Labels of classifiers and outlier detectors, values of regressors and rankers."""
        out = self._output(self._predicts, raw, transformed)
        return out if self.classes is None else self.classes[out]

    def predict_proba(self, raw: Scores, transformed: Scores) -> Scores:
        """Class probabilities."""
        return self._output("probabilities", raw, transformed)

    def decision_function(self, raw: Scores, transformed: Scores) -> Scores:
        """Raw margins of a classifier, or ``score_samples - offset_`` of an outlier detector."""
        return self._output("decision", raw, transformed)

    def score_samples(self, raw: Scores, transformed: Scores) -> Scores:
        """An outlier detector's anomaly score (lower is more abnormal)."""
        return self._output("scores", raw, transformed)
