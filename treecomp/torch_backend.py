"""The ``"torch"`` and ``"torchscript"`` backends: passes, lowering, device and batching.

Imported only when one of these backends is asked for, so that treecomp itself needs no
torch. The pipeline is the one of the design card: the forest (already parsed) goes through
the float32 threshold pass when scoring in float32, then :func:`strategies.lower`
(:func:`strategies.lower_forest`, which the engine's factory hands it), then is moved to
its device; inputs are scored in chunks so that memory stays bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from treecomp import reference
from treecomp.inputs import Precision, check_positive, check_shape, check_values, integer_target

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "the 'torch' and 'torchscript' backends need PyTorch: pip install 'treecomp[torch]' "
        "(or use backend='numpy')"
    ) from exc

import torch.fx.experimental._config as fx_config

from treecomp.batching import SlicePool, rows_per_chunk, score_in_chunks, side_by_side
from treecomp.compiled_tier import CompiledTier
from treecomp.engine import Link, Lower
from treecomp.files import replacing
from treecomp.inductor_settings import (
    INDUCTOR_OPTIONS,
    checks_always_on,
    objects_side_by_side,
    scalar_code_only,
)
from treecomp.kernel_build import KernelUnavailable
from treecomp.kernel_layout import folded_layout, pack
from treecomp.kernel_op import KernelSums, linked, usable
from treecomp.package_cache import (
    PARTIAL_GRACE_S,  # noqa: F401 (tests read the cache's names here too)
    STALE_PARTIAL_S,  # noqa: F401
    CompilerNotFoundError,
    PackageNotCached,
    check_compiler,
    discard_package,
    file_sha256,
    find_package,
    load_package,
    package_dir,
    package_name,
    trim_packages,
)

if TYPE_CHECKING:
    from strategies.forest_module import ForestModule
    from treecomp.ir import Forest

_log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(device: Any) -> torch.device:
    """A torch.device, or a clear error when it does not exist on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None
    if dev.type not in ("cpu", "cuda"):  # meta, mps, ...: no engine of ours runs there
        raise ValueError(f"device {str(device)!r} is not supported: use 'cpu' or 'cuda'")
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


def _bytes_per_row(module: ForestModule, dtype_bytes: int) -> int:
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
    terms = module.sum_plan.n_terms
    return max(total + 3 * module.n_trees * module.leaf_width * 8 + 2 * terms * 8, 1)


WARM_UP_ROWS = 4096


class PT2Module(torch.nn.Module):
    """What a ``.pt2`` package runs: ``X -> (raw, transformed[, leaf_ids])`` or, with
    ``outputs="leaf_ids"``, ``X -> (leaf_ids,)``; the raw scores from ``kernel`` where given
    (:mod:`treecomp.kernel_op`), else from the module's walk."""

    def __init__(self, module: ForestModule, outputs: str, kernel: KernelSums | None) -> None:
        super().__init__()
        self.forest = module
        self.outputs = outputs
        self.kernel = kernel

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.outputs == "leaf_ids":
            return (self.forest.leaf_ids(X),)
        if self.kernel is None:
            raw, transformed = self.forest(X)
        else:
            raw = self.kernel(X)
            transformed = self.forest.link(raw)
        if self.outputs == "both":
            return raw, transformed, self.forest.leaf_ids(X)
        return raw, transformed


