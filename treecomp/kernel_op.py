"""The kernel inside compiled packages: a forest's sums as one custom operator.

AOTInductor compiles the torch module's walk to scalar C++ (its C++ has no vector gathers),
several times slower than the kernel's (``kernel.c``; the README's Compiled torch programs
has the numbers). So a CPU package of a forest the kernel walks (numerical splits) takes its
sums from the kernel: the module calls the custom operator ``treecomp::treecomp_forest_sums``
(:class:`KernelSums`), which AOTInductor turns into a call of the C function in
``kernel_shim.cpp`` (its ``aot_inductor.custom_ops_to_c_shims``) and links, with the kernel,
from a static archive built once per machine beside the kernel library (:func:`archive`).
The package needs only torch to load; the forest's tables travel in it as one byte tensor
(:func:`treecomp.kernel_layout.pack`). Leaf indices, other devices and forests the kernel
does not walk keep the compiled walk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from strategies.programs import run_steps
from treecomp import sums
from treecomp.arrays import record
from treecomp.inputs import native_values
from treecomp.kernel_build import (
    FLAGS,
    SOURCE,
    KernelUnavailable,
    _compiler,
    _cpu,
    build_cached,
    build_key,
    cxx_compiler,
    find_cached,
    kernel_dir,
    run_tool,
    tool_version,
)
from treecomp.passes import numerical

if TYPE_CHECKING:
    from treecomp.inputs import Precision
    from treecomp.ir import Forest

SHIM = Path(__file__).with_name("kernel_shim.cpp")
# The C function AOTInductor calls for the operator, as kernel_shim.cpp defines it.
DECLARATION = (
    "AOTITorchError aoti_torch_cpu_treecomp_forest_sums(AtenTensorHandle x, "
    "AtenTensorHandle tables, AtenTensorHandle like, AtenTensorHandle* ret)"
)
# What a package's kernel depends on besides its tables: this code and the kernel's.
SOURCES = hashlib.sha256(
    b"".join(p.read_bytes() for p in (SOURCE, SHIM, Path(__file__)))
).hexdigest()


def _forest_sums(x: torch.Tensor, tables: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The forest's sums ``(rows, outputs)`` of rows ``x`` (see ``kernel_shim.cpp``)."""
    raise RuntimeError(
        "treecomp's forest_sums operator runs inside compiled packages only (its C code is "
        "linked into them); eager modules walk the trees in torch"
    )


def _forest_sums_shape(x: torch.Tensor, tables: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], like.shape[0]), dtype=like.dtype)


# torch.library.custom_op: torch 2.4 on (older ones keep inductor's walk: see archive).
if hasattr(torch.library, "custom_op"):
    _operator = torch.library.custom_op("treecomp::treecomp_forest_sums", mutates_args=())(
        _forest_sums
    )
    _operator.register_fake(_forest_sums_shape)


class KernelSums(torch.nn.Module):
    """A forest's raw scores ``(rows, outputs)``, as :class:`strategies.forest_module.
    ForestModule` gives them, computed by the kernel: the rows cast as the native library
    casts them, the operator's sums (each from the output's base score, its trees added in
    order), and for averaging forests the mean (:func:`treecomp.sums.mean`).

    Attributes:
        sources: What the package's C code depends on (for its cache key).
    """

    tables: torch.Tensor
    order: torch.Tensor
    base: torch.Tensor
    divisor: torch.Tensor

    def __init__(self, forest: Forest, tables: npt.NDArray[np.uint8], precision: Precision):
        super().__init__()
        plan = sums.plan(forest)
        self.register_buffer("tables", torch.from_numpy(tables))
        # base (one value per output, in the accumulation type) also tells the operator
        # the sums' shape and type
        for name, table in plan.tables().items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(table)))
        self.mean_steps = [] if plan.divisor is None else sums.mean_program(plan).flat()
        self.input_steps = record(
            lambda x: native_values(x, forest, precision), forest.input_dtype
        ).flat()
        self.sources = SOURCES

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        x = run_steps(self.input_steps, [X]).contiguous()
        total = torch.ops.treecomp.treecomp_forest_sums(x, self.tables, self.base)
        if not self.mean_steps:
            return total
        return run_steps(self.mean_steps, [total, self.order, self.base, self.divisor])


_lock = threading.Lock()
# Archives this process built outside the kernel cache (it could not be written), by stem.
_elsewhere: dict[str, Path] = {}


def usable() -> bool:
    """Whether this torch can link C code into packages: ``torch.library.custom_op`` (torch
    2.4 on) and AOTInductor's ``custom_ops_to_c_shims``."""
    import torch._inductor.config as inductor_config

    return hasattr(torch.library, "custom_op") and hasattr(
        inductor_config.aot_inductor, "custom_ops_to_c_shims"
    )


