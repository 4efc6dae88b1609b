"""A pipeline's row transforms as a JSON document: what the artifact of a compiled Pipeline
carries beside its forest (:mod:`treecomp.artifact`).

Floats travel as ``float.hex`` so that every bit survives (a scale rounded by a decimal
printout would change features); categories as strings, integers, booleans or
``{"float": hex}``, as the forest document writes labels. Reading checks every field's JSON
type and range before anything is built, and raises :class:`~treecomp.InvalidArtifactError`
naming the first field that is wrong: a file can ask for no more than it spells out.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn, get_args

from treecomp.errors import InvalidArtifactError, InvalidForestError
from treecomp.forest_json import plain_scalar
from treecomp.transforms import Feature, Op, OpKind, Source, Transforms

_KINDS: tuple[str, ...] = get_args(OpKind)


def write(transforms: Transforms) -> dict[str, Any]:
    """The JSON-ready document of ``transforms``."""
    return {
        "columns": list(transforms.columns),
        "named": transforms.named,
        "steps": list(transforms.steps),
        "sources": [
            {
                "column": s.column,
                "categories": None if s.categories is None else [_plain(v) for v in s.categories],
                "refuse_unknown": s.refuse_unknown,
                "refuse_missing": s.refuse_missing,
                # Written only where set: a reader that predates it refuses what it would
                # misread, and reads the others.
                **({"refuse_na": True} if s.refuse_na else {}),
            }
            for s in transforms.sources
        ],
        "features": [
            {
                "source": f.source,
                "name": f.name,
                "ops": [[op.kind, float(op.value).hex(), float(op.other).hex()] for op in f.ops],
            }
            for f in transforms.features
        ],
    }


def _plain(value: Any) -> Any:
    """:func:`treecomp.forest_json.plain_scalar`, its refusal told as the artifact's."""
    try:
        return plain_scalar(value)
    except InvalidForestError:
        raise InvalidArtifactError(
            f"cannot save category {value!r} of type {type(value).__name__}"
        ) from None


def _malformed(where: str, expected: str, value: Any) -> NoReturn:
    shown = f"{type(value).__name__} {value!r:.40}"
    raise InvalidArtifactError(f"malformed transforms: {where} must be {expected}, got {shown}")


def _object(
    doc: Any, where: str, fields: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    if type(doc) is not dict or not set(fields) <= set(doc) <= set(fields + optional):
        expected = f"an object with exactly the fields {list(fields)}"
        if optional:
            expected += f" (and optionally {list(optional)})"
        _malformed(where, expected, doc)
    return doc


def _list(value: Any, where: str) -> list[Any]:
    if type(value) is not list:
        _malformed(where, "a list", value)
    return value


def _string(value: Any, where: str) -> str:
    if type(value) is not str:
        _malformed(where, "a string", value)
    return value


def _integer(value: Any, where: str, high: int) -> int:
    if type(value) is not int or not 0 <= value < high:  # true is not 1 here
        _malformed(where, f"an integer in [0, {high})", value)
    return value


def _flag(value: Any, where: str) -> bool:
    if type(value) is not bool:
        _malformed(where, "true or false", value)
    return value


def _hex(value: Any, where: str) -> float:
    if type(value) is str:
        try:
            return float.fromhex(value)
        except (ValueError, OverflowError):
            pass
    _malformed(where, "a float in hex (float.hex)", value)


def _category(value: Any, where: str) -> Any:
    if type(value) in (str, int, bool):
        return value
    if type(value) is dict and list(value) == ["float"]:
        number = _hex(value["float"], f"{where}.float")
        if not math.isnan(number):  # NaN is never a category here: it is missing
            return number
    _malformed(where, 'a string, an integer, true, false or {"float": hex} (not NaN)', value)


def read(doc: Any) -> Transforms:
    """The transforms of a document :func:`write` made, every field checked.

    Raises:
        InvalidArtifactError: naming the field that is missing, of the wrong type or out of
            range.
    """
    doc = _object(doc, "transforms", ("columns", "named", "steps", "sources", "features"))
    columns = tuple(
        _string(c, f"columns[{i}]") for i, c in enumerate(_list(doc["columns"], "columns"))
    )
    steps = tuple(_string(s, f"steps[{i}]") for i, s in enumerate(_list(doc["steps"], "steps")))
    sources = []
    for i, item in enumerate(_list(doc["sources"], "sources")):
        where = f"sources[{i}]"
        item = _object(
            item,
            where,
            ("column", "categories", "refuse_unknown", "refuse_missing"),
            optional=("refuse_na",),
        )
        categories = item["categories"]
        if categories is not None:
            listed = _list(categories, f"{where}.categories")
            categories = tuple(
                _category(v, f"{where}.categories[{k}]") for k, v in enumerate(listed)
            )
        sources.append(
            Source(
                column=_integer(item["column"], f"{where}.column", len(columns)),
                categories=categories,
                refuse_unknown=_string(item["refuse_unknown"], f"{where}.refuse_unknown"),
                refuse_missing=_flag(item["refuse_missing"], f"{where}.refuse_missing"),
                refuse_na=_flag(item.get("refuse_na", False), f"{where}.refuse_na"),
            )
        )
    features = []
    for i, item in enumerate(_list(doc["features"], "features")):
        where = f"features[{i}]"
        item = _object(item, where, ("source", "name", "ops"))
        ops = []
        for k, op in enumerate(_list(item["ops"], f"{where}.ops")):
            at = f"{where}.ops[{k}]"
            if type(op) is not list or len(op) != 3 or op[0] not in _KINDS:
                _malformed(at, f"[kind, value in hex, other in hex], kind one of {_KINDS}", op)
            ops.append(Op(op[0], _hex(op[1], f"{at}[1]"), _hex(op[2], f"{at}[2]")))
        features.append(
            Feature(
                source=_integer(item["source"], f"{where}.source", len(sources)),
                ops=tuple(ops),
                name=_string(item["name"], f"{where}.name"),
            )
        )
    return Transforms(
        columns=columns,
        named=_flag(doc["named"], "named"),
        sources=tuple(sources),
        features=tuple(features),
        steps=steps,
    ).validate()
