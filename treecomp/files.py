"""Files treecomp writes where users name them: whole or not at all.

An export that fails (a bad option, a full disk, a process killed) must leave the file that
was there before, never a truncated one: each is written under a temporary name beside its
destination and renamed into place once complete (a rename within a folder is atomic).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: Any) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed to ``path`` when the block ends
    without an error, removed when it raises."""
    path = Path(path)
    # The destination's suffix kept last: writers may insist on it (AOTInductor on .pt2).
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=f".partial{path.suffix}"
    )
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_replacing(path: Any, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (see :func:`replacing`)."""
    with replacing(path) as temporary:
        temporary.write_bytes(data)
