"""Categorical splits on sparse, huge codes: the hash layout of the category tables.

A LightGBM model whose splits list categories such as 8 225 540 and 2**24 + 3 would need
a direct table of ``rows x 16 777 221`` cells; every lowering holds it as a hash table of
the listed categories instead (``strategies.categories.CategorySets``), and must take exactly
the native decisions on every target: listed codes, their neighbours, fractions, negatives,
NaN, ±inf and codes past the float type.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np
import pytest

import treecomp
from strategies.categories import CategorySets
from strategies.nodes import category_member
from strategies.programs import run_steps
from tests.helpers import assert_close, assert_equal
from tests.test_ir import small_forest
from treecomp.arrays import record
from treecomp.ir import Tree

lgb = pytest.importorskip("lightgbm")
torch = pytest.importorskip("torch")

# Category codes of the training data: small ones, one above 2**23, and two past 2**24
# (2**24 + 3 is not a float32 number; 2**24 + 4 is).
CODES = np.array([0, 1, 2, 3, 5, 7, 8_225_540, 2**24 + 3, 2**24 + 4])
FEATURE = 1  # the categorical column
SMALL = {
    "num_leaves": 8,
    "min_child_samples": 5,
    "min_data_per_group": 5,
    "cat_smooth": 1.0,
    "cat_l2": 1.0,
    "max_cat_to_onehot": 1,
    "verbose": -1,
    "n_jobs": 1,
}


@cache
def huge_model() -> Any:
    """A 6-tree LightGBM regressor splitting on ``CODES`` (a few kB of trees; LightGBM's
    own bitsets of such codes are 2 MiB a node, so codes stay below 2**25)."""
    rng = np.random.default_rng(0)
    n = 400
    codes = rng.choice(CODES, n)
    effect = dict(zip(CODES.tolist(), 3 * rng.normal(size=CODES.size)))
    X = np.column_stack([rng.normal(size=n), codes.astype(np.float64), rng.normal(size=n)])
    y = np.array([effect[c] for c in codes.tolist()]) + X[:, 0] + rng.normal(scale=0.1, size=n)
    return lgb.LGBMRegressor(n_estimators=6, **SMALL).fit(X, y, categorical_feature=[FEATURE])


def edge_rows(n_features: int, feature: int, codes: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows whose ``feature`` is each code, its neighbours and fractions around it, and the
    values every category test must send right or the default way."""
    values = np.concatenate([codes + d for d in (-1.0, -0.5, 0.0, 0.25, 0.999, 1.0)])
    values = np.concatenate(
        [
            values,
            [np.nan, -np.inf, -1e30, -2.0, -1.0, -0.99, -0.5, -0.0, 2**31 - 1.0, 2.0**31],
            [2.0**32 + 3, 1e30, np.inf],
        ]
    )
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(values.size, n_features))
    X[:, feature] = values
    return X


def listed(model: Any) -> np.ndarray:
    forest = treecomp.parse(model)
    return np.unique(np.concatenate([t.category_values for t in forest.trees]))


def test_the_model_lists_codes_past_float32_integers() -> None:
    """The premise of this file: splits list 8 225 540 and a code past 2**24, and the
    lowered modules hold them in a hash table of a few slots per listed category."""
    codes = listed(huge_model())
    assert codes.max() > 2**24 and 8_225_540 in codes, codes
    keys = sum(t.category_values.size for t in treecomp.parse(huge_model()).trees)
    cm = treecomp.convert(huge_model(), "torch", precision="float64")
    for group in cm.torch_module.groups:
        assert len(group.category_layout) == 5  # the hash layout
        assert group.category_table.numel() <= 8 * keys


CASES = [
    ("numpy", "auto"),
    ("torch", "gemm"),
    ("torch", "tree_traversal"),
    ("torch", "perfect_tree_traversal"),
    ("torchscript", "tree_traversal"),
    ("onnx", "gemm"),
    ("onnx", "tree_traversal"),
    ("onnx", "perfect_tree_traversal"),
    ("onnx", "tree_ensemble"),
]


