"""The native methods' outputs from a forest's scores: labels, probabilities, margins, anomaly.

An engine scores rows once into ``(raw, transformed)``: raw margins and post-transformed
scores, each ``(n_rows, n_outputs)``. Every prediction method but ``apply`` is one of these
functions of the forest and those scores, so that :class:`~treecomp.CompiledModel` serves
several methods from one pass (``CompiledModel.outputs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from treecomp.ir import Forest


Scores = npt.NDArray[np.float64]


def predict_proba(forest: Forest, raw: Scores, transformed: Scores) -> Scores:
    """Class probabilities: ``[1 - p, p]`` where one output stands for two columns, ``1 - p``
    in the accumulation type (XGBoost's wrapper subtracts its float32 ``p`` from 1.0 in
    float32: 1 481 of 3 000 rows of the 500-tree benchmark model differ in float64)."""
    if forest.proba_columns == 2 and transformed.shape[1] == 1:
        out = np.empty((transformed.shape[0], 2))
        out[:, 1] = transformed[:, 0]
        if forest.accumulation == "float32":
            p = transformed[:, 0].astype(np.float32)
            out[:, 0] = np.float32(1.0) - p
        else:
            np.subtract(1.0, out[:, 1], out=out[:, 0])
        return out
    return transformed


def score_samples(forest: Forest, raw: Scores, transformed: Scores) -> Scores:
    """An outlier detector's anomaly score (lower is more abnormal)."""
    return transformed[:, 0]


def decision_function(forest: Forest, raw: Scores, transformed: Scores) -> Scores:
    """Raw margins of a classifier, or ``score_samples - offset_`` of an outlier detector."""
    if forest.task == "outlier":
        return transformed[:, 0] - forest.decision_offset
    return raw[:, 0] if raw.shape[1] == 1 else raw


def predict(forest: Forest, raw: Scores, transformed: Scores) -> npt.NDArray[Any]:
    """Labels of classifiers and outlier detectors, values of regressors and rankers."""
    if forest.task == "classifier":
        assert forest.classes is not None  # guaranteed by Forest.validate for classifiers
        return forest.classes[_class_index(forest, raw, transformed)]
    if forest.task == "outlier":
        decision = transformed[:, 0] - forest.decision_offset
        return np.where(decision < 0, -1, 1)
    return transformed[:, 0] if transformed.shape[1] == 1 else transformed


def _class_index(forest: Forest, raw: Scores, transformed: Scores) -> npt.NDArray[np.intp]:
    rule = forest.label_rule
    if rule == "argmax_proba":
        return np.argmax(predict_proba(forest, raw, transformed), axis=1)
    if raw.shape[1] > 1:
        return np.argmax(raw, axis=1)
    positive = raw[:, 0] >= 0 if rule == "margin_ge_zero" else raw[:, 0] > 0
    return positive.astype(np.intp)


# Each method computed from the scores, by name.
FROM_SCORES: dict[str, Callable[[Forest, Scores, Scores], npt.NDArray[Any]]] = {
    "predict": predict,
    "predict_proba": predict_proba,
    "decision_function": decision_function,
    "score_samples": score_samples,
}
