"""The ``"torch"`` and ``"torchscript"`` backends: passes, lowering, device and batching.

Imported only when one of these backends is asked for, so that treecomp itself needs no
torch. The pipeline is the one of the design card: the forest (already parsed) goes through
the float32 threshold pass when scoring in float32, then :func:`strategies.lower`, then is
moved to its device; inputs are scored in chunks so that memory stays bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from treecomp.inputs import Precision, check_positive, check_shape, check_values, integer_target
from treecomp.ir import Forest, tree_depths
from treecomp.passes import float32_thresholds

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "the 'torch' and 'torchscript' backends need PyTorch: pip install 'treecomp[torch]' "
        "(or use backend='numpy')"
    ) from exc

import torch.fx.experimental._config as fx_config

import strategies
from treecomp.batching import rows_per_chunk, score_in_chunks


def resolve_device(device: Any) -> torch.device:
    """A torch.device, or a clear error when it does not exist on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(device)!r} was requested but CUDA is not available here "
                "(torch.cuda.is_available() is False); use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {str(device)!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    return dev


def _bytes_per_row(module: strategies.ForestModule, dtype_bytes: int) -> int:
    """A generous bound on the scratch memory one row needs in the module's forward."""
    total = 0
    groups: list[Any] = list(module.groups)
    for group in groups:
        n_trees = int(group.columns.numel())
        if hasattr(group, "path"):  # GEMM: tests and path products per internal node / leaf
            _, internal, leaves = group.path.shape
            total += n_trees * (internal * (3 * dtype_bytes + 16) + leaves * 12)
        else:  # traversals: a handful of (rows, trees) tensors
            total += n_trees * 12 * 8
    # Aggregation: leaf values, their flat copy and the ordered terms with their cumsum.
    terms = int(module.steps.numel())
    return max(total + 3 * module.n_trees * module.leaf_width * 8 + 2 * terms * 8, 1)


