"""``treecomp.convert`` and ``treecomp.load``, and the object they return: one class whatever
backend runs underneath.

A backend supplies an :class:`~treecomp.engine.Engine` that maps prepared inputs to native
leaf ids, raw margins and transformed scores; :class:`CompiledModel` turns those into the
native library's methods (``predict``, ``predict_proba``, ``decision_function``,
``score_samples``, ``apply``), with the native shapes, labels and method set. Loading sits
here, beside the class, because a pickled model is rebuilt by :func:`loads`.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from treecomp.backends import choose_backend, get_backend, tiered_engine
from treecomp.engine import DeviceEngine, Engine
from treecomp.errors import InvalidArtifactError, UnsupportedModelError
from treecomp.files import write_replacing
from treecomp.frontends import parse
from treecomp.frontends.pipeline import is_pipeline, parse_pipeline
from treecomp.inputs import (
    Precision,
    PrecisionOption,
    call_precision,
    check_precision,
    default_precision,
    dtype_name,
    prepare,
)
from treecomp.ir import METHODS, Forest
from treecomp.outputs import NativeOutputs
from treecomp.sklearn_api import EstimatorConventions, NativeMethod
from treecomp.transform_engines import prepare as prepare_rows
from treecomp.transforms import Transforms


def _is_tensor(X: Any) -> bool:
    return type(X).__module__.startswith("torch") and hasattr(X, "detach")


class CompiledModel(EstimatorConventions):
    """A compiled tree ensemble that behaves like the native model it came from.

    Methods the native model lacks (``predict_proba`` on a regressor, ``apply`` on a
    HistGradientBoosting model, ``score`` on an outlier detector) raise ``AttributeError``,
    exactly as on the native model. scikit-learn's conventions (tags, ``classes_``,
    ``n_features_in_``, ``feature_names_in_``, ``score``) come from
    :class:`~treecomp.sklearn_api.EstimatorConventions`.

    Attributes:
        forest: The IR the model was compiled from.
        backend: Name of the backend running it.
        precision: ``"auto"``, ``"float32"`` or ``"float64"``: the option it was built
            with. Under ``"auto"`` each call runs in the precision its input needs (see
            :mod:`treecomp.inputs`), on an engine built at the first such call;
            :attr:`strategy` names the precision of each engine once there are two.
        transforms: A Pipeline's row transforms in front of the forest
            (:mod:`treecomp.transforms`), or None for a model alone.
    """

    def __init__(
        self,
        forest: Forest,
        build: Callable[[Precision], Engine],
        *,
        backend: str,
        precision: PrecisionOption,
        options: dict[str, Any] | None = None,
        transforms: Transforms | None = None,
    ) -> None:
        self.forest = forest
        self._native = NativeOutputs(forest)
        self.transforms = transforms
        self.backend = backend
        self.precision = precision
        self.options = dict(options or {})
        self._build = build
        self._device: Any = None  # where to() moved the model: engines built later go there
        self._lock = threading.Lock()
        # One engine per precision that has run, the default one built now.
        self._engine = build(default_precision(forest, precision))
        self._engines: dict[str, Engine] = {default_precision(forest, precision): self._engine}
        # Asked once: a protocol check costs microseconds, and single rows count them.
        self._on_device = isinstance(self._engine, DeviceEngine)

    def _engine_for(self, precision: str) -> Engine:
        """The engine scoring inputs prepared in ``precision``, built at its first call (a
        Pipeline's: its one engine, whatever the float64 of its encoded rows)."""
        if self.transforms is not None:
            return self._engine
        engine = self._engines.get(precision)
        if engine is not None:
            return engine
        with self._lock:  # two threads' first float32 calls build one engine
            if precision not in self._engines:
                engine = self._build(precision)  # type: ignore[arg-type]
                if self._device is not None:
                    cast(DeviceEngine, engine).to(self._device)
                self._engines[precision] = engine
            return self._engines[precision]

    def __repr__(self) -> str:
        f = self.forest
        steps = ""
        if self.transforms is not None:  # a Pipeline: its columns and steps come first
            t = self.transforms
            steps = f"pipeline={' -> '.join(t.steps)!r}, columns={len(t.columns)}, "
        return (
            f"CompiledModel({steps}task={f.task!r}, trees={f.n_trees}, features={f.n_features}, "
            f"outputs={f.n_outputs}, backend={self.backend!r}, precision={self.precision!r})"
        )

    @property
    def export_dtype(self) -> Precision:
        """The float type this model's exported ONNX graph takes: the precision it was built
        with, under ``"auto"`` the native library's input type. ONNX Runtime refuses the
        other type; a ``.pt2`` takes the native library's input type
        (``forest.input_dtype``) whatever the precision; see the README's table of artifacts."""
        return default_precision(self.forest, self.precision)

    # ------------------------------------------------------------------------------------
    def _prepare(self, X: Any) -> tuple[Engine, Any]:
        """The engine for ``X`` and ``X`` prepared for it."""
        if self.transforms is not None:  # a Pipeline: its encoded rows, in float64
            return self._engine, prepare_rows(self.transforms, self.forest, X)
        if type(X) is np.ndarray:  # the common case, first: at one row every check counts
            prepared = prepare(self.forest, X, self.precision)
            return self._engine_for(dtype_name(prepared.dtype)), prepared
        f = self.forest
        host_encoding = f.categories is not None and f.category_encoding == "always"
        if _is_tensor(X) and self._on_device and not host_encoding:
            dtype = str(X.dtype).removeprefix("torch.")
            engine = cast(DeviceEngine, self._engine_for(call_precision(f, self.precision, dtype)))
            return engine, engine.prepare_tensor(X)
        prepared = prepare(f, X, self.precision)
        return self._engine_for(dtype_name(prepared.dtype)), prepared

    @property
    def strategy(self) -> str:
        """The lowering chosen (``"reference"`` for the NumPy backend); with engines of two
        precisions (``precision="auto"`` given rows of both), each one's, by precision."""
        engines = dict(self._engines)

        def plan(engine: Engine) -> str:
            return str(getattr(engine, "strategy", "reference"))

        if len(engines) == 1:
            return plan(self._engine)
        plans = {p: plan(e) for p, e in sorted(engines.items())}
        if len(set(plans.values())) == 1:
            return f"{plans['float32']} (float32 and float64 rows)"
        return "; ".join(f"{p} rows: {text}" for p, text in plans.items())

    @property
    def torch_module(self) -> Any:
        """The compiled ``torch.nn.Module`` (or TorchScript module) of a torch backend."""
        if not isinstance(self._engine, DeviceEngine):
            raise AttributeError(f"the {self.backend!r} backend has no torch module")
        return self._engine.module

    def tier_up(self, timeout: float | None = None) -> bool:
        """Move large batches to the compiled torch package now, and wait for it.

        ``backend="auto"`` on the CPU starts on ONNX Runtime's tree operator, then moves
        batches of many rows to the compiled package (:mod:`treecomp.tiered`) once it
        exists: looked up in the package cache at the first large batch, built in the
        background once large batches have kept the process busy for a few seconds. This
        does both now (a server warming up before it takes requests): a cached package
        loads in about a second, a build takes 10-60 s. It also builds now the operator's
        graphs that an engine built at a call defers (:func:`treecomp.backends.tiered_engine`),
        and, where the kernel serves large batches, a double library's engine for float32
        rows under ``precision="auto"`` (else built at its first float32 call).

        Returns:
            Whether large batches now run compiled: False for other backends, forests
            that stay on the operator (deep leaf-wise trees, small forests), or a build
            that failed (``cm.strategy`` then says why) or outlasted ``timeout``.
        """
        from treecomp.tiered import TieredEngine

        kernel = isinstance(self._engine, TieredEngine) and self._engine.tier.name == "kernel"
        if kernel and self.precision == "auto" and self.transforms is None:
            self._engine_for("float32")  # float32 rows' engine; the default one is built
        engines = [e for e in list(self._engines.values()) if isinstance(e, TieredEngine)]
        results = [engine.tier_up(timeout) for engine in engines]
        return bool(results) and all(results)

    @property
    def batch_backend(self) -> str:
        """The backend a copy of this model scoring large batches elsewhere runs (a Dask or
        Spark task, whose partitions are large batches): ``"kernel"`` where this model's own
        large batches go to the kernel (the default backend's tier, unless the operator
        measured faster), else :attr:`backend`."""
        from treecomp.tiered import TieredEngine

        for engine in list(self._engines.values()):
            if isinstance(engine, TieredEngine) and engine.large_batches == "kernel":
                return "kernel"
        return self.backend

    def to(self, device: Any) -> CompiledModel:
        """Move a torch-backed model to ``device``; returns ``self``."""
        if not self._on_device:
            raise AttributeError(f"the {self.backend!r} backend runs on the CPU only")
        with self._lock:
            for engine in self._engines.values():
                cast(DeviceEngine, engine).to(device)
            self._device = device
        return self

    def _scores(self, X: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        engine, prepared = self._prepare(X)
        return engine.scores(prepared)

    # ------------------------------------------------------------------------------------
    def to_onnx(self, *, leaf_indices: bool = False, strategy: str | None = None) -> Any:
        """The model as an ``onnx.ModelProto`` (see :mod:`treecomp.onnx.export`).

        Works from any backend: the graph uses this model's precision and, unless
        ``strategy`` is given, its strategy option. The strategy the graph holds is recorded
        in its metadata (``treecomp.strategy``).

        Args:
            leaf_indices: Also output ``leaf_indices`` (native leaf numbers per tree).
            strategy: ``"auto"`` (on CPU: ONNX Runtime's ``TreeEnsemble`` operator wherever it
                is exact), ``"tree_ensemble"``, or a standard-operator strategy (``"gemm"``,
                ``"tree_traversal"``, ``"perfect_tree_traversal"``), for runtimes without
                the ONNX-ML domain.
        """
        from strategies import plan_forest
        from treecomp.onnx.export import build

        if strategy is None:
            strategy = str(self.options.get("strategy") or "auto")
        return build(
            self.forest,
            lower=plan_forest,
            precision=self.export_dtype,
            strategy=strategy,
            batch_size=int(self.options.get("batch_size") or 10_000),
            leaf_indices=leaf_indices,
            transforms=self.transforms,
        )

    def export_onnx(
        self, path: Any, *, leaf_indices: bool = False, strategy: str | None = None
    ) -> None:
        """Write :meth:`to_onnx`'s model to ``path``."""
        model = self.to_onnx(leaf_indices=leaf_indices, strategy=strategy)
        write_replacing(path, model.SerializeToString())

    def export_pt2(self, path: Any, *, leaf_indices: bool = False) -> None:
        """Write a ``torch.export`` + AOTInductor package for serving from torch alone.

        ``torch._inductor.aoti_load_package(path)`` loads it in a process without treecomp;
        calling it on a ``(n_rows, n_features)`` tensor (any batch size; float32, or float64
        where the native library reads doubles) returns ``(raw, transformed)`` margins and
        scores, plus ``leaf_ids`` (native leaf numbers per tree) with ``leaf_indices=True``.
        Feed values as the native model sees them: NaN for missing, categorical columns as
        their category codes. Compiled for this model's device and precision.

        Raises:
            AttributeError: the model runs on a backend without a torch module.
            RuntimeError: no C++ compiler (CPU) or Triton (CUDA) is available.
        """
        if self.transforms is not None:
            raise UnsupportedModelError(
                "export_pt2 of a compiled Pipeline is not supported yet: export it with "
                "cm.export_onnx(path), or the forest alone (treecomp.convert(pipeline[-1]))"
            )
        if not isinstance(self._engine, DeviceEngine):
            raise AttributeError(
                f"export_pt2 needs a torch backend ('torch' or 'torchscript'); this model runs "
                f"on {self.backend!r}: convert it with backend='torch' first"
            )
        if not str(path).endswith(".pt2"):  # AOTInductor writes and reads no other name
            raise ValueError(f"export_pt2 writes a .pt2 package: name the file *.pt2, not {path}")
        self._engine.export_pt2(path, leaf_indices=leaf_indices)

    def __reduce__(self) -> tuple[Any, tuple[bytes, str]]:
        """Pickle as the safe artifact: another process (a Dask worker, a Spark executor)
        rebuilds the model from JSON, never unpickles torch modules or sessions."""
        from treecomp.artifact import dumps

        return loads, (dumps(self), self.backend)

    def dumps(self) -> bytes:
        """The artifact as bytes: :func:`treecomp.loads` rebuilds the model from them."""
        from treecomp.artifact import dumps

        return dumps(self)

    def save(self, path: Any) -> None:
        """Write a versioned artifact: the IR and options as checksummed JSON, no pickle.

        :func:`treecomp.load` rebuilds the model, on any backend and device.
        """
        from treecomp.artifact import save

        save(self, path)

    @NativeMethod
    def apply(self, X: Any) -> npt.NDArray[np.int64]:
        """Native leaf index reached in every tree, in the native shape and numbering."""
        engine, prepared = self._prepare(X)
        ids = engine.leaf_ids(prepared)
        return ids.reshape((ids.shape[0], *self.forest.leaf_shape))

    @NativeMethod
    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """Class probabilities, shape ``(n_rows, n_classes)``."""
        return self._native.predict_proba(*self._scores(X))

    @NativeMethod
    def decision_function(self, X: Any) -> npt.NDArray[np.float64]:
        """Raw margins of a classifier, or ``score_samples - offset_`` of an outlier detector."""
        return self._native.decision_function(*self._scores(X))

    @NativeMethod
    def score_samples(self, X: Any) -> npt.NDArray[np.float64]:
        """Anomaly score of an outlier detector (lower is more abnormal)."""
        return self._native.score_samples(*self._scores(X))

    @NativeMethod
    def predict(self, X: Any) -> npt.NDArray[Any]:
        """Labels for classifiers and outlier detectors, values for regressors and rankers."""
        return self._native.predict(*self._scores(X))

    def outputs(self, X: Any, methods: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """Several methods' results on ``X`` from one pass: the scores once (for every
        method but ``apply``), the leaves once (for ``apply``). Each method must be one the
        native model has (``AttributeError`` otherwise, as for the method itself)."""
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
            getattr(self, method)
        return self._outputs(*self._prepare(X), methods)

    def _outputs(
        self, engine: Engine, prepared: Any, methods: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        """:meth:`outputs` of rows already prepared for ``engine`` (``treecomp.serving``
        prepares each request's rows apart and scores them together)."""
        scores = None
        results: dict[str, npt.NDArray[Any]] = {}
        for method in methods:
            if method == "apply":
                ids = engine.leaf_ids(prepared)
                results[method] = ids.reshape((ids.shape[0], *self.forest.leaf_shape))
                continue
            scores = engine.scores(prepared) if scores is None else scores
            results[method] = getattr(self._native, method)(*scores)
        return results


def convert(
    model: Any, backend: str = "auto", *, precision: str = "auto", **options: Any
) -> CompiledModel:
    """Compile a fitted model (or a :class:`Forest`) for the given backend.

    Args:
        model: A fitted scikit-learn, XGBoost or LightGBM model, a raw ``xgboost.Booster`` or
            ``lightgbm.Booster``, an already parsed :class:`Forest`, or a scikit-learn
            ``Pipeline`` of row transforms ending in one of those models
            (:mod:`treecomp.frontends.pipeline` lists the steps).
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
    if is_pipeline(model):
        return _convert_pipeline(*parse_pipeline(model), backend, precision_, options)
    forest = parse(model)
    tiering = backend == "auto"
    if backend == "auto":
        backend = choose_backend(options)
    factory = get_backend(backend)
    at_call = options  # the options of an engine built at a call, not at convert
    if tiering and backend == "onnx":
        # The default backend on the CPU: the tree operator, large batches to the kernel or
        # the compiled package (treecomp.tiered), composed here, above both engines. An
        # engine built at a call defers its operator's graph (tiered_engine).
        factory = functools.partial(tiered_engine, operator=factory)
        at_call = {**options, "defer_operator": True}

    def build(precision: Precision) -> Engine:
        if precision_ == "auto" and precision != forest.input_dtype:
            # The engine of float32 rows of a double library, built at their first call:
            # they reach it unrounded, so the lowering's warning about float64 codes
            # rounded to float32 does not apply.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="this model lists categories up to")
                return factory(forest, precision=precision, **at_call)
        return factory(forest, precision=precision, **options)

    return CompiledModel(forest, build, backend=backend, precision=precision_, options=options)


def _convert_pipeline(
    transforms: Transforms,
    forest: Forest,
    backend: str,
    precision: PrecisionOption,
    options: dict[str, Any],
) -> CompiledModel:
    """:func:`convert` of a scikit-learn Pipeline (parsed by :mod:`treecomp.frontends.
    pipeline`, or read from an artifact): its transforms lowered in front of its forest, in
    one engine of the forest's precision."""
    from treecomp.transform_engines import make_engine

    if backend == "auto":
        backend = choose_backend(options)  # without the compiled tier: it scores forests
    factory = get_backend(backend)

    def build(dtype: Precision) -> Engine:
        return make_engine(backend, factory, forest, transforms, precision=dtype, **options)

    return CompiledModel(
        forest, build, backend=backend, precision=precision, options=options, transforms=transforms
    )


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
    transforms = saved.pop("transforms", None)  # a compiled Pipeline's
    if target == "numpy":  # the reference evaluator has no strategy, batching or threads
        saved = {"precision": saved["precision"]}
    if target != "torch":  # compile= is the torch backend's; other targets just run it
        saved.pop("compile", None)

    def rebuild(settings: dict[str, Any], target: str) -> CompiledModel:
        settings = dict(settings)
        precision = settings.pop("precision")
        if transforms is not None:
            return _convert_pipeline(transforms, forest, target, precision, settings)
        return convert(forest, target, precision=precision, **settings)

    try:
        return rebuild({**saved, **options}, target)
    except (ValueError, OverflowError) as exc:  # incl. a forest no backend can lower
        if backend is not None or options:
            # The caller's backend or options may be at fault, not the file: where the file
            # rebuilds as it was saved, their error is theirs, raised as it is.
            try:
                rebuild(saved, saved_backend)
            except (ValueError, OverflowError):
                pass
            else:
                raise
        raise InvalidArtifactError(f"cannot rebuild {source} on backend {target!r}: {exc}") from exc


def loads(data: bytes, backend: str | None = None, **options: Any) -> CompiledModel:
    """Rebuild a model from the bytes of an artifact (:func:`load` without the file)."""
    from treecomp.artifact import loads as parse_artifact

    return _rebuild(*parse_artifact(data), backend=backend, **options)


def loads_for_batches(data: bytes, backend: str | None = None, **options: Any) -> CompiledModel:
    """:func:`loads` in a task that scores large batches (a Dask or Spark worker), on
    ``backend`` as :attr:`CompiledModel.batch_backend` chose it where the model was
    converted: a worker that cannot build the kernel (no C compiler there) runs the backend
    the model was saved with instead, with a warning, rather than failing the task."""
    if backend != "kernel":
        return loads(data, backend, **options)
    from treecomp.kernel import KernelUnavailable

    try:
        return loads(data, backend, **options)
    except KernelUnavailable as exc:
        warnings.warn(
            f"treecomp: this worker cannot run the kernel ({exc}); it runs the backend the "
            "model was saved with",
            RuntimeWarning,
            stacklevel=2,
        )
        return loads(data, None, **options)
