"""Forests as JSON documents, losslessly: what ``Forest.to_json`` writes and artifacts carry.

Arrays travel as base64 of their little-endian bytes and floats as ``float.hex``, so that
every bit survives. Reading checks a document field by field against the schema of
:mod:`treecomp.ir_schema` (its JSON types, ranges and exact dtypes) before anything is built
from it, and returns the fields of a forest: :meth:`treecomp.ir.Forest.from_dict` builds
and validates the forest. This module sits below :mod:`treecomp.ir`, which it never
imports, so that the IR's classes can offer ``to_json`` and ``from_json``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import numpy.typing as npt

from treecomp import ir_schema as schema
from treecomp.errors import InvalidForestError

if TYPE_CHECKING:
    from treecomp.ir import Forest

FORMAT = "treecomp.forest"
VERSION = 1


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
        return {"dtype": "object", "values": [plain_scalar(v) for v in classes.tolist()]}
    return {"dtype": classes.dtype.str, "values": [plain_scalar(v) for v in classes.tolist()]}


def plain_scalar(value: Any) -> Any:
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


def write(forest: Forest) -> dict[str, Any]:
    """The JSON-ready document of ``forest`` (arrays as base64 of their bytes)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "n_features": forest.n_features,
        "n_outputs": forest.n_outputs,
        "comparison": forest.comparison,
        "aggregation": forest.aggregation,
        "base_score": _encode_array(np.asarray(forest.base_score)),
        "accumulation": forest.accumulation,
        "post_transform": {
            "kind": forest.post_transform.kind,
            "scale": float(forest.post_transform.scale).hex(),
            "functions": forest.post_transform.functions,
            "row_sum": forest.post_transform.row_sum,
        },
        "task": forest.task,
        "methods": list(forest.methods),
        "classes": _encode_labels(forest.classes),
        "feature_names": None if forest.feature_names is None else list(forest.feature_names),
        "check_feature_names": forest.check_feature_names,
        "ignored_columns": list(forest.ignored_columns),
        "categories": None
        if forest.categories is None
        else [None if c is None else [plain_scalar(v) for v in c] for c in forest.categories],
        "category_encoding": forest.category_encoding,
        "category_domain": forest.category_domain,
        "label_rule": forest.label_rule,
        "input_dtype": forest.input_dtype,
        "integer_input_dtype": forest.integer_input_dtype,
        "frame_cast": forest.frame_cast,
        "missing_value": float(forest.missing_value).hex(),
        "allow_nan": forest.allow_nan,
        "allow_inf": forest.allow_inf,
        "leaf_shape": list(forest.leaf_shape),
        "decision_offset": float(forest.decision_offset).hex(),
        "trees": [
            {
                "output_index": tree.output_index,
                **{name: _encode_array(getattr(tree, name)) for name in schema.TREE_ARRAYS},
            }
            for tree in forest.trees
        ],
    }


# -------------------------------------------------------------------------------------------
# Reading a document back. Every field is checked against what write() writes (its JSON
# type, its range and, for arrays, the exact dtype) before anything is built from it, so a
# crafted document gets an InvalidForestError naming the field: never a coerced value
# (``bool(None)`` is False), a product that wraps, or an allocation its bytes do not pay for.
# An artifact's checksum is no defence here: whoever crafts a file can compute it.

# Known versions of the forest document.
VERSIONS = (1,)
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
    "frame_cast",
    "missing_value",
    "allow_nan",
    "allow_inf",
    "leaf_shape",
    "decision_offset",
    "trees",
)
# Absent from documents written before they existed.
_OPTIONAL_FIELDS = ("ignored_columns", "frame_cast")


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


def _decode_tree(doc: Any, where: str) -> dict[str, Any]:
    _object(doc, where, ("output_index", *schema.TREE_ARRAYS))
    return dict(
        output_index=_integer(doc["output_index"], f"{where}.output_index", 0, _INDEX_LIMIT),
        **{
            name: _decode_array(doc[name], f"{where}.{name}", dtype, 2 if name == "value" else 1)
            for name, dtype in schema.TREE_DTYPES.items()
        },
    )