def check_compiler(device: torch.device) -> None:
    """Raise a clear error when ``torch.compile`` cannot generate code for ``device``."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise RuntimeError(
                "compile=True on CUDA needs Triton, which is not installed (pip install "
                "triton, matching your torch); or use compile=False"
            )
        return
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # InvalidCxxCompiler, or a broken compiler
        raise RuntimeError(
            "compile=True on the CPU needs a C++ compiler for torch.compile (g++, or the one "
            f"named by the CXX environment variable), and none works here ({exc!s:.200}); "
            "install one, or use compile=False"
        ) from None


# Inductor options for our graphs. Bounds checks off: every index is built in range by the
# lowering (and the exactness tests would catch one that is not). Scalar code: inductor's
# vectorised gathers go lane by lane through a buffer; scalar loops ran 10 % faster and
# compiled in 17 s instead of 31 s (500 trees of depth 8, 1 thread).
INDUCTOR_OPTIONS: dict[str, Any] = {
    "assert_indirect_indexing": False,
    "cpp.simdlen": 1,
}
_copies = itertools.count()
WARM_UP_ROWS = 4096


def _own_code(method: Any) -> Any:
    """``method`` bound to a copy of its function with a code object of its own.

    Dynamo keeps compiled graphs on the code object of the compiled frame: every
    ``ForestModule`` would share ``ForestModule.forward``'s entries, and a process holding
    more than ``recompile_limit`` (8) compiled models would silently fall back to eager.
    """
    fn = method.__func__
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{next(_copies)}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


class CompiledForward:
    """``torch.compile`` of a branch-free :class:`strategies.ForestModule` method.

    One graph serves every batch size from 1 row up: the batch axis is marked dynamic, and
    the first call (the warm-up) traces with size-oblivious reasoning, so that the compiler
    neither specialises 1 (or, on the blocks of a branch-free module, one block) nor guards
    on it: without it, 16 rows or fewer took a second compile, as long as the first. Inputs
    are cast to the module's input dtype, so mixed float32/float64 callers share the graph
    too. Inductor's on-disk cache (under the user's cache directory) makes the same model
    compile fast in a new process.
    """

    def __init__(self, method: Any, dtype: torch.dtype) -> None:
        self.compiled = torch.compile(
            _own_code(method), fullgraph=True, options=dict(INDUCTOR_OPTIONS)
        )
        self.dtype = dtype
        self.traced = False

    def __call__(self, X: torch.Tensor) -> Any:
        X = X.to(self.dtype).contiguous()
        if not X.is_inference():  # one kind of tensor, one graph: guards check which
            X = X.clone()
        torch._dynamo.mark_dynamic(X, 0)
        with torch.inference_mode():
            if self.traced:
                return self.compiled(X)
            with fx_config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
                out = self.compiled(X)
            self.traced = True
            return out


class PT2Module(torch.nn.Module):
    """What a ``.pt2`` package runs: ``X -> (raw, transformed[, leaf_ids])``."""

    def __init__(self, module: strategies.ForestModule, leaf_indices: bool) -> None:
        super().__init__()
        self.forest = module
        self.leaf_indices = leaf_indices

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw, transformed = self.forest(X)
        if self.leaf_indices:
            return raw, transformed, self.forest.leaf_ids(X)
        return raw, transformed


class TorchEngine:
    """A lowered forest on a device, scoring NumPy arrays or torch tensors in chunks."""

    def __init__(
        self,
        forest: Forest,
        *,
        precision: Precision,
        script: bool,
        strategy: str = "auto",
        device: Any = "cpu",
        batch_size: int | None = None,
        n_threads: int | None = None,
        progress: bool = False,
        compile: bool = False,
    ) -> None:
        check_positive("batch_size", batch_size)
        check_positive("n_threads", n_threads)
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, not {compile!r}")
        self.forest = forest
        self.device = resolve_device(device)
        self.compiled = compile
        if compile:
            check_compiler(self.device)
        self.n_threads = n_threads
        self.progress = progress
        dtype = torch.float32 if precision == "float32" else torch.float64
        lowered = float32_thresholds(forest) if precision == "float32" else forest
        module, groups = strategies.lower(
            lowered,
            strategy,
            dtype=dtype,
            batch_size=batch_size or 10_000,
            device=self.device.type,
            compiled=compile,
        )
        depths = tree_depths(forest.trees)
        self.strategy = strategies.describe(groups, depths)
        module.eval()
        module.branch_free = compile
        self.lowered = module  # the Python module, for torch.export
        self.module: torch.nn.Module = torch.jit.script(module) if script else module
        self.module.to(self.device)
        per_row = _bytes_per_row(module, 4 if precision == "float32" else 8)
        self.batch_size = rows_per_chunk(per_row, batch_size)
        self._forward: Callable[[torch.Tensor], Any] = self.module
        self._leaf_ids: Callable[[torch.Tensor], Any] | None = None
        if compile:
            self.strategy += " [compiled]"
            self._forward = CompiledForward(module.forward, module.input_dtype)
            self._warm_up(self._forward)

    def _warm_up(self, fn: Callable[[torch.Tensor], Any]) -> None:
        """Compile now (rather than at the first call), naming what failed if it does."""
        # The example's size is the compiler's hint for the dynamic batch axis: with 2 rows it
        # judged the loops too small for OpenMP and emitted serial code (2 threads ran as 1).
        example = torch.zeros((WARM_UP_ROWS, self.forest.n_features), device=self.device)
        try:
            with torch.inference_mode(), self._threads():
                fn(example)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RuntimeError(
                f"torch.compile could not compile this forest ({type(exc).__name__}: "
                f"{first:.300}); use compile=False"
            ) from exc

    def export_pt2(self, path: Any, *, leaf_indices: bool = False) -> None:
        """Write a ``torch.export`` + AOTInductor package of the forest (see the container)."""
        check_compiler(self.device)
        module = self.lowered
        exported = PT2Module(module, leaf_indices)
        example = torch.zeros((WARM_UP_ROWS, self.forest.n_features), dtype=module.input_dtype)
        batch = torch.export.Dim("batch", min=1, max=2**31 - 1)
        previous = module.branch_free
        module.branch_free = True
        try:
            with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
                program = torch.export.export(
                    exported, (example.to(self.device),), dynamic_shapes=({0: batch},)
                )
                torch._inductor.aoti_compile_and_package(
                    program,
                    package_path=str(path),
                    inductor_configs=INDUCTOR_OPTIONS,
                )
        finally:
            module.branch_free = previous

    def to(self, device: Any) -> None:
        device = resolve_device(device)
        if self.compiled and device != self.device:
            check_compiler(device)
        self.device = device
        self.module.to(self.device)

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self.n_threads is None or self.device.type != "cpu":
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.n_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _run(
        self, X: Any, fn: Callable[[torch.Tensor], Any], widths: list[int], dtype: Any
    ) -> list[np.ndarray]:
        """``fn`` over ``X`` chunk by chunk, into outputs allocated once (see
        :mod:`treecomp.batching`)."""
        n = X.shape[0]
        if n == 0:
            return [np.zeros((0, w), dtype=dtype) for w in widths]

        def score(rows: slice) -> list[np.ndarray]:
            chunk = X[rows]
            tensor = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(chunk)
            out = fn(tensor.to(self.device, non_blocking=True))
            return [value.cpu().numpy() for value in (out if isinstance(out, tuple) else (out,))]

        with torch.inference_mode(), self._threads():
            return score_in_chunks(
                n, self.batch_size, widths, [dtype] * len(widths), score, progress=self.progress
            )

    def leaf_ids(self, X: Any) -> npt.NDArray[np.int64]:
        module: Any = self.module
        fn = module.leaf_ids
        if self.compiled:
            if self._leaf_ids is None:  # compiled at the first apply(), not every convert
                compiled = CompiledForward(module.leaf_ids, module.input_dtype)
                self._warm_up(compiled)
                self._leaf_ids = compiled
            fn = self._leaf_ids
        (ids,) = self._run(X, fn, [self.forest.n_trees], np.int64)
        return ids

    def scores(self, X: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        k = self.forest.n_outputs
        raw, transformed = self._run(X, self._forward, [k, k], np.float64)
        return raw, transformed

    def prepare_tensor(self, X: torch.Tensor) -> torch.Tensor:
        """Check a tensor input as the NumPy path checks arrays; keep it on its device."""
        f = self.forest
        if X.dtype.is_complex:
            raise TypeError(f"X has unsupported dtype {X.dtype}; expected a real tensor")
        check_shape(f, tuple(X.shape))
        if not X.dtype.is_floating_point:
            X = X.to(getattr(torch, integer_target(f)))
        native = X.to(torch.float32 if f.input_dtype == "float32" else torch.float64)
        check_values(
            f, lambda: bool(torch.isnan(native).any()), lambda: bool(torch.isinf(native).any())
        )
        return native


def make_engine(
    forest: Forest, *, precision: Precision, script: bool, **options: Any
) -> TorchEngine:
    return TorchEngine(forest, precision=precision, script=script, **options)
