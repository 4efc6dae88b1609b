"""Checks of untrusted XGBoost and LightGBM model files, before their C++ parsers see them.

Both libraries' parsers trust their input. Seen with XGBoost 3.2 and LightGBM 4.7, on files
cut short or with a byte or a number changed:

* XGBoost: a UBJSON file cut inside an array's count made it allocate 20 GB; JSON nested
  100,000 deep overflowed its stack; a tree's ``parents``, ``id``, ``size_leaf_vector`` or
  ``categories_nodes`` out of range, or a vector-leaf tree without ``loss_changes``, crashed
  it (SIGSEGV, SIGABRT).
* LightGBM: a file cut inside a tree or after ``Tree=0`` aborted the process (an error
  raised inside its parallel tree parse is rethrown from a destructor); a tree line without
  '=' is scanned for one past the end of the buffer; ``tree_sizes`` offsets, child indices,
  split features and categorical thresholds index memory unchecked; a parameter line
  without ':' or an empty objective indexes past a vector; ``num_tree_per_iteration=0``
  divides by zero (SIGFPE). Numbers it cannot read become 0 without a word.

So :func:`check_xgboost` decodes the document in Python, bounds-checked, and checks what
XGBoost's loader follows; :func:`check_lightgbm` parses the text as LightGBM does and
checks every field LightGBM indexes with. Each raises :class:`FileCheckError` saying what
is wrong; a file that passes reaches the library whole and consistent. The fuzzing that
found these (truncation at every offset, byte flips, numbers swapped for extreme values,
lines deleted or repeated, keys renamed) runs clean against both checks.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np


class FileCheckError(ValueError):
    """What is wrong with a model file (without its name: the caller adds it)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (XGBoost's go on with a stack trace)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -------------------------------------------------------------------------------------------
# XGBoost: JSON and UBJSON documents

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


# -------------------------------------------------------------------------------------------
# LightGBM: the text, parsed as GBDT::LoadModelFromString and Tree::Tree(const char*) do

_INTEGER = r"[+-]?[0-9]+"
_DECIMAL = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
# Statistics treecomp does not read (gains, weights, internal values) may be non-finite;
# thresholds may be infinite (LightGBM before 4 wrote "inf" where it now writes 1e300).
_STATISTIC = rf"(?:{_DECIMAL}|[+-]?(?:inf(?:inity)?|nan))"
_NUMBER_LISTS = {
    kind: re.compile(rf" *(?:{token}(?: +{token})*)? *", re.IGNORECASE)
    for kind, token in (
        ("int", _INTEGER),
        ("real", _DECIMAL),
        ("threshold", rf"(?:{_DECIMAL}|[+-]?inf)"),
        ("stat", _STATISTIC),
    )
}
_FEATURE_INFO = re.compile(rf"none|\[{_STATISTIC}:{_STATISTIC}\]|-?[0-9]+(?::-?[0-9]+)*")
_PARAMETER_LINE = re.compile(r"\[[A-Za-z0-9_]+: .*\]")
# The fields Tree::Tree reads: (number kind, length: "leaves", "nodes" = leaves - 1, None
# (checked apart), or "scalar").
_TREE_FIELDS: dict[str, tuple[str, str | None]] = {
    "num_leaves": ("int", "scalar"),
    "num_cat": ("int", "scalar"),
    "is_linear": ("int", "scalar"),
    "shrinkage": ("stat", "scalar"),
    "split_feature": ("int", "nodes"),
    "split_gain": ("stat", "nodes"),
    "threshold": ("threshold", "nodes"),
    "decision_type": ("int", "nodes"),
    "left_child": ("int", "nodes"),
    "right_child": ("int", "nodes"),
    "leaf_value": ("real", "leaves"),
    "leaf_weight": ("stat", "leaves"),
    "leaf_count": ("int", "leaves"),
    "internal_value": ("stat", "nodes"),
    "internal_weight": ("stat", "nodes"),
    "internal_count": ("int", "nodes"),
    "cat_boundaries": ("int", None),
    "cat_threshold": ("int", None),
    "leaf_const": ("real", "leaves"),
    "num_features": ("int", "leaves"),
    "leaf_features": ("int", None),
    "leaf_coeff": ("real", None),
}
_INT32 = 2**31 - 1
# Tree::Tree reads at most this many lines of a tree.
_TREE_LINES = 22


def check_lightgbm(raw: bytes) -> str:
    """The LightGBM model text in ``raw``, checked, as LightGBM should be given it.

    That text is the model LightGBM reads from ``raw``, rewritten only where reading it as
    written is unsafe: line ends normalised to ``\\n`` (LightGBM refuses a file whose line
    ends were rewritten to CRLF), no ``tree_sizes`` line (with one, LightGBM parses the
    trees in parallel, where any error aborts the process; without, one after another,
    where an error is an exception), and each tree only the fields LightGBM reads from it.

    Raises:
        FileCheckError: what is wrong with the text (truncated, corrupt or not LightGBM's).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileCheckError(f"not UTF-8 text (byte {exc.start})") from None
    text = text.replace("\r\n", "\n")
    if "\r" in text or "\0" in text:
        raise FileCheckError("the text holds carriage returns or NUL characters")
    lines = text.split("\n")
    if lines[0] != "tree":
        raise FileCheckError("the first line is not 'tree'")
    first_tree = next((i for i, line in enumerate(lines) if line.startswith("Tree=")), None)
    if first_tree is None:
        raise FileCheckError("no 'Tree=' line: no trees, or the file is cut short")
    header = _lightgbm_header(lines[1:first_tree])
    trees, end = _lightgbm_trees(lines, first_tree, header)
    sizes = header.get("tree_sizes")
    if sizes is None and any(length > _TREE_LINES for _, length, _ in trees):
        raise FileCheckError(
            f"a tree of more than {_TREE_LINES} lines and no tree_sizes: LightGBM would stop "
            "reading the model there"
        )
    if sizes is not None:
        # LightGBM looks for tree k at the sum of the sizes before it.
        written = _numbers(sizes, "int", "tree_sizes").tolist()
        actual = [size for size, _, _ in trees]
        if len(written) != len(actual) or written[:-1] != actual[:-1]:
            raise FileCheckError(
                f"tree_sizes lists {len(written)} trees of {written[:4]}... bytes, the file "
                f"holds {len(actual)} of {actual[:4]}...: cut short?"
            )
    _check_lightgbm_parameters(lines[end:])
    rewritten = [line for line in lines[:first_tree] if _header_key(line) != "tree_sizes"]
    for k, (_, _, fields) in enumerate(trees):
        rewritten += [f"Tree={k}", *(f"{key}={value}" for key, value in fields.items()), ""]
    # A blank line ends each tree (Tree::Tree scans a last line for '=' past the text's end).
    return "\n".join(rewritten + (lines[end:] or [""]))


def _header_key(line: str) -> str | None:
    """The key of a header line as GBDT::LoadModelFromString reads it (empty parts dropped)."""
    parts = [part for part in line.split("=") if part]
    return parts[0] if parts else None


def _lightgbm_header(lines: list[str]) -> dict[str, str]:
    """The header's ``key=value`` pairs, split as GBDT::LoadModelFromString splits them."""
    header: dict[str, str] = {}
    for line in lines:
        parts = [part for part in line.split("=") if part]
        if not parts:
            continue
        if len(parts) > 2 and parts[0] != "feature_names":
            raise FileCheckError(f"header line {line[:40]!r} holds more than one '='")
        key = parts[0]
        value = line[len("feature_names=") :] if len(parts) > 2 else "".join(parts[1:])
        if key in header:
            raise FileCheckError(f"the header sets {key!r} twice")
        header[key] = value
    for key in ("num_class", "label_index", "max_feature_idx", "feature_names", "feature_infos"):
        if key not in header:
            raise FileCheckError(f"the header has no {key}")
    num_class = _scalar(header["num_class"], "num_class", low=1)
    per_iteration = _scalar(header.get("num_tree_per_iteration", str(num_class)), "trees", low=1)
    _scalar(header["label_index"], "label_index", low=-_INT32)
    n_features = _scalar(header["max_feature_idx"], "max_feature_idx", low=0) + 1
    if per_iteration != num_class:
        raise FileCheckError(
            f"num_class {num_class} but num_tree_per_iteration {per_iteration}; LightGBM "
            "writes them equal"
        )
    for key in ("feature_names", "feature_infos"):
        if len(header[key].split()) != n_features:
            raise FileCheckError(f"{key} does not list max_feature_idx + 1 = {n_features} items")
    for info in header["feature_infos"].split():
        if not _FEATURE_INFO.fullmatch(info):
            raise FileCheckError(f"feature_infos item {info[:40]!r} is malformed")
    if "objective" in header:
        words = [word for word in header["objective"].split(" ") if word]
        if not words:
            raise FileCheckError("the objective is empty")
        for word in words[1:]:
            name, _, value = word.partition(":")
            if name == "num_class" and value != str(num_class):
                raise FileCheckError(f"the objective's {word} differs from num_class={num_class}")
    return header


def _lightgbm_trees(
    lines: list[str], start: int, header: dict[str, str]
) -> tuple[list[tuple[int, int, dict[str, str]]], int]:
    """``([(bytes, lines, fields read) of each tree], index of the first line after them)``.

    A tree is its ``Tree=k`` line, ``key=value`` lines and blank lines. Tree::Tree reads
    the first 22 of its lines (each scanned for '=' without a bound) and ignores keys it does
    not know; the trees end at the first other line (``end of trees`` since LightGBM 3).
    """
    n_features = int(header["max_feature_idx"]) + 1
    trees: list[tuple[int, int, dict[str, str]]] = []
    i = start
    while i < len(lines) and lines[i].startswith("Tree="):
        if lines[i] != f"Tree={len(trees)}":
            raise FileCheckError(f"line {i + 1} is {lines[i][:40]!r}, not 'Tree={len(trees)}'")
        first = i
        fields: dict[str, str] = {}
        i += 1
        while i < len(lines) and lines[i]:
            key, equals, value = lines[i].partition("=")
            if i - first <= _TREE_LINES:
                if not equals or key in fields:
                    raise FileCheckError(f"tree {len(trees)}: unexpected line {lines[i][:40]!r}")
                if key in _TREE_FIELDS:
                    fields[key] = value
            i += 1
        if i >= len(lines) - 1:  # the last item of the split follows the last newline
            raise FileCheckError(f"tree {len(trees)} is cut short")
        n_lines = i - first - 1
        while i < len(lines) and not lines[i]:
            i += 1
        _check_lightgbm_tree(fields, len(trees), n_features)
        trees.append((len("\n".join(lines[first:i]).encode()) + 1, n_lines, fields))
    if not trees:
        raise FileCheckError("the model holds no trees")
    per_iteration = int(header.get("num_tree_per_iteration", header["num_class"]))
    if len(trees) % per_iteration:
        raise FileCheckError(
            f"{len(trees)} trees are not whole iterations of {per_iteration}: cut short?"
        )
    return trees, i


def _scalar(text: str, name: str, *, low: int) -> int:
    if not _NUMBER_LISTS["int"].fullmatch(text) or len(text.split()) != 1:
        raise FileCheckError(f"{name}={text[:40]!r} is not an integer")
    value = int(text)
    if not low <= value <= _INT32:
        raise FileCheckError(f"{name}={value} is out of range")
    return value


def _numbers(text: str, kind: str, name: str) -> np.ndarray:
    if not _NUMBER_LISTS[kind].fullmatch(text):
        raise FileCheckError(f"{name} holds something other than numbers")
    tokens = text.split()
    if kind == "int":
        try:
            return np.array(tokens, dtype=np.int64)
        except OverflowError:
            raise FileCheckError(f"{name} holds a number out of range") from None
    values = np.array(tokens, dtype=np.float64)
    if kind == "real" and not np.isfinite(values).all():
        raise FileCheckError(f"{name} holds a number out of double range")
    return values


def _check_lightgbm_tree(fields: dict[str, str], t: int, n_features: int) -> None:
    """One tree's fields, as Tree::Tree and Tree::ToJSON rely on them."""
    where = f"tree {t}"
    for key in ("num_leaves", "num_cat", "leaf_value"):
        if key not in fields:
            raise FileCheckError(f"{where} has no {key}")
    n_leaves = _scalar(fields["num_leaves"], f"{where} num_leaves", low=1)
    n_cat = _scalar(fields["num_cat"], f"{where} num_cat", low=0)
    linear = _scalar(fields.get("is_linear", "0"), f"{where} is_linear", low=0)
    if linear > 1:
        raise FileCheckError(f"{where} has is_linear={linear}")
    if n_leaves > 1 or linear:
        for key in ("left_child", "right_child", "split_feature", "threshold"):
            if key not in fields:
                raise FileCheckError(f"{where} has no {key}")
    if n_leaves == 1 and not linear:  # Tree::Tree reads only leaf_value (LightGBM writes
        # a single leaf's other statistics as it pleases: leaf_weight empty, leaf_count not)
        fields = {"leaf_value": fields["leaf_value"]}
    lengths = {"leaves": n_leaves, "nodes": n_leaves - 1}
    values: dict[str, np.ndarray] = {}
    for key, text in fields.items():
        kind, length = _TREE_FIELDS[key]
        if length == "scalar":
            if key == "shrinkage":
                _numbers(text, kind, f"{where} {key}")
            continue
        values[key] = _numbers(text, kind, f"{where} {key}")
        if length is not None and len(values[key]) != lengths[length]:
            raise FileCheckError(
                f"{where} {key} has {len(values[key])} values, not {lengths[length]} "
                f"(num_leaves={n_leaves})"
            )
    if n_leaves == 1 and not linear:
        return
    _check_lightgbm_children(values["left_child"], values["right_child"], where)
    split_feature = values["split_feature"]
    if len(split_feature) and (split_feature.min() < 0 or split_feature.max() >= n_features):
        raise FileCheckError(f"{where} splits a feature past max_feature_idx={n_features - 1}")
    decision = values.get("decision_type", np.zeros(n_leaves - 1, dtype=np.int64))
    if len(decision) and (decision.min() < 0 or decision.max() > 127):
        raise FileCheckError(f"{where} has a decision_type outside 0..127")
    # A categorical split's threshold indexes cat_boundaries (through static_cast<int>).
    categorical = values["threshold"][(decision & 1) == 1]
    if ((categorical < 0) | (categorical >= n_cat) | (categorical != np.floor(categorical))).any():
        raise FileCheckError(f"{where} has a categorical split outside num_cat={n_cat}")
    if n_cat:
        _check_lightgbm_categories(values, n_cat, where)
    if linear:
        _check_lightgbm_linear(values, n_features, where)


def _check_lightgbm_children(left: np.ndarray, right: np.ndarray, where: str) -> None:
    """Every node reached once from the root 0: internal nodes are ``>= 0``, leaf ``l`` is
    ``~l``; Tree::ToJSON recurses along them without a check."""
    n_nodes = len(left)
    if n_nodes == 0:  # a single leaf
        return
    seen_nodes = np.zeros(n_nodes, dtype=bool)
    seen_leaves = np.zeros(n_nodes + 1, dtype=bool)
    stack = [0]
    seen_nodes[0] = True
    while stack:
        node = stack.pop()
        for child in (int(left[node]), int(right[node])):
            if child >= 0:
                if child >= n_nodes or seen_nodes[child]:
                    raise FileCheckError(f"{where}: child {child} is out of range or reused")
                seen_nodes[child] = True
                stack.append(child)
            else:
                if ~child > n_nodes or seen_leaves[~child]:
                    raise FileCheckError(f"{where}: leaf {~child} is out of range or reused")
                seen_leaves[~child] = True
    if not (seen_nodes.all() and seen_leaves.all()):
        raise FileCheckError(f"{where}: some nodes are not reachable from the root")


def _check_lightgbm_categories(values: dict[str, np.ndarray], n_cat: int, where: str) -> None:
    for key in ("cat_boundaries", "cat_threshold"):
        if key not in values:
            raise FileCheckError(f"{where} has num_cat={n_cat} but no {key}")
    bounds, bits = values["cat_boundaries"], values["cat_threshold"]
    if (
        len(bounds) != n_cat + 1
        or bounds[0] != 0
        or (np.diff(bounds) < 0).any()
        or bounds[-1] != len(bits)
        or (len(bits) and (bits.min() < 0 or bits.max() >= 2**32))
    ):
        raise FileCheckError(f"{where}: cat_boundaries and cat_threshold do not agree")


def _check_lightgbm_linear(values: dict[str, np.ndarray], n_features: int, where: str) -> None:
    counts = values.get("num_features")
    if counts is None:
        return
    if counts.min() < 0:
        raise FileCheckError(f"{where}: num_features is negative")
    for key in ("leaf_features", "leaf_coeff"):  # ToJSON reads both, each to its count
        if len(values.get(key, ())) != counts.sum():
            raise FileCheckError(f"{where}: {key} does not hold sum(num_features) values")
    features = values.get("leaf_features")
    if features is not None and len(features):
        if features.min() < 0 or features.max() >= n_features:
            raise FileCheckError(f"{where}: leaf_features past max_feature_idx")


def _check_lightgbm_parameters(lines: list[str]) -> None:
    """The ``parameters:`` section, whose lines LightGBM splits at ':' and indexes blindly."""
    if "parameters:" not in lines:
        return
    start = lines.index("parameters:") + 1
    if "end of parameters" not in lines[start:]:
        raise FileCheckError("no 'end of parameters' line: cut short")
    end = lines.index("end of parameters", start)
    for line in lines[start:end]:
        if line and not _PARAMETER_LINE.fullmatch(line):
            raise FileCheckError(f"parameter line {line[:40]!r} is malformed")
