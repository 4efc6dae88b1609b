"""The IR on its own: validation, decision semantics and the JSON document."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_equal
from treecomp.ir import ZERO_THRESHOLD, Forest, PostTransform, Tree


def small_tree(**overrides: object) -> Tree:
    """Root: x0 <= 0.5; right child: categorical on x1 (1 or 3 go left)."""
    spec: dict[str, object] = dict(
        left_child=[1, -1, 3, -1, -1],
        right_child=[2, -1, 4, -1, -1],
        feature=[0, 0, 1, 0, 0],
        threshold=[0.5, 0, 0, 0, 0],
        value=[0, 1, 0, 2, 3],
        categories={2: [3, 1]},
        default_left=[True, True, False, True, True],
    )
    spec.update(overrides)
    return Tree.build(**spec)  # type: ignore[arg-type]


def small_forest(tree: Tree | None = None, **overrides: object) -> Forest:
    fields: dict[str, object] = dict(
        trees=(tree or small_tree(),),
        n_features=2,
        n_outputs=1,
        comparison="<=",
        base_score=np.array([0.5]),
        leaf_shape=(1,),
        methods=("predict", "apply"),
    )
    fields.update(overrides)
    return Forest(**fields).validate()  # type: ignore[arg-type]


def test_decision_semantics() -> None:
    cm = treecomp.convert(small_forest(), backend="numpy", precision="float64")
    X = np.array(
        [
            [0.5, 0],  # on the threshold: <= goes left
            [np.nextafter(0.5, 1), 1],  # just above: right, then category 1 is listed: left
            [0.9, 2],  # unlisted category: right
            [0.9, np.nan],  # missing at a categorical node: default (right)
            [np.nan, 3.7],  # missing at the root: default (left)
            [1, -0.5],  # truncates to 0: unlisted
            [1, 3.99],  # truncates to 3: listed
            [1, np.inf],  # never listed
            [np.inf, 1],
        ]
    )
    assert_equal(cm.apply(X)[:, 0], [1, 3, 4, 4, 1, 4, 3, 4, 3])
    strict = treecomp.convert(small_forest(comparison="<"), backend="numpy", precision="float64")
    assert_equal(strict.apply(np.array([[0.5, 1.0]]))[:, 0], [3])


def test_zero_is_missing() -> None:
    tree = small_tree(
        zero_is_missing=[True, False, False, False, False], threshold=[-1.0, 0, 0, 0, 0]
    )
    cm = treecomp.convert(small_forest(tree), backend="numpy", precision="float64")
    X = np.array([[0.0, 1], [-ZERO_THRESHOLD, 1], [2 * ZERO_THRESHOLD, 1], [np.nan, 1]])
    # zero and NaN take the default (left); a value beyond the zero band compares normally.
    assert_equal(cm.apply(X)[:, 0], [1, 1, 3, 1])


def test_validate_rejects_malformed_forests() -> None:
    bad_trees = {
        "child index out of range": small_tree(left_child=[1, -1, 7, -1, -1]),
        "exactly one child": small_tree(right_child=[2, 4, 4, -1, -1]),
        "feature index": small_tree(feature=[5, 0, 1, 0, 0]),
        "reached twice": small_tree(left_child=[1, -1, 1, -1, -1], right_child=[2, -1, 4, -1, -1]),
        "NaN threshold": small_tree(threshold=[np.nan, 0, 0, 0, 0]),
    }
    for message, tree in bad_trees.items():
        with pytest.raises(treecomp.InvalidForestError, match=message):
            small_forest(tree)
    with pytest.raises(treecomp.InvalidForestError, match="no trees"):
        small_forest(trees=())
    with pytest.raises(treecomp.InvalidForestError, match="base_score"):
        small_forest(base_score=np.array([0.5, 1.0]))
    with pytest.raises(treecomp.InvalidForestError, match="post-transform"):
        small_forest(post_transform=PostTransform("tanh"))
    with pytest.raises(treecomp.InvalidForestError, match="leaf_shape"):
        small_forest(leaf_shape=(2,))


def test_json_round_trip_keeps_every_bit() -> None:
    tree = small_tree(threshold=[np.nextafter(0.1, 1), 0, 0, 0, 0])
    forest = small_forest(tree, feature_names=("a", "b"), categories=(None, ("x", 2.5, 3)))
    again = Forest.from_json(forest.to_json())
    assert again == forest
    assert again.trees[0].threshold[0] == np.nextafter(0.1, 1)
    assert again.categories == (None, ("x", 2.5, 3))
    assert again != dataclasses.replace(forest, base_score=np.array([np.nextafter(0.5, 1)]))


def test_json_rejects_foreign_tampered_and_newer_documents() -> None:
    text = small_forest().to_json()
    with pytest.raises(treecomp.InvalidForestError, match="not a JSON"):
        Forest.from_json(text[:-10])
    with pytest.raises(treecomp.InvalidForestError, match="not a treecomp forest"):
        Forest.from_json(json.dumps({"hello": 1}))
    doc = json.loads(text)
    doc["version"] = 99
    with pytest.raises(treecomp.InvalidForestError, match=r"99.*1"):
        Forest.from_json(json.dumps(doc))
    doc = json.loads(text)
    del doc["trees"][0]["left_child"]
    with pytest.raises(treecomp.InvalidForestError, match="malformed"):
        Forest.from_json(json.dumps(doc))
    doc = json.loads(text)
    doc["trees"][0]["feature"]["data"] = doc["trees"][0]["threshold"]["data"]
    with pytest.raises(treecomp.InvalidForestError):
        Forest.from_json(json.dumps(doc))


def test_missing_methods_raise_attribute_error() -> None:
    cm = treecomp.convert(small_forest(), backend="numpy")
    assert not hasattr(cm, "predict_proba")
    with pytest.raises(AttributeError, match="predict_proba"):
        cm.predict_proba(np.zeros((1, 2)))
    assert "predict_proba" not in dir(cm)
    assert "apply" in dir(cm)


def test_scipy_sparse_input_is_refused_naming_the_disagreement() -> None:
    """Absent entries are zeros to scikit-learn and LightGBM, missing to XGBoost, and a
    forest does not say which library it follows: refused clearly, not 'non-numeric'."""
    sparse = pytest.importorskip("scipy.sparse")
    cm = treecomp.convert(small_forest(), backend="numpy")
    X = np.array([[0.0, 1.0], [0.9, 0.0]])
    for matrix in (sparse.csr_matrix(X), sparse.csc_matrix(X), sparse.csr_array(X)):
        with pytest.raises(TypeError, match=r"absent entries mean 0 .* 'missing' to XGBoost"):
            cm.predict(matrix)
        with pytest.raises(TypeError, match=r"pass X\.toarray\(\) \(absent = 0\)"):
            cm.apply(matrix)
