"""Frontend for scikit-learn tree models, read from their ``tree_`` arrays and predictors.

scikit-learn's trees cast inputs to float32 and test ``x <= threshold`` against float64
thresholds; NaN follows ``missing_go_to_left``. HistGradientBoosting compares float64 inputs,
encodes every categorical feature through an ``OrdinalEncoder`` (unknown values become
missing) and moves categorical columns to the front, which this frontend undoes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from treecomp.errors import UnsupportedModelError
from treecomp.frontends.registry import register
from treecomp.ir import Forest, PostTransform, Tree


def _check_fitted(model: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
    except NotFittedError:
        raise ValueError(
            f"this {type(model).__qualname__} is not fitted yet; call fit first"
        ) from None


def _feature_names(model: Any) -> tuple[str, ...] | None:
    names = getattr(model, "feature_names_in_", None)
    return None if names is None else tuple(str(n) for n in names)


def _reject_multi_output_classifier(model: Any) -> None:
    if getattr(model, "n_outputs_", 1) != 1:
        raise UnsupportedModelError(
            f"{type(model).__qualname__} fitted on {model.n_outputs_} targets: multi-output "
            "classification is not supported; fit one classifier per target, or use a "
            "multi-output regressor"
        )


def _tree_from_arrays(
    tree_: Any,
    value: npt.NDArray[np.float64],
    *,
    features: npt.NDArray[np.intp] | None = None,
    output_index: int = 0,
) -> Tree:
    """A tree from a fitted ``sklearn.tree._tree.Tree``, with leaf values given."""
    feature = np.asarray(tree_.feature, dtype=np.int64)
    if features is not None:  # bagging on a feature subset: map back to the input columns
        feature = np.where(feature >= 0, features[np.maximum(feature, 0)], -1)
    missing_left = getattr(tree_, "missing_go_to_left", None)
    leaves = np.asarray(tree_.children_left) < 0
    if not np.isfinite(np.asarray(value)[leaves]).all():
        raise UnsupportedModelError(
            "a tree's leaf values overflow to infinity or NaN (targets near the float "
            "maximum), so the model predicts infinities; supported: finite leaf values"
        )
    return Tree.build(
        left_child=tree_.children_left,
        right_child=tree_.children_right,
        feature=feature,
        threshold=tree_.threshold,
        default_left=None if missing_left is None else np.asarray(missing_left, dtype=bool),
        value=value,
        output_index=output_index,
    )


def _class_fractions(tree_: Any) -> npt.NDArray[np.float64]:
    """Leaf class distributions as ``DecisionTreeClassifier.predict_proba`` returns them:
    ``tree_.value`` itself, the fractions the fit stored (scikit-learn 1.4 on; before, it
    held counts and predict_proba divided them by their sum, which on fractions that do
    not add up to exactly 1 changes their last bits: a 100-tree RandomForest then differed
    on 714 of 15 000 probabilities)."""
    return np.asarray(tree_.value, dtype=np.float64)[:, 0, :].copy()


def _regression_values(tree_: Any) -> npt.NDArray[np.float64]:
    return np.asarray(tree_.value, dtype=np.float64)[:, :, 0]


@register("sklearn.DecisionTreeClassifier", "sklearn.DecisionTreeRegressor")
def parse_decision_tree(model: Any) -> Forest:
    """A single decision tree (ExtraTree* subclasses included)."""
    _check_fitted(model)
    return _bagged(model, [model], average=False)


@register(
    "sklearn.RandomForestClassifier",
    "sklearn.RandomForestRegressor",
    "sklearn.ExtraTreesClassifier",
    "sklearn.ExtraTreesRegressor",
)
def parse_forest(model: Any) -> Forest:
    """Random forests and extra-trees ensembles: the average of their trees."""
    _check_fitted(model)
    return _bagged(model, model.estimators_, average=True)


def _bagged(model: Any, estimators: list[Any], *, average: bool) -> Forest:
    is_classifier = hasattr(model, "classes_")
    if is_classifier:
        _reject_multi_output_classifier(model)
        trees = tuple(_tree_from_arrays(e.tree_, _class_fractions(e.tree_)) for e in estimators)
        n_outputs = len(model.classes_)
    else:
        trees = tuple(_tree_from_arrays(e.tree_, _regression_values(e.tree_)) for e in estimators)
        n_outputs = int(model.n_outputs_)
    methods = ("predict", "predict_proba", "apply") if is_classifier else ("predict", "apply")
    return Forest(
        trees=trees,
        n_features=int(model.n_features_in_),
        n_outputs=n_outputs,
        comparison="<=",
        aggregation="average" if average else "sum",
        base_score=np.zeros(n_outputs),
        task="classifier" if is_classifier else "regressor",
        methods=methods,
        classes=np.asarray(model.classes_) if is_classifier else None,
        feature_names=_feature_names(model),
        input_dtype="float32",
        allow_inf=False,
        leaf_shape=(len(trees),) if average else (),
    )


# ---------------------------------------------------------------------------------------
# GradientBoosting


def _gb_init_margin(model: Any) -> npt.NDArray[np.float64]:
    """The constant initial margin, or a clear error when ``init`` depends on the input."""
    n_outputs = model.estimators_.shape[1]
    init = model.init_
    if isinstance(init, str) and init == "zero":
        return np.zeros(n_outputs)
    from sklearn.dummy import DummyClassifier, DummyRegressor

    if not isinstance(init, (DummyClassifier, DummyRegressor)):
        raise UnsupportedModelError(
            f"{type(model).__qualname__} with init={type(init).__qualname__}: the initial "
            "prediction depends on the input; supported: init=None (a constant prior), 'zero', "
            "or a DummyClassifier/DummyRegressor"
        )
    strategy = getattr(init, "strategy", None)
    if strategy in ("stratified", "uniform"):  # random draws per row, not a constant
        raise UnsupportedModelError(
            f"{type(model).__qualname__} with init=DummyClassifier(strategy={strategy!r}): the "
            "initial prediction is drawn at random for each row; supported: a constant Dummy "
            "strategy ('prior', 'most_frequent', 'constant', or any DummyRegressor)"
        )
    # A constant Dummy estimator: its margin on any single row is the base score.
    probe = np.zeros((1, model.n_features_in_), dtype=np.float32)
    margin = np.asarray(model._raw_predict_init(probe), dtype=np.float64)
    return margin.reshape(-1)


@register("sklearn.GradientBoostingClassifier", "sklearn.GradientBoostingRegressor")
def parse_gradient_boosting(model: Any) -> Forest:
    """Gradient boosting: initial margin plus learning_rate times every stage's trees."""
    _check_fitted(model)
    n_stages, n_outputs = model.estimators_.shape
    lr = float(model.learning_rate)
    trees = tuple(
        _tree_from_arrays(
            model.estimators_[i, k].tree_,
            lr * _regression_values(model.estimators_[i, k].tree_),
            output_index=k,
        )
        for i in range(n_stages)
        for k in range(n_outputs)
    )
    is_classifier = hasattr(model, "classes_")
    loss = type(model._loss).__name__
    if not is_classifier:
        post = PostTransform("identity")
    elif loss == "HalfBinomialLoss":
        post = PostTransform("sigmoid")
    elif loss == "ExponentialLoss":
        post = PostTransform("sigmoid", scale=2.0)  # p = expit(2 * margin)
    elif loss == "HalfMultinomialLoss":
        # sklearn.utils.extmath.softmax: np.exp, then np.sum along the C-ordered rows.
        post = PostTransform("softmax", functions="numpy", row_sum="numpy")
    else:
        raise UnsupportedModelError(
            f"{type(model).__qualname__} with loss {loss}: "
            "supported losses are log_loss and exponential"
        )
    return Forest(
        trees=trees,
        n_features=int(model.n_features_in_),
        n_outputs=n_outputs,
        comparison="<=",
        base_score=_gb_init_margin(model),
        post_transform=post,
        task="classifier" if is_classifier else "regressor",
        methods=("predict", "predict_proba", "decision_function", "apply")
        if is_classifier
        else ("predict", "apply"),
        classes=np.asarray(model.classes_) if is_classifier else None,
        feature_names=_feature_names(model),
        input_dtype="float32",
        allow_nan=False,
        allow_inf=False,
        # GradientBoostingRegressor.apply drops the per-output axis; the classifier keeps it.
        leaf_shape=(n_stages, n_outputs) if is_classifier else (n_stages,),
        label_rule="margin_ge_zero",
    )


