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

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from treecomp import forest_json
from treecomp.errors import InvalidForestError
from treecomp.ir_schema import (
    AGGREGATIONS,
    CATEGORY_DOMAINS,
    CATEGORY_ENCODINGS,
    COMPARISONS,
    FLOAT_TYPES,
    FRAME_CASTS,
    LABEL_RULES,
    LINK_FUNCTIONS,
    METHODS,
    POST_TRANSFORMS,
    ROW_SUMS,
    TASKS,
    TREE_ARRAYS,
    TREE_DTYPES,
    Aggregation,
    Comparison,
    FloatType,
    Task,
)
from treecomp.ir_schema import (
    ZERO_THRESHOLD as ZERO_THRESHOLD,  # re-exported: the IR names it
)
from treecomp.ir_shapes import node_depths, tree_depths


@dataclass(frozen=True, slots=True)
class PostTransform:
    """The link applied to aggregated raw scores to produce the native prediction.

    Attributes:
        kind: One of :data:`POST_TRANSFORMS`.
        scale: Sigmoid slope, or the isolation forest's normalising path length.
        functions: Whose exp the native library calls: ``"libm"`` or ``"numpy"``
            (:data:`~treecomp.ir_schema.LINK_FUNCTIONS`).
        row_sum: How its softmax adds a row: ``"sequential"`` or ``"numpy"``
            (:data:`~treecomp.ir_schema.ROW_SUMS`).
    """

    kind: str = "identity"
    scale: float = 1.0
    functions: str = "libm"
    row_sum: str = "sequential"

    @property
    def in_numpy(self) -> bool:
        """Whether the native link is NumPy's (its exp, or the isolation forest's power,
        which is scikit-learn's alone): every in-process backend then computes it with
        NumPy's ufuncs, as :func:`treecomp.reference.link` does, never in C or torch."""
        return self.functions == "numpy" or self.kind == "isolation"


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
            _arrays_equal(getattr(self, name), getattr(other, name)) for name in TREE_ARRAYS
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
        frame_cast: One of :data:`FRAME_CASTS`: how a DataFrame's columns reach
            ``input_dtype``.
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
    accumulation: FloatType = "float64"
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
    input_dtype: FloatType = "float64"
    frame_cast: Literal["common", "columns"] = "common"
    integer_input_dtype: FloatType = "float64"
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
        return forest_json.write(self) == forest_json.write(other)

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
            self.comparison in COMPARISONS,
            f"comparison must be '<' or '<=', got {self.comparison!r}",
        )
        _check(self.aggregation in AGGREGATIONS, f"unknown aggregation {self.aggregation!r}")
        _check(
            self.task in TASKS,
            f"unknown task {self.task!r}",
        )
        _check(
            self.post_transform.kind in POST_TRANSFORMS,
            f"unknown post-transform {self.post_transform.kind!r}",
        )
        _check(
            self.post_transform.functions in LINK_FUNCTIONS
            and self.post_transform.row_sum in ROW_SUMS,
            f"unknown link functions or row sum in {self.post_transform!r}",
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
        _check(self.input_dtype in FLOAT_TYPES, f"unknown input_dtype {self.input_dtype!r}")
        _check(
            self.accumulation in FLOAT_TYPES,
            f"unknown accumulation {self.accumulation!r}",
        )
        _check(self.frame_cast in FRAME_CASTS, f"unknown frame_cast {self.frame_cast!r}")
        _check(
            self.integer_input_dtype in FLOAT_TYPES,
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
        else:
            _check(self.classes is None, f"a {self.task} has no classes")
        # Fields that only fit together (a crafted document may set each alone).
        _check(
            self.post_transform.kind != "isolation" or self.task == "outlier",
            "the isolation link is an outlier detector's",
        )
        if self.accumulation == "float32":
            _check(
                abs(self.post_transform.scale) <= float(np.finfo(np.float32).max),
                f"post_transform.scale {self.post_transform.scale!r} overflows float32, the "
                "accumulation type",
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
        return forest_json.write(self)

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
        return cls._from_fields(forest_json.read(doc, size))

    def to_json(self) -> str:
        """Serialise losslessly (every array keeps its dtype and every bit) to JSON text."""
        return json.dumps(forest_json.write(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Forest:
        """Rebuild a forest written by :meth:`to_json`, validating it.

        Raises:
            InvalidForestError: the text is not a treecomp forest document or is malformed.
        """
        return cls._from_fields(forest_json.parse(text))

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Forest:
        """The validated forest of a document's fields (:func:`treecomp.forest_json.read`)."""
        trees = tuple(Tree(**tree) for tree in fields["trees"])
        post_transform = PostTransform(**fields["post_transform"])
        return cls(**{**fields, "trees": trees, "post_transform": post_transform}).validate()


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidForestError(message)


def _validate_tree(tree: Tree, t: int, n_features: int, n_outputs: int) -> None:
    where = f"tree {t}"
    n = tree.n_nodes
    _check(n >= 1, f"{where} has no nodes")
    for name, dtype in TREE_DTYPES.items():
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


def _arrays_equal(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
