"""The backend registry: a backend name maps to a factory of :class:`~treecomp.engine.Engine`."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from treecomp import names, reference
from treecomp.batching import rows_per_chunk, score_in_chunks
from treecomp.engine import Engine
from treecomp.ir import Forest

if TYPE_CHECKING:
    from treecomp.tiered import Tier

logger = logging.getLogger(__name__)

EngineFactory = Callable[..., Engine]
_BACKENDS: dict[str, EngineFactory] = {}


def register_backend(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Register ``factory(forest, **options) -> Engine`` under ``name``, a name of
    :data:`treecomp.names.BACKENDS`; registering twice, or an unlisted name, raises."""

    def decorator(factory: EngineFactory) -> EngineFactory:
        if name in _BACKENDS:
            raise ValueError(f"backend {name!r} is already registered")
        if name not in names.BACKENDS:
            raise ValueError(f"backend {name!r} is not in treecomp.names.BACKENDS")
        _BACKENDS[name] = factory
        return factory

    return decorator


def get_backend(name: str) -> EngineFactory:
    """The factory registered under ``name``."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {sorted(_BACKENDS)}") from None


def available_backends() -> tuple[str, ...]:
    """Names of the registered backends."""
    return tuple(sorted(_BACKENDS))


# The onnx backend needs ONNX Runtime's ai.onnx.ml opset 5 TreeEnsemble for its speed.
_TREE_OPERATOR_RUNTIME = (1, 21)


def _installed(module: str) -> str | None:
    """The version of an importable module, or None (never imports it)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def choose_backend(options: dict[str, Any]) -> str:
    """The backend ``backend="auto"`` runs: the fastest exact path installed for the device.

    Rules, from ``treecomp bench`` (2-core CPU, 2 threads; see the README's tables):

    1. ``compile=`` given, a CUDA device, or torch tensors expected (``device`` other than
       the CPU): ``"torch"``. On CUDA the torch module is the only GPU path that keeps every
       strategy (ONNX Runtime's CUDA provider has no tree operator).
    2. CPU with onnx and ONNX Runtime >= 1.21 installed (torch not needed: the graph is
       built from the NumPy lowering): ``"onnx"``, with a compiled tier
       (:mod:`treecomp.tiered`). The tree operator builds in about a second and is the
       fastest at one row (15-60x native predict on the 7 benchmark models). Batches of
       256 rows or more then move to the compiled torch package (where torch is installed)
       once it exists (found in the package cache, or built in the background once large
       batches have kept the process busy; ``cm.tier_up()`` does it now): 1.05-2.1x native
       at 10 000 rows on the XGBoost models, where the operator ran 0.36-0.62x. Deep
       leaf-wise forests (LightGBM) and small ones stay on the operator.
    3. Else torch if installed, else the NumPy reference evaluator (slow, exact, no extra).
    """
    device = str(options.get("device") or "cpu")
    if "compile" in options or not device.startswith("cpu"):
        return "torch"
    onnxruntime = _installed("onnxruntime")
    if (
        onnxruntime is not None
        and _release(onnxruntime) >= _TREE_OPERATOR_RUNTIME
        and _installed("onnx") is not None
    ):
        return "onnx"
    if _installed("torch") is not None:
        return "torch"
    if any(v is not None for k, v in options.items() if k != "device"):
        return "torch"  # its options: let the torch backend say torch is missing
    return "numpy"


