"""The ``"kernel"`` backend: folded forests walked by one C kernel compiled once per machine.

The kernel (``kernel.c`` beside this module) takes every forest as arrays: a model costs no
compile, only its layout (:func:`~treecomp.kernel_layout.folded_layout`, well under a
second), so it scores fast from its first batch. The kernel itself is compiled with the
machine's C compiler for its own instruction set (``cc -O3 -march=native``) the first time
any process asks for it, in about a second, and kept in the kernel cache
(:func:`~treecomp.kernel_build.kernel_dir`) under a name holding the SHA-256 of its bytes,
which every load checks: a corrupt or half-written library is built again, never loaded.

Only forests of numerical splits fold (:func:`treecomp.passes.fold_missing`): categorical
and zero-as-missing forests raise :class:`KernelUnsupported` and keep the other backends.
Needs NumPy and a C compiler; without one, :class:`KernelUnavailable` says so.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from treecomp import reference
from treecomp.batching import cpus
from treecomp.inputs import Precision, check_positive
from treecomp.ir_shapes import tree_depths
from treecomp.kernel_build import (
    ABI,
    FLAGS,
    SOURCE,
    KernelUnavailable,
    _compiler,
    _cpu,
    build_cached,
    build_key,
    find_cached,
    kernel_dir,
    run_tool,
    tool_version,
)
from treecomp.kernel_layout import TABLES, counts, folded_layout, start_sums

if TYPE_CHECKING:
    from treecomp.engine import Link
    from treecomp.ir import Forest

logger = logging.getLogger(__name__)

# Batches of at most this many rows go through each thread's buffers (KernelEngine._small_scores).
SMALL_ROWS = 8
# What a walk that returned non-zero (its malloc failed) raises, whatever the batch.
NO_MEMORY = "the kernel could not allocate its row block buffers"


class KernelUnsupported(ValueError):
    """The forest does not fold (categorical or zero-as-missing splits)."""


def _key(compiler: str) -> str:
    """What a built kernel depends on: its source, the compiler and flags, the CPU."""
    facts = (tool_version(compiler), " ".join(FLAGS), _cpu(), platform.machine())
    return build_key(SOURCE.read_bytes(), *facts)


def _build(compiler: str, directory: Path, key: str) -> Path:
    """Compile the kernel into ``directory`` (atomically); returns its path."""
    return build_cached(
        directory,
        f"walk-{key}",
        ".so",
        lambda out: run_tool([compiler, *FLAGS, "-o", str(out), str(SOURCE), "-lm"], "the kernel"),
    )


def _find(directory: Path, key: str) -> Path | None:
    """The cached kernel of ``key`` whose bytes match the SHA-256 in its name; others of
    that key are deleted (with a warning)."""
    return find_cached(directory, f"walk-{key}", ".so")


_library: ctypes.CDLL | None = None
loaded_from: Path | None = None  # the file _library was loaded from
_lock = threading.Lock()


def load_kernel() -> ctypes.CDLL:
    """The kernel library, built on first use in this machine's kernel cache (or, where that
    cannot be written, in a temporary directory for this process)."""
    global _library, loaded_from
    with _lock:
        if _library is not None:
            return _library
        compiler = _compiler()
        key = _key(compiler)
        directory = kernel_dir()
        path = _find(directory, key) if directory.is_dir() else None
        library = None
        if path is not None:
            try:
                library = ctypes.CDLL(str(path))
            except OSError as exc:  # sound bytes that are no library: built again
                warnings.warn(
                    f"treecomp: the cached kernel {path} does not load ({exc}): deleted, "
                    "built again",
                    RuntimeWarning,
                    stacklevel=2,
                )
                path.unlink(missing_ok=True)
        if library is None:
            try:
                path = _build(compiler, directory, key)
            except OSError:  # a read-only cache
                path = _build(compiler, Path(tempfile.mkdtemp(prefix="treecomp-kernel-")), key)
            try:
                library = ctypes.CDLL(str(path))
            except OSError as exc:  # a broken toolchain
                raise KernelUnavailable(
                    f"the kernel built at {path} does not load: {exc}"
                ) from None
        if library.treecomp_kernel_abi() != ABI:
            raise KernelUnavailable(f"the kernel at {path} speaks another calling convention")
        _declare(library)
        _library, loaded_from = library, path
        return library


_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class Tables(ctypes.Structure):
    """A layout's arrays as kernel.c's ``forest`` struct: their counts, then their addresses.

    One pointer to it is the call's whole description of the forest: ctypes converts each
    argument of a call, and 22 of them took about 5 us of a one-row call."""

    _fields_ = [
        *((name, _I64) for name in ("n_features", "n_used", "n_trees", "n_outputs", "n_helpers")),
        *((name, _P) for name in TABLES),
    ]


def _declare(library: ctypes.CDLL) -> None:
    for name in ("treecomp_exp", "treecomp_expf"):
        getattr(library, name).restype = None
        getattr(library, name).argtypes = [_P, _P, _I64]
    for acc in ("f32", "f64"):
        getattr(library, f"treecomp_link_{acc}").restype = None
        getattr(library, f"treecomp_link_{acc}").argtypes = [
            ctypes.c_int,
            ctypes.c_double,
            _P,
            _P,
            _I64,
            _I64,
        ]
    library.treecomp_slices.restype = _I64
    library.treecomp_slices.argtypes = [_I64, _I64, _P]  # rows, threads, bounds (threads + 1)
    library.treecomp_small.restype = ctypes.c_int
    library.treecomp_small.argtypes = [_P, _I64]  # a _SmallCall's address, the rows
    for cmp in ("f32", "f64"):
        for acc in ("f32", "f64"):
            function = getattr(library, f"treecomp_walk_{cmp}_{acc}")
            function.restype = ctypes.c_int
            # The rows and their count, the tables, then where sums or leaves go.
            function.argtypes = [_P, _I64, ctypes.POINTER(Tables), _P, _P]


# The links kernel.c computes whole, by accumulation type (its LINK_ codes), where they are
# the C library's (not PostTransform.in_numpy); the others run as treecomp.reference.link,
# with the exps below.
LINKS = {"f32": {"sigmoid": 1, "exp": 2, "softmax": 3}, "f64": {"sigmoid": 1, "exp": 2}}

# Below this many values a link's exp runs in Python (reference.libm_exp): a ctypes call
# costs more.
C_EXP_VALUES = 64


def _library_exp(x: npt.NDArray[np.floating], dtype: Any, name: str, small: Any) -> Any:
    """The kernel's C function ``name`` over ``x`` in ``dtype``, or ``small(x)`` where
    ``x`` has too few values for a ctypes call to pay."""
    if x.size < C_EXP_VALUES:
        return small(x)
    values = np.ascontiguousarray(x, dtype=dtype)
    out = np.empty_like(values)
    getattr(load_kernel(), name)(values.ctypes.data, out.ctypes.data, values.size)
    return out


def libm_exp(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """:func:`treecomp.reference.libm_exp` in C, for large arrays: 100 000 values in
    about 0.5 ms instead of 10."""
    out: npt.NDArray[np.float64] = _library_exp(x, np.float64, "treecomp_exp", reference.libm_exp)
    return out


def libm_expf(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """:func:`treecomp.reference.libm_expf` in C, for large arrays."""
    out: npt.NDArray[np.float32] = _library_exp(x, np.float32, "treecomp_expf", reference.libm_expf)
    return out


class CLink:
    """A forest's link of raw sums ``(rows, outputs)`` in C: kernel.c's whole link where it
    has the forest's (:data:`LINKS`), else :func:`treecomp.reference.link` with the C exps
    above. The reference's numbers, 100 000 softmax probabilities in about 1 ms instead of
    the reference's 40 (a ctypes call of ``expf`` per value)."""

    def __init__(self, forest: Forest, library: ctypes.CDLL) -> None:
        acc = "f32" if forest.accumulation == "float32" else "f64"
        post = forest.post_transform
        code = None if post.in_numpy else LINKS[acc].get(post.kind)
        self.forest = forest
        # The kind and scale kernel.c takes (treecomp_small's too), or None: the reference.
        self.code = None if code is None else (code, forest.post_transform.scale)
        self._dtype = np.float32 if acc == "f32" else np.float64
        self._function = getattr(library, f"treecomp_link_{acc}")

    def __call__(self, raw: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        if self.code is None or raw.ndim != 2:  # kernel.c reads rows of outputs
            return reference.link(self.forest, raw, libm_exp, libm_expf)
        # The sums in their accumulation type (float32 sums come widened from some engines).
        sums = np.ascontiguousarray(raw, dtype=self._dtype)
        out = np.empty(sums.shape, dtype=np.float64)
        self._function(*self.code, sums.ctypes.data, out.ctypes.data, *sums.shape)
        return out


def link_for(forest: Forest) -> Link:
    """``forest``'s link for the engines that sum in another library (torch, ONNX Runtime),
    built with the engine (at convert): :class:`CLink` for calls of :data:`C_EXP_VALUES`
    values or more, where the kernel library loads (it is built first if this machine has
    none, once per machine); :func:`treecomp.reference.link` for smaller calls, identity
    links, and where the kernel cannot be built or loaded (no C compiler, an unwritable or
    broken cache), which is logged."""
    reference_link = functools.partial(reference.link, forest)
    if forest.post_transform.kind == "identity" or forest.post_transform.in_numpy:
        return reference_link
    try:
        c_link = CLink(forest, load_kernel())
    except (KernelUnavailable, OSError) as exc:
        logger.info("treecomp: links in Python, not in the kernel's C (%s)", exc)
        return reference_link

    def link(raw: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        return c_link(raw) if raw.size >= C_EXP_VALUES else reference_link(raw)

    return link


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_pid = os.getpid()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads shared by every engine of this process; a forked child
    (Dask, Spark workers) starts its own, as the parent's threads did not come along."""
    global _pools_pid
    with _lock:
        if _pools_pid != os.getpid():
            _pools.clear()
            _pools_pid = os.getpid()
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, "treecomp-kernel")
        return pool


def _address(array: npt.NDArray[Any]) -> int:
    return int(array.ctypes.data)


class _SmallCall(ctypes.Structure):
    """kernel.c's treecomp_small_call: a small batch's walk and link in one call."""

    _fields_ = [
        ("x", _P),
        ("raw", _P),
        ("out", _P),
        ("forest", _P),
        ("width", _I64),
        ("kinds", ctypes.c_int32),
        ("link", ctypes.c_int32),
        ("scale", ctypes.c_double),
    ]


class _Scratch:
    """One thread's buffers for an engine's small batches: rows, sums and linked scores of
    up to SMALL_ROWS rows, and the call that walks and links them (``call_at``: its
    address); and for a large batch's slices over threads (``bounds``). ``linked``: the
    call links the sums into ``out``."""

    def __init__(self, engine: KernelEngine) -> None:
        outputs, layout = engine.forest.n_outputs, engine.layout
        self.rows = np.zeros((SMALL_ROWS, engine.forest.n_features), dtype=layout.compare)
        self.raw = np.zeros((SMALL_ROWS, outputs), dtype=layout.accumulate)
        self.out = np.zeros((SMALL_ROWS, outputs), dtype=np.float64)
        self.rows_at, self.raw_at, self.out_at = map(_address, (self.rows, self.raw, self.out))
        # A large batch's slices over threads (kernel.c's treecomp_slices writes them).
        self.bounds = np.zeros(engine._threads + 1, dtype=np.int64)
        self.bounds_at = _address(self.bounds)
        kind, scale = engine._small_link
        self.linked = kind != 0
        self.call = _SmallCall(
            self.rows_at, self.raw_at, self.out_at, ctypes.addressof(engine._tables),
            outputs, engine._kinds, kind, scale,
        )  # fmt: skip
        self.call_at = ctypes.addressof(self.call)


class KernelEngine:
    """A forest laid out for the kernel, scoring NumPy rows (see :mod:`treecomp.kernel`).

    Attributes:
        strategy: What runs, for ``cm.strategy``.
    """

    def __init__(
        self, forest: Forest, *, precision: Precision, n_threads: int | None = None
    ) -> None:
        check_positive("n_threads", n_threads)
        self.forest = forest
        self.precision = precision
        self.n_threads = n_threads
        layout = folded_layout(forest, precision)
        if layout is None:
            raise KernelUnsupported(
                "the kernel backend walks forests of numerical splits only; this one has "
                "categorical or zero-as-missing splits (use backend='torch' or 'onnx')"
            )
        self.layout = layout
        self.library = load_kernel()
        cmp = "f32" if precision == "float32" else "f64"
        acc = "f32" if forest.accumulation == "float32" else "f64"
        self._walk = getattr(self.library, f"treecomp_walk_{cmp}_{acc}")
        self._link = CLink(forest, self.library)
        self._small = self.library.treecomp_small
        # treecomp_small's choice of those walks: bit 1 double tests, bit 0 double sums.
        self._kinds = 2 * (cmp == "f64") + (acc == "f64")
        post = forest.post_transform
        # Identity links score the sums themselves: raw and transformed scores are one
        # array (no output changes them in place), no copy and no link to call. One row of
        # 50 trees (GradientBoosting): 2.6 -> 2.0 us in the engine.
        self._identity = post.kind == "identity"
        average = forest.aggregation == "average"
        # What treecomp_small links in C: the kernel's links of sums that are not averaged
        # first (averages divide before the link: _finish); (0, 0.0): none.
        self._small_link = (0, 0.0) if average or self._link.code is None else self._link.code
        self._base = start_sums(forest, layout)
        # What averaging forests divide their sums by, then add, as the reference does.
        self._average = (
            (forest.trees_per_output().astype(self.layout.accumulate),
             forest.base_score.astype(self.layout.accumulate))
            if average else None
        )  # fmt: skip
        L = self.layout
        names = [field[0] for field in Tables._fields_[5:] if field[0] != "base"]
        arrays = {name: getattr(L, name) for name in names}
        self._threads = n_threads or cpus()
        self._tables = Tables(
            *counts(forest, L), int(self._threads > 1),
            **{name: _address(array) for name, array in arrays.items()},
            base=_address(self._base),
        )  # fmt: skip
        self._tables_pointer = ctypes.pointer(self._tables)
        self._local = threading.local()  # each thread's _Scratch
        depth = int(tree_depths(forest.trees).max())
        perfect = int(self.layout.perfect_levels.max(initial=0))
        self.strategy = f"kernel (C, folded trees, top {perfect} of {depth} levels perfect)"

    def _scratch(self) -> _Scratch:
        """This thread's buffers (made at its first call)."""
        scratch: _Scratch | None = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = _Scratch(self)
        return scratch

    def _run(
        self, X: npt.NDArray[Any], out: npt.NDArray[Any] | None, leaves: npt.NDArray[Any] | None
    ) -> None:
        """The kernel over ``X`` into ``out`` (sums) or ``leaves`` (nodes reached), in
        slices of rows side by side on up to ``n_threads`` threads (ctypes lets go of the
        GIL for the call)."""
        X = np.ascontiguousarray(X, dtype=self.layout.compare)
        n = X.shape[0]
        if X.ndim != 2 or X.shape[1] != self._tables.n_features:  # the kernel reads them all
            raise ValueError(f"the kernel takes rows of {self._tables.n_features} features")
        bounds = [0, n]  # one thread: one slice
        slices = 1
        if self._threads > 1:  # kernel.c's split, into this thread's buffer, then copied:
            # a call interrupted with slices still queued leaves them their own bounds
            scratch = self._scratch()
            slices = int(self.library.treecomp_slices(n, self._threads, scratch.bounds_at))
            bounds = scratch.bounds[: slices + 1].tolist()

        def walk(i: int) -> int:
            first, last = int(bounds[i]), int(bounds[i + 1])
            return int(
                self._walk(
                    X.ctypes.data + first * X.strides[0],
                    last - first,
                    self._tables_pointer,
                    None if out is None else out.ctypes.data + first * out.strides[0],
                    None if leaves is None else leaves.ctypes.data + first * leaves.strides[0],
                )
            )

        if slices == 1:  # at one row every call counts: no pool
            failed = walk(0)
        else:
            # The others' slices start first; this thread walks the first meanwhile.
            others = [_pool(slices - 1).submit(walk, i) for i in range(1, slices)]
            failed = max(walk(0), *(future.result() for future in others))
        if failed:
            raise MemoryError(NO_MEMORY)

    def scores(
        self, X: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        forest = self.forest
        if X.shape[0] <= SMALL_ROWS and X.ndim == 2:
            return self._small_scores(X)
        raw = np.empty((X.shape[0], forest.n_outputs), dtype=self.layout.accumulate)
        self._run(X, raw, None)
        return self._finish(raw)

    def _finish(
        self, raw: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Scores from a call's own sums ``raw`` (changed in place): averaged as the
        reference does, after the sums, then linked."""
        if self._average is not None:
            divisor, base = self._average
            raw /= divisor
            raw += base
        if self._identity:
            sums = raw.astype(np.float64, copy=False)
            return sums, sums
        return raw.astype(np.float64), self._link(raw)

    def _small_scores(
        self, X: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """:meth:`scores` of at most SMALL_ROWS rows, through this thread's buffers, whose
        addresses are known: an array's address costs a microsecond to ask (``.ctypes``),
        and a one-row call asked four."""
        n = X.shape[0]
        if X.shape[1] != self._tables.n_features:
            raise ValueError(f"the kernel takes rows of {self._tables.n_features} features")
        scratch = self._scratch()
        scratch.rows[:n] = X
        if self._small(scratch.call_at, n):  # the walk, and the link where scratch.linked
            raise MemoryError(NO_MEMORY)
        raw = scratch.raw[:n]
        if scratch.linked:  # linked in the buffers
            return raw.astype(np.float64), scratch.out[:n].copy()
        return self._finish(raw.copy())  # a link may return its input: never the buffer

    def leaf_ids(self, X: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        nodes = np.empty((X.shape[0], self.forest.n_trees), dtype=np.int32)
        self._run(X, None, nodes)
        local = nodes.astype(np.int64) - self.layout.node_base
        return reference.native_leaf_ids(self.forest, local)


def make_engine(
    forest: Forest,
    *,
    precision: Precision,
    device: Any = None,
    n_threads: int | None = None,
    **options: Any,
) -> KernelEngine:
    """The ``"kernel"`` backend's engine (see :func:`treecomp.backends.get_backend`)."""
    if device not in (None, "cpu"):
        raise ValueError(f"the kernel backend runs on the CPU only, not {device!r}")
    unexpected = sorted(k for k, v in options.items() if v is not None)
    if unexpected:
        raise TypeError(f"the kernel backend takes no options {unexpected} (only n_threads)")
    return KernelEngine(forest, precision=precision, n_threads=n_threads)
