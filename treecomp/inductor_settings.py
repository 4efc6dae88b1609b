"""How treecomp has AOTInductor compile its packages: the options, and two patches.

:data:`INDUCTOR_OPTIONS` are the options of every package; :func:`checks_always_on` makes
a package check its inputs on every call, :func:`scalar_code_only` spares inductor its
probes of the CPU's vector instruction sets (see each).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
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
INDUCTOR_OPTIONS: dict[str, Any] = {
    "assert_indirect_indexing": False,
    "cpp.simdlen": 1,
    "aot_inductor.compile_wrapper_opt_level": "O0",
    "aot_inductor.check_lowerbound": False,
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
