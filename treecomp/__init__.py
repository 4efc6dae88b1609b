"""treecomp: compile trained tree ensembles into exact tensor programs.

Typical use::

    import treecomp
    cm = treecomp.convert(model, backend="numpy")
    cm.predict(X)
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from treecomp.backends import available_backends, choose_backend, get_backend
from treecomp.container import CompiledModel, Engine
from treecomp.errors import InvalidArtifactError, InvalidForestError, UnsupportedModelError
from treecomp.frontends import parse, supported_models
from treecomp.inputs import Precision, check_precision
from treecomp.ir import Forest, PostTransform, Tree

if TYPE_CHECKING:
    from treecomp.serving import Serving

__version__ = "0.1.0"

__all__ = [
    "CompiledModel",
    "Forest",
    "InvalidArtifactError",
    "InvalidForestError",
    "PostTransform",
    "Serving",
    "Tree",
    "UnsupportedModelError",
    "available_backends",
    "convert",
    "load",
    "loads",
    "parse",
    "score",
    "supported_models",
]


def __getattr__(name: str) -> Any:
    # treecomp.Serving is imported on first use: its asyncio and threads stay out of a
    # plain ``import treecomp``.
    if name == "Serving":
        from treecomp.serving import Serving

        return Serving
    raise AttributeError(f"module 'treecomp' has no attribute {name!r}")


def score(model: Any, source: Any, destination: Any, **options: Any) -> int:
    """Score a Parquet or CSV file larger than memory into another, in batches (see
    :func:`treecomp.scoring.score`, whose options this takes); returns the rows scored."""
    from treecomp.scoring import score as score_file

    return score_file(model, source, destination, **options)


def convert(
    model: Any, backend: str = "auto", *, precision: str = "auto", **options: Any
) -> CompiledModel:
    """Compile a fitted model (or a :class:`Forest`) for the given backend.

    Args:
        model: A fitted scikit-learn, XGBoost or LightGBM model, a raw ``xgboost.Booster`` or
            ``lightgbm.Booster``, or an already parsed :class:`Forest`.
        backend: ``"auto"`` (default: the fastest exact path installed for the device, see
            :func:`treecomp.backends.choose_backend`; on the CPU, ``"onnx"`` with ONNX
            Runtime's tree operator; on CUDA, ``"torch"``), ``"torch"``, ``"torchscript"``,
            ``"onnx"`` or ``"numpy"`` (the reference evaluator, which needs no extra);
            :func:`available_backends` lists them. ``cm.backend`` says which ran.
        precision: ``"auto"`` (default), ``"float32"`` or ``"float64"``: the type the trees
            compare in. ``"auto"`` is exact on every input: it compares as the native
            library does (float32 for XGBoost and scikit-learn trees, float64 for LightGBM
            and HistGradientBoosting), and float32 rows of the float64 libraries in float32,
            which is exact for them and reads half the bytes; the engine for the second
            type is built at its first call. ``"float32"`` rounds float64 rows of LightGBM
            and HistGradientBoosting models (not exact there); ``"float64"`` is exact
            everywhere but slower on float32 data.
        **options: Options of the torch backends: ``strategy`` (``"auto"``, ``"gemm"``,
            ``"tree_traversal"``, ``"perfect_tree_traversal"``), ``device`` (``"cpu"``,
            ``"cuda"``, ``"cuda:1"`` or a ``torch.device``), ``batch_size`` (rows per chunk;
            also the batch the strategy selector plans for), ``n_threads`` (CPU threads),
            ``progress`` (a tqdm bar over chunks) and ``compile`` (``backend="torch"``
            only: compile the lowered module ahead of time with ``torch.export`` and
            AOTInductor, C++/OpenMP on the CPU and Triton on CUDA; the first compile of a
            large forest takes seconds to tens of seconds, and the package is kept on disk,
            so later processes load it in milliseconds).

    Returns:
        A :class:`CompiledModel` with the native model's prediction methods.
    """
    precision_ = check_precision(precision)
    forest = parse(model)
    engine_options = options
    if backend == "auto":
        backend = choose_backend(options)
        if backend == "onnx":  # large batches tier up to the compiled package (tiered)
            engine_options = {**options, "compiled_tier": True}
    factory = get_backend(backend)

    def build(precision: Precision) -> Engine:
        if precision_ == "auto" and precision != forest.input_dtype:
            # The engine of float32 rows of a double library: they reach it unrounded, so
            # the lowering's warning about float64 codes rounded to float32 does not apply.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="this model lists categories up to")
                return factory(forest, precision=precision, **engine_options)
        return factory(forest, precision=precision, **engine_options)

    return CompiledModel(forest, build, backend=backend, precision=precision_, options=options)


def load(path: Any, backend: str | None = None, **options: Any) -> CompiledModel:
    """Rebuild a model written by :meth:`CompiledModel.save`.

    Loading reads JSON only and never executes code from the file.

    Args:
        path: The artifact.
        backend: Run it on this backend instead of the one it was saved with.
        **options: Override saved options (``precision``, ``strategy``, ``batch_size``,
            ``n_threads``, ``progress``) or choose a ``device`` (default ``"cpu"``).

    Raises:
        treecomp.InvalidArtifactError: the file is truncated, tampered with, not a treecomp
            artifact, or from a newer format version.
    """
    from treecomp.artifact import read

    return _rebuild(*read(path), backend=backend, source=str(path), **options)


def _rebuild(
    saved_backend: str,
    forest: Forest,
    saved: dict[str, Any],
    *,
    backend: str | None = None,
    source: str = "the artifact",
    **options: Any,
) -> CompiledModel:
    target = backend or saved_backend
    if target == "numpy":  # the reference evaluator has no strategy, batching or threads
        saved = {"precision": saved["precision"]}
    if target != "torch":  # compile= is the torch backend's; other targets just run it
        saved.pop("compile", None)
    merged = {**saved, **options}
    precision = merged.pop("precision")
    try:
        return convert(forest, target, precision=precision, **merged)
    except (ValueError, OverflowError) as exc:  # incl. a forest no backend can lower
        raise InvalidArtifactError(f"cannot rebuild {source} on backend {target!r}: {exc}") from exc


def loads(data: bytes, backend: str | None = None, **options: Any) -> CompiledModel:
    """Rebuild a model from the bytes of an artifact (:func:`load` without the file)."""
    from treecomp.artifact import loads as parse_artifact

    return _rebuild(*parse_artifact(data), backend=backend, **options)