@dataclass(frozen=True, slots=True)
class ReferenceEngine:
    """The NumPy reference evaluator as a backend: no dependency beyond NumPy.

    Rows are scored in chunks within ``treecomp.batching.SCRATCH_BYTES``: the leaf nodes of
    every tree, a float64 copy of the rows and a few per-tree temporaries.
    """

    forest: Forest

    @property
    def _rows(self) -> int:
        f = self.forest
        return rows_per_chunk(8 * (2 * f.n_trees + 2 * f.n_features + 8 * f.n_outputs))

    def leaf_ids(self, X: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        def score(rows: slice) -> list[npt.NDArray[np.int64]]:
            nodes = reference.leaf_nodes(self.forest, X[rows])
            return [reference.native_leaf_ids(self.forest, nodes)]

        n = X.shape[0]
        return score_in_chunks(n, self._rows, [self.forest.n_trees], [np.int64], score)[0]

    def scores(
        self, X: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        def score(rows: slice) -> list[npt.NDArray[Any]]:
            raw = reference.raw_scores(self.forest, reference.leaf_nodes(self.forest, X[rows]))
            return [raw, reference.link(self.forest, raw)]

        k = self.forest.n_outputs
        raw, transformed = score_in_chunks(
            X.shape[0], self._rows, [k, k], [np.float64, np.float64], score
        )
        return raw, transformed


def _no_compile(backend: str, options: dict[str, Any]) -> None:
    """Drop ``compile=False``; refuse ``compile=True`` on a backend that cannot honour it."""
    if options.pop("compile", False) is not False:
        raise ValueError(
            f"compile=True applies to backend='torch' (AOTInductor); the {backend!r} "
            "backend does not compile: drop compile=, or use backend='torch'"
        )


@register_backend("numpy")
def _numpy_backend(forest: Forest, *, precision: str, **options: Any) -> Engine:
    _no_compile("numpy", options)
    if options.get("device") not in (None, "cpu"):
        raise ValueError(f"the numpy backend runs on the CPU only, not {options['device']!r}")
    options.pop("device", None)
    unexpected = sorted(k for k, v in options.items() if v is not None)
    if unexpected:
        raise TypeError(f"the numpy backend takes no options {unexpected}")
    return ReferenceEngine(forest)


@register_backend("torch")
def _torch_backend(forest: Forest, *, precision: str, **options: Any) -> Engine:
    from strategies import lower_forest
    from treecomp.kernel import link_for
    from treecomp.torch_backend import TorchEngine

    if options.get("compile") is True and options.get("build", True):
        from treecomp.kernel_op import start_archive

        start_archive(forest, options.get("device"))
    link = link_for(forest)
    return TorchEngine(
        forest,
        lower_forest,
        precision=precision,  # type: ignore[arg-type]
        script=False,
        link=link,
        **options,
    )


# TorchScript is deprecated in torch 2.13 (torch.export and AOTInductor replace it), and its
# rules shape the shared lowering code (typed buffers, no annotations as strings, functions
# of at most 10 arguments, torch.jit.unused sites). The backend warns for this release
# and goes in the next; compile=True and export_pt2 are its successors.
TORCHSCRIPT_DEPRECATION = (
    "the 'torchscript' backend is deprecated and will be removed in treecomp 0.2: torch 2.13 "
    "deprecates TorchScript; use backend='torch' with compile=True, or cm.export_pt2(path) "
    "(a torch.export + AOTInductor package that torch loads without treecomp)"
)


def _outside_treecomp() -> int:
    """The ``stacklevel`` of the first frame outside treecomp and strategies: a warning
    then names the caller's line, however deep in treecomp it was raised."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in (
        "treecomp",
        "strategies",
    ):
        frame, level = frame.f_back, level + 1
    return level


@register_backend("torchscript")
def _torchscript_backend(forest: Forest, *, precision: str, **options: Any) -> Engine:
    from strategies import lower_forest
    from treecomp.kernel import link_for
    from treecomp.torch_backend import TorchEngine

    warnings.warn(TORCHSCRIPT_DEPRECATION, FutureWarning, stacklevel=_outside_treecomp())
    _no_compile("torchscript", options)
    link = link_for(forest)
    return TorchEngine(forest, lower_forest, precision=precision, script=True, link=link, **options)  # type: ignore[arg-type]


@register_backend("onnx")
def _onnx_backend(forest: Forest, *, precision: str, **options: Any) -> Engine:
    from strategies import plan_forest
    from treecomp.kernel import link_for
    from treecomp.onnx.engine import OnnxEngine
    from treecomp.onnx.export import build_with_plan

    _no_compile("onnx", options)
    build_graph = functools.partial(build_with_plan, forest, lower=plan_forest)
    link = link_for(forest)
    return OnnxEngine(forest, build_graph, precision=precision, link=link, **options)  # type: ignore[arg-type]


@register_backend("kernel")
def _kernel_backend(forest: Forest, *, precision: str, **options: Any) -> Engine:
    from treecomp.kernel import make_engine

    _no_compile("kernel", options)
    return make_engine(forest, precision=precision, **options)  # type: ignore[arg-type]


def tiered_engine(
    forest: Forest,
    operator: EngineFactory,
    *,
    precision: str,
    defer_operator: bool = False,
    **options: Any,
) -> Engine:
    """The default backend's engine on the CPU: the engine ``operator`` (the onnx backend's
    factory) builds, composed with the forest's tier of large batches where it has one
    (:class:`treecomp.tiered.TieredEngine`; the two engines stay siblings, chosen here).

    Who pays what. The engine built at convert builds the operator at once: convert pays it,
    and the first single row is the operator's. An engine built at a call
    (``defer_operator``: float32 rows of a double library under ``precision="auto"``) with
    the kernel as its tier builds only the kernel's layout: that first call pays the layout
    (LightGBM 300 trees x 255 leaves: ~0.1 s; the operator's graph is ~0.4 s more), and
    the kernel scores it. The operator's graphs (its large batches', then its single rows'
    and small batches', which an operator built at convert builds at their first call) are
    built in a thread started once that call is scored; the kernel scores every batch until
    they are ready, small ones included (exact, a few us slower below KERNEL_FROM_ROWS
    rows), so no later call waits for a graph either. While they build, the caller's thread
    shares the GIL (a call's Python parts may wait up to the switch interval, 5 ms) and a
    core with them. ``cm.tier_up()`` builds them now and waits.
    """
    from treecomp.tiered import Operator, TieredEngine

    def build_operator() -> Operator:
        return cast("Operator", operator(forest, precision=precision, **options))

    engine = None if defer_operator else build_operator()  # first: it checks the options
    tier = _large_batch_tier(forest, precision, options)
    if tier is None:
        return engine if engine is not None else build_operator()
    if engine is None and tier.engine is None:  # no tier ready to score while it builds
        engine = build_operator()
    return TieredEngine(engine, tier, build_operator=build_operator)


def _large_batch_tier(forest: Forest, precision: str, options: dict[str, Any]) -> Tier | None:
    """The tier of large batches for the default backend: the kernel where it walks the
    forest (numerical splits, a C compiler), else the compiled package where it profits
    (:func:`~treecomp.compiled_tier.worth_compiling`), background builds are on
    (:func:`~treecomp.compiled_tier.enabled`) and torch is installed, else None."""
    from treecomp import compiled_tier, kernel
    from treecomp.tiered import KernelTier

    try:
        engine = kernel.KernelEngine(
            forest,
            precision=precision,  # type: ignore[arg-type]
            n_threads=options.get("n_threads"),
        )
    except (kernel.KernelUnsupported, kernel.KernelUnavailable) as exc:
        logger.info("treecomp: no kernel tier (%s)", exc)
    else:
        return KernelTier(engine)
    if (
        compiled_tier.enabled()
        and compiled_tier.worth_compiling(forest)
        and _installed("torch") is not None
    ):
        from strategies import lower_forest
        from treecomp.torch_backend import package_tier

        link = kernel.link_for(forest)
        return package_tier(forest, lower_forest, precision=precision, options=options, link=link)  # type: ignore[arg-type]
    return None
