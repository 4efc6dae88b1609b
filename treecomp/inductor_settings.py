"""How treecomp has AOTInductor compile its packages: the options, and three patches.

:data:`INDUCTOR_OPTIONS` are the options of every package; :func:`checks_always_on` makes
a package check its inputs on every call, :func:`scalar_code_only` spares inductor its
probes of the CPU's vector instruction sets, :func:`objects_side_by_side` compiles a
package's two object files at once (see each).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

# Inductor options for our graphs. Bounds checks off: every index is built in range by the
# lowering (and the exactness tests would catch one that is not). Scalar code: inductor's
# vectorised gathers go lane by lane through a buffer; scalar loops ran 10 % faster and
# compiled in 17 s instead of 31 s (500 trees of depth 8, 1 thread). No lower bound checked
# on the batch axis: inductor takes every dynamic size, the row blocks' count included, to be
# 2 or more, so a forest walked in blocks of 8 rows would refuse batches of 1 to 8 rows
# (which the branch-free module scores exactly: tested at one row); the input checks, always
# on (checks_always_on), keep the dtype, stride and device checks. Scalar code also keeps
# a reduction's terms in order (strategies.programs.sequential_sum): a vectorised one
# adds lanes of partial sums.
#
# The wrapper, which only calls the kernels, compiles at -O0: 3.6 s instead of 4.3 s in the
# first compile of 500 trees of depth 8 (see also scalar_code_only).
#
# No precompiled headers: AOTInductor would build two (its runtime's and its kernels'
# prefix, 130 MB each, outside its cache directory, 8.5 s on 2 cores) at a machine's first
# compile, and again for every other set of flags (another kernel archive among them). A
# script importing treecomp, reading the 500-tree model and compiling it in a fresh inductor
# cache, 2 cores, the two objects compiled one after the other: 20.2 s building them, then
# 9.8-10.2 s with them built, 11.4-12.2 s without any; with objects_side_by_side, 9.9-10.7
# s without any: every compile as fast as a first one, none 10 s slower.
INDUCTOR_OPTIONS: dict[str, Any] = {
    "assert_indirect_indexing": False,
    "cpp.simdlen": 1,
    "aot_inductor.compile_wrapper_opt_level": "O0",
    "aot_inductor.check_lowerbound": False,
    "aot_inductor.precompile_headers": False,  # the runtime's header
    "cpp_cache_precompile_headers": False,  # the kernels' prefix (cpp_prefix.h)
}

# What AOTInductor's generated C++ gates its input checks on; see checks_always_on.
_CHECKS_GATE = "const static bool result = env_var_value != nullptr && env_var_value[0] != '0';"
_CHECKS_LOCK = threading.Lock()


@contextlib.contextmanager
def checks_always_on() -> Iterator[None]:
    """Packages compiled in this block check their inputs on every call.

    AOTInductor writes checks of each input's dtype, sizes, strides and device into the
    package, but runs them only where ``AOTI_RUNTIME_CHECK_INPUTS=1`` is set in the serving
    process; without it a float32 tensor given to a float64 package is read as float64
    bytes and answers garbage. The gate is one line of the generated C++, rewritten here to
    ``true`` (the checks cost well under a microsecond a call). Should another torch write
    the gate differently, the compile fails: no package whose contract silently weakened.
    One compile at a time holds the rewrite (a lock), so no thread sees it half undone.
    """
    from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu

    write_checks = CppWrapperCpu.generate_input_output_runtime_checks
    rewritten = []

    def write_checks_always_on(self: Any) -> None:
        write_checks(self)
        lines = getattr(self.prefix, "aot", self.prefix)._lines
        for i, line in enumerate(lines):
            if isinstance(line, str) and _CHECKS_GATE in line:
                lines[i] = line.replace(_CHECKS_GATE, "const static bool result = true;")
                rewritten.append(i)

    with _CHECKS_LOCK:
        CppWrapperCpu.generate_input_output_runtime_checks = write_checks_always_on  # type: ignore[method-assign]
        try:
            yield
        finally:
            CppWrapperCpu.generate_input_output_runtime_checks = write_checks  # type: ignore[method-assign]
        if not rewritten:
            raise RuntimeError(
                f"this torch ({torch.__version__}) writes AOTInductor's input checks in a way "
                "treecomp does not know, so the package could not be made to check its input "
                "dtype; export ONNX instead, or use torch 2.13"
            )


@contextlib.contextmanager
def scalar_code_only() -> Iterator[None]:
    """Inductor, compiling in this block, is told the CPU has no vector ISA.

    Our code is scalar (``cpp.simdlen`` 1, :data:`INDUCTOR_OPTIONS`), which is what inductor
    then picks anyway, but it first lists the CPU's ISAs, and the first time in a process
    it probes each by compiling and loading test libraries: 7.9 s of a 20.5 s first compile
    of 500 trees in a fresh cache. Its own list (cached per process, for the process's other
    compiles) is not touched; a compile another thread runs meanwhile gets scalar code too.
    Entered inside :func:`checks_always_on`, whose lock allows one compile at a time.
    """
    from torch._inductor import cpu_vec_isa

    listed = cpu_vec_isa.valid_vec_isa_list
    cpu_vec_isa.valid_vec_isa_list = lambda: []  # type: ignore[assignment]
    try:
        yield
    finally:
        cpu_vec_isa.valid_vec_isa_list = listed


@contextlib.contextmanager
def objects_side_by_side() -> Iterator[None]:
    """AOTInductor, compiling a package in this block's thread, compiles its two object
    files (the wrapper's, then the kernels') side by side rather than one after the other.

    Each compile is one process on one core: the wrapper's (AOTInductor's runtime templates,
    4.8 s for 500 trees without precompiled headers) then the kernels' (1.5 s). Here the
    first object file's compile runs in a thread and the next build (the kernels' object)
    runs beside it, then waits for it, so every build after it finds both files. A build
    that starts no other (a link) and the block's end wait too, and either raises what the
    thread's compile raised. Other threads' builds are left as they are. Entered inside
    :func:`checks_always_on`, whose lock allows one compile at a time.
    """
    import torch._inductor.config as inductor_config
    from torch._inductor.cpp_builder import CppBuilder

    if inductor_config.aot_inductor.package_cpp_only:  # sources only: nothing to overlap
        yield
        return
    build = CppBuilder.build
    owner = threading.get_ident()
    pending: list[Future[None]] = []
    pool = ThreadPoolExecutor(1, thread_name_prefix="treecomp-compile")
    started = False

    def wait() -> None:
        while pending:
            pending.pop().result()

    def build_side_by_side(self: Any) -> None:
        nonlocal started
        if threading.get_ident() != owner:
            return build(self)
        if not started and getattr(self, "_compile_only", False):
            started = True  # the first object file: in the thread
            pending.append(pool.submit(build, self))
            return None
        try:
            return build(self)
        finally:
            wait()

    CppBuilder.build = build_side_by_side  # type: ignore[method-assign]
    try:
        yield
        wait()
    finally:
        CppBuilder.build = build  # type: ignore[method-assign]
        pool.shutdown(wait=True)