def _fields(doc: Any, size: int) -> dict[str, Any]:
    _check(type(doc) is dict and doc.get("format") == FORMAT, "not a treecomp forest document")
    version = doc.get("version")
    _check(type(version) is int, "forest document has no integer version")
    if version > VERSION:
        raise InvalidForestError(
            f"forest document version {version} is newer than this treecomp supports ({VERSION})"
        )
    _check(
        version in VERSIONS,
        f"unknown forest document version {version} (known: {list(VERSIONS)})",
    )
    _object(doc, "the document", _DOCUMENT_FIELDS, _OPTIONAL_FIELDS)
    if type(doc["trees"]) is not list:
        _malformed("trees", "a list", doc["trees"])
    # functions and row_sum are absent from documents written before they existed.
    post = _object(
        doc["post_transform"],
        "post_transform",
        ("kind", "scale", "functions", "row_sum"),
        ("functions", "row_sum"),
    )
    leaf_shape = doc["leaf_shape"]
    if type(leaf_shape) is not list or len(leaf_shape) > 32:  # NumPy 1's limit of dimensions
        _malformed("leaf_shape", "a list of at most 32 sizes", leaf_shape)
    methods = _names(doc["methods"], "methods")
    for method in methods:
        _choice(method, "methods[]", schema.METHODS)
    feature_names = doc["feature_names"]
    # Decoded in this order (trees first): the first bad field is the one an error names.
    return dict(
        trees=tuple(_decode_tree(t, f"trees[{i}]") for i, t in enumerate(doc["trees"])),
        n_features=_integer(doc["n_features"], "n_features", 1, _INDEX_LIMIT),
        n_outputs=_integer(doc["n_outputs"], "n_outputs", 1, _INDEX_LIMIT),
        comparison=_choice(doc["comparison"], "comparison", schema.COMPARISONS),
        aggregation=_choice(doc["aggregation"], "aggregation", schema.AGGREGATIONS),
        base_score=_decode_array(doc["base_score"], "base_score", np.float64, 1),
        accumulation=_choice(doc["accumulation"], "accumulation", schema.FLOAT_TYPES),
        post_transform=dict(
            kind=_choice(post["kind"], "post_transform.kind", schema.POST_TRANSFORMS),
            scale=_hex_float(post["scale"], "post_transform.scale", finite=True),
            functions=_choice(
                post.get("functions", "libm"), "post_transform.functions", schema.LINK_FUNCTIONS
            ),
            row_sum=_choice(
                post.get("row_sum", "sequential"), "post_transform.row_sum", schema.ROW_SUMS
            ),
        ),
        task=_choice(doc["task"], "task", schema.TASKS),
        methods=methods,
        classes=_decode_labels(doc["classes"], "classes", LABEL_BYTES_PER_DOCUMENT_BYTE * size),
        feature_names=None if feature_names is None else _names(feature_names, "feature_names"),
        check_feature_names=_flag(doc["check_feature_names"], "check_feature_names"),
        ignored_columns=_names(doc.get("ignored_columns", []), "ignored_columns"),
        categories=_decode_categories(doc["categories"], "categories"),
        category_encoding=_choice(
            doc["category_encoding"], "category_encoding", schema.CATEGORY_ENCODINGS
        ),
        category_domain=_choice(doc["category_domain"], "category_domain", schema.CATEGORY_DOMAINS),
        label_rule=_choice(doc["label_rule"], "label_rule", schema.LABEL_RULES),
        input_dtype=_choice(doc["input_dtype"], "input_dtype", schema.FLOAT_TYPES),
        integer_input_dtype=_choice(
            doc["integer_input_dtype"], "integer_input_dtype", schema.FLOAT_TYPES
        ),
        frame_cast=_choice(doc.get("frame_cast", "common"), "frame_cast", schema.FRAME_CASTS),
        missing_value=_hex_float(doc["missing_value"], "missing_value", finite=False),
        allow_nan=_flag(doc["allow_nan"], "allow_nan"),
        allow_inf=_flag(doc["allow_inf"], "allow_inf"),
        leaf_shape=tuple(
            _integer(d, f"leaf_shape[{i}]", 1, _INDEX_LIMIT) for i, d in enumerate(leaf_shape)
        ),
        decision_offset=_hex_float(doc["decision_offset"], "decision_offset", finite=True),
    )


def read(doc: Any, size: int | None = None) -> dict[str, Any]:
    """The fields of the forest a parsed document describes, each checked against the schema;
    ``trees`` and ``post_transform`` as fields of their own (what ``Tree`` and
    ``PostTransform`` take).

    Args:
        doc: The document (parsed JSON).
        size: Bytes of the file ``doc`` was parsed from: decoding never allocates more than
            a small multiple of it. Measured from ``doc`` when None.

    Raises:
        InvalidForestError: naming the field that is missing, of the wrong type or out of
            range.
    """
    if size is None:
        try:
            size = len(json.dumps(doc, separators=(",", ":")))
        except (TypeError, ValueError, RecursionError):
            raise InvalidForestError("not a treecomp forest document (not JSON data)") from None
    return _fields(doc, size)


def parse(text: str | bytes) -> dict[str, Any]:
    """:func:`read` of JSON text.

    Raises:
        InvalidForestError: the text is not JSON, or not a valid forest document.
    """
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidForestError(f"not a JSON document: {exc}") from None
    return _fields(doc, len(text))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidForestError(message)
