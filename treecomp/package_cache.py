"""The package cache: compiled ``.pt2`` packages kept on disk between processes.

A package's file name is its key (what it was compiled from, see
:func:`treecomp.torch_backend.module_digest`) and the SHA-256 of its bytes, checked before
every load; packages are written under a partial name and renamed whole, and the least
recently used are trimmed past :data:`MAX_PACKAGE_BYTES`. Building a package is the torch
backend's (:class:`treecomp.torch_backend.PackagedForward`); finding, checking, trimming
and loading one is this module's, and whether this machine can build one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch


def package_dir() -> Path:
    """Where compiled packages are kept: ``treecomp_packages`` in inductor's cache
    directory (``TORCHINDUCTOR_CACHE_DIR``, by default under the temporary directory)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "treecomp_packages"


class CompilerNotFoundError(RuntimeError):
    """Inductor has no compiler for the device: a package cannot be built (a cached one
    still loads: running a package needs no compiler)."""


def check_compiler(device: torch.device) -> None:
    """Raise :class:`CompilerNotFoundError` when inductor cannot generate code for
    ``device``."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise CompilerNotFoundError(
                "compile=True on CUDA needs Triton, which is not installed (pip install "
                "triton, matching your torch); or use compile=False"
            )
        return
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # InvalidCxxCompiler, or a broken compiler
        raise CompilerNotFoundError(
            "compile=True on the CPU needs a C++ compiler for inductor (g++, or the one "
            f"named by the CXX environment variable), and none works here ({exc!s:.200}); "
            "install one, or use compile=False"
        ) from None


# Compiled packages kept on disk, least recently used deleted first past this many bytes.
MAX_PACKAGE_BYTES = 2 << 30
# A package is written in one go once compiled (a few MB, well under a second), so a partial
# file not modified for this long is not being written: its build was killed. Its pid tells
# sooner where the writer ran on this machine; the grace covers writers in other containers
# sharing the cache, whose pids mean nothing here.
STALE_PARTIAL_S = 600.0
PARTIAL_GRACE_S = 60.0


def package_name(key: str, content: str) -> str:
    """A package's file name: its key, then the SHA-256 of its bytes (checked at load)."""
    return f"{key}-{content}.pt2"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (1.5 MB: 2 ms; 100 MB: 0.1 s, on 2 shared cores)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (never sure off POSIX, where
    ``os.kill(pid, 0)`` would end it)."""
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process
        return False
    return False


def _stale_partial(path: Path, modified: float, now: float) -> bool:
    """Whether the partial package ``<key>.<pid>.<thread>.partial.pt2`` was left by a
    build that was killed."""
    age = now - modified
    if age > STALE_PARTIAL_S:
        return True
    pid = path.name.split(".")[1]
    return age > PARTIAL_GRACE_S and pid.isdigit() and _process_gone(int(pid))


def trim_packages(directory: Path, keep: Path, limit: int = MAX_PACKAGE_BYTES) -> None:
    """Delete the partial packages that killed builds left behind, then the least recently
    used packages in ``directory`` (by modification time, which a load refreshes) until
    they hold at most ``limit`` bytes; never ``keep``, nor a package another process is
    still writing."""
    entries = []
    now = time.time()
    for path in directory.glob("*.pt2"):
        try:
            status = path.stat()
        except FileNotFoundError:  # deleted meanwhile by another process
            continue
        if ".partial." in path.name:
            if _stale_partial(path, status.st_mtime, now):
                path.unlink(missing_ok=True)
            continue
        entries.append((status.st_mtime, status.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        if path != keep:
            path.unlink(missing_ok=True)
            total -= size


class PackageNotCached(LookupError):
    """A compiled package asked for without building it is not in the package cache."""


def discard_package(path: Path, problem: str) -> None:
    """Warn that the package at ``path`` cannot be used, and delete it so that it is built
    again."""
    try:
        path.unlink(missing_ok=True)
        outcome = "deleted it; it is built again"
    except OSError as exc:  # a read-only cache
        outcome = f"could not delete it ({exc})"
    warnings.warn(
        f"treecomp: the compiled package {path} {problem}: {outcome}",
        RuntimeWarning,
        stacklevel=2,
    )


def find_package(directory: Path, key: str) -> Path | None:
    """The cached package of ``key`` whose bytes match the digest in its name; those that
    do not (truncated, or a bit flipped: AOTInductor checks neither) are discarded."""
    candidates = sorted(directory.glob(package_name(key, "*")), reverse=True)
    for path in candidates:
        expected = path.name.removesuffix(".pt2").rpartition("-")[2]
        try:
            actual = file_sha256(path)
        except FileNotFoundError:  # discarded or trimmed meanwhile by another process
            continue
        if actual != expected:
            discard_package(path, "is corrupt: its bytes do not match the SHA-256 in its name")
            continue
        with contextlib.suppress(OSError):  # a read-only cache: it is still used
            os.utime(path)  # used now: the last to be trimmed
        return path
    return None


def load_package(path: Path) -> Any:
    """AOTInductor's runner of the package at ``path``.

    ``torch._inductor.aoti_load_package`` first probes the CPU's vector instruction sets by
    compiling test programs into inductor's cache, only to log whether they differ from
    the package's (ours is scalar code on purpose: INDUCTOR_OPTIONS). That needs a C++
    compiler and a writable cache, neither of which running a package needs, and took
    1.5 s of every load; the runner is built here as that function then builds it.
    """
    try:
        from torch.export.pt2_archive._package import AOTICompiledModel

        loader = torch._C._aoti.AOTIModelPackageLoader
        runner = loader(str(path), "model", False, 1, -1)
    except (ImportError, AttributeError, TypeError):  # another torch: its own loader
        # It warns that the package's instruction set differs from this CPU's.
        logger = logging.getLogger("torch.export.pt2_archive._package")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return torch._inductor.aoti_load_package(str(path))
        finally:
            logger.setLevel(level)
    return AOTICompiledModel(runner)
