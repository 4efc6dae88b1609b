"""The IR's vocabulary: the values each field of a :class:`~treecomp.ir.Forest` may take, and
the arrays of a :class:`~treecomp.ir.Tree` with their dtypes.

One source for both readers of a forest: ``Forest.validate`` checks a forest built in
memory against it, and :mod:`treecomp.forest_json` a forest document before anything is
built from it. :mod:`treecomp.ir` re-exports every name.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Comparison = Literal["<", "<="]
Aggregation = Literal["sum", "average"]
Task = Literal["classifier", "regressor", "ranker", "outlier"]
FloatType = Literal["float32", "float64"]
COMPARISONS: tuple[str, ...] = get_args(Comparison)
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
TASKS: tuple[str, ...] = get_args(Task)
FLOAT_TYPES: tuple[str, ...] = get_args(FloatType)
# How a classifier turns scores into labels (the native libraries differ at the tie point):
#   "argmax_proba"   argmax of predict_proba (first column wins ties): RF, XGBoost, LightGBM
#   "margin_ge_zero" binary: margin >= 0 is the positive class, else argmax of margins (sklearn GB)
#   "margin_gt_zero" binary: margin > 0 is the positive class, else argmax of margins (sklearn HGB)
LABEL_RULES = ("argmax_proba", "margin_ge_zero", "margin_gt_zero")
# When Forest.categories re-encodes an input column to the codes the trees saw:
#   "pandas" only pandas 'category' columns (LightGBM, XGBoost); numbers pass through as codes
#   "always" every input of that feature, numbers included (HistGradientBoosting's OrdinalEncoder)
CATEGORY_ENCODINGS = ("pandas", "always")
# Which non-missing values can be a listed category (see treecomp.ir's module docstring):
#   "truncate"    x > -1, so -0.5 truncates to category 0 (LightGBM, scikit-learn)
#   "nonnegative" x >= 0: every negative value is unlisted (XGBoost)
CATEGORY_DOMAINS = ("truncate", "nonnegative")
# How the native library turns a DataFrame's numeric columns into its input type
# (Forest.input_dtype); it matters only where that is float32 and a column holds integers
# wider than 24 bits, which round differently straight to float32 and through float64:
#   "common"  through the columns' common type, as DataFrame.to_numpy gives it (object
#             beside an object or string column; scikit-learn; LightGBM, whose input is
#             float64 anyway); per column where a column is boolean or a nullable number type
#             (scikit-learn casts those first)
#   "columns" each column straight to the input type (XGBoost)
FRAME_CASTS = ("common", "columns")

# LightGBM's kZeroThreshold: a float literal (1e-35f) widened to double.
ZERO_THRESHOLD = float(np.float32(1e-35))

POST_TRANSFORMS = (
    "identity",  # raw score
    "sigmoid",  # 1 / (1 + exp(-scale * x)), per output
    "softmax",  # over all outputs
    "exp",  # Poisson, Gamma, Tweedie: exp(x)
    "softplus",  # LightGBM cross_entropy_lambda: log(1 + exp(x))
    "signed_square",  # LightGBM reg_sqrt: sign(x) * x**2
    "isolation",  # IsolationForest score_samples: -2 ** (-x / scale), ratio 1 when scale == 0
)
# Whose functions a link calls, as the native library computes it (PostTransform.functions):
#   "libm"  the C library's exp, expf and log1p, from C, C++ or Cython: LightGBM, XGBoost's
#           C links, SciPy's expit (scikit-learn's binary links)
#   "numpy" NumPy's ufuncs (np.exp, np.power) in the accumulation type: scikit-learn's log
#           link and softmax, XGBClassifier's multi:softmax predict_proba (scipy.special.
#           softmax). Where NumPy runs SIMD code (AVX-512) they differ from libm's by an ulp.
LINK_FUNCTIONS = ("libm", "numpy")
# How softmax adds a row of exps (PostTransform.row_sum):
#   "sequential" first class to last: LightGBM, XGBoost, HistGradientBoosting (whose
#                F-ordered margins np.sum adds column by column)
#   "numpy"      np.sum along a C-ordered row, pairwise (eight partial sums from 8 classes
#                on): GradientBoostingClassifier, XGBClassifier's multi:softmax
ROW_SUMS = ("sequential", "numpy")
METHODS = ("predict", "predict_proba", "decision_function", "score_samples", "apply")

# The arrays of a Tree, in its field order, with the dtype each must have (``value`` is the
# one two-dimensional array).
TREE_DTYPES: dict[str, type[np.generic]] = {
    "left_child": np.int32,
    "right_child": np.int32,
    "feature": np.int32,
    "threshold": np.float64,
    "default_left": np.bool_,
    "zero_is_missing": np.bool_,
    "is_categorical": np.bool_,
    "category_offsets": np.int64,
    "category_values": np.int64,
    "value": np.float64,
    "leaf_id": np.int64,
}
TREE_ARRAYS = tuple(TREE_DTYPES)