def module_digest(module: torch.nn.Module) -> str:
    """What a compiled package of ``module`` depends on, whatever its outputs and device:
    the lowering's code, every buffer and setting of the module, torch, the inductor
    options and the CPU's instruction set. Hashes every buffer: computed once per engine."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve()
    lowering = Path(inspect.getfile(type(module))).resolve().parent  # the strategies
    sources = [*sorted(lowering.glob("*.py")), here]
    sources.append(here.parent / "ir.py")
    for source in sources:
        digest.update(source.read_bytes())
    facts = [
        torch.__version__,
        repr(sorted(INDUCTOR_OPTIONS.items())),
        platform.machine(),
        torch.backends.cpu.get_cpu_capability(),
    ]
    for name, sub in module.named_modules():
        settings = sorted(
            (key, repr(value)) for key, value in vars(sub).items() if not key.startswith("_")
        )
        facts.append(f"{name} {type(sub).__name__} {settings}")
    digest.update(repr(facts).encode())
    for name, buffer in module.state_dict().items():
        digest.update(f"{name} {buffer.dtype} {tuple(buffer.shape)}".encode())
        digest.update(buffer.detach().cpu().numpy().tobytes())  # C order, any strides
    return digest.hexdigest()


class PackagedForward:
    """A branch-free :class:`strategies.forest_module.ForestModule` compiled ahead of time by
    ``torch.export`` and AOTInductor, kept on disk under :func:`package_dir`, and run by
    AOTInductor's runner.

    The package is built once per model (keyed by :func:`module_digest`, the outputs and
    the device); a process that converts the same model again loads it in milliseconds,
    where ``torch.compile`` traced the module again on every start (7 to 9 s for 500
    trees, most of it Dynamo's tracing of the 500-step sum). The batch axis is dynamic
    from 1 row up, and the runner skips Dynamo's guards on every call.

    Its file name holds the SHA-256 of its bytes, checked before every load: a package
    that fails the check or does not load is discarded with a warning naming it, and
    built again (or, with ``build=False``, :class:`PackageNotCached` is raised).
    """

    def __init__(
        self,
        module: ForestModule,
        outputs: str,
        device: torch.device,
        digest: str,
        *,
        build: bool = True,
        kernel: KernelSums | None = None,
    ) -> None:
        self.dtype = module.input_dtype
        key = hashlib.sha256(f"{digest} {outputs} {device.type}".encode()).hexdigest()[:32]
        directory = package_dir()
        path = find_package(directory, key)
        if path is not None:
            try:
                runner = load_package(path)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                discard_package(path, f"does not load ({type(exc).__name__}: {first:.200})")
            else:
                # Sound bytes of another model's package (a copied or shared cache) would
                # score that model: the key it was built for is in its metadata.
                built_for = runner.get_metadata().get("treecomp.key")
                if built_for == key:
                    self.runner = runner
                    return
                discard_package(
                    path,
                    "carries no model key (an older treecomp's)"
                    if built_for is None
                    else f"was built for another model (key {built_for})",
                )
        if not build:
            raise PackageNotCached(directory / package_name(key, "*"))
        check_compiler(device)
        directory.mkdir(parents=True, exist_ok=True)
        # Unique per thread: two threads may build the same package.
        partial = directory / f"{key}.{os.getpid()}.{threading.get_ident()}.partial.pt2"
        try:
            export_package(module, partial, outputs, device, key=key, kernel=kernel)
            path = directory / package_name(key, file_sha256(partial))
            os.replace(partial, path)  # atomic: a concurrent reader sees all or nothing
        finally:
            partial.unlink(missing_ok=True)
        trim_packages(directory, keep=path)
        self.runner = load_package(path)

    def __call__(self, X: torch.Tensor) -> Any:
        out = self.runner(X.to(self.dtype).contiguous())
        return out[0] if len(out) == 1 else tuple(out)


def export_package(
    module: ForestModule,
    path: Any,
    outputs: str,
    device: torch.device,
    *,
    key: str = "",
    kernel: KernelSums | None = None,
) -> None:
    """Write a ``torch.export`` + AOTInductor package of ``module`` (see :class:`PT2Module`);
    ``key``, a cache key, is written into its metadata (see :class:`PackagedForward`).

    The export traces with size-oblivious reasoning, so that neither 1 row nor one block of
    rows specialises: one package serves every batch size.
    """
    exported = PT2Module(module, outputs, kernel)
    # The package takes this type only (see checks_always_on); said in its metadata too,
    # which runner.get_metadata() returns.
    dtype = module.input_dtype
    metadata = {
        "treecomp.input_dtype": str(dtype).removeprefix("torch."),
        "treecomp.outputs": outputs,
        "treecomp.n_features": str(module.n_features),
    }
    if key:
        metadata["treecomp.key"] = key
    example = torch.zeros((WARM_UP_ROWS, module.n_features), dtype=dtype)
    batch = torch.export.Dim("batch", min=1, max=2**31 - 1)
    previous = module.branch_free
    module.branch_free = True
    start = time.perf_counter()
    _log.info(
        "compiling %d trees with torch.export and AOTInductor (%s, %s input); the first "
        "compile of a large forest takes tens of seconds",
        module.n_trees,
        device.type,
        metadata["treecomp.input_dtype"],
    )
    try:
        with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
            program = torch.export.export(
                exported, (example.to(device),), dynamic_shapes=({0: batch},)
            )
            _log.info("traced in %.1f s; generating and compiling C++", time.perf_counter() - start)
            with (
                checks_always_on(),
                scalar_code_only(),
                objects_side_by_side(),
                linked(kernel) as linking,
            ):
                torch._inductor.aoti_compile_and_package(
                    program,
                    package_path=str(path),
                    # it adds its own keys to the dict
                    inductor_configs={
                        **INDUCTOR_OPTIONS,
                        **linking,
                        "aot_inductor.metadata": metadata,
                    },
                )
    finally:
        module.branch_free = previous
    _log.info("compiled in %.1f s", time.perf_counter() - start)


class TorchEngine:
    """A forest lowered by ``lower`` on a device, scoring NumPy arrays or torch tensors in
    chunks; ``link`` links the sums where torch does not (default: the reference's)."""

    def __init__(
        self,
        forest: Forest,
        lower: Lower,
        *,
        precision: Precision,
        script: bool,
        strategy: str = "auto",
        device: Any = "cpu",
        batch_size: int | None = None,
        n_threads: int | None = None,
        progress: bool = False,
        compile: bool = False,
        build: bool = True,
        link: Link | None = None,
    ) -> None:
        check_positive("batch_size", batch_size)
        check_positive("n_threads", n_threads)
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, not {compile!r}")
        self.forest = forest
        self.precision = precision
        self._kernel_sums: KernelSums | None = None
        self._kernel_digest = ""  # of _kernel_sums, for its packages' keys
        self._kernel_asked = False  # _kernel has looked for it
        self._link = link or partial(reference.link, forest)
        self.device = resolve_device(device)
        self.compiled = compile  # a package is built, or loaded (no compiler needed)
        self.n_threads = n_threads
        self.progress = progress
        module, self.strategy = lower(
            forest,
            precision,
            strategy,
            batch_size=batch_size or 10_000,
            device=self.device.type,
            compiled=compile,
        )
        module.eval()
        module.branch_free = compile
        self.lowered = module  # the Python module, for torch.export
        self.module: torch.nn.Module = torch.jit.script(module) if script else module
        self.module.to(self.device)
        per_row = _bytes_per_row(module, 4 if precision == "float32" else 8)
        self.batch_size = rows_per_chunk(per_row, batch_size)
        self._forward: Callable[[torch.Tensor], Any] = self.module
        self._leaf_ids: Callable[[torch.Tensor], Any] | None = None
        self._digest: str | None = None  # of the lowered module, for its packages
        # With build=False (the compiled tier of backend="auto", treecomp.tiered), a
        # package missing from the cache is not built: package_loaded says which.
        self.package_loaded = False
        if compile:
            try:
                self._forward = self._package("scores", build=build)
                self.package_loaded = True
            except PackageNotCached:
                pass
            if self._kernel() is not None:
                self.strategy = f"sums by the kernel (C), leaf indices by {self.strategy}"
            self.strategy += " [compiled]"

    def _package(self, outputs: str, *, build: bool = True) -> PackagedForward:
        """The compiled package of the module (built now, or loaded from disk), naming what
        failed if it cannot be built; :class:`PackageNotCached` if not cached and not
        ``build``."""
        try:
            with self._threads():
                if self._digest is None:
                    self._digest = module_digest(self.lowered)
                kernel = self._kernel() if outputs != "leaf_ids" else None
                if kernel is not None:
                    try:  # cached: loads without a compiler, or the archive
                        return self._packaged(outputs, kernel, build=False)
                    except PackageNotCached:
                        if not build:  # one built where the kernel did not link, if any
                            return self._packaged(outputs, None, build=False)
                return self._linked(
                    kernel, lambda linked: self._packaged(outputs, linked, build=build)
                )
        except (PackageNotCached, CompilerNotFoundError):
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RuntimeError(
                f"torch.export/AOTInductor could not compile this forest "
                f"({type(exc).__name__}: {first:.300}); use compile=False"
            ) from exc

    def export_pt2(self, path: Any, *, leaf_indices: bool = False) -> None:
        """Write a ``torch.export`` + AOTInductor package of the forest (see the container)."""
        check_compiler(self.device)
        with replacing(path) as partial:
            outputs = "both" if leaf_indices else "scores"
            self._linked(
                self._kernel(),
                lambda kernel: export_package(
                    self.lowered, partial, outputs, self.device, kernel=kernel
                ),
            )

    def _kernel(self) -> KernelSums | None:
        """The kernel's sums for this forest's CPU packages (:mod:`treecomp.kernel_op`), or
        None: another device, a forest the kernel does not walk (categorical or
        zero-as-missing splits), or a kernel that did not link here (see :meth:`_linked`)."""
        if self.device.type != "cpu":
            return None
        if not self._kernel_asked:
            self._kernel_asked = True
            layout = folded_layout(self.forest, self.precision)
            if layout is not None and usable():
                tables = pack(self.forest, layout)
                self._kernel_sums = KernelSums(self.forest, tables, self.precision)
                self._kernel_digest = module_digest(self._kernel_sums)
        return self._kernel_sums

    def _packaged(self, outputs: str, kernel: KernelSums | None, *, build: bool) -> PackagedForward:
        """The package of ``outputs``, with ``kernel``'s sums or the module's walk: each has
        its own cache key."""
        digest = f"{self._digest}{self._kernel_digest if kernel is not None else ''}"
        return PackagedForward(
            self.lowered, outputs, self.device, digest, build=build, kernel=kernel
        )

    def _linked(self, kernel: KernelSums | None, build: Callable[[KernelSums | None], T]) -> T:
        """``build(kernel)`` where the kernel's archive builds and links, else ``build(None)``
        (inductor's walk), saying why; this engine's packages then keep the walk."""
        if kernel is None:
            return build(None)
        try:  # the archive is asked for, and built if need be, as the compile links
            return build(kernel)
        except CompilerNotFoundError:
            raise
        except Exception as exc:  # no archive (logged at INFO), or it did not link (WARNING)
            said = (str(exc).strip().splitlines() or [""])[0]
            unavailable = isinstance(exc, (KernelUnavailable, OSError))
            _log.log(
                logging.INFO if unavailable else logging.WARNING,
                "treecomp: packages walk their trees in inductor's code (%s)",
                said if unavailable else f"{type(exc).__name__}: {said:.300}",
            )
            self._kernel_sums = None
            return build(None)

    def to(self, device: Any) -> None:
        device = resolve_device(device)
        moved = device != self.device
        self.device = device
        self.module.to(self.device)
        if self.compiled and moved:  # packages are compiled for one device
            self._forward = self._package("scores")
            self._leaf_ids = None

    @contextlib.contextmanager
    def _threads(self, count: int | None = None) -> Iterator[None]:
        """torch's CPU threads for this engine's calls: ``count``, else ``n_threads``."""
        count = count or self.n_threads
        if count is None or self.device.type != "cpu":
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _slices(self, n: int) -> int:
        """Row slices to score side by side, one thread each (``side_by_side``):
        eager modules on the CPU, at least ``MIN_SLICE_ROWS`` rows a slice."""
        if self.compiled or self.device.type != "cpu":
            return 1
        workers = self.n_threads or torch.get_num_threads()
        return max(1, min(workers, n // MIN_SLICE_ROWS))

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
            tensor = tensor.to(self.device, non_blocking=True)
            parts = self._slices(tensor.shape[0])
            if parts > 1:  # torch releases the GIL inside its kernels
                pool = _slice_pool.get()
                return side_by_side(partial(_score_slice, fn), tensor, parts, pool)
            return _numpy(fn(tensor))

        # Side by side, every slice's kernels run on one thread, this one's included.
        sliced = self._slices(min(n, self.batch_size)) > 1
        with torch.inference_mode(), self._threads(1 if sliced else None):
            return score_in_chunks(
                n, self.batch_size, widths, [dtype] * len(widths), score, progress=self.progress
            )

    def leaf_ids(self, X: Any) -> npt.NDArray[np.int64]:
        module: Any = self.module
        fn = module.leaf_ids
        if self.compiled:
            if self._leaf_ids is None:  # compiled at the first apply(), not every convert
                self._leaf_ids = self._package("leaf_ids")
            fn = self._leaf_ids
        (ids,) = self._run(X, fn, [self.forest.n_trees], np.int64)
        return ids

    def scores(self, X: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        k = self.forest.n_outputs
        raw, transformed = self._run(X, self._forward, [k, k], np.float64)
        post = self.forest.post_transform
        float64_link = self.forest.accumulation == "float64"
        library_exp = self.compiled and self.device.type == "cpu" and float64_link
        if post.kind != "identity" and (post.in_numpy or not library_exp):
            # torch's exp (SLEEF, Triton) differs from the C library's exp and expf, which
            # the native libraries call, by an ulp, and so does the correctly rounded
            # float32 exp of XGBoost's links in the module; a CPU package's C++ calls the
            # library's double exp itself, which NumPy's links are not.
            transformed = self._link(raw)
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


# Eager scoring on the CPU splits a chunk into row slices, scored side by side on threads of
# one kernel thread each, at least this many rows a slice. torch's index_select, the gather
# every level of every strategy is made of, runs on one thread whatever
# torch.get_num_threads() says: 500 trees of depth 8, 10 000 rows, took 107 ms with two
# kernel threads, 128 ms with one, and 73 ms as two slices side by side.
MIN_SLICE_ROWS = 256


def _one_kernel_thread() -> None:
    torch.set_num_threads(1)


# The process's threads for row slices (beside the caller's), each running torch kernels on
# one thread.
_slice_pool = SlicePool((os.cpu_count() or 1) - 1, "treecomp-slice", _one_kernel_thread)


def _numpy(out: Any) -> list[np.ndarray]:
    return [value.cpu().numpy() for value in (out if isinstance(out, tuple) else (out,))]


def _score_slice(fn: Callable[[torch.Tensor], Any], rows: torch.Tensor) -> list[np.ndarray]:
    with torch.inference_mode():  # a thread-local mode: each thread enters its own
        return _numpy(fn(rows))


def package_tier(
    forest: Forest,
    lower: Lower,
    *,
    precision: Precision,
    options: dict[str, Any],
    link: Link | None = None,
) -> CompiledTier:
    """The forest's compiled package as the default backend's tier of large batches, found
    in the package cache or built in the background (:mod:`treecomp.compiled_tier`)."""

    def cached(forest: Forest, precision: Precision, options: dict[str, Any]) -> Any:
        engine = TorchEngine(
            forest, lower, precision=precision, script=False, compile=True, build=False,
            link=link, **options,
        )  # fmt: skip
        return engine if engine.package_loaded else None

    def check() -> None:
        check_compiler(torch.device("cpu"))

    return CompiledTier(forest, precision=precision, options=options, cached=cached, check=check)
