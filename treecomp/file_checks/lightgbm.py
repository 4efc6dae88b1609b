"""LightGBM model text, parsed as ``GBDT::LoadModelFromString`` and ``Tree::Tree(const char*)``
do, with every field LightGBM indexes with checked (see :mod:`treecomp.file_checks` for what
it crashed on).
"""

from __future__ import annotations

import re

import numpy as np

from treecomp.file_checks.errors import FileCheckError

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


# The objectives LightGBM writes with num_class trees an iteration (their canonical names;
# "custom" is a Python objective's, which may fit several).
_MULTICLASS_OBJECTIVES = ("multiclass", "multiclassova", "custom")


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
        # Only the multiclass objectives fit several trees an iteration; any other read with
        # num_class trees an iteration would score them as something they are not.
        if words[0] not in _MULTICLASS_OBJECTIVES and num_class != 1:
            raise FileCheckError(
                f"the objective {words[0]!r} fits one tree an iteration, but num_class is "
                f"{num_class}; LightGBM writes num_class=1 for it"
            )
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