def start_archive(forest: Forest, device: Any) -> None:
    """Build :func:`archive` in a thread now, for a ``compile=True`` conversion of
    ``forest`` to ``device`` that is about to start, where its package can take the
    kernel's sums (the CPU, numerical splits): on a machine that has none yet, its
    compilers (about 2.4 s) then run beside the kernel library's build, the lowering and
    the trace, and :func:`linked` waits for them (the compile's own call: a failure here is
    met again, and said, there). Where the archive is cached, the thread finds it at once.
    The 500-tree benchmark model's first compile on a machine that never built the kernel,
    2 cores: 11.3 s in ``convert`` against 13.0 building it when the compile links (14.3
    with the build started just before the trace, in a slower hour)."""
    try:
        if torch.device(device or "cpu").type != "cpu" or not usable():
            return
    except (RuntimeError, TypeError):  # an invalid device: the engine says so
        return
    if not numerical(forest.trees):  # no kernel sums: inductor's walk
        return

    def build() -> None:
        with contextlib.suppress(Exception):
            archive()

    # Not a daemon: a process that ends meanwhile lets the compilers finish and the
    # partial file go, rather than leave it in the cache.
    threading.Thread(target=build, name="treecomp-archive", daemon=False).start()


def _unlock_in_child() -> None:  # a fork while a thread builds: the child builds its own
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_unlock_in_child)


def archive() -> Path:
    """The static archive of the kernel and its shim for this machine, built on first use
    in the kernel cache (or, where that cannot be written, in a temporary directory);
    :class:`KernelUnavailable` where it cannot be built."""
    if not usable():
        raise KernelUnavailable(f"torch {torch.__version__} links no C code into packages")
    with _lock:
        compiler, cxx = _compiler(), cxx_compiler()
        include = Path(torch.__file__).parent / "include"
        facts = (tool_version(compiler), tool_version(cxx), " ".join(FLAGS), _cpu())
        key = build_key(SOURCES.encode(), *facts, torch.__version__, str(include))
        stem = f"forest-op-{key}"
        path = find_cached(kernel_dir(), stem, ".a") or _elsewhere.get(stem)
        if path is not None and path.is_file():
            return path

        def make(out: Path) -> None:
            with tempfile.TemporaryDirectory(prefix="treecomp-op-") as scratch:
                kernel, shim = Path(scratch, "kernel.o"), Path(scratch, "shim.o")
                flags = [f for f in FLAGS if f != "-shared"]
                commands = [
                    ([compiler, *flags, "-fvisibility=hidden", "-c", str(SOURCE), "-o",
                      str(kernel)], "the kernel"),
                    ([cxx, "-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fopenmp",
                      f"-I{include}", "-c", str(SHIM), "-o", str(shim)],
                     "the kernel's operator"),
                ]  # fmt: skip
                with ThreadPoolExecutor(len(commands)) as pool:  # side by side
                    for done in [pool.submit(run_tool, *command) for command in commands]:
                        done.result()
                run_tool(["ar", "rcs", str(out), str(kernel), str(shim)], "the kernel's archive")

        try:
            return build_cached(kernel_dir(), stem, ".a", make)
        except OSError:  # a read-only cache: once per process in a temporary directory
            directory = Path(tempfile.mkdtemp(prefix="treecomp-kernel-"))
            _elsewhere[stem] = build_cached(directory, stem, ".a", make)
            return _elsewhere[stem]


@contextlib.contextmanager
def linked(kernel: KernelSums | None) -> Iterator[dict[str, Any]]:
    """Inductor options that link the kernel's archive into a package compiled in this
    block (none for ``kernel`` None). The linker finds the archive AOTInductor names on
    ``LIBRARY_PATH``, through a link in a folder of its own (the cache's folder may hold a
    ``:``, ``LIBRARY_PATH``'s separator)."""
    if kernel is None:
        yield {}
        return
    path = archive()
    previous = os.environ.get("LIBRARY_PATH")
    folder = tempfile.TemporaryDirectory(prefix="treecomp-link-")
    Path(folder.name, path.name).symlink_to(path)
    os.environ["LIBRARY_PATH"] = os.pathsep.join(filter(None, (folder.name, previous)))
    try:
        yield {
            "aot_inductor.custom_ops_to_c_shims": {
                torch.ops.treecomp.treecomp_forest_sums.default: [DECLARATION]
            },
            "aot_inductor.custom_op_libs": [f":{path.name}"],
        }
    finally:
        if previous is None:
            os.environ.pop("LIBRARY_PATH", None)
        else:
            os.environ["LIBRARY_PATH"] = previous
        folder.cleanup()
