"""Frontend for XGBoost: parse the JSON model document of a booster into a :class:`Forest`.

The parser reads ``Booster.save_raw("json")`` (the same document ``save_model("m.json")``
writes), never the text dumps, and only imports ``xgboost`` to obtain that document from a
live model. What it reproduces, each point checked against XGBoost 3.2:

* Numerical splits go left iff ``x < threshold``, comparing float32 input against a float32
  threshold; a missing value (NaN or the wrapper's ``missing=``) takes ``default_left``.
* Categorical splits list the categories that go *right* in XGBoost. The IR lists the ones
  that go *left*, so the children of categorical nodes are swapped (and ``default_left``
  flipped); node ids stay XGBoost's, which is what ``apply`` reports.
* ``learner_model_param.base_score`` is stored in output space, one value per output
  (``"[5E-1]"``); it is mapped to margin space per objective (logit, log or identity) and
  rounded to float32 as XGBoost does.
* DART's ``weight_drop`` is folded into the leaf values (XGBoost applies it at inference)
  with XGBoost's float32 roundings, which differ between its two prediction paths (see
  :func:`_dart_leaves`): the wrappers' ``predict`` (``inplace_predict``) for wrappers and
  model files, ``Booster.predict`` (a ``DMatrix``) for a raw ``Booster`` and
  :func:`parse_json`. ``num_parallel_tree`` forests are summed, ``tree_info`` says which
  output a tree adds to, and vector-leaf trees (``multi_strategy="multi_output_tree"``)
  keep their leaf vectors.
* The scikit-learn wrappers predict with the trees up to ``best_iteration`` when early
  stopping recorded one; a raw ``Booster`` predicts with all of them, as XGBoost does.
* Training categories stored with the model (XGBoost >= 3.1) become ``Forest.categories``,
  so that pandas ``category`` columns are re-coded like XGBoost re-codes them; numbers
  pass through as codes.
* Objectives whose native prediction is a label (``multi:softmax``, ``binary:hinge``) make a
  raw ``Booster`` or a regressor wrapper a classifier-task forest without
  ``predict_proba`` whose float32 labels equal ``Booster.predict``.

Rejected with :class:`~treecomp.UnsupportedModelError`: ``booster="gblinear"``, objectives
outside :data:`_OBJECTIVES` (custom objectives train under a built-in name and are
reproduced as that objective), ``XGBClassifier`` with ``binary:hinge`` (its
``predict_proba`` is a 0/1 step) or with ``multi:softprob`` on two classes (``predict``
returns one-hot rows), multi-label classifiers, non-ASCII string categories (XGBoost
saves them truncated), unfitted models and models without trees.

Known differences (README, "Known deviations"): a pandas category unseen in training is
missing for treecomp, while XGBoost 3.2 maps it to the next larger training category (or
raises when none is larger);
±inf is an ordinary value for treecomp and for the wrappers' ``predict`` (XGBoost's
``inplace_predict``), but a ``DMatrix``, behind ``apply``, rejects it unless ``missing`` is
infinite.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from treecomp.errors import UnsupportedModelError
from treecomp.frontends.registry import register
from treecomp.ir import Forest, PostTransform, Task, Tree


@dataclass(frozen=True, slots=True)
class _Objective:
    """How an XGBoost objective turns margins into predictions.

    Attributes:
        transform: IR post-transform of the native prediction, or ``"hinge"`` /
            ``"argmax"`` for objectives whose native prediction is a label.
        base: Link that maps the stored ``base_score`` to margin space: ``"identity"``,
            ``"logit"`` or ``"log"``.
    """

    transform: str
    base: str


_OBJECTIVES = {
    "reg:squarederror": _Objective("identity", "identity"),
    "reg:squaredlogerror": _Objective("identity", "identity"),
    "reg:pseudohubererror": _Objective("identity", "identity"),
    "reg:absoluteerror": _Objective("identity", "identity"),
    "reg:quantileerror": _Objective("identity", "identity"),
    "reg:logistic": _Objective("sigmoid", "logit"),
    "binary:logistic": _Objective("sigmoid", "logit"),
    "binary:logitraw": _Objective("identity", "identity"),
    "binary:hinge": _Objective("hinge", "identity"),
    "count:poisson": _Objective("exp", "log"),
    "reg:gamma": _Objective("exp", "log"),
    "reg:tweedie": _Objective("exp", "log"),
    "survival:cox": _Objective("exp", "log"),
    "survival:aft": _Objective("exp", "log"),
    "multi:softprob": _Objective("softmax", "identity"),
    "multi:softmax": _Objective("argmax", "identity"),
    "rank:pairwise": _Objective("identity", "identity"),
    "rank:ndcg": _Objective("identity", "identity"),
    "rank:map": _Objective("identity", "identity"),
}

# What kind of object the document came from decides the native method set.
_FLAVOUR_TASKS: dict[str, Task] = {
    "regressor": "regressor",
    "ranker": "ranker",
    "booster": "regressor",
}


# -------------------------------------------------------------------------------------------
# Entry points


@register("xgboost.XGBClassifier")
def parse_classifier(model: Any) -> Forest:
    """Parse a fitted ``XGBClassifier`` (``XGBRFClassifier`` reaches it through the MRO).

    Returns:
        A classifier forest with ``predict``, ``predict_proba`` and ``apply``, using the trees
        up to ``best_iteration`` when early stopping set one, as the wrapper does.

    Raises:
        UnsupportedModelError: the model is not fitted, or uses an option treecomp cannot
            reproduce (see the module docstring).
    """
    return _parse_wrapper(model, "classifier")


@register("xgboost.XGBRegressor")
def parse_regressor(model: Any) -> Forest:
    """Parse a fitted ``XGBRegressor`` (or ``XGBRFRegressor``): ``predict`` and ``apply``."""
    return _parse_wrapper(model, "regressor")


@register("xgboost.XGBRanker")
def parse_ranker(model: Any) -> Forest:
    """Parse a fitted ``XGBRanker``: ``predict`` (relevance scores) and ``apply``.

    Like ``XGBRanker.predict``, a DataFrame's ``qid`` column (the query groups) is dropped.
    """
    return dataclasses.replace(_parse_wrapper(model, "ranker"), ignored_columns=("qid",))


def _parse_wrapper(model: Any, flavour: str) -> Forest:
    name = type(model).__qualname__
    doc = _document(model, name)  # first: it reports an unfitted model
    classes = np.asarray(model.classes_) if flavour == "classifier" else None
    missing = getattr(model, "missing", np.nan)
    return _parse_document(
        doc,
        name=name,
        flavour=flavour,
        missing=float("nan") if missing is None else float(missing),
        use_best_iteration=True,
        classes=classes,
    )


@register("xgboost.Booster")
def parse_booster(booster: Any) -> Forest:
    """Parse a raw ``xgboost.Booster``.

    Its ``predict`` reproduces ``Booster.predict`` (probabilities for ``binary:logistic``,
    shape ``(n,)`` or ``(n, k)``, all trees) and ``apply`` reproduces
    ``Booster.predict(pred_leaf=True)``. A raw booster carries no ``missing=`` value: only
    NaN is missing, as for a ``DMatrix`` built with the default.
    """
    doc = _document(booster, type(booster).__qualname__)
    return _parse_document(doc, name=type(booster).__qualname__, flavour="booster")


def parse_json(document: str | bytes | bytearray | Mapping[str, Any]) -> Forest:
    """Parse an XGBoost JSON model document (``save_model("model.json")``) as a raw Booster.

    Args:
        document: The JSON text, or the already decoded document.

    Returns:
        The validated forest, with the method set of a raw ``Booster``.

    Raises:
        UnsupportedModelError: the document is not an XGBoost model treecomp can reproduce.
    """
    doc = json.loads(document) if isinstance(document, (str, bytes, bytearray)) else document
    return _parse_document(doc, name="XGBoost JSON model", flavour="booster").validate()


def _document(model: Any, name: str) -> Mapping[str, Any]:
    try:
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        raw = booster.save_raw(raw_format="json")
    except ValueError as exc:  # sklearn's NotFittedError and XGBoostError are ValueErrors
        raise ValueError(
            f"this {name} is not fitted yet (or holds no model): {str(exc).splitlines()[0]}"
        ) from None
    result: Mapping[str, Any] = json.loads(bytes(raw))
    return result


# -------------------------------------------------------------------------------------------
# The document


def _parse_document(
    doc: Mapping[str, Any],
    *,
    name: str,
    flavour: str,
    missing: float = float("nan"),
    use_best_iteration: bool = False,
    classes: npt.NDArray[Any] | None = None,
) -> Forest:
    try:
        learner = doc["learner"]
        gradient_booster = learner["gradient_booster"]
        params = learner["learner_model_param"]
        objective_name = learner["objective"]["name"]
    except (KeyError, TypeError):
        raise UnsupportedModelError(f"{name}: not an XGBoost JSON model document") from None

    kind = gradient_booster.get("name")
    if kind == "gbtree":
        model = gradient_booster["model"]
        weights = None
    elif kind == "dart":
        model = gradient_booster["gbtree"]["model"]
        weights = np.asarray(gradient_booster["weight_drop"], dtype=np.float32)
    else:
        raise UnsupportedModelError(
            f"{name} uses booster={kind!r}; only tree boosters are supported "
            "(booster='gbtree' or 'dart'), a linear booster is not a tree ensemble"
        )

    objective = _OBJECTIVES.get(objective_name)
    if objective is None:
        raise UnsupportedModelError(
            f"{name} uses objective {objective_name!r}; supported objectives: "
            f"{', '.join(sorted(_OBJECTIVES))}"
        )

    n_features = int(params["num_feature"])
    num_class = int(params.get("num_class", 0))
    num_target = int(params.get("num_target", 1))
    n_outputs = max(num_class, num_target, 1)
    trees_json = model["trees"]
    if not trees_json:
        raise UnsupportedModelError(f"{name} has no trees: fit it with at least one round")

    first, last = _tree_range(learner, model, len(trees_json), use_best_iteration, n_outputs)
    if last <= first:
        raise UnsupportedModelError(f"{name}: the iteration range selects no trees")
    base_score = _base_score(params["base_score"], objective, n_outputs, name)
    tree_info = np.asarray(model["tree_info"], dtype=np.int64)
    trees = tuple(
        _parse_tree(
            trees_json[t],
            output_index=int(tree_info[t]),
            n_outputs=n_outputs,
            name=name,
        )
        for t in range(first, last)
    )
    if weights is not None:
        # The wrappers predict through inplace_predict, a raw Booster through a DMatrix.
        inplace = flavour != "booster"
        trees = tuple(
            _dart_leaves(tree, weights[t], base_score, inplace=inplace, name=name)
            for t, tree in zip(range(first, last), trees, strict=True)
        )
    if any(not np.isfinite(tree.value[tree.left_child < 0]).all() for tree in trees):
        raise UnsupportedModelError(
            f"{name} has NaN or infinite leaf values, so it predicts NaN for every row (for "
            f"instance {objective_name} fitted with a base_score of 0, whose log-link margin "
            "-inf makes every gradient NaN); refit it with a positive base_score"
        )

    task, methods, label_rule, classes, post = _prediction(
        name, flavour, objective_name, objective, n_outputs, num_target, classes
    )
    feature_names = tuple(learner.get("feature_names") or ()) or None
    if feature_names is not None and len(feature_names) != n_features:
        feature_names = None
    return Forest(
        trees=trees,
        n_features=n_features,
        n_outputs=n_outputs,
        comparison="<",
        aggregation="sum",
        base_score=base_score,
        # XGBoost adds each leaf to the base margin in float32 and links in float32: labels
        # at float32 ties (p == 0.5 exactly) depend on it.
        accumulation="float32",
        post_transform=post,
        task=task,
        methods=methods,
        classes=classes,
        feature_names=feature_names,
        categories=_categories(model.get("cats"), n_features, name),
        category_encoding="pandas",
        # XGBoost treats every negative code as unlisted, -0.5 included.
        category_domain="nonnegative",
        label_rule=label_rule,
        # XGBoost casts every input to float32 before comparing it (and before comparing it
        # with `missing`).
        input_dtype="float32",
        # ... a DataFrame's columns each straight to float32 (its pandas reader passes every
        # column with its own type), never through their common type.
        frame_cast="columns",
        missing_value=missing,
        # pred_leaf is (n_rows, n_trees), squeezed to (n_rows,) when a single tree is used.
        leaf_shape=() if len(trees) == 1 else (len(trees),),
    )


def _tree_range(
    learner: Mapping[str, Any],
    model: Mapping[str, Any],
    n_trees: int,
    use_best_iteration: bool,
    n_outputs: int,
) -> tuple[int, int]:
    """The trees ``[first, last)`` the native ``predict`` uses."""
    best = (learner.get("attributes") or {}).get("best_iteration")
    if not use_best_iteration or best is None:
        return 0, n_trees
    end = int(best) + 1
    indptr = model.get("iteration_indptr")
    if indptr:
        return 0, int(indptr[min(end, len(indptr) - 1)])
    # Documents older than iteration_indptr: every round grew the same number of trees.
    per_round = int(model["gbtree_model_param"]["num_parallel_tree"])
    leaf_width = int(model["trees"][0]["tree_param"].get("size_leaf_vector", 1))
    per_round *= 1 if leaf_width > 1 else n_outputs
    return 0, min(n_trees, end * per_round)


# XGBoost's kRtEps (src/common/math.h), the bound of a logistic intercept.
_RT_EPS = np.float32(1e-6)


def _base_score(
    text: str, objective: _Objective, n_outputs: int, name: str
) -> npt.NDArray[np.float64]:
    """The intercept in margin space, one float32 value per output, as float64."""
    stripped = str(text).strip().strip("[]")
    values = np.asarray([float(v) for v in stripped.split(",")], dtype=np.float32)
    if values.shape[0] == 1:
        values = np.repeat(values, n_outputs)
    if values.shape[0] != n_outputs:
        raise UnsupportedModelError(
            f"{name}: base_score {text!r} has {values.shape[0]} values for {n_outputs} outputs"
        )
    one = np.float32(1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # XGBoost's own float32 steps: -logf(1.0f / p - 1.0f) and logf(p). logf is the
        # correctly rounded log, i.e. the float64 log rounded to float32.
        if objective.base == "logit":
            # LogisticRegression::ProbToMargin bounds p to [kRtEps, 1 - kRtEps] first: a
            # model fitted on labels of one class has an intercept of exactly 0 or 1.
            values = np.clip(values, _RT_EPS, one - _RT_EPS)
            margin = -np.log((one / values - one).astype(np.float64)).astype(np.float32)
        elif objective.base == "log":
            margin = np.log(values.astype(np.float64)).astype(np.float32)
        else:
            margin = values
    # log(0) = -inf is XGBoost's own margin for a log-link model fitted on all-zero counts:
    # it predicts exp(-inf + leaves) = 0, and so does treecomp.
    if np.any(np.isnan(margin) | (margin == np.inf)):
        raise UnsupportedModelError(
            f"{name}: base_score {text!r} has no margin under a {objective.base} link"
        )
    # XGBoost keeps the margin-space intercept as a float32.
    return margin.astype(np.float32).astype(np.float64)


def _prediction(
    name: str,
    flavour: str,
    objective_name: str,
    objective: _Objective,
    n_outputs: int,
    num_target: int,
    classes: npt.NDArray[Any] | None,
) -> tuple[Task, tuple[str, ...], str, npt.NDArray[Any] | None, PostTransform]:
    """Task, methods, label rule, classes and post-transform of the native object."""
    transform = objective.transform
    if flavour == "classifier":
        assert classes is not None  # _parse_wrapper passes model.classes_
        if num_target > 1:
            raise UnsupportedModelError(
                f"{name} is a multi-label classifier ({num_target} targets); only single-label "
                "classifiers are supported"
            )
        if transform == "hinge":
            raise UnsupportedModelError(
                f"{name} uses objective 'binary:hinge', whose predict_proba is a 0/1 step; "
                "classifiers are supported with binary:logistic, binary:logitraw, "
                "reg:logistic, multi:softprob and multi:softmax"
            )
        if objective_name == "multi:softprob" and len(classes) == 2:
            raise UnsupportedModelError(
                f"{name} uses multi:softprob with 2 classes, for which XGBClassifier.predict "
                "returns one 0/1 column per class; use binary:logistic"
            )
        if len(classes) == 1 and transform != "argmax":
            # Fitted on one label, XGBClassifier is still binary: predict_proba has two
            # columns and predict returns the column index 0 or 1, whatever classes_ says.
            classes = np.arange(2, dtype=np.asarray(classes).dtype)
        expected = 1 if len(classes) == 2 and transform != "argmax" else len(classes)
        if n_outputs != expected:
            raise UnsupportedModelError(
                f"{name} has {len(classes)} classes but its booster has {n_outputs} outputs"
            )
        post = PostTransform(transform)
        if transform == "argmax":  # multi:softmax: scipy.special.softmax of float32 margins
            post = PostTransform("softmax", functions="numpy", row_sum="numpy")
        methods = ("predict", "predict_proba", "apply")
        return "classifier", methods, "argmax_proba", classes, post
    # Objectives whose native prediction is a label: a classifier without predict_proba,
    # whose float32 labels are what Booster.predict returns.
    if transform == "argmax":
        labels = np.arange(n_outputs, dtype=np.float32)
        return "classifier", ("predict", "apply"), "argmax_proba", labels, PostTransform("softmax")
    if transform == "hinge":
        # XGBoost's hinge prediction is 1 iff the margin is > 0.
        labels = np.arange(2, dtype=np.float32)
        return "classifier", ("predict", "apply"), "margin_gt_zero", labels, PostTransform()
    return (
        _FLAVOUR_TASKS[flavour],
        ("predict", "apply"),
        "argmax_proba",
        None,
        PostTransform(transform),
    )


# -------------------------------------------------------------------------------------------
# Trees


def _float32(values: Sequence[float]) -> npt.NDArray[np.float64]:
    """JSON numbers written from float32 values, as the exact float32 values in float64."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def _parse_tree(
    tree: Mapping[str, Any],
    *,
    output_index: int,
    n_outputs: int,
    name: str,
) -> Tree:
    left = np.asarray(tree["left_children"], dtype=np.int32)
    right = np.asarray(tree["right_children"], dtype=np.int32)
    n = left.shape[0]
    leaf = left < 0
    internal = ~leaf
    split = _float32(tree["split_conditions"])
    width = int(tree["tree_param"].get("size_leaf_vector", 1)) or 1

    value = np.zeros((n, width), dtype=np.float64)
    if width == 1:
        value[leaf, 0] = split[leaf]
    else:
        if width != n_outputs:
            raise UnsupportedModelError(
                f"{name}: a vector-leaf tree has {width} values per leaf for {n_outputs} outputs"
            )
        # Vector leaves: a leaf's right_children entry indexes its row of leaf_weights.
        leaf_weights = _float32(tree["leaf_weights"]).reshape(-1, width)
        value[leaf] = leaf_weights[right[leaf]]
        output_index = 0

    is_cat = np.zeros(n, dtype=bool)
    offsets = np.zeros(n + 1, dtype=np.int64)
    cat_values = np.zeros(0, dtype=np.int64)
    if len(tree.get("categories_nodes", ())) > 0:
        is_cat = (np.asarray(tree["split_type"], dtype=np.int64) == 1) & internal
        offsets, cat_values = _category_sets(tree, n)

    feature = np.where(leaf, -1, np.asarray(tree["split_indices"], dtype=np.int64))
    # The IR sends listed categories left; XGBoost sends them right: swap those children.
    default_left = np.asarray(tree["default_left"], dtype=bool) ^ is_cat
    return Tree(
        left_child=np.where(leaf, -1, np.where(is_cat, right, left)).astype(np.int32),
        right_child=np.where(leaf, -1, np.where(is_cat, left, right)).astype(np.int32),
        feature=feature.astype(np.int32),
        threshold=np.where(leaf | is_cat, np.nan, split),
        default_left=default_left,
        zero_is_missing=np.zeros(n, dtype=bool),
        is_categorical=is_cat,
        category_offsets=offsets,
        category_values=cat_values,
        value=value,
        leaf_id=np.where(leaf, np.arange(n, dtype=np.int64), -1),
        output_index=output_index,
    )


