"""Frontend for LightGBM: ``LGBMClassifier``, ``LGBMRegressor``, ``LGBMRanker`` and ``Booster``.

Models are read from ``Booster.dump_model()`` (structured JSON), never from the text dump.
Its numbers carry 17 significant digits, so thresholds and leaf values round-trip bit for
bit, with one exception: ``Common::AvoidInf`` clamps ``|threshold| >= 1e300`` to ``1e300``.
LightGBM's prediction quirks are resolved here, so that the IR's plain semantics reproduce
``Booster.predict`` exactly (each point checked against LightGBM 4.7):

* **Zero-valued inputs.** LightGBM's dense-matrix reader drops every input with
  ``|x| <= kZeroThreshold`` (``1e-35f``) and the trees then see exactly ``0.0``. A numerical
  threshold inside ``[-kZeroThreshold, kZeroThreshold)`` (LightGBM puts bin boundaries at
  ``±kZeroThreshold``) therefore behaves as the nearest threshold outside that range, which
  is what the IR stores.
* **Infinite thresholds.** A split "every number left, NaN right" has threshold ``+inf``,
  dumped as ``1e300``. A finite threshold is a bin boundary inside the feature's training
  range, so ``±1e300`` is read back as ``±inf`` unless the feature's training values reach
  that magnitude (then the model is rejected).
* **Missing types** (``NumericalDecision`` in ``tree.h``): ``None`` sends NaN to ``0.0``,
  so it goes left iff ``0.0 <= threshold`` whatever the stored default direction; ``Zero``
  sends NaN and ``|x| <= kZeroThreshold`` the default way (``zero_is_missing``); ``NaN``
  sends NaN the default way.
* **Categorical splits** (``CategoricalDecision``): values truncate toward zero (``-0.5`` is
  category 0); listed categories go left; NaN, negative values, ``±inf`` and values past
  the category bitset go right, whatever the missing type.
* **Pandas categoricals.** LightGBM recodes ``category`` columns of a DataFrame to the
  training categories (``pandas_categorical``); the forest records them per feature.
* **Objectives** map to post-transforms (``ConvertOutput``): multiclassova is a per-class
  sigmoid that LightGBM does not normalise; random-forest mode (``average_output``) divides
  each output by its number of iterations, which the IR's ``"average"`` aggregation does.

``best_iteration`` is honoured as ``Booster.predict`` does: only the first
``best_iteration`` iterations are parsed when it is set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from treecomp.errors import UnsupportedModelError
from treecomp.frontends.registry import register
from treecomp.ir import ZERO_THRESHOLD, Forest, PostTransform, Task, Tree

# LightGBM feeds the trees 0.0 for any input with |x| <= kZeroThreshold, so a threshold t in
# [-kZeroThreshold, 0) splits like the largest double below -kZeroThreshold and one in
# [0, kZeroThreshold) like kZeroThreshold itself.
_BELOW_NEGATIVE_ZERO_THRESHOLD = float(np.nextafter(-ZERO_THRESHOLD, -np.inf))
# dump_model() writes numbers through Common::AvoidInf, which clamps |x| >= 1e300 to 1e300:
# an infinite threshold (the upper bound of the last bin, as in "every number left, NaN
# right" splits) reads back as ±1e300.
_DUMP_CLAMP = 1e300

# Objective name (the first word of dump_model()["objective"]) -> post-transform kind.
_OBJECTIVE_TRANSFORMS = {
    "regression": "identity",
    "regression_l1": "identity",
    "huber": "identity",
    "fair": "identity",
    "quantile": "identity",
    "mape": "identity",
    "poisson": "exp",
    "gamma": "exp",
    "tweedie": "exp",
    "binary": "sigmoid",
    "multiclass": "softmax",
    "multiclassova": "sigmoid",
    "cross_entropy": "sigmoid",
    "cross_entropy_lambda": "softplus",
    "lambdarank": "identity",
    "rank_xendcg": "identity",
}
# Objectives whose ConvertOutput squares back a reg_sqrt model (RegressionL2loss and the
# losses deriving from it; Poisson, Gamma and Tweedie override ConvertOutput with exp).
_SQRT_OBJECTIVES = frozenset({"regression", "regression_l1", "huber", "fair", "quantile", "mape"})
# Objectives whose ConvertOutput reads the ``sigmoid`` parameter.
_SIGMOID_PARAMETER_OBJECTIVES = frozenset({"binary", "multiclassova"})
_RANKING_OBJECTIVES = frozenset({"lambdarank", "rank_xendcg"})
# A model trained with a Python callable objective has no objective in its dump (or the
# name "custom" once reloaded): LightGBM then predicts raw scores.
_RAW_OBJECTIVES = frozenset({"", "custom", "none"})
_CATEGORICAL_PARAMETERS = (
    "categorical_feature",
    "categorical_column",
    "cat_feature",
    "cat_column",
    "categorical_features",
)
_CATEGORY_TYPES = (str, int, float, bool, np.integer, np.floating, np.bool_)


# -------------------------------------------------------------------------------------------
# Registered entry points


@register("lightgbm.LGBMClassifier")
def parse_classifier(model: Any) -> Forest:
    """Parse a fitted ``lightgbm.LGBMClassifier``.

    ``predict_proba`` and ``predict`` (argmax of the probabilities, mapped to ``classes_``)
    follow the wrapper; ``apply`` equals ``model.predict(X, pred_leaf=True)``.

    Raises:
        ValueError: the model is not fitted.
        UnsupportedModelError: the model was trained with a callable objective (its
            ``predict`` returns raw scores) or uses an unsupported option.
    """
    booster = _fitted_booster(model)
    if callable(getattr(model, "objective", None)):
        raise UnsupportedModelError(
            f"{type(model).__qualname__} was trained with a callable objective, so its predict "
            "and predict_proba return raw scores instead of labels and probabilities; "
            "supported: built-in objectives (binary, multiclass, multiclassova, ...), or "
            "convert model.booster_ to reproduce the raw scores"
        )
    classes = np.asarray(model.classes_).copy()
    forest = _parse(booster, task="classifier", owner=type(model).__qualname__, classes=classes)
    # Two classes: one margin (binary) or, with objective="multiclass"/"multiclassova" and
    # num_class=2, one per class (softmax or one sigmoid per class), as LightGBM fits them.
    expected = (1, 2) if len(classes) == 2 else (len(classes),)
    if forest.n_outputs not in expected:
        raise UnsupportedModelError(
            f"{type(model).__qualname__} has {len(classes)} classes but its booster has "
            f"{forest.n_outputs} trees per iteration; supported: {' or '.join(map(str, expected))}"
        )
    # LightGBM 4.7 added decision_function (the raw margins). In rf mode it returns the
    # un-averaged sum, which is not the forest's margin: that one method is left out there.
    if hasattr(model, "decision_function") and forest.aggregation == "sum":
        forest = dataclasses.replace(forest, methods=(*forest.methods, "decision_function"))
    return forest


@register("lightgbm.LGBMRegressor", "lightgbm.LGBMRanker", "lightgbm.LGBMModel")
def parse_estimator(model: Any) -> Forest:
    """Parse a fitted ``lightgbm.LGBMRegressor``, ``LGBMRanker`` or plain ``LGBMModel``.

    ``predict`` equals the wrapper's (which is ``booster_.predict``); ``apply`` equals
    ``model.predict(X, pred_leaf=True)``.

    Raises:
        ValueError: the model is not fitted.
        UnsupportedModelError: the model uses an unsupported option.
    """
    booster = _fitted_booster(model)
    name = type(model).__qualname__
    task: Task | None = "ranker" if _is_subclass_named(type(model), "LGBMRanker") else None
    return _parse(booster, task=task, owner=name, classes=None)


@register("lightgbm.Booster")
def parse_booster(booster: Any) -> Forest:
    """Parse a ``lightgbm.Booster``: ``predict`` equals ``Booster.predict(X)`` (shape included).

    The task follows the objective: ranking objectives give a ranker, every other objective
    a regressor whose ``predict`` returns what ``Booster.predict`` returns (probabilities
    for ``binary`` and ``multiclass``, as LightGBM does). ``apply`` equals
    ``Booster.predict(X, pred_leaf=True)``.

    Raises:
        UnsupportedModelError: the booster has no trees or uses an unsupported option.
    """
    return _parse(booster, task=None, owner=type(booster).__qualname__, classes=None)


# -------------------------------------------------------------------------------------------
# Model-level parsing


def _fitted_booster(model: Any) -> Any:
    name = type(model).__qualname__
    if not model.__sklearn_is_fitted__():
        # A ValueError, like scikit-learn's NotFittedError and LightGBM's LGBMNotFittedError.
        raise ValueError(f"this {name} is not fitted yet; call fit first")
    booster = model.booster_
    params = model.get_params()
    if params.get("pred_early_stop"):
        raise UnsupportedModelError(
            f"{name} uses pred_early_stop=True, whose predictions stop adding trees early; "
            "supported: pred_early_stop=False (the default)"
        )
    return booster


def _is_subclass_named(cls: type, name: str) -> bool:
    return any(base.__name__ == name for base in cls.__mro__)


def _parse(booster: Any, *, task: Task | None, owner: str, classes: Any) -> Forest:
    """Parse ``booster`` into a forest; ``task=None`` derives it from the objective."""
    # dump_model() already defaults to best_iteration; passing it keeps that explicit, as
    # Booster.predict(num_iteration=None) uses best_iteration when it is set (> 0).
    best = int(getattr(booster, "best_iteration", 0) or 0)
    dump = booster.dump_model(num_iteration=best if best > 0 else -1)
    tree_info = dump.get("tree_info") or []
    if not tree_info:
        raise UnsupportedModelError(f"{owner} has no trees; train it for at least one iteration")
    per_iteration = int(dump["num_tree_per_iteration"])
    if per_iteration < 1 or len(tree_info) % per_iteration:
        raise UnsupportedModelError(
            f"{owner}: {len(tree_info)} trees do not make whole iterations of {per_iteration}"
        )
    n_features = int(dump["max_feature_idx"]) + 1
    objective_name, post_transform = _post_transform(booster, dump, owner, per_iteration)
    if task is None:
        task = "ranker" if objective_name in _RANKING_OBJECTIVES else "regressor"
    methods = (
        ("predict", "predict_proba", "apply") if task == "classifier" else ("predict", "apply")
    )

    feature_names = dump.get("feature_names")
    huge = _features_with_huge_values(dump, n_features)
    trees = tuple(
        _parse_tree(
            info["tree_structure"], int(info.get("tree_index", t)) % per_iteration, owner, t, huge
        )
        for t, info in enumerate(tree_info)
    )
    return Forest(
        trees=trees,
        n_features=n_features,
        n_outputs=per_iteration,
        comparison="<=",
        # RF mode divides every output by the number of iterations used, i.e. by the number
        # of trees adding to that output: exactly the IR's average.
        aggregation="average" if dump.get("average_output") else "sum",
        base_score=np.zeros(per_iteration, dtype=np.float64),
        post_transform=post_transform,
        task=task,
        methods=methods,
        classes=classes,
        feature_names=None if feature_names is None else tuple(str(n) for n in feature_names),
        # LightGBM takes DataFrame columns by position (unless validate_features=True).
        check_feature_names=False,
        categories=_pandas_categories(booster, dump, trees, n_features, owner),
        category_encoding="pandas",
        label_rule="argmax_proba",
        input_dtype="float64",
        # LightGBM converts integer arrays to float32 (DataFrames to float64).
        integer_input_dtype="float32",
        leaf_shape=(len(trees),),
    )


def _features_with_huge_values(dump: dict[str, Any], n_features: int) -> frozenset[int]:
    """Features whose training range reaches ±1e300 (or is unknown).

    A finite LightGBM threshold is a bin boundary, which lies inside the feature's training
    range; so a threshold dumped as ±1e300 on any other feature can only be ±inf.
    """
    names = [str(n) for n in dump.get("feature_names") or []]
    infos = dump.get("feature_infos") or {}
    huge = set(range(n_features))
    for j, name in enumerate(names):
        info = infos.get(name)
        if info and max(abs(float(info["min_value"])), abs(float(info["max_value"]))) < _DUMP_CLAMP:
            huge.discard(j)
    return frozenset(huge)


def _post_transform(
    booster: Any, dump: dict[str, Any], owner: str, per_iteration: int
) -> tuple[str, PostTransform]:
    """The objective's name and the link LightGBM's ``ConvertOutput`` applies."""
    words = str(dump.get("objective", "")).split()
    name = words[0] if words else ""
    options = dict(word.partition(":")[::2] for word in words[1:])
    if name in _RAW_OBJECTIVES:
        return name, PostTransform("identity")
    if name not in _OBJECTIVE_TRANSFORMS:
        raise UnsupportedModelError(
            f"{owner} uses objective {name!r}; supported objectives: "
            f"{', '.join(sorted(_OBJECTIVE_TRANSFORMS))} and custom (callable) objectives"
        )
    if "num_class" in options and int(options["num_class"]) != per_iteration:
        raise UnsupportedModelError(
            f"{owner}: objective {name!r} has num_class {options['num_class']} but "
            f"{per_iteration} trees per iteration"
        )
    kind = _OBJECTIVE_TRANSFORMS[name]
    if "sqrt" in options:
        if name not in _SQRT_OBJECTIVES:
            raise UnsupportedModelError(
                f"{owner}: reg_sqrt with objective {name!r} is not supported; supported with "
                f"{', '.join(sorted(_SQRT_OBJECTIVES))}"
            )
        kind = "signed_square"
    scale = 1.0
    if name in _SIGMOID_PARAMETER_OBJECTIVES:
        scale = _sigmoid(booster, options.get("sigmoid", "1"))
    return name, PostTransform(kind, scale)


def _sigmoid(booster: Any, written: str) -> float:
    """The sigmoid slope the booster's objective really uses.

    The model text (and so the dump) writes it with 6 significant digits, and a booster
    loaded from text (every scikit-learn wrapper, ``lgb.train`` without
    ``keep_training_booster``) uses that rounded value. A booster still holding its
    training set built its objective from the parameters and uses their full value.
    """
    scale = float(written)
    params = getattr(booster, "params", None) or {}
    if "train_set" in vars(booster) and "sigmoid" in params:
        exact = float(params["sigmoid"])
        if f"{exact:g}" == f"{scale:g}":
            return exact
    return scale


def _pandas_categories(
    booster: Any, dump: dict[str, Any], trees: tuple[Tree, ...], n_features: int, owner: str
) -> tuple[tuple[Any, ...] | None, ...] | None:
    """Training categories of the features that were pandas ``category`` columns.

    LightGBM stores one category list per ``category`` column of the training DataFrame, in
    column order, without the column positions. Those columns are the model's categorical
    features unless some were ordered (then numerical) or ``categorical_feature`` was given
    explicitly; the lists are placed on the categorical features only when the counts
    agree, and the model is rejected otherwise.
    """
    lists = dump.get("pandas_categorical") or []
    if not lists:
        return None
    names = [str(n) for n in dump.get("feature_names") or []]
    infos = dump.get("feature_infos") or {}
    categorical = {j for j, name in enumerate(names) if (infos.get(name) or {}).get("values")}
    for tree in trees:
        categorical.update(tree.feature[tree.is_categorical].tolist())
    if len(categorical) != len(lists):
        declared = _declared_categorical(booster, names)
        if declared is not None and categorical <= declared and len(declared) == len(lists):
            categorical = declared
    if len(categorical) != len(lists):
        raise UnsupportedModelError(
            f"{owner} was trained on a DataFrame with {len(lists)} pandas category columns but "
            f"has {len(categorical)} categorical features, so the columns LightGBM recodes "
            "cannot be located (ordered categoricals or an explicit categorical_feature list); "
            "supported: unordered pandas category columns used as categorical features"
        )
    out: list[tuple[Any, ...] | None] = [None] * n_features
    for feature, values in zip(sorted(categorical), lists, strict=True):
        bad = [v for v in values if not isinstance(v, _CATEGORY_TYPES)]
        if bad:
            raise UnsupportedModelError(
                f"{owner}: pandas category value {bad[0]!r} of type {type(bad[0]).__name__} is "
                "not supported; supported: str, int, float and bool categories"
            )
        out[feature] = tuple(v.item() if isinstance(v, np.generic) else v for v in values)
    return tuple(out)


def _declared_categorical(booster: Any, names: list[str]) -> set[int] | None:
    """The categorical features named in the booster's parameters, when they are readable."""
    params = getattr(booster, "params", None) or {}
    for key in _CATEGORICAL_PARAMETERS:
        value = params.get(key)
        if value is None or value == "":
            continue
        items = value.split(",") if isinstance(value, str) else list(value)
        if items and isinstance(items[0], str) and items[0].startswith("name:"):
            items[0] = items[0][len("name:") :]
            return {names.index(i) for i in items if i in names}
        try:
            return {int(i) for i in items}
        except (TypeError, ValueError):
            return {names.index(str(i)) for i in items if str(i) in names}
    return None


