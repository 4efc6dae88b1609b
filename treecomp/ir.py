"""The neutral tree IR: every frontend parses into it, every backend lowers from it.

A :class:`Forest` is a tuple of :class:`Tree` objects plus everything needed to turn the
per-tree leaf values into the native library's outputs. Each tree is a struct of NumPy
arrays indexed by node id, named as in treelite v4. Nothing here knows which library a
forest came from: library quirks are resolved by the frontends.

Decision semantics of an internal node ``i`` for an input value ``x`` (already cast to the
forest's ``input_dtype``; see :mod:`treecomp.reference` for the executable definition):

* ``x`` is *missing* when it is NaN, or when ``zero_is_missing[i]`` and ``|x| <= ZERO_THRESHOLD``
  (LightGBM's ``missing_type=Zero``). A missing value goes left iff ``default_left[i]``.
* Numerical split: go left iff ``x < threshold[i]`` (``comparison == "<"``) or
  ``x <= threshold[i]`` (``comparison == "<="``). ``±inf`` compare as ordinary values.
* Categorical split (``is_categorical[i]``): go left iff ``x`` is in the forest's
  ``category_domain`` (``x > -1`` for ``"truncate"``, LightGBM's rule; ``x >= 0`` for
  ``"nonnegative"``, XGBoost's) and ``trunc(x)`` (rounded toward zero) is one of the node's
  categories, stored in
  ``category_values[category_offsets[i]:category_offsets[i + 1]]``. Every other non-missing
  value, ``±inf`` included, goes right.

Leaves carry a vector ``value[i, :]`` of width ``leaf_width``; tree ``t`` adds it to the outputs
``output_index[t] : output_index[t] + leaf_width`` of the forest.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import numpy as np
import numpy.typing as npt

from treecomp.errors import InvalidForestError

# LightGBM's kZeroThreshold: a float literal (1e-35f) widened to double.
ZERO_THRESHOLD = float(np.float32(1e-35))

Comparison = Literal["<", "<="]
Aggregation = Literal["sum", "average"]
Task = Literal["classifier", "regressor", "ranker", "outlier"]
# How a classifier turns scores into labels (the native libraries differ at the tie point):
#   "argmax_proba"   argmax of predict_proba (first column wins ties): RF, XGBoost, LightGBM
#   "margin_ge_zero" binary: margin >= 0 is the positive class, else argmax of margins (sklearn GB)
#   "margin_gt_zero" binary: margin > 0 is the positive class, else argmax of margins (sklearn HGB)
LABEL_RULES = ("argmax_proba", "margin_ge_zero", "margin_gt_zero")
# When Forest.categories re-encodes an input column to the codes the trees saw:
#   "pandas" only pandas 'category' columns (LightGBM, XGBoost); numbers pass through as codes
#   "always" every input of that feature, numbers included (HistGradientBoosting's OrdinalEncoder)
CATEGORY_ENCODINGS = ("pandas", "always")
# Which non-missing values can be a listed category (see the module docstring):
#   "truncate"    x > -1, so -0.5 truncates to category 0 (LightGBM, scikit-learn)
#   "nonnegative" x >= 0: every negative value is unlisted (XGBoost)
CATEGORY_DOMAINS = ("truncate", "nonnegative")

POST_TRANSFORMS = (
    "identity",  # raw score
    "sigmoid",  # 1 / (1 + exp(-scale * x)), per output
    "softmax",  # over all outputs
    "exp",  # Poisson, Gamma, Tweedie: exp(x)
    "softplus",  # LightGBM cross_entropy_lambda: log(1 + exp(x))
    "signed_square",  # LightGBM reg_sqrt: sign(x) * x**2
    "isolation",  # IsolationForest score_samples: -2 ** (-x / scale), ratio 1 when scale == 0
)
METHODS = ("predict", "predict_proba", "decision_function", "score_samples", "apply")
JSON_FORMAT = "treecomp.forest"
JSON_VERSION = 1


@dataclass(frozen=True, slots=True)
class PostTransform:
    """The link applied to aggregated raw scores to produce the native prediction.

    Attributes:
        kind: One of :data:`POST_TRANSFORMS`.
        scale: Sigmoid slope, or the isolation forest's normalising path length.
    """

    kind: str = "identity"
    scale: float = 1.0


@dataclass(frozen=True, slots=True, eq=False)
class Tree:
    """One decision tree as a struct of arrays indexed by node id (node 0 is the root).

    Attributes:
        left_child: int32, child taken when the test holds; -1 at leaves.
        right_child: int32, the other child; -1 at leaves.
        feature: int32 feature tested by the node; -1 at leaves.
        threshold: float64 split threshold; NaN at leaves and categorical nodes.
        default_left: bool, where a missing value goes.
        zero_is_missing: bool, treat ``|x| <= ZERO_THRESHOLD`` as missing too.
        is_categorical: bool, node tests category membership instead of a threshold.
        category_offsets: int64, CSR offsets (length ``n_nodes + 1``) into ``category_values``.
        category_values: int64, sorted non-negative categories that go left, per node.
        value: float64 ``(n_nodes, leaf_width)`` leaf values (rows of internal nodes unused).
        leaf_id: int64 number the native library reports for each leaf in ``apply``; -1
            at internal nodes.
        output_index: first forest output this tree's leaf vector is added to.
    """

    left_child: npt.NDArray[np.int32]
    right_child: npt.NDArray[np.int32]
    feature: npt.NDArray[np.int32]
    threshold: npt.NDArray[np.float64]
    default_left: npt.NDArray[np.bool_]
    zero_is_missing: npt.NDArray[np.bool_]
    is_categorical: npt.NDArray[np.bool_]
    category_offsets: npt.NDArray[np.int64]
    category_values: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    leaf_id: npt.NDArray[np.int64]
    output_index: int = 0

    @property
    def n_nodes(self) -> int:
        """Number of nodes, leaves included."""
        return int(self.left_child.shape[0])

    @property
    def leaf_width(self) -> int:
        """Length of the value vector stored at each leaf."""
        return int(self.value.shape[1])

    @property
    def is_leaf(self) -> npt.NDArray[np.bool_]:
        """Boolean mask of leaf nodes."""
        return self.left_child < 0

    def depth(self) -> int:
        """Length of the longest root-to-leaf path (0 for a single leaf)."""
        return int(tree_depths([self])[0])

    def categories(self, node: int) -> npt.NDArray[np.int64]:
        """The categories that go left at ``node`` (empty for numerical nodes)."""
        lo, hi = self.category_offsets[node], self.category_offsets[node + 1]
        return self.category_values[lo:hi]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return self.output_index == other.output_index and all(
            _arrays_equal(getattr(self, name), getattr(other, name)) for name in _TREE_ARRAYS
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def build(
        cls,
        *,
        left_child: Any,
        right_child: Any,
        feature: Any,
        threshold: Any,
        value: Any,
        default_left: Any = None,
        zero_is_missing: Any = None,
        leaf_id: Any = None,
        categories: dict[int, Any] | None = None,
        output_index: int = 0,
    ) -> Tree:
        """Build a tree from array-likes, filling the optional fields with their defaults.

        Args:
            left_child: Left child per node, -1 at leaves.
            right_child: Right child per node, -1 at leaves.
            feature: Feature per node (anything at leaves; normalised to -1).
            threshold: Threshold per node (normalised to NaN at leaves and categorical nodes).
            value: Leaf values, shape ``(n_nodes,)`` or ``(n_nodes, leaf_width)``.
            default_left: Missing-value direction per node; all True when omitted.
            zero_is_missing: Per node; all False when omitted.
            leaf_id: Native leaf number per node; the node id when omitted.
            categories: ``{node: categories that go left}`` for categorical nodes.
            output_index: First output the tree contributes to.

        Returns:
            The tree (not yet validated: :meth:`Forest.validate` checks it).
        """
        left = np.asarray(left_child, dtype=np.int32).copy()
        n = left.shape[0]
        leaf = left < 0
        value_arr = np.asarray(value, dtype=np.float64)
        if value_arr.ndim == 1:
            value_arr = value_arr[:, None]
        feature_arr = np.where(leaf, -1, np.asarray(feature, dtype=np.int64)).astype(np.int32)
        is_cat = np.zeros(n, dtype=bool)
        offsets = np.zeros(n + 1, dtype=np.int64)
        cat_lists: list[npt.NDArray[np.int64]] = []
        for node in sorted(categories or {}):
            is_cat[node] = True
        if categories:
            counts = np.zeros(n, dtype=np.int64)
            for node, cats in categories.items():
                counts[node] = len(np.unique(np.asarray(cats, dtype=np.int64)))
            offsets[1:] = np.cumsum(counts)
            cat_lists = [
                np.unique(np.asarray(categories[node], dtype=np.int64))
                for node in sorted(categories)
            ]
        threshold_arr = np.asarray(threshold, dtype=np.float64).copy()
        threshold_arr[leaf | is_cat] = np.nan
        return cls(
            left_child=left,
            right_child=np.asarray(right_child, dtype=np.int32).copy(),
            feature=feature_arr,
            threshold=threshold_arr,
            default_left=(
                np.ones(n, dtype=bool)
                if default_left is None
                else np.asarray(default_left, dtype=bool).copy()
            ),
            zero_is_missing=(
                np.zeros(n, dtype=bool)
                if zero_is_missing is None
                else np.asarray(zero_is_missing, dtype=bool).copy()
            ),
            is_categorical=is_cat,
            category_offsets=offsets,
            category_values=(
                np.concatenate(cat_lists) if cat_lists else np.zeros(0, dtype=np.int64)
            ),
            value=np.ascontiguousarray(value_arr),
            leaf_id=np.where(
                leaf,
                np.arange(n) if leaf_id is None else np.asarray(leaf_id, dtype=np.int64),
                -1,
            ).astype(np.int64),
            output_index=int(output_index),
        )


def node_depths(trees: tuple[Tree, ...] | list[Tree]) -> npt.NDArray[np.int64]:
    """Depth of every node of every tree, concatenated (-1 for unreachable nodes).

    All trees are walked together, one level per step, so the cost is a few NumPy calls
    per level of the deepest tree, not per tree.

    Raises:
        InvalidForestError: naming the first tree where a child index is out of range or a
            node is reached twice (a cycle or a shared child).
    """
    sizes = np.array([t.n_nodes for t in trees], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    owner = np.repeat(np.arange(len(trees)), sizes)
    local_left = np.concatenate([t.left_child for t in trees]).astype(np.int64)
    local_right = np.concatenate([t.right_child for t in trees]).astype(np.int64)
    internal = local_left >= 0
    bad = internal & (
        (local_left < 1)
        | (local_left >= sizes[owner])
        | (local_right < 1)
        | (local_right >= sizes[owner])
    )
    if np.any(bad):
        raise InvalidForestError(f"tree {owner[np.argmax(bad)]}: child index out of range")
    left = np.where(internal, local_left + offsets[owner], -1)
    right = np.where(internal, local_right + offsets[owner], -1)
    depth = np.full(int(sizes.sum()), -1, dtype=np.int64)
    depth[offsets] = 0
    frontier = offsets
    level = 0
    while frontier.size:
        parents = frontier[left[frontier] >= 0]
        children = np.concatenate([left[parents], right[parents]])
        revisited = depth[children] >= 0
        if np.any(revisited) or np.unique(children).size != children.size:
            if not np.any(revisited):
                values, counts = np.unique(children, return_counts=True)
                revisited = np.isin(children, values[counts > 1])
            tree = owner[children[np.argmax(revisited)]]
            raise InvalidForestError(
                f"tree {tree}: a node is reached twice (cycle or shared child)"
            )
        level += 1
        depth[children] = level
        frontier = children
    return depth


def tree_depths(trees: tuple[Tree, ...] | list[Tree]) -> npt.NDArray[np.int64]:
    """Depth of each tree (0 for a single leaf)."""
    depth = node_depths(trees)
    sizes = np.array([t.n_nodes for t in trees], dtype=np.int64)
    return np.maximum.reduceat(depth, np.concatenate([[0], np.cumsum(sizes)[:-1]]))


_TREE_ARRAYS = tuple(f.name for f in dataclasses.fields(Tree) if f.name != "output_index")
_TREE_DTYPES = {
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


@dataclass(frozen=True, slots=True, eq=False)
class Forest:
    """A tree ensemble with everything needed to reproduce the native predictions.

    Attributes:
        trees: The trees, in the native library's order (the column order of ``apply``).
        n_features: Number of input features.
        n_outputs: Number of raw score columns (1 for binary classification).
        comparison: ``"<"`` (XGBoost) or ``"<="`` (scikit-learn, LightGBM).
        aggregation: ``"sum"`` or ``"average"``; an average divides each output by the number
            of trees that contribute to it.
        base_score: float64 ``(n_outputs,)`` added after aggregation, in margin space.
        accumulation: Precision of the sums and the post-transform: ``"float64"``
            (scikit-learn, LightGBM) or ``"float32"`` (XGBoost adds leaves to the base margin
            one by one in float32, then applies its link in float32).
        post_transform: Link from raw scores to predictions.
        task: ``"classifier"``, ``"regressor"``, ``"ranker"`` or ``"outlier"``.
        methods: Prediction methods the native model offers (subset of :data:`METHODS`).
        classes: Class labels of a classifier (any dtype), else None. A classifier fitted on
            one class has one output: with no link (bagged class fractions) it is the lone
            probability column, as scikit-learn's forests report it; with a link (a binary
            objective fitted on one label) ``predict_proba`` has the two binary columns, as
            HistGradientBoosting and LightGBM report it (see :attr:`proba_columns`).
        feature_names: Names of the input columns when the native model knows them.
        ignored_columns: DataFrame columns the native ``predict`` drops before reading the
            features (XGBRanker's ``qid``, which only groups rows into queries).
        check_feature_names: Whether a DataFrame's columns must match ``feature_names``
            (scikit-learn and XGBoost check; LightGBM takes columns by position).
        categories: Per feature, the category values whose positions are the codes the trees
            see, or None; unknown values become missing. ``category_encoding`` says when.
        category_encoding: One of :data:`CATEGORY_ENCODINGS`.
        category_domain: One of :data:`CATEGORY_DOMAINS`.
        label_rule: One of :data:`LABEL_RULES`.
        input_dtype: Dtype the native library casts inputs to before comparing
            (``"float32"`` for XGBoost and scikit-learn trees, ``"float64"`` otherwise).
        integer_input_dtype: Dtype integer and boolean arrays are first converted to
            (LightGBM converts them to float32, so 2**24 + 1 becomes 2**24).
        missing_value: An extra input value that means "missing" (XGBoost's ``missing=``);
            NaN always means missing.
        allow_nan: Whether the native model accepts NaN inputs (GradientBoosting does not).
        allow_inf: Whether it accepts infinite inputs (scikit-learn trees reject values that
            overflow float32).
        leaf_shape: Per-row shape of the native ``apply`` output; its product is the tree count.
        decision_offset: Subtracted from ``score_samples`` by ``decision_function`` (outliers).
    """

    trees: tuple[Tree, ...]
    n_features: int
    n_outputs: int
    comparison: Comparison
    aggregation: Aggregation = "sum"
    base_score: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(1))
    accumulation: Literal["float64", "float32"] = "float64"
    post_transform: PostTransform = PostTransform()
    task: Task = "regressor"
    methods: tuple[str, ...] = ("predict",)
    classes: npt.NDArray[Any] | None = None
    feature_names: tuple[str, ...] | None = None
    check_feature_names: bool = True
    ignored_columns: tuple[str, ...] = ()
    categories: tuple[tuple[Any, ...] | None, ...] | None = None
    category_encoding: Literal["pandas", "always"] = "pandas"
    category_domain: Literal["truncate", "nonnegative"] = "truncate"
    label_rule: str = "argmax_proba"
    input_dtype: Literal["float32", "float64"] = "float64"
    integer_input_dtype: Literal["float32", "float64"] = "float64"
    missing_value: float = float("nan")
    allow_nan: bool = True
    allow_inf: bool = True
    leaf_shape: tuple[int, ...] = ()
    decision_offset: float = 0.0

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return len(self.trees)

    @property
    def n_classes(self) -> int:
        """Number of classes (0 for non-classifiers)."""
        return 0 if self.classes is None else len(self.classes)

    @property
    def proba_columns(self) -> int:
        """Columns of ``predict_proba`` (0 for non-classifiers): ``[1 - p, p]`` for one output
        of two classes, or of one class behind a link; else one per output."""
        if self.task != "classifier":
            return 0
        if self.n_outputs == 1 and (self.n_classes == 2 or self.post_transform.kind != "identity"):
            return 2
        return self.n_outputs

    def trees_per_output(self) -> npt.NDArray[np.int64]:
        """How many trees add to each output (the divisor of an average)."""
        counts = np.zeros(self.n_outputs, dtype=np.int64)
        for tree in self.trees:
            counts[tree.output_index : tree.output_index + tree.leaf_width] += 1
        return counts

    def max_depth(self) -> int:
        """Depth of the deepest tree."""
        return int(tree_depths(self.trees).max())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Forest):
            return NotImplemented
        return _to_document(self) == _to_document(other)

    __hash__ = None  # type: ignore[assignment]

    # ----------------------------------------------------------------------------------
    def validate(self) -> Forest:
        """Check every invariant of the IR.

        Returns:
            ``self``, so that frontends can ``return forest.validate()``.

        Raises:
            InvalidForestError: naming the tree, node and broken invariant.
        """
        if not self.trees:
            raise InvalidForestError("the forest has no trees")
        _check(
            isinstance(self.n_features, int) and 1 <= self.n_features < 2**31,
            f"n_features must be in [1, 2**31), got {self.n_features}",
        )
        _check(
            all(type(d) is int and d >= 1 for d in self.leaf_shape),
            f"leaf_shape must hold positive sizes, got {self.leaf_shape}",
        )
        _check(self.n_outputs >= 1, f"n_outputs must be >= 1, got {self.n_outputs}")
        _check(
            self.comparison in ("<", "<="),
            f"comparison must be '<' or '<=', got {self.comparison!r}",
        )
        _check(self.aggregation in ("sum", "average"), f"unknown aggregation {self.aggregation!r}")
        _check(
            self.task in ("classifier", "regressor", "ranker", "outlier"),
            f"unknown task {self.task!r}",
        )
        _check(
            self.post_transform.kind in POST_TRANSFORMS,
            f"unknown post-transform {self.post_transform.kind!r}",
        )
        _check(self.label_rule in LABEL_RULES, f"unknown label_rule {self.label_rule!r}")
        _check(
            self.category_domain in CATEGORY_DOMAINS,
            f"unknown category_domain {self.category_domain!r}",
        )
        _check(
            self.category_encoding in CATEGORY_ENCODINGS,
            f"unknown category_encoding {self.category_encoding!r}",
        )
        _check(
            self.input_dtype in ("float32", "float64"), f"unknown input_dtype {self.input_dtype!r}"
        )
        _check(
            self.accumulation in ("float32", "float64"),
            f"unknown accumulation {self.accumulation!r}",
        )
        _check(
            self.integer_input_dtype in ("float32", "float64"),
            f"unknown integer_input_dtype {self.integer_input_dtype!r}",
        )
        _check(
            set(self.methods) <= set(METHODS),
            f"unknown methods {sorted(set(self.methods) - set(METHODS))}",
        )
        base = np.asarray(self.base_score)
        _check(
            base.dtype == np.float64 and base.shape == (self.n_outputs,),
            f"base_score must be float64 of shape ({self.n_outputs},), "
            f"got {base.dtype} {base.shape}",
        )
        # -inf is a margin: XGBoost's log-link intercept of a model fitted on all-zero counts.
        _check(
            not bool(np.any(np.isnan(base) | (base == np.inf))),
            "base_score must be finite or -inf",
        )
        _check(
            math.prod(self.leaf_shape) == self.n_trees,  # Python ints: a product cannot wrap
            f"leaf_shape {self.leaf_shape} does not hold {self.n_trees} trees",
        )
        if self.task == "classifier":
            _check(
                self.classes is not None and len(self.classes) >= 1, "a classifier needs classes"
            )
            assert self.classes is not None
            expected = 1 if len(self.classes) <= 2 else len(self.classes)
            _check(
                self.n_outputs in (expected, len(self.classes)),
                f"{len(self.classes)} classes need {expected} outputs, got {self.n_outputs}",
            )
        if self.feature_names is not None:
            _check(
                len(self.feature_names) == self.n_features,
                f"{len(self.feature_names)} feature names for {self.n_features} features",
            )
        if self.categories is not None:
            _check(
                len(self.categories) == self.n_features,
                f"categories given for {len(self.categories)} of {self.n_features} features",
            )
        if self.aggregation == "average":
            _check(bool(np.all(self.trees_per_output() > 0)), "an averaged output has no trees")
        for t, tree in enumerate(self.trees):
            _validate_tree(tree, t, self.n_features, self.n_outputs)
        # Every node reachable from the root exactly once: each tree is a tree, not a DAG.
        node_depths(self.trees)
        return self

    # ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready document :meth:`to_json` writes (arrays as base64 of their bytes)."""
        return _to_document(self)

    @classmethod
    def from_dict(cls, doc: Any, *, size: int | None = None) -> Forest:
        """Rebuild a forest from :meth:`to_dict`'s document, validating it.

        Args:
            doc: The document (parsed JSON).
            size: Bytes of the file ``doc`` was parsed from: decoding never allocates more
                than a small multiple of it. Measured from ``doc`` when None.

        Raises:
            InvalidForestError: naming the field that is missing, of the wrong type or out
                of range, or the invariant the forest breaks.
        """
        if size is None:
            try:
                size = len(json.dumps(doc, separators=(",", ":")))
            except (TypeError, ValueError, RecursionError):
                raise InvalidForestError("not a treecomp forest document (not JSON data)") from None
        return _from_document(doc, size)

    def to_json(self) -> str:
        """Serialise losslessly (every array keeps its dtype and every bit) to JSON text."""
        return json.dumps(_to_document(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Forest:
        """Rebuild a forest written by :meth:`to_json`, validating it.

        Raises:
            InvalidForestError: the text is not a treecomp forest document or is malformed.
        """
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidForestError(f"not a JSON document: {exc}") from None
        return _from_document(doc, len(text))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidForestError(message)


def _validate_tree(tree: Tree, t: int, n_features: int, n_outputs: int) -> None:
    where = f"tree {t}"
    n = tree.n_nodes
    _check(n >= 1, f"{where} has no nodes")
    for name, dtype in _TREE_DTYPES.items():
        arr = getattr(tree, name)
        _check(
            isinstance(arr, np.ndarray) and arr.dtype == dtype,
            f"{where}: {name} must be a {np.dtype(dtype).name} array",
        )
        expected_len = n + 1 if name == "category_offsets" else n
        if name != "category_values":
            _check(
                arr.shape[0] == expected_len,
                f"{where}: {name} has {arr.shape[0]} rows, expected {expected_len}",
            )
    _check(
        tree.value.ndim == 2 and tree.value.shape[1] >= 1,
        f"{where}: value must be (n_nodes, width)",
    )
    _check(
        0 <= tree.output_index and tree.output_index + tree.leaf_width <= n_outputs,
        f"{where}: outputs {tree.output_index}..{tree.output_index + tree.leaf_width} "
        f"exceed {n_outputs}",
    )
    leaf = tree.left_child < 0
    _check(bool(np.all((tree.right_child < 0) == leaf)), f"{where}: a node has exactly one child")
    internal = ~leaf
    children = np.concatenate([tree.left_child[internal], tree.right_child[internal]])
    _check(bool(np.all((children > 0) & (children < n))), f"{where}: child index out of range")
    _check(
        bool(np.all((tree.feature[internal] >= 0) & (tree.feature[internal] < n_features))),
        f"{where}: feature index out of range [0, {n_features})",
    )
    numeric = internal & ~tree.is_categorical
    _check(not bool(np.any(np.isnan(tree.threshold[numeric]))), f"{where}: NaN threshold")
    _check(bool(np.all(np.isfinite(tree.value[leaf]))), f"{where}: non-finite leaf value")
    _check(bool(np.all(tree.leaf_id[leaf] >= 0)), f"{where}: negative leaf id")
    _check(not bool(np.any(tree.is_categorical & leaf)), f"{where}: a leaf is marked categorical")
    offsets = tree.category_offsets
    _check(
        offsets[0] == 0
        and offsets[-1] == tree.category_values.shape[0]
        and bool(np.all(np.diff(offsets) >= 0)),
        f"{where}: category_offsets are not a CSR index of category_values",
    )
    _check(
        bool(np.all((tree.category_values >= 0) & (tree.category_values < 2**31))),
        f"{where}: categories must lie in [0, 2**31)",
    )
    _check(
        not bool(np.any((np.diff(offsets) > 0) & ~tree.is_categorical)),
        f"{where}: a numerical node lists categories",
    )


# -------------------------------------------------------------------------------------------
# JSON: arrays are stored as base64 of their little-endian bytes, so that every bit survives.


def _encode_array(arr: npt.NDArray[Any]) -> dict[str, Any]:
    arr = np.ascontiguousarray(arr)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    return {
        "dtype": dtype.str,
        "shape": list(arr.shape),
        "data": base64.b64encode(arr.astype(dtype, copy=False).tobytes()).decode("ascii"),
    }


def _encode_labels(classes: npt.NDArray[Any] | None) -> dict[str, Any] | None:
    if classes is None:
        return None
    if classes.dtype == object:
        return {"dtype": "object", "values": [_plain(v) for v in classes.tolist()]}
    return {"dtype": classes.dtype.str, "values": [_plain(v) for v in classes.tolist()]}


def _plain(value: Any) -> Any:
    """A JSON-safe scalar; floats travel as hex so that they keep every bit."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return {"float": float(value).hex()}
    if isinstance(value, str):
        return value
    raise InvalidForestError(
        f"cannot serialise label or category {value!r} of type {type(value).__name__}"
    )


def _to_document(forest: Forest) -> dict[str, Any]:
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "n_features": forest.n_features,
        "n_outputs": forest.n_outputs,
        "comparison": forest.comparison,
        "aggregation": forest.aggregation,
        "base_score": _encode_array(np.asarray(forest.base_score)),
        "accumulation": forest.accumulation,
        "post_transform": {
            "kind": forest.post_transform.kind,
            "scale": float(forest.post_transform.scale).hex(),
        },
        "task": forest.task,
        "methods": list(forest.methods),
        "classes": _encode_labels(forest.classes),
        "feature_names": None if forest.feature_names is None else list(forest.feature_names),
        "check_feature_names": forest.check_feature_names,
        "ignored_columns": list(forest.ignored_columns),
        "categories": None
        if forest.categories is None
        else [None if c is None else [_plain(v) for v in c] for c in forest.categories],
        "category_encoding": forest.category_encoding,
        "category_domain": forest.category_domain,
        "label_rule": forest.label_rule,
        "input_dtype": forest.input_dtype,
        "integer_input_dtype": forest.integer_input_dtype,
        "missing_value": float(forest.missing_value).hex(),
        "allow_nan": forest.allow_nan,
        "allow_inf": forest.allow_inf,
        "leaf_shape": list(forest.leaf_shape),
        "decision_offset": float(forest.decision_offset).hex(),
        "trees": [
            {
                "output_index": tree.output_index,
                **{name: _encode_array(getattr(tree, name)) for name in _TREE_ARRAYS},
            }
            for tree in forest.trees
        ],
    }


# -------------------------------------------------------------------------------------------
# Reading a document back. Every field is checked against what _to_document writes (its JSON
# type, its range and, for arrays, the exact dtype) before anything is built from it, so a
# crafted document gets an InvalidForestError naming the field: never a coerced value
# (``bool(None)`` is False), a product that wraps, or an allocation its bytes do not pay for.
# An artifact's checksum is no defence here: whoever crafts a file can compute it.

# Known versions of the forest document.
JSON_VERSIONS = (1,)
# Label arrays are the one thing a document sizes by a declared dtype rather than by its
# bytes (``<U500000000`` is 2 GB per label, whatever the label's text): their memory is
# bounded by this many bytes per byte of the document. Arrays of the trees decode to at most
# their base64 text's size, and the JSON parse itself takes under 30 bytes per byte (28 for
# a list of empty objects), so a document of N bytes decodes in under 50 N bytes.
LABEL_BYTES_PER_DOCUMENT_BYTE = 16
# Dtypes the class labels may have: what NumPy gives labels read by the frontends.
_LABEL_DTYPES = re.compile(r"[<>|](b1|[iu][1248]|f[248]|U[1-9][0-9]{0,9})")
_LABEL_TYPES = {"b": (bool,), "i": (int,), "u": (int,), "f": (dict,), "U": (str,)}
_INDEX_LIMIT = 2**31 - 1  # features, outputs and output indices are int32 in the lowerings
_DOCUMENT_FIELDS = (
    "format",
    "version",
    "n_features",
    "n_outputs",
    "comparison",
    "aggregation",
    "base_score",
    "accumulation",
    "post_transform",
    "task",
    "methods",
    "classes",
    "feature_names",
    "check_feature_names",
    "ignored_columns",
    "categories",
    "category_encoding",
    "category_domain",
    "label_rule",
    "input_dtype",
    "integer_input_dtype",
    "missing_value",
    "allow_nan",
    "allow_inf",
    "leaf_shape",
    "decision_offset",
    "trees",
)
_OPTIONAL_FIELDS = ("ignored_columns",)  # absent from documents written before it existed


def _show(value: Any) -> str:
    """A short description of a JSON value for an error message (never the whole value)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return f"an object with {len(value)} fields"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _malformed(where: str, expected: str, value: Any) -> NoReturn:
    raise InvalidForestError(
        f"malformed forest document: {where} must be {expected}, got {_show(value)}"
    )


def _object(doc: Any, where: str, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> Any:
    """``doc`` when it is a JSON object with exactly ``fields`` (``optional`` may be absent)."""
    if type(doc) is not dict:
        _malformed(where, "an object", doc)
    missing = [name for name in fields if name not in doc and name not in optional]
    if missing:
        raise InvalidForestError(f"malformed forest document: {where} lacks {missing}")
    unknown = [name for name in doc if name not in fields]
    if unknown:
        raise InvalidForestError(
            f"malformed forest document: {where} has unknown fields "
            f"{[_show(name) for name in unknown[:5]]}"
        )
    return doc


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:  # bool is not an int here
        _malformed(where, f"an integer in [{low}, {high}]", value)
    return value


def _flag(value: Any, where: str) -> bool:
    if type(value) is not bool:
        _malformed(where, "true or false", value)
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> Any:
    if type(value) is not str or value not in choices:
        _malformed(where, f"one of {list(choices)}", value)
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if type(value) is not list or any(type(v) is not str for v in value):
        _malformed(where, "a list of strings", value)
    return tuple(value)


def _hex_float(value: Any, where: str, *, finite: bool) -> float:
    """A float written with ``float.hex`` (every bit kept)."""
    if type(value) is str:
        try:
            number = float.fromhex(value)
        except (ValueError, OverflowError):
            pass
        else:
            if math.isfinite(number) or not finite:
                return number
    _malformed(where, f"a {'finite ' if finite else ''}float in hex (float.hex)", value)


def _scalar(value: Any, where: str) -> Any:
    """A label or category: a string, integer or bool as is, a float as ``{"float": hex}``."""
    if type(value) in (str, int, bool):
        return value
    if type(value) is dict and list(value) == ["float"]:
        return _hex_float(value["float"], f"{where}.float", finite=False)
    _malformed(where, 'a string, an integer, true, false or {"float": hex}', value)


def _decode_array(doc: Any, where: str, dtype: Any, ndim: int) -> npt.NDArray[Any]:
    """An array of exactly ``dtype`` (little-endian) and ``ndim`` dimensions whose data holds
    exactly the bytes its shape needs: the shape cannot ask for memory the data lacks."""
    _object(doc, where, ("dtype", "shape", "data"))
    expected = np.dtype(dtype).newbyteorder("<")
    if doc["dtype"] != expected.str:
        _malformed(f"{where}.dtype", repr(expected.str), doc["dtype"])
    shape = doc["shape"]
    if type(shape) is not list or len(shape) != ndim or any(type(s) is not int for s in shape):
        _malformed(f"{where}.shape", f"a list of {ndim} integers", shape)
    if any(s < 0 for s in shape):
        _malformed(f"{where}.shape", "non-negative", shape)
    data = doc["data"]
    try:
        if type(data) is not str:
            raise TypeError
        raw = base64.b64decode(data, validate=True)
    except (TypeError, ValueError, binascii.Error):
        _malformed(f"{where}.data", "base64 text", data)
    if len(raw) != math.prod(shape) * expected.itemsize:  # Python ints: no wrap-around
        raise InvalidForestError(
            f"malformed forest document: {where} holds {len(raw)} bytes, but shape {shape} "
            f"of {expected.str} needs {math.prod(shape) * expected.itemsize}"
        )
    if expected.kind == "b" and raw and max(raw) > 1:
        # NumPy would take byte 2 as True, but it is neither True nor False to torch or a
        # comparison of bytes: only 0 and 1 are booleans.
        raise InvalidForestError(f"malformed forest document: {where} holds bytes other than 0, 1")
    return np.frombuffer(raw, dtype=expected).reshape(shape).astype(np.dtype(dtype))


def _decode_labels(doc: Any, where: str, budget: int) -> npt.NDArray[Any] | None:
    """Class labels of an allowed dtype, each value of that dtype exactly; a string dtype's
    width is paid for by the document's size (``budget`` bytes)."""
    if doc is None:
        return None
    _object(doc, where, ("dtype", "values"))
    values = doc["values"]
    if type(values) is not list:
        _malformed(f"{where}.values", "a list", values)
    if doc["dtype"] == "object":
        out = np.empty(len(values), dtype=object)
        out[:] = [_scalar(v, f"{where}.values[{i}]") for i, v in enumerate(values)]
        return out
    if type(doc["dtype"]) is not str or not _LABEL_DTYPES.fullmatch(doc["dtype"]):
        _malformed(
            f"{where}.dtype", '"object" or a bool, integer, float or string dtype', doc["dtype"]
        )
    # The size from the text, before NumPy sees a width it may not even parse.
    kind, width = doc["dtype"][1], int(doc["dtype"][2:])
    itemsize = 4 * width if kind == "U" else width
    if max(len(values), 1) * itemsize > budget:
        raise InvalidForestError(
            f"malformed forest document: {where}.dtype {doc['dtype']} would take "
            f"{max(len(values), 1) * itemsize} bytes for {len(values)} labels, more than a "
            "document of this size can describe"
        )
    dtype = np.dtype(doc["dtype"])
    wanted = _LABEL_TYPES[dtype.kind]
    for i, v in enumerate(values):
        if type(v) not in wanted:
            _malformed(f"{where}.values[{i}]", f"a label of dtype {doc['dtype']}", v)
    decoded = [_scalar(v, f"{where}.values[{i}]") for i, v in enumerate(values)]
    try:
        labels = np.array(decoded, dtype=dtype)
    except (ValueError, OverflowError):
        labels = None
    # Each label must survive the dtype unchanged: no truncated string, wrapped integer or
    # rounded float.
    if labels is None or not all(
        type(a) is type(b) and (a == b or (a != a and b != b))
        for a, b in zip(labels.tolist(), decoded, strict=True)
    ):
        raise InvalidForestError(
            f"malformed forest document: {where}.values do not fit dtype {doc['dtype']}"
        )
    return labels


def _decode_categories(doc: Any, where: str) -> tuple[tuple[Any, ...] | None, ...] | None:
    if doc is None:
        return None
    if type(doc) is not list:
        _malformed(where, "null or a list", doc)
    out: list[tuple[Any, ...] | None] = []
    for j, known in enumerate(doc):
        if known is not None and type(known) is not list:
            _malformed(f"{where}[{j}]", "null or a list", known)
        out.append(
            None
            if known is None
            else tuple(_scalar(v, f"{where}[{j}][{i}]") for i, v in enumerate(known))
        )
    return tuple(out)


def _decode_tree(doc: Any, where: str) -> Tree:
    _object(doc, where, ("output_index", *_TREE_ARRAYS))
    return Tree(
        output_index=_integer(doc["output_index"], f"{where}.output_index", 0, _INDEX_LIMIT),
        **{
            name: _decode_array(doc[name], f"{where}.{name}", dtype, 2 if name == "value" else 1)
            for name, dtype in _TREE_DTYPES.items()
        },
    )


def _from_document(doc: Any, size: int) -> Forest:
    _check(type(doc) is dict and doc.get("format") == JSON_FORMAT, "not a treecomp forest document")
    version = doc.get("version")
    _check(type(version) is int, "forest document has no integer version")
    if version > JSON_VERSION:
        raise InvalidForestError(
            f"forest document version {version} is newer than this treecomp "
            f"supports ({JSON_VERSION})"
        )
    _check(
        version in JSON_VERSIONS,
        f"unknown forest document version {version} (known: {list(JSON_VERSIONS)})",
    )
    _object(doc, "the document", _DOCUMENT_FIELDS, _OPTIONAL_FIELDS)
    if type(doc["trees"]) is not list:
        _malformed("trees", "a list", doc["trees"])
    post = _object(doc["post_transform"], "post_transform", ("kind", "scale"))
    leaf_shape = doc["leaf_shape"]
    if type(leaf_shape) is not list or len(leaf_shape) > 32:  # NumPy 1's limit of dimensions
        _malformed("leaf_shape", "a list of at most 32 sizes", leaf_shape)
    methods = _names(doc["methods"], "methods")
    for method in methods:
        _choice(method, "methods[]", METHODS)
    feature_names = doc["feature_names"]
    forest = Forest(
        trees=tuple(_decode_tree(t, f"trees[{i}]") for i, t in enumerate(doc["trees"])),
        n_features=_integer(doc["n_features"], "n_features", 1, _INDEX_LIMIT),
        n_outputs=_integer(doc["n_outputs"], "n_outputs", 1, _INDEX_LIMIT),
        comparison=_choice(doc["comparison"], "comparison", ("<", "<=")),
        aggregation=_choice(doc["aggregation"], "aggregation", ("sum", "average")),
        base_score=_decode_array(doc["base_score"], "base_score", np.float64, 1),
        accumulation=_choice(doc["accumulation"], "accumulation", ("float32", "float64")),
        post_transform=PostTransform(
            kind=_choice(post["kind"], "post_transform.kind", POST_TRANSFORMS),
            scale=_hex_float(post["scale"], "post_transform.scale", finite=True),
        ),
        task=_choice(doc["task"], "task", ("classifier", "regressor", "ranker", "outlier")),
        methods=methods,
        classes=_decode_labels(doc["classes"], "classes", LABEL_BYTES_PER_DOCUMENT_BYTE * size),
        feature_names=None if feature_names is None else _names(feature_names, "feature_names"),
        check_feature_names=_flag(doc["check_feature_names"], "check_feature_names"),
        ignored_columns=_names(doc.get("ignored_columns", []), "ignored_columns"),
        categories=_decode_categories(doc["categories"], "categories"),
        category_encoding=_choice(
            doc["category_encoding"], "category_encoding", CATEGORY_ENCODINGS
        ),
        category_domain=_choice(doc["category_domain"], "category_domain", CATEGORY_DOMAINS),
        label_rule=_choice(doc["label_rule"], "label_rule", LABEL_RULES),
        input_dtype=_choice(doc["input_dtype"], "input_dtype", ("float32", "float64")),
        integer_input_dtype=_choice(
            doc["integer_input_dtype"], "integer_input_dtype", ("float32", "float64")
        ),
        missing_value=_hex_float(doc["missing_value"], "missing_value", finite=False),
        allow_nan=_flag(doc["allow_nan"], "allow_nan"),
        allow_inf=_flag(doc["allow_inf"], "allow_inf"),
        leaf_shape=tuple(
            _integer(d, f"leaf_shape[{i}]", 1, _INDEX_LIMIT) for i, d in enumerate(leaf_shape)
        ),
        decision_offset=_hex_float(doc["decision_offset"], "decision_offset", finite=True),
    )
    return forest.validate()


def _arrays_equal(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