@pytest.mark.parametrize(("backend", "strategy"), CASES)
def test_huge_codes_match_native(backend: str, strategy: str) -> None:
    """precision="float64" reads codes as LightGBM does (a double truncated to an int):
    leaves equal, predictions within float64 sums, on every edge of every code."""
    model = huge_model()
    options = {} if backend == "numpy" else {"strategy": strategy}
    cm = treecomp.convert(model, backend, precision="float64", **options)
    X = edge_rows(3, FEATURE, CODES)
    assert_equal(cm.apply(X), model.predict(X, pred_leaf=True))
    assert_close(cm.predict(X), model.predict(X), "float64")


def test_huge_codes_compiled() -> None:
    model = huge_model()
    cm = treecomp.convert(model, "torch", precision="float64", compile=True)
    assert cm.strategy.endswith("[compiled]")
    X = edge_rows(3, FEATURE, CODES)
    assert_equal(cm.apply(X), model.predict(X, pred_leaf=True))
    assert_close(cm.predict(X), model.predict(X), "float64")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_float32_precision_warns_and_is_exact_on_float32_codes(backend: str) -> None:
    """precision="float32" rounds inputs to float32 before the test: it warns, takes the
    native decisions wherever the input is a float32 number, and the reference's float32
    decisions everywhere; 2**24 + 3, a listed code, reads as 2**24 + 4."""
    model = huge_model()
    with pytest.warns(UserWarning, match="precision='float64'"):
        cm = treecomp.convert(model, backend, precision="float32")
    reference = treecomp.convert(model, "numpy", precision="float32")
    X = edge_rows(3, FEATURE, CODES)
    others = np.arange(3) != FEATURE
    X[:, others] = X[:, others].astype(np.float32)  # numerical features: float32 numbers
    assert_equal(cm.apply(X), reference.apply(X))
    value = X[:, FEATURE]
    with np.errstate(over="ignore"):
        exact = (value.astype(np.float32) == value) | np.isnan(value)
    native = model.predict(X, pred_leaf=True)
    assert_equal(cm.apply(X[exact]), native[exact])
    odd = np.flatnonzero(value == 2**24 + 3)
    assert odd.size and (cm.apply(X[odd]) != native[odd]).any()
    # precision="float64" compares such codes as LightGBM does, and says nothing.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*precision=")
        treecomp.convert(model, backend, precision="float64")


def test_thousands_of_features() -> None:
    """3 000 features, the categorical one last, with huge codes: every target exact."""
    rng = np.random.default_rng(1)
    n, d = 300, 3000
    codes = np.array([0, 4, 9, 8_225_540, 2**24 + 3])
    X = rng.normal(size=(n, d))
    X[:, d - 1] = rng.choice(codes, n)
    y = X[:, 10] + 2 * np.isin(X[:, d - 1], codes[[1, 3]]) + X[:, 2000] * X[:, 5]
    model = lgb.LGBMRegressor(n_estimators=3, **SMALL).fit(X, y, categorical_feature=[d - 1])
    assert listed(model).max() >= 8_225_540
    test = np.vstack([X[:50], edge_rows(d, d - 1, codes)])
    expected = model.predict(test, pred_leaf=True)
    for backend, strategy in [("numpy", "auto"), ("torch", "auto"), ("onnx", "auto")]:
        options = {} if backend == "numpy" else {"strategy": strategy}
        cm = treecomp.convert(model, backend, precision="float64", **options)
        assert_equal(cm.apply(test), expected)
        assert_close(cm.predict(test), model.predict(test), "float64")