def _dart_leaves(
    tree: Tree,
    weight: np.float32,
    base_score: npt.NDArray[np.float64],
    *,
    inplace: bool,
    name: str,
) -> Tree:
    """A DART tree with its ``weight_drop`` folded into its leaves, in XGBoost's float32 steps.

    XGBoost 3.2's ``Dart`` (src/gbm/gbtree.cc) starts every output at its base margin and
    predicts tree by tree, two ways:

    * ``Dart::InplacePredict`` (``inplace_predict``, behind the wrappers' ``predict``) lets
      the predictor write ``base[g] + leaf`` for the tree's output ``g``, then adds
      ``(that - base[g]) * w``;
    * ``Dart::PredictBatchImpl`` (``Booster.predict`` on a ``DMatrix``) predicts each tree
      from zero and adds ``leaf * w``.

    Each step rounds to float32 (checked bit for bit against both paths, on models with
    several base scores, objectives and classes: no fused multiply-add), and what is added
    depends on the leaf, ``w`` and the base margins only, so it is folded into the leaf here
    and the forest adds it like any other leaf.
    """
    if tree.leaf_width != 1:
        # XGBoost refuses DART with vector leaves ("dart" ... MTNotImplemented).
        raise UnsupportedModelError(f"{name}: DART with vector-leaf trees is not supported")
    leaf = tree.left_child < 0
    value = tree.value[leaf, 0].astype(np.float32)
    base = base_score.astype(np.float32)
    if inplace:
        # A base margin of -inf (a log link fitted on zero counts) makes this NaN, as natively.
        with np.errstate(invalid="ignore"):
            g = base[tree.output_index]
            value = ((g + value) - g) * weight  # g + value rounds: not value * weight
    else:
        value = value * weight
    folded = tree.value.copy()
    folded[leaf, 0] = value.astype(np.float64)
    return dataclasses.replace(tree, value=folded)


