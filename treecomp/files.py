"""Files treecomp writes where users name them: whole or not at all.

An export that fails (a bad option, a full disk, a process killed) must leave the file that
was there before, never a truncated one: each is written under a temporary name beside its
destination and renamed into place once complete (a rename within a folder is atomic). The
file keeps what a plain write would have given it: the mode of the file it replaces (else
the one the umask allows, as ``open`` gives), and a symlink's target is what is replaced,
not the link.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: Any) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed to ``path`` when the block ends
    without an error, removed when it raises."""
    path = Path(os.path.realpath(path))  # through symlinks, to the file they name
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: no folder {path.parent}")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    # The destination's suffix kept last: writers may insist on it (AOTInductor on .pt2).
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    # 0o666 less the umask, as open() creates files, where no file is replaced.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if mode is not None:
            os.chmod(temporary, mode)
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_replacing(path: Any, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (see :func:`replacing`)."""
    with replacing(path) as temporary:
        temporary.write_bytes(data)
