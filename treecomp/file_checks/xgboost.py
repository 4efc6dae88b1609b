"""XGBoost model files (JSON and UBJSON), decoded in Python, bounds-checked, and checked as
far as XGBoost's loader follows them (see :mod:`treecomp.file_checks` for what it crashed on).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from treecomp.file_checks.errors import FileCheckError, first_line

# XGBoost writes no deeper than about 8 levels; its parsers recurse once per level, so a
# deeply nested file overflows the C++ stack (a 500 kB JSON file of '{"a":' is enough).
_MAX_DEPTH = 64


def check_xgboost(raw: bytes) -> dict[str, Any]:
    """The decoded model document, checked as far as XGBoost's loader relies on it.

    ``raw`` is told apart as XGBoost tells a buffer apart: ``{L`` opens UBJSON (its object
    keys are length-prefixed), any other ``{`` JSON.

    Raises:
        FileCheckError: the document is not JSON or UBJSON, is cut short, or holds trees
            XGBoost would follow out of bounds.
    """
    if raw[:2] == b"{L":
        document = _UBJSONDecoder(raw).document()
    elif raw[:1] == b"{":
        try:
            document = json.loads(raw)
        except RecursionError:
            raise FileCheckError(f"nested deeper than {_MAX_DEPTH} levels") from None
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            raise FileCheckError(f"not valid JSON: {exc}; truncated?") from None
        if isinstance(document, (dict, list)):
            _check_depth(document)
    else:
        raise FileCheckError("neither JSON nor UBJSON: it does not start with '{'")
    if not isinstance(document, dict):
        raise FileCheckError("the document is not an object")
    try:
        _check_xgboost_model(document)
    except FileCheckError:
        raise
    except KeyError as exc:
        raise FileCheckError(f"no {exc}") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise FileCheckError(first_line(exc)) from None
    return document


def _check_depth(value: dict[str, Any] | list[Any], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise FileCheckError(f"nested deeper than {_MAX_DEPTH} levels")
    for child in value.values() if isinstance(value, dict) else value:
        if isinstance(child, (dict, list)):
            _check_depth(child, depth + 1)


# UBJSON markers XGBoost 3.2 reads (each checked): scalars as big-endian struct formats,
# typed-array elements as NumPy dtypes.
_UBJ_SCALARS = dict(i=">b", U=">B", I=">h", l=">i", L=">q", C=">b", d=">f", D=">d")
_UBJ_TYPED_ARRAYS = dict(i="i1", U="u1", I=">i2", l=">i4", L=">i8", d=">f4", D=">f8")


class _UBJSONDecoder:
    """XGBoost's subset of UBJSON (``UBJReader`` in its json.cc), bounds-checked.

    Only what that reader accepts is accepted, so both read the same structure; counts are
    checked against the bytes left before anything is allocated (XGBoost trusts them: a
    file cut inside a count makes it allocate tens of GiB).
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def document(self) -> Any:
        value = self._value(0)
        if self.pos != len(self.raw):
            raise FileCheckError(f"{len(self.raw) - self.pos} stray bytes after the document")
        return value

    def _take(self, n: int) -> bytes:
        if n < 0 or n > len(self.raw) - self.pos:
            raise FileCheckError(f"UBJSON cut short at byte {self.pos}; truncated?")
        chunk = self.raw[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _marker(self) -> str:
        return self._take(1).decode("latin-1")

    def _expect(self, marker: str) -> None:
        at = self.pos
        if self._marker() != marker:
            raise FileCheckError(f"UBJSON: expected {marker!r} at byte {at}")

    def _count(self) -> int:
        self._expect("L")
        n: int = struct.unpack(">q", self._take(8))[0]
        if n < 0 or n > len(self.raw) - self.pos:
            raise FileCheckError(f"UBJSON: count {n} at byte {self.pos - 8} exceeds the file")
        return n

    def _string(self) -> str:
        at = self.pos
        try:
            return self._take(self._count()).decode("utf-8")
        except UnicodeDecodeError:
            raise FileCheckError(f"UBJSON: the string at byte {at} is not UTF-8") from None

    def _value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise FileCheckError(f"nested deeper than {_MAX_DEPTH} levels")
        at = self.pos
        marker = self._marker()
        if marker in _UBJ_SCALARS:
            fmt = _UBJ_SCALARS[marker]
            return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]
        if marker == "S":
            return self._string()
        if marker in "ZTF":
            return {"Z": None, "T": True, "F": False}[marker]
        if marker == "{":
            result: dict[str, Any] = {}
            while self._peek() != "}":
                key = self._string()
                result[key] = self._value(depth + 1)
            self._expect("}")
            return result
        if marker == "[":
            return self._array(depth)
        raise FileCheckError(f"UBJSON: unknown marker {marker!r} at byte {at}")

    def _peek(self) -> str:
        if self.pos >= len(self.raw):
            raise FileCheckError("UBJSON cut short; truncated?")
        return chr(self.raw[self.pos])

    def _array(self, depth: int) -> Any:
        if self._peek() == "$":
            self._take(1)
            kind = self._marker()
            if kind not in _UBJ_TYPED_ARRAYS:
                raise FileCheckError(f"UBJSON: typed array of {kind!r} at byte {self.pos - 1}")
            self._expect("#")
            dtype = np.dtype(_UBJ_TYPED_ARRAYS[kind])
            n = self._count()
            return np.frombuffer(self._take(n * dtype.itemsize), dtype=dtype)
        if self._peek() == "#":
            self._take(1)
            return [self._value(depth + 1) for _ in range(self._count())]
        items = []
        while self._peek() != "]":
            items.append(self._value(depth + 1))
        self._take(1)
        return items


# Arrays of one value per node in every XGBoost tree (base_weights too, but it holds one
# row per node in a vector-leaf tree).
_XGBOOST_NODE_ARRAYS = (
    "left_children",
    "right_children",
    "parents",
    "split_indices",
    "split_conditions",
    "default_left",
    "loss_changes",
    "sum_hessian",
    "split_type",
)


# The model's counts, with their least value (each also the default of a missing one).
_XGBOOST_COUNTS = {"num_class": 0, "num_target": 1, "num_feature": 0}


def _check_xgboost_model(document: dict[str, Any]) -> None:
    """What XGBoost's loader follows unchecked: each item here, changed in a real model
    file, crashed XGBoost 3.2 (a tree's links, id, leaf-vector width or categorical splits)
    or made it allocate without bound (the class and target counts)."""
    learner = document["learner"]
    booster = learner["gradient_booster"]
    if booster.get("name") == "gblinear":  # no trees; the frontend refuses it by name
        return
    model = booster["gbtree"]["model"] if "gbtree" in booster else booster["model"]  # DART
    trees = model["trees"]
    if not isinstance(trees, list):
        raise FileCheckError("the trees are not a list")
    params = learner.get("learner_model_param", {})
    counts = {key: int(params.get(key, low)) for key, low in _XGBOOST_COUNTS.items()}
    for key, low in _XGBOOST_COUNTS.items():
        if not low <= counts[key] < 2**31:  # -1 targets made XGBoost allocate until killed
            raise FileCheckError(f"{key} is {counts[key]}")
    outputs = max(counts["num_class"], counts["num_target"], 1)
    widest = 1
    for t, tree in enumerate(trees):
        try:
            if int(tree.get("id", t)) != t:
                raise ValueError(f"its id is {tree['id']}")
            widest = max(widest, _check_xgboost_tree(tree, outputs))
        except KeyError as exc:
            raise FileCheckError(f"tree {t} has no {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise FileCheckError(f"tree {t}: {first_line(exc)}") from None
    if outputs > max(len(trees), widest):
        raise FileCheckError(f"{outputs} classes or targets, more than its trees can output")
    if "iteration_indptr" in model:
        indptr = np.asarray(model["iteration_indptr"], dtype=np.int64).reshape(-1)
        if (
            not len(indptr)
            or indptr[0] != 0
            or indptr[-1] != len(trees)
            or (np.diff(indptr) < 0).any()
        ):
            raise FileCheckError("iteration_indptr does not divide the trees into iterations")


def _check_xgboost_tree(tree: dict[str, Any], outputs: int) -> int:
    """Check one tree; returns its leaf-vector width."""

    def length(key: str) -> int:
        if not isinstance(tree[key], (list, np.ndarray)):
            raise ValueError(f"{key} is not an array")
        return len(tree[key])

    def array(key: str) -> np.ndarray:  # of integers
        length(key)
        return np.asarray(tree[key], dtype=np.int64).reshape(-1)

    left = array("left_children")
    n = len(left)
    param = tree["tree_param"]
    if n == 0 or str(param["num_nodes"]) != str(n):
        raise ValueError(f"num_nodes is not {len(left)}, the length of left_children")
    for key in _XGBOOST_NODE_ARRAYS:  # split_type: since XGBoost 1.6
        if (key in tree or key != "split_type") and length(key) != n:
            raise ValueError(f"{key} does not hold {n} values")
    right, parents = array("right_children"), array("parents")
    # Leaves have left child -1; a vector-leaf tree keeps a leaf's row of leaf_weights in
    # right_children (XGBoost 3.2 follows it unchecked).
    internal, leaves = np.flatnonzero(left != -1), np.flatnonzero(left == -1)
    width = int(param["size_leaf_vector"])
    if width not in (0, 1, outputs):
        raise ValueError(f"size_leaf_vector is {width}, for {outputs} outputs")
    if length("base_weights") != n * max(width, 1):
        raise ValueError(f"base_weights does not hold {n} rows of {max(width, 1)}")
    if width > 1:
        rows, extra = divmod(length("leaf_weights"), width)
        if extra or (len(leaves) and (right[leaves].min() < 0 or right[leaves].max() >= rows)):
            raise ValueError("leaf_weights do not hold the rows the leaves point to")
    for children in (left[internal], right[internal]):
        if len(children) and (children.min() < 1 or children.max() >= n):
            raise ValueError("a child index is out of range")
        if (parents[children] != internal).any():
            raise ValueError("parents do not match the children")
    if parents[0] not in (-1, 2**31 - 1):
        raise ValueError("the root has a parent")
    if "categories_segments" not in tree and "categories_nodes" not in tree:
        return width
    segments, sizes = array("categories_segments"), array("categories_sizes")
    nodes, categories = array("categories_nodes"), array("categories")
    if len(segments) != len(sizes) or len(nodes) != len(sizes):
        raise ValueError("categorical split arrays differ in length")
    if len(nodes) and (
        nodes.min() < 0
        or nodes.max() >= n
        or segments.min() < 0
        or sizes.min() < 1
        or (segments + sizes).max() > len(categories)
    ):
        raise ValueError("categorical splits point outside their nodes or categories")
    if len(categories) and (categories.min() < 0 or categories.max() >= 2**31 - 1):
        raise ValueError("a category is out of range")
    return width