def _category_sets(
    tree: Mapping[str, Any], n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """CSR offsets and sorted categories of every node, from XGBoost's segment lists."""
    nodes = np.asarray(tree["categories_nodes"], dtype=np.int64)
    starts = np.asarray(tree["categories_segments"], dtype=np.int64)
    sizes = np.asarray(tree["categories_sizes"], dtype=np.int64)
    flat = np.asarray(tree["categories"], dtype=np.int64)
    order = np.argsort(nodes, kind="stable")
    nodes, starts, sizes = nodes[order], starts[order], sizes[order]
    counts = np.zeros(n, dtype=np.int64)
    counts[nodes] = sizes
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # Gather every node's segment in node order without a Python loop.
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    values = flat[np.repeat(starts, sizes) + within]
    owner = np.repeat(nodes, sizes)
    values = values[np.lexsort((values, owner))]
    return offsets, values


# -------------------------------------------------------------------------------------------
# Categories stored with the model


def _categories(
    cats: Mapping[str, Any] | None, n_features: int, name: str
) -> tuple[tuple[Any, ...] | None, ...] | None:
    """Training categories per feature (XGBoost >= 3.1 re-codes DataFrames with them)."""
    encodings = (cats or {}).get("enc") or []
    if not encodings:
        return None
    if len(encodings) != n_features:
        raise UnsupportedModelError(
            f"{name}: stored categories cover {len(encodings)} of {n_features} features"
        )
    out = tuple(_feature_categories(enc, j, name) for j, enc in enumerate(encodings))
    return None if all(c is None for c in out) else out


def _feature_categories(enc: Mapping[str, Any], feature: int, name: str) -> tuple[Any, ...] | None:
    values = enc.get("values") or []
    if "offsets" in enc:
        offsets = enc.get("offsets") or []
        if not offsets:
            return None
        raw = np.asarray(values, dtype=np.int64)
        if np.any(raw < 0):
            # XGBoost's Python package stores string categories with offsets counted in
            # characters over UTF-8 bytes, so non-ASCII names are saved truncated.
            raise UnsupportedModelError(
                f"{name}: feature {feature} has non-ASCII category names, which XGBoost "
                "stores truncated; only ASCII string categories are supported"
            )
        text = raw.astype(np.uint8).tobytes()
        return tuple(text[a:b].decode("ascii") for a, b in itertools.pairwise(offsets))
    if not values:
        return None
    return tuple(int(v) if float(v).is_integer() else float(v) for v in values)