@pytest.mark.parametrize("domain", ["truncate", "nonnegative"])
def test_both_layouts_and_domains_match_the_reference(domain: str) -> None:
    """A hand-built forest listing codes up to 2**31 - 1 at two nodes, in each category
    domain (LightGBM's and XGBoost's): the hash layout on every strategy and target agrees
    with the reference evaluator, as the direct layout does for small codes."""
    big = [2**31 - 1, 2**24 + 3, 8_225_540, 0]
    tree = Tree.build(
        left_child=[1, 3, -1, -1, -1],
        right_child=[2, 4, -1, -1, -1],
        feature=[1, 1, 0, 0, 0],
        threshold=[0, 0, 0, 0, 0],
        value=[0, 0, 1, 2, 3],
        categories={0: big, 1: [1, 2**24 + 3]},
        default_left=[True, False, True, True, True],
    )
    forest = small_forest(tree, category_domain=domain, methods=("predict", "apply"))
    X = edge_rows(2, 1, np.array([*big, 1, 2]))
    expected = treecomp.convert(forest, "numpy", precision="float64").apply(X)
    for backend in ("torch", "onnx"):
        for strategy in ("gemm", "tree_traversal", "perfect_tree_traversal"):
            cm = treecomp.convert(forest, backend, precision="float64", strategy=strategy)
            assert_equal(cm.apply(X), expected)
    module = treecomp.convert(forest, "torch", precision="float64").torch_module
    assert len(module.groups[0].category_layout) == 5  # the hash layout
    # -0.99 and -0.5 truncate to the listed code 0, then miss node 1's list (leaf 4);
    # outside the "nonnegative" domain they go right at the root (leaf 2).
    on_zero = np.flatnonzero((X[:, 1] < 0) & (X[:, 1] > -1))
    assert on_zero.size and (expected[on_zero, 0] == (4 if domain == "truncate" else 2)).all()


@pytest.mark.parametrize("kind", ["direct", "hash"])
def test_category_sets_list_exactly_the_listed_codes(kind: str) -> None:
    """The NumPy and torch lookups of either layout against Python sets, on structured
    keys (the same consecutive codes at many rows, strided codes) and random ones."""
    rng = np.random.default_rng(0)
    lists = [np.arange(k, k + 32) for k in range(300)]
    lists += [np.arange(0, 32) * (1 << 20) for _ in range(100)]
    lists += [np.unique(rng.integers(0, 2**31, 20)) for _ in range(100)]
    if kind == "direct":
        lists = [codes % 5000 for codes in lists]
    sets = CategorySets(lists, kind=kind)
    assert len(sets.layout) == (1 if kind == "direct" else 5)
    rows = np.repeat(np.arange(1, len(lists) + 1), [len(c) for c in lists])
    codes = np.concatenate(lists)
    probes_rows = np.concatenate([rows, rows, rng.integers(1, len(lists) + 1, 5000), [1, 1]])
    probes_codes = np.concatenate([codes, codes + 1, rng.integers(0, 2**31, 5000), [0, 2**31 - 1]])
    truth = np.array([c in set(lists[r - 1].tolist()) for r, c in zip(probes_rows, probes_codes)])
    assert truth.sum() >= codes.size
    assert_equal(sets.contains(probes_rows, probes_codes), truth)
    # The node test's lookup as the torch module runs it.
    types = ("int64", "int64", "bool" if sets.table.dtype == bool else "int64")
    lookup = record(lambda c, r, t: category_member(c, r, t, sets.layout), *types)
    arrays = (probes_codes, probes_rows, sets.table)
    found = run_steps(lookup.flat(), [torch.from_numpy(a) for a in arrays])
    assert_equal(found.numpy(), truth)
    again = CategorySets(lists, kind=kind)  # deterministic: the same forest, the same table
    assert again.layout == sets.layout and np.array_equal(again.table, sets.table)
    if kind == "hash":  # memory follows the listed keys, not the largest code
        assert sets.table.size <= 8 * np.unique(rows << 31 | codes).size


def test_default_precision_reads_huge_codes_exactly_from_either_float_type() -> None:
    """convert(model) with no option: float64 rows compare codes as LightGBM does, float32
    rows (whose codes the caller already rounded, as LightGBM then reads them) run on the
    float32 engine, exact for them, without the float32 warning."""
    model = huge_model()
    X = edge_rows(3, FEATURE, CODES)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*precision=")
        cm = treecomp.convert(model, "torch", strategy="tree_traversal")
        assert_equal(cm.apply(X), model.predict(X, pred_leaf=True))
        with np.errstate(over="ignore"):
            X32 = X.astype(np.float32)
        assert_equal(cm.apply(X32), model.predict(X32, pred_leaf=True))
    assert cm.strategy.endswith("(float32 and float64 rows)")
