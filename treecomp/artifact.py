"""Saved models: the IR and conversion options as one checksummed JSON document.

No pickle: loading parses JSON and rebuilds the forest through ``Forest.from_dict`` (which
validates it), so a file can never run code. A SHA-256 over the canonical JSON catches
truncation and tampering; the format version is checked before anything else is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from treecomp.errors import InvalidArtifactError, InvalidForestError
from treecomp.inputs import PRECISIONS
from treecomp.ir import Forest

FORMAT = "treecomp.model"
VERSION = 1
# Options a file may carry, with the values they may take (anything else is refused: a file
# must not be able to ask for a million threads).
_OPTIONS: dict[str, Any] = {
    "strategy": lambda v: (
        v in ("auto", "gemm", "tree_traversal", "perfect_tree_traversal", "tree_ensemble")
    ),
    "batch_size": lambda v: v is None or (type(v) is int and 1 <= v <= 2**31),
    "n_threads": lambda v: v is None or (type(v) is int and 1 <= v <= 1024),
    "progress": lambda v: type(v) is bool,
    "compile": lambda v: type(v) is bool,
}
_BACKENDS = ("numpy", "torch", "torchscript", "onnx")


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def save(model: Any, path: Any) -> None:
    """Write ``model`` (a :class:`~treecomp.CompiledModel`) to ``path``."""
    Path(path).write_bytes(dumps(model))


def dumps(model: Any) -> bytes:
    """The artifact of ``model`` as bytes (what :func:`save` writes, and what a pickled
    :class:`~treecomp.CompiledModel` carries to another process)."""
    from treecomp import __version__

    options = {k: v for k, v in model.options.items() if k in _OPTIONS and v is not None}
    body = {
        "format": FORMAT,
        "version": VERSION,
        "treecomp_version": __version__,
        "backend": model.backend,
        "precision": model.precision,
        "options": options,
        "forest": model.forest.to_dict(),
    }
    document = {**body, "sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    return _canonical(document)


def read(path: Any) -> tuple[str, Forest, dict[str, Any]]:
    """Parse and check an artifact: ``(backend, forest, options incl. precision)``."""
    return loads(Path(path).read_bytes(), source=str(path))


def loads(raw: bytes, *, source: str = "the artifact") -> tuple[str, Forest, dict[str, Any]]:
    """Parse and check artifact bytes; errors name ``source``."""
    path = source
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidArtifactError(
            f"{path} is not a treecomp model file (not JSON; truncated or foreign)"
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidArtifactError(f"{path} is not a treecomp model file")
    version = document.get("version")
    if not isinstance(version, int):
        raise InvalidArtifactError(f"{path} has no format version")
    if version > VERSION:
        raise InvalidArtifactError(
            f"{path} uses model format version {version} (written by treecomp "
            f"{document.get('treecomp_version', '?')}); "
            f"this treecomp reads versions up to {VERSION}"
        )
    body = {k: v for k, v in document.items() if k != "sha256"}
    if document.get("sha256") != hashlib.sha256(_canonical(body)).hexdigest():
        raise InvalidArtifactError(
            f"{path} is corrupted or was modified: its checksum does not match"
        )
    backend, precision, options = body.get("backend"), body.get("precision"), body.get("options")
    if backend not in _BACKENDS or precision not in PRECISIONS:
        raise InvalidArtifactError(
            f"{path}: unknown backend {backend!r} or precision {precision!r}"
        )
    if not isinstance(options, dict) or any(
        k not in _OPTIONS or not _OPTIONS[k](v) for k, v in options.items()
    ):
        raise InvalidArtifactError(f"{path}: unexpected options {options!r}")
    try:
        forest = Forest.from_dict(body.get("forest"))
    except (InvalidForestError, RecursionError, MemoryError) as exc:
        raise InvalidArtifactError(f"{path}: invalid forest: {exc}") from None
    return backend, forest, {**options, "precision": precision}
