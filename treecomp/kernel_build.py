"""Where treecomp's C code is built and kept: the compiler, the flags, the cache.

The kernel (``kernel.c``) is compiled once per machine into a shared library
(:mod:`treecomp.kernel`) and, for compiled packages, into a static archive that AOTInductor
links into the package (:mod:`treecomp.kernel_op`). Both are kept in :func:`kernel_dir`
under names holding the SHA-256 of their bytes, which every use checks: a corrupt or
half-written file is built again, never used.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

SOURCE = Path(__file__).with_name("kernel.c")
# The calling convention kernel.c speaks (treecomp_kernel_abi(), and its tables' blob).
ABI = 10
# -mprefer-vector-width=256: the loops the compiler vectorises itself use 256-bit vectors
# even where AVX-512 is there (kernel.c's own AVX-512 steps keep 512 bits). On Zen 4, whose
# 512-bit gathers are split in two, 10 000 rows, 1 thread, ms, 512 / 256 bits: RandomForest
# 31-46 / 24-27, HistGradientBoosting 26-27 / 18.5-19, XGBoost 500 trees 27-28 / 27.5-30.
# It is gcc's default for Intel's AVX-512 targets already.
FLAGS = (
    "-O3", "-march=native", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off",
    *(("-mprefer-vector-width=256",) if platform.machine() in ("x86_64", "AMD64") else ()),
)  # fmt: skip


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built here (no working C compiler)."""


def kernel_dir() -> Path:
    """Where built kernels are kept: ``TREECOMP_KERNEL_DIR``, else ``treecomp/kernels`` in
    the user's cache directory (``XDG_CACHE_HOME``, by default ``~/.cache``)."""
    explicit = os.environ.get("TREECOMP_KERNEL_DIR")
    if explicit:
        return Path(explicit)
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "treecomp" / "kernels"


def _tool(variable: str, names: tuple[str, ...], missing: str) -> str:
    """The first of the tool named by ``variable`` and ``names`` on the PATH."""
    for name in (os.environ.get(variable), *names):
        if name and shutil.which(name):
            return name
    raise KernelUnavailable(missing)


def _compiler() -> str:
    return _tool(
        "CC",
        ("cc", "gcc", "clang"),
        "the kernel backend compiles a small C kernel once per machine and needs a C "
        "compiler (cc, gcc or clang, or the one named by CC); none was found",
    )


def cxx_compiler() -> str:
    """The C++ compiler of the kernel's operator (:mod:`treecomp.kernel_op`)."""
    return _tool(
        "CXX",
        ("c++", "g++", "clang++"),
        "no C++ compiler (c++, g++ or clang++, or the one named by CXX) for the kernel's "
        "operator in compiled packages",
    )


def _cpu() -> str:
    """What -march=native compiles for: the CPU's model and instruction sets."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(lines[:2])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_key(source: bytes, *facts: str) -> str:
    """What a build depends on, as a name: its source's bytes, then ``facts`` (compilers'
    versions, flags, the CPU)."""
    digest = hashlib.sha256(source)
    for fact in facts:
        digest.update(fact.encode())
    return digest.hexdigest()[:32]


def tool_version(tool: str) -> str:
    """``tool --version``'s output; :class:`KernelUnavailable` where it does not run."""
    try:
        return subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelUnavailable(f"the C compiler {tool!r} does not run: {exc}") from None


def run_tool(command: list[str], what: str) -> None:
    """Run a compiler (or archiver) ``command`` that builds ``what``; where it fails,
    :class:`KernelUnavailable` with the last lines it printed (a linker names the cause,
    "No space left on device", on the line before the driver's "collect2: error: ld
    returned 1")."""
    tool = command[0]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:  # killed, hung, not runnable
        raise KernelUnavailable(f"the C compiler {tool!r} did not run: {exc}") from None
    if done.returncode != 0:
        said = "; ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:])
        raise KernelUnavailable(f"the C compiler {tool!r} could not build {what}: {said:.600}")


def build_cached(directory: Path, stem: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """``make(partial)`` writes a file, which is then renamed (atomically) into
    ``directory`` as ``{stem}-{sha256}{suffix}``; returns that path."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{stem}.{os.getpid()}.{threading.get_ident()}.partial{suffix}"
    try:
        make(partial)
        path = directory / f"{stem}-{_sha256(partial)}{suffix}"
        os.replace(partial, path)
        return path
    finally:
        partial.unlink(missing_ok=True)


def find_cached(directory: Path, stem: str, suffix: str) -> Path | None:
    """The file ``{stem}-{sha256}{suffix}`` in ``directory`` whose bytes match the SHA-256
    in its name; others of that stem are deleted (with a warning)."""
    if not directory.is_dir():
        return None
    for path in sorted(directory.glob(f"{stem}-*{suffix}")):
        if path.name.removesuffix(suffix).rpartition("-")[2] == _sha256(path):
            return path
        warnings.warn(
            f"treecomp: the cached kernel {path} is corrupt (its bytes do not match the "
            "SHA-256 in its name): deleted, built again",
            RuntimeWarning,
            stacklevel=4,
        )
        path.unlink(missing_ok=True)
    return None