# -------------------------------------------------------------------------------------------
# Tree-level parsing


def _parse_tree(
    root: dict[str, Any], output_index: int, owner: str, t: int, huge: frozenset[int]
) -> Tree:
    """Flatten one nested ``tree_structure`` (preorder, iteratively) into a :class:`Tree`.

    ``huge`` holds the features on which a threshold dumped as ±1e300 may be finite.
    """
    left: list[int] = []
    right: list[int] = []
    feature: list[int] = []
    threshold: list[float] = []
    default_left: list[bool] = []
    zero_is_missing: list[bool] = []
    value: list[float] = []
    leaf_id: list[int] = []
    categories: dict[int, list[int]] = {}
    # (node, parent id, is the parent's left child); the left child is pushed last so that
    # it is numbered right after its parent.
    stack: list[tuple[dict[str, Any], int, bool]] = [(root, -1, False)]
    while stack:
        node, parent, is_left = stack.pop()
        i = len(left)
        if parent >= 0:
            (left if is_left else right)[parent] = i
        left.append(-1)
        right.append(-1)
        if "split_feature" not in node:
            # Leaves of a linear_tree model carry leaf_const/leaf_features/leaf_coeff, even
            # where the fitted model happens to be constant.
            if "leaf_coeff" in node:
                raise UnsupportedModelError(
                    f"{owner} has linear trees (linear_tree=True), whose leaves are linear "
                    "models of the inputs; supported: constant leaves (linear_tree=False)"
                )
            feature.append(-1)
            threshold.append(np.nan)
            default_left.append(True)
            zero_is_missing.append(False)
            value.append(float(node["leaf_value"]))
            # A single-leaf tree has no leaf_index; LightGBM reports leaf 0 for it.
            leaf_id.append(int(node.get("leaf_index", 0)))
            continue
        feature.append(int(node["split_feature"]))
        value.append(0.0)
        leaf_id.append(-1)
        decision = node["decision_type"]
        missing = node.get("missing_type", "None")
        if decision == "==":
            text = str(node["threshold"])
            categories[i] = [int(c) for c in text.split("||")] if text else []
            threshold.append(np.nan)
            # CategoricalDecision sends NaN right whatever the missing type.
            default_left.append(False)
            zero_is_missing.append(False)
        elif decision == "<=":
            t_value = float(node["threshold"])
            if abs(t_value) >= _DUMP_CLAMP:
                if feature[-1] in huge:
                    raise UnsupportedModelError(
                        f"{owner}: tree {t} splits feature {feature[-1]} at a threshold that "
                        "dump_model() clamps to ±1e300, and the feature's training values reach "
                        "that magnitude, so the threshold is unknown; supported: features whose "
                        "values stay below 1e300 in magnitude"
                    )
                t_value = float(np.copysign(np.inf, t_value))
            t_value = _effective_threshold(t_value)
            threshold.append(t_value)
            if missing == "NaN":
                default_left.append(bool(node["default_left"]))
                zero_is_missing.append(False)
            elif missing == "Zero":
                default_left.append(bool(node["default_left"]))
                zero_is_missing.append(True)
            elif missing == "None":
                # NaN is compared as 0.0; the stored default direction is never used.
                default_left.append(0.0 <= t_value)
                zero_is_missing.append(False)
            else:
                raise UnsupportedModelError(
                    f"{owner}: tree {t} has missing_type {missing!r}; supported: None, Zero, NaN"
                )
        else:
            raise UnsupportedModelError(
                f"{owner}: tree {t} has decision_type {decision!r}; supported: '<=' and '=='"
            )
        stack.append((node["right_child"], i, False))
        stack.append((node["left_child"], i, True))
    return Tree.build(
        left_child=left,
        right_child=right,
        feature=feature,
        threshold=threshold,
        value=value,
        default_left=default_left,
        zero_is_missing=zero_is_missing,
        leaf_id=leaf_id,
        categories=categories,
        output_index=output_index,
    )


def _effective_threshold(threshold: float) -> float:
    """The threshold that splits exact inputs as LightGBM splits its zero-flushed inputs."""
    if -ZERO_THRESHOLD <= threshold < 0.0:
        return _BELOW_NEGATIVE_ZERO_THRESHOLD
    if 0.0 <= threshold < ZERO_THRESHOLD:
        return ZERO_THRESHOLD
    return threshold