# ---------------------------------------------------------------------------------------
# HistGradientBoosting

# LogLink.inverse is np.exp; MultinomialLogit.inverse is sklearn.utils.extmath.softmax, whose
# np.sum adds the F-ordered margins column by column (sklearn/_loss/link.py).
_HGB_TRANSFORMS = {
    "HalfSquaredError": PostTransform("identity"),
    "AbsoluteError": PostTransform("identity"),
    "PinballLoss": PostTransform("identity"),
    "HuberLoss": PostTransform("identity"),
    "HalfPoissonLoss": PostTransform("exp", functions="numpy"),
    "HalfGammaLoss": PostTransform("exp", functions="numpy"),
    "HalfBinomialLoss": PostTransform("sigmoid"),
    "HalfMultinomialLoss": PostTransform("softmax", functions="numpy"),
}


def _bitset_members(bitset: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
    """The integers whose bit is set in a row of HistGradientBoosting's 8 x uint32 bitset."""
    bits = np.unpackbits(
        np.ascontiguousarray(bitset, dtype="<u4").view(np.uint8), bitorder="little"
    )
    return np.flatnonzero(bits).astype(np.int64)


def _hgb_tree(predictor: Any, column_of: npt.NDArray[np.intp], output_index: int) -> Tree:
    nodes = predictor.nodes
    is_leaf = nodes["is_leaf"].astype(bool)
    is_cat = nodes["is_categorical"].astype(bool) & ~is_leaf
    bitsets = predictor.raw_left_cat_bitsets
    return Tree.build(
        left_child=np.where(is_leaf, -1, nodes["left"]),
        right_child=np.where(is_leaf, -1, nodes["right"]),
        feature=column_of[nodes["feature_idx"]],
        threshold=nodes["num_threshold"],
        default_left=nodes["missing_go_to_left"].astype(bool),
        value=nodes["value"],
        categories={
            int(i): _bitset_members(bitsets[nodes["bitset_idx"][i]]) for i in np.flatnonzero(is_cat)
        },
        output_index=output_index,
    )


def _hgb_columns(
    model: Any,
) -> tuple[npt.NDArray[np.intp], tuple[tuple[Any, ...] | None, ...] | None]:
    """The input column behind each column the trees index, and the encoder's categories."""
    n_features = int(model.n_features_in_)
    is_categorical = getattr(model, "is_categorical_", None)
    if getattr(model, "_preprocessor", None) is None or is_categorical is None:
        return np.arange(n_features), None
    # The ColumnTransformer outputs the encoded categorical columns first, then the others.
    cat_columns = np.flatnonzero(is_categorical)
    column_of = np.concatenate([cat_columns, np.flatnonzero(~is_categorical)])
    encoder = model._preprocessor.named_transformers_["encoder"]
    categories: list[tuple[Any, ...] | None] = [None] * n_features
    for column, known in zip(cat_columns, encoder.categories_):
        categories[column] = tuple(_plain(v) for v in known if not _is_nan(v))
    return column_of, tuple(categories)


def _is_nan(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@register("sklearn.HistGradientBoostingClassifier", "sklearn.HistGradientBoostingRegressor")
def parse_hist_gradient_boosting(model: Any) -> Forest:
    """Histogram gradient boosting, categorical features and missing values included."""
    _check_fitted(model)
    loss = type(model._loss).__name__
    if loss not in _HGB_TRANSFORMS:
        raise UnsupportedModelError(
            f"{type(model).__qualname__} with loss {loss}: supported losses are "
            f"{sorted(_HGB_TRANSFORMS)}"
        )
    column_of, categories = _hgb_columns(model)
    trees = tuple(
        _hgb_tree(predictor, column_of, k)
        for iteration in model._predictors
        for k, predictor in enumerate(iteration)
    )
    n_outputs = int(model.n_trees_per_iteration_)
    is_classifier = hasattr(model, "classes_")
    return Forest(
        trees=trees,
        n_features=int(model.n_features_in_),
        n_outputs=n_outputs,
        comparison="<=",
        base_score=np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1),
        post_transform=_HGB_TRANSFORMS[loss],
        task="classifier" if is_classifier else "regressor",
        methods=("predict", "predict_proba", "decision_function")
        if is_classifier
        else ("predict",),
        classes=np.asarray(model.classes_) if is_classifier else None,
        feature_names=_feature_names(model),
        categories=categories,
        category_encoding="always",
        input_dtype="float64",
        leaf_shape=(len(trees),),
        label_rule="margin_gt_zero",
    )


# ---------------------------------------------------------------------------------------
# IsolationForest


def _average_path_length(n: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    from sklearn.ensemble._iforest import _average_path_length as apl

    return np.asarray(apl(n), dtype=np.float64)


@register("sklearn.IsolationForest")
def parse_isolation_forest(model: Any) -> Forest:
    """Isolation forest: leaf value = depth + expected remaining path length - 1."""
    _check_fitted(model)
    trees = []
    for i, (estimator, features) in enumerate(zip(model.estimators_, model.estimators_features_)):
        tree_ = estimator.tree_
        depths = getattr(model, "_decision_path_lengths", None)
        path = getattr(model, "_average_path_length_per_tree", None)
        if depths is not None and path is not None:
            value = np.asarray(depths[i], np.float64) + np.asarray(path[i], np.float64) - 1.0
        else:  # older scikit-learn: compute what newer versions cache
            value = _node_depths(tree_) + _average_path_length(tree_.n_node_samples) - 1.0
        trees.append(_tree_from_arrays(tree_, value, features=np.asarray(features)))
    denominator = len(trees) * float(_average_path_length(np.array([model.max_samples_]))[0])
    return Forest(
        trees=tuple(trees),
        n_features=int(model.n_features_in_),
        n_outputs=1,
        comparison="<=",
        post_transform=PostTransform("isolation", scale=denominator),
        task="outlier",
        methods=("predict", "decision_function", "score_samples"),
        feature_names=_feature_names(model),
        input_dtype="float32",
        leaf_shape=(len(trees),),
        decision_offset=float(model.offset_),
    )


def _node_depths(tree_: Any) -> npt.NDArray[np.float64]:
    depth = np.zeros(tree_.node_count, dtype=np.float64)
    for node in range(tree_.node_count):  # children always have larger ids than parents
        for child in (tree_.children_left[node], tree_.children_right[node]):
            if child >= 0:
                depth[child] = depth[node] + 1
    return depth
