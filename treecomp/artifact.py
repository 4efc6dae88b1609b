"""Saved models: the IR and conversion options as one checksummed JSON document.

No pickle: loading parses JSON and rebuilds the forest through ``Forest.from_dict`` (which
validates it), so a file can never run code. A SHA-256 over the canonical JSON catches
truncation and accidental damage; the format version is checked before anything else is
read. The checksum is no defence against a crafted file (whoever crafts one can compute it),
so every field is checked against the schema as well: its type (``true`` is not ``1``, and
``null`` is not ``false``), its range and the memory it asks for, which a file of N bytes
bounds to a small multiple of N.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from treecomp import names
from treecomp._version import __version__
from treecomp.errors import InvalidArtifactError, InvalidForestError
from treecomp.files import write_replacing
from treecomp.inputs import PRECISIONS
from treecomp.ir import Forest

FORMAT = "treecomp.model"
# Version 2 adds the field "transforms" (a compiled Pipeline's row transforms, see
# treecomp.transforms_json); models without them are still written as version 1, which
# every treecomp reads.
VERSION = 2
VERSIONS = (1, 2)  # every format version this treecomp reads
_FIELDS = (
    "format",
    "version",
    "treecomp_version",
    "backend",
    "precision",
    "options",
    "forest",
    "sha256",
)
# Options a file may carry, with the values they may take (anything else is refused: a file
# must not be able to ask for a million threads).
_OPTIONS: dict[str, Any] = {
    "strategy": lambda v: type(v) is str and v in names.STRATEGY_CHOICES,
    "batch_size": lambda v: v is None or (type(v) is int and 1 <= v <= 2**31),
    "n_threads": lambda v: v is None or (type(v) is int and 1 <= v <= 1024),
    "progress": lambda v: type(v) is bool,
    "compile": lambda v: type(v) is bool,
}


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def save(model: Any, path: Any) -> None:
    """Write ``model`` (a :class:`~treecomp.CompiledModel`) to ``path``."""
    write_replacing(path, dumps(model))


def dumps(model: Any) -> bytes:
    """The artifact of ``model`` as bytes (what :func:`save` writes, and what a pickled
    :class:`~treecomp.CompiledModel` carries to another process)."""
    options = {k: v for k, v in model.options.items() if k in _OPTIONS and v is not None}
    body = {
        "format": FORMAT,
        "version": 1 if model.transforms is None else 2,
        "treecomp_version": __version__,
        "backend": model.backend,
        "precision": model.precision,
        "options": options,
        "forest": model.forest.to_dict(),
    }
    if model.transforms is not None:
        from treecomp import transforms_json

        body["transforms"] = transforms_json.write(model.transforms)
    document = {**body, "sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    return _canonical(document)


def read(path: Any) -> tuple[str, Forest, dict[str, Any]]:
    """Parse and check an artifact: ``(backend, forest, options incl. precision)``."""
    return loads(Path(path).read_bytes(), source=str(path))


def loads(raw: bytes, *, source: str = "the artifact") -> tuple[str, Forest, dict[str, Any]]:
    """Parse and check artifact bytes; errors name ``source`` and the offending field."""
    path = source
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidArtifactError(
            f"{path} is not a treecomp model file (not JSON; truncated or foreign)"
        ) from None
    if type(document) is not dict or document.get("format") != FORMAT:
        raise InvalidArtifactError(f"{path} is not a treecomp model file")
    version = document.get("version")
    if type(version) is not int:  # true is not version 1
        raise InvalidArtifactError(f"{path} has no integer format version (got {version!r:.40})")
    if version > VERSION:
        written_by = document.get("treecomp_version")
        raise InvalidArtifactError(
            f"{path} uses model format version {version} (written by treecomp "
            f"{written_by if type(written_by) is str else '?':.40}); "
            f"this treecomp reads versions up to {VERSION}"
        )
    if version not in VERSIONS:
        raise InvalidArtifactError(
            f"{path} has unknown model format version {version} (known: {list(VERSIONS)})"
        )
    missing = [k for k in _FIELDS if k not in document]
    if missing:
        raise InvalidArtifactError(f"{path}: fields {missing} are missing")
    fields = _FIELDS if version < 2 else (*_FIELDS, "transforms")  # transforms: optional
    unknown = [f"{k:.40}" for k in document if k not in fields]
    if unknown:
        raise InvalidArtifactError(f"{path}: unknown fields {unknown[:5]}")
    if type(document["sha256"]) is not str or type(document["treecomp_version"]) is not str:
        raise InvalidArtifactError(f"{path}: sha256 and treecomp_version must be strings")
    body = {k: v for k, v in document.items() if k != "sha256"}
    if document["sha256"] != hashlib.sha256(_canonical(body)).hexdigest():
        raise InvalidArtifactError(
            f"{path} is corrupted or was modified: its checksum does not match"
        )
    backend, precision, options = body["backend"], body["precision"], body["options"]
    if type(backend) is not str or backend not in names.BACKENDS:
        raise InvalidArtifactError(f"{path}: unknown backend {backend!r:.60}")
    if type(precision) is not str or precision not in PRECISIONS:
        raise InvalidArtifactError(f"{path}: unknown precision {precision!r:.60}")
    if type(options) is not dict:
        raise InvalidArtifactError(
            f"{path}: unexpected options: an object was expected, got {options!r:.60}"
        )
    for key, value in options.items():
        if key not in _OPTIONS:
            raise InvalidArtifactError(
                f"{path}: unexpected options: {key!r:.60} is not one a file may set"
            )
        if not _OPTIONS[key](value):
            raise InvalidArtifactError(
                f"{path}: unexpected options: {key} = {value!r:.60} is out of its range or type"
            )
    try:
        forest = Forest.from_dict(body["forest"], size=len(raw))
    except (InvalidForestError, RecursionError, MemoryError) as exc:
        raise InvalidArtifactError(f"{path}: invalid forest: {exc}") from None
    saved = {**options, "precision": precision}
    if "transforms" in body:
        from treecomp import transforms_json

        saved["transforms"] = transforms_json.read(body["transforms"])
        if len(saved["transforms"].features) != forest.n_features:
            raise InvalidArtifactError(
                f"{path}: the transforms give {len(saved['transforms'].features)} features, "
                f"the forest reads {forest.n_features}"
            )
    return backend, forest, saved
