"""Benchmark: treecomp against the native libraries and their peers, one process per system.

Run ``treecomp bench`` (or ``python -m treecomp.bench``); ``--quick`` finishes in a few
minutes on two cores, ``--out DIR`` writes ``DIR/results.json`` and ``DIR/bench.png``. Needs
the ``bench`` extra (matplotlib for the plot; skl2onnx and onnxmltools for the ``onnxml``
peer); Hummingbird is benchmarked when it is importable.

How a run goes:

1. The parent fits seven models on synthetic data with fixed seeds (float32 numbers, or
   with ``--dtype float64`` float64 numbers as pandas and scikit-learn hand them; some
   with 10 % NaN), pickles them to a temporary directory with held-out rows and the native
   model's outputs on those rows (computed once, saved as ``.npy``).
2. For each model and system, a worker (``python -m treecomp.bench --worker JOB``) loads the
   model, converts it (``convert_s``; for compiled systems including the first call, and
   the AOTInductor compile or the load of its cached package), then for each batch size
   warms up, times at least ``--min-runs`` calls and keeps the median, and compares its
   outputs with the native ones (probabilities of classifiers, predictions of regressors;
   labels of classifiers).
   Every worker gets the same threads: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in its
   environment, and each library's own knob (``torch.set_num_threads``, XGBoost
   ``n_jobs``, LightGBM ``n_jobs``, ONNX Runtime ``intra_op_num_threads``, sklearn
   ``n_jobs``).
3. A system that fails, is not installed or is too slow is a cell with an ``error``; the
   bench carries on.

Systems are ``native``, ``onnxml`` (skl2onnx / onnxmltools in ONNX Runtime), ``hummingbird``
(its torch backend) and ``treecomp-BACKEND[-STRATEGY][-compiled]``, for instance
``treecomp-torch-auto``, ``treecomp-onnx-gemm``, ``treecomp-torch-auto-compiled`` or
``treecomp-numpy``. ``native``, ``onnxml`` and ``hummingbird`` are the peers: a cell's ratio
is the fastest peer's median divided by its own, so a ratio above 1 means faster than every
peer.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import math
import os
import pickle
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

BACKENDS = ("torch", "torchscript", "onnx", "numpy")
STRATEGIES = ("auto", "gemm", "tree_traversal", "perfect_tree_traversal")
PEERS = ("native", "onnxml", "hummingbird")
DEFAULT_SYSTEMS = (
    "native",
    "onnxml",
    "hummingbird",
    "treecomp",
    "treecomp-torch-auto",
    "treecomp-torch-auto-compiled",
    "treecomp-torchscript-auto",
    "treecomp-onnx-auto",
)
# --quick leaves out compile=True, whose compile time alone would exceed the quick budget.
QUICK_SYSTEMS = ("native", "onnxml", "hummingbird", "treecomp-torch-auto", "treecomp-onnx-auto")
DEFAULT_BATCH_SIZES = (1, 1_000, 10_000, 100_000)
QUICK_BATCH_SIZES = (1, 1_000, 10_000)
RESULTS_FILE = "results.json"
PLOT_FILE = "bench.png"
# Distinct batches a worker cycles through per batch size (see time_calls).
MAX_VIEWS = 1_000
# Rows the parent fits each model on, full and --quick.
TRAIN_ROWS = 20_000
QUICK_TRAIN_ROWS = 3_000


# ---------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One benchmark model: how to make its data and fit it, full size and ``--quick``.

    Attributes:
        name: Short name used in ``--models``, tables and results.
        description: What it is, for the table.
        library: ``"xgboost"``, ``"lightgbm"`` or ``"sklearn"``.
        estimator: The estimator class name in that library (``sklearn.ensemble`` for sklearn).
        n_classes: Number of classes; 0 for a regressor.
        params: Estimator parameters of the full-size model.
        quick_params: Estimator parameters under ``--quick``.
        nan_fraction: Fraction of input values set to NaN, in training and held-out rows.
        n_features: Number of input features.
        train_rows: Training rows; ``None`` for the bench's default.
        seed: Seed of the synthetic data.
    """

    name: str
    description: str
    library: str
    estimator: str
    n_classes: int
    params: Mapping[str, Any]
    quick_params: Mapping[str, Any]
    nan_fraction: float = 0.0
    n_features: int = 28
    train_rows: int | None = None
    seed: int = 0

    @property
    def classifier(self) -> bool:
        """Whether the model is a classifier (compared on probabilities and labels)."""
        return self.n_classes > 0


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "xgb-binary",
        "XGBoost binary, 500 trees, depth 8, 28 features (HIGGS-like)",
        "xgboost",
        "XGBClassifier",
        2,
        {"n_estimators": 500, "max_depth": 8, "learning_rate": 0.1},
        {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.1},
        seed=1,
    ),
    ModelSpec(
        "xgb-multiclass",
        "XGBoost 10 classes, 100 rounds (1000 trees), depth 6",
        "xgboost",
        "XGBClassifier",
        10,
        {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.1},
        {"n_estimators": 20, "max_depth": 6, "learning_rate": 0.1},
        seed=2,
    ),
    ModelSpec(
        "lgbm-regression",
        "LightGBM regression, 300 trees, 255 leaves",
        "lightgbm",
        "LGBMRegressor",
        0,
        {"n_estimators": 300, "num_leaves": 255},
        {"n_estimators": 50, "num_leaves": 31},
        seed=3,
    ),
    ModelSpec(
        "rf-classifier",
        "RandomForestClassifier 5 classes, 100 trees, depth 12",
        "sklearn",
        "RandomForestClassifier",
        5,
        {"n_estimators": 100, "max_depth": 12},
        {"n_estimators": 20, "max_depth": 8},
        seed=4,
    ),
    ModelSpec(
        "gb-regressor",
        "GradientBoostingRegressor, 50 trees, depth 3",
        "sklearn",
        "GradientBoostingRegressor",
        0,
        {"n_estimators": 50, "max_depth": 3},
        {"n_estimators": 20, "max_depth": 3},
        seed=5,
    ),
    ModelSpec(
        "hgb-nan",
        "HistGradientBoostingClassifier binary, 200 iterations, 10 % NaN",
        "sklearn",
        "HistGradientBoostingClassifier",
        2,
        # No early stopping: it would stop before 200 iterations on more than 10k rows.
        {"max_iter": 200, "early_stopping": False},
        {"max_iter": 30, "max_leaf_nodes": 15, "early_stopping": False},
        nan_fraction=0.1,
        seed=6,
    ),
    ModelSpec(
        "xgb-regression-nan",
        "XGBoost regression, 300 trees, depth 6, 10 % NaN",
        "xgboost",
        "XGBRegressor",
        0,
        {"n_estimators": 300, "max_depth": 6, "learning_rate": 0.1},
        {"n_estimators": 50, "max_depth": 6, "learning_rate": 0.1},
        nan_fraction=0.1,
        seed=7,
    ),
)
# Not in the default set: a model that fits and converts in moments, for the bench's own tests.
TINY = ModelSpec(
    "tiny",
    "XGBoost binary, 5 trees, depth 3 (for self-tests)",
    "xgboost",
    "XGBClassifier",
    2,
    {"n_estimators": 5, "max_depth": 3},
    {"n_estimators": 5, "max_depth": 3},
    n_features=8,
    train_rows=500,
    seed=8,
)
MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (*MODELS, TINY)}


def make_data(
    spec: ModelSpec, n_train: int, n_test: int, dtype: str = "float32"
) -> tuple[npt.NDArray[np.floating], npt.NDArray[Any], npt.NDArray[np.floating]]:
    """Synthetic training rows, targets and held-out rows for a model, from its fixed seed.

    Args:
        spec: The model.
        n_train: Training rows.
        n_test: Held-out rows (the largest batch size).
        dtype: ``"float32"`` (rows of float32 numbers) or ``"float64"`` (doubles, most of
            which no float32 holds: what LightGBM and HistGradientBoosting compare exactly).

    Returns:
        ``(X_train, y_train, X_test)``, inputs of ``dtype``.
    """
    from sklearn.datasets import make_classification, make_regression

    n = n_train + n_test
    if spec.classifier:
        X, y = make_classification(
            n_samples=n,
            n_features=spec.n_features,
            n_informative=max(2, spec.n_features // 2),
            n_redundant=spec.n_features // 7,
            n_classes=spec.n_classes,
            n_clusters_per_class=2,
            flip_y=0.02,
            random_state=spec.seed,
        )
    else:
        X, y = make_regression(
            n_samples=n,
            n_features=spec.n_features,
            n_informative=max(2, spec.n_features // 2),
            noise=10.0,
            random_state=spec.seed,
        )
    X = X.astype(dtype)
    if spec.nan_fraction:
        rng = np.random.default_rng(spec.seed)
        X[rng.random(X.shape) < spec.nan_fraction] = np.nan
    return X[:n_train], y[:n_train], X[n_train:]


def make_estimator(spec: ModelSpec, *, quick: bool, threads: int) -> Any:
    """An unfitted estimator for ``spec`` using ``threads`` threads.

    Args:
        spec: The model.
        quick: Use the ``--quick`` parameters.
        threads: Threads for fitting and predicting.
    """
    params = dict(spec.quick_params if quick else spec.params)
    if spec.library == "xgboost":
        import xgboost

        return getattr(xgboost, spec.estimator)(**params, n_jobs=threads, random_state=0)
    if spec.library == "lightgbm":
        import lightgbm

        return getattr(lightgbm, spec.estimator)(
            **params, n_jobs=threads, random_state=0, verbose=-1
        )
    from sklearn import ensemble

    cls = getattr(ensemble, spec.estimator)
    estimator = cls(**params, random_state=0)
    if "n_jobs" in estimator.get_params():
        estimator.set_params(n_jobs=threads)
    return estimator


@dataclass(frozen=True, slots=True)
class PreparedModel:
    """A fitted model saved for the workers, with its held-out rows and native outputs."""

    spec: ModelSpec
    model_path: str
    X_path: str
    scores_path: str
    labels_path: str | None
    fit_s: float


def prepare_model(
    spec: ModelSpec,
    directory: Path,
    *,
    quick: bool,
    threads: int,
    n_test: int,
    dtype: str = "float32",
) -> PreparedModel:
    """Fit a model and save it, its held-out rows and its native outputs for the workers.

    The workers read these files back with :mod:`pickle`: the bench only reads files it made
    itself, in its own temporary directory.

    Args:
        spec: The model.
        directory: Where to write the files.
        quick: Fit the ``--quick`` size.
        threads: Threads to fit with (the workers set their own for predicting).
        n_test: Held-out rows to keep (the largest batch size).
        dtype: The rows' float type (see :func:`make_data`).
    """
    n_train = spec.train_rows or (QUICK_TRAIN_ROWS if quick else TRAIN_ROWS)
    X_train, y_train, X_test = make_data(spec, n_train, n_test, dtype)
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    model = make_estimator(spec, quick=quick, threads=threads)
    start = time.perf_counter()
    with threadpool_limits(limits=threads):  # OpenMP of HistGradientBoosting, BLAS
        model.fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    base = directory / spec.name
    paths = {k: f"{base}-{k}" for k in ("model.pkl", "X.npy", "scores.npy", "labels.npy")}
    with open(paths["model.pkl"], "wb") as f:
        pickle.dump(model, f)
    np.save(paths["X.npy"], np.ascontiguousarray(X_test))
    if spec.classifier:
        np.save(paths["scores.npy"], np.asarray(model.predict_proba(X_test), dtype=np.float64))
        np.save(paths["labels.npy"], np.asarray(model.predict(X_test)))
    else:
        np.save(paths["scores.npy"], np.asarray(model.predict(X_test), dtype=np.float64))
    return PreparedModel(
        spec,
        paths["model.pkl"],
        paths["X.npy"],
        paths["scores.npy"],
        paths["labels.npy"] if spec.classifier else None,
        fit_s,
    )


# ---------------------------------------------------------------------------------------------
# Systems


@dataclass(frozen=True, slots=True)
class System:
    """A way to run a model: the native library, a peer, or one treecomp configuration.

    Attributes:
        name: As written in ``--systems``.
        kind: ``"native"``, ``"onnxml"``, ``"hummingbird"`` or ``"treecomp"``.
        backend: treecomp's backend; ``None`` for its defaults (``backend="auto"``).
        strategy: treecomp's strategy; ``None`` for the numpy backend, which has none.
        compiled: Whether to pass ``compile=True``.
    """

    name: str
    kind: str
    backend: str | None = None
    strategy: str | None = None
    compiled: bool = False

    @property
    def peer(self) -> bool:
        """Whether it is one of the systems treecomp is compared with."""
        return self.kind in PEERS


def parse_system(name: str) -> System:
    """Parse a system name such as ``"treecomp-torch-auto-compiled"``.

    The strategy is passed to ``treecomp.convert`` as written, so a strategy treecomp does
    not know fails that system's cells with treecomp's own message.

    Args:
        name: ``native``, ``onnxml``, ``hummingbird``, ``treecomp`` (the defaults of
            ``treecomp.convert``) or ``treecomp-BACKEND[-STRATEGY][-compiled]``.

    Raises:
        ValueError: the name is none of these, or names an unknown backend.
    """
    if name in PEERS:
        return System(name, name)
    if name == "treecomp":  # treecomp.convert(model): the defaults, compiled tier included
        return System(name, "treecomp")
    rest = name.removeprefix("treecomp-")
    if rest == name or not rest:
        raise ValueError(
            f"unknown system {name!r}: use native, onnxml, hummingbird or "
            f"treecomp-BACKEND[-STRATEGY][-compiled] (backends: {', '.join(BACKENDS)})"
        )
    compiled = rest.endswith("-compiled")
    backend, _, strategy = rest.removesuffix("-compiled").partition("-")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} in system {name!r}; use one of {BACKENDS}")
    if not strategy and backend != "numpy":
        strategy = "auto"
    return System(name, "treecomp", backend, strategy or None, compiled)


def all_systems() -> tuple[str, ...]:
    """Every system: the peers, every backend and strategy, compiled torch, and numpy."""
    names = [*PEERS, "treecomp"]
    for backend in ("torch", "torchscript", "onnx"):
        names += [f"treecomp-{backend}-{s}" for s in STRATEGIES]
    names.append("treecomp-onnx-tree_ensemble")  # ONNX Runtime's tree operator: onnx only
    names += [f"treecomp-torch-{s}-compiled" for s in STRATEGIES]
    return (*names, "treecomp-numpy")


def resolve_systems(text: str | None, *, quick: bool) -> list[System]:
    """The systems of a ``--systems`` value: names, ``default`` or ``all``, comma-separated."""
    if text is None:
        text = "quick" if quick else "default"
    groups = {"default": DEFAULT_SYSTEMS, "quick": QUICK_SYSTEMS, "all": all_systems()}
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        for name in groups.get(part, (part,)):
            if name and name not in names:
                names.append(name)
    return [parse_system(n) for n in names]


# ---------------------------------------------------------------------------------------------
# The worker: one system on one model, in its own process


@dataclass(frozen=True, slots=True)
class TimingSettings:
    """How the worker times each batch size.

    Attributes:
        threads: Threads every system gets.
        warmup: Untimed calls per batch size (the first one is also reported).
        min_runs: Timed calls at least.
        max_runs: Timed calls at most.
        budget_s: Keep timing (past ``min_runs``) until the timed calls add up to this.
        max_call_s: A batch whose first call takes longer is reported too slow, and the
            system's larger batches are skipped.
        numpy_max_batch: Largest batch the (slow) numpy backend is timed on.
    """

    threads: int = 2
    warmup: int = 2
    min_runs: int = 5
    max_runs: int = 1000
    budget_s: float = 1.0
    max_call_s: float = 30.0
    numpy_max_batch: int = 1_000


class SkippedError(Exception):
    """A system that cannot run here, such as a peer that is not installed."""


@dataclass(slots=True)
class Runner:
    """A converted system: ``scores`` is what is timed, ``labels`` gives class labels."""

    scores: Callable[[np.ndarray], np.ndarray]
    labels: Callable[[np.ndarray], np.ndarray] | None
    strategy: str | None = None


def _require(module: str, install: str = "pip install 'treecomp[bench]'") -> None:
    if importlib.util.find_spec(module) is None:
        raise SkippedError(f"{module} is not installed ({install})")


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # One inter-op thread, as Hummingbird sets and as ONNX Runtime gets below: these models
    # run one operator after another, so the intra-op threads are the ones that count.
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # settable only before torch's first parallel work
            pass


def _native_runner(model: Any, classifier: bool, threads: int) -> Runner:
    params = model.get_params()
    if "n_jobs" in params:  # XGBoost's nthread, LightGBM's num_threads, sklearn's joblib
        model.set_params(n_jobs=threads)
    if classifier:
        return Runner(model.predict_proba, model.predict)
    return Runner(model.predict, None)


def _treecomp_runner(model: Any, system: System, classifier: bool, threads: int) -> Runner:
    import treecomp

    options: dict[str, Any] = {}
    if system.backend != "numpy":
        options["n_threads"] = threads
    if system.strategy is not None:
        options["strategy"] = system.strategy
    if system.compiled:
        options["compile"] = True
    if system.backend in ("torch", "torchscript", None):
        _set_torch_threads(threads)
    if system.backend is None:  # the defaults, as a long-running process has them
        cm = treecomp.convert(model, **options)
        cm.tier_up()
    else:
        cm = treecomp.convert(model, system.backend, **options)
    if classifier:
        return Runner(cm.predict_proba, cm.predict, cm.strategy)
    return Runner(cm.predict, None, cm.strategy)


def _onnxml_model(model: Any, n_features: int) -> Any:
    library = type(model).__module__.partition(".")[0]
    if library == "sklearn":
        _require("skl2onnx")
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType as SklFloat

        options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
        return to_onnx(
            model, initial_types=[("input", SklFloat([None, n_features]))], options=options
        )
    _require("onnxmltools")
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [("input", FloatTensorType([None, n_features]))]
    if library == "xgboost":
        return onnxmltools.convert_xgboost(model, initial_types=types)
    if library == "lightgbm":
        return onnxmltools.convert_lightgbm(model, initial_types=types, zipmap=False)
    raise SkippedError(f"no ONNX-ML converter for {type(model).__qualname__}")


def _onnxml_runner(model: Any, classifier: bool, threads: int, n_features: int) -> Runner:
    _require("onnxruntime", "pip install 'treecomp[onnx]'")
    import onnxruntime as ort

    onx = _onnxml_model(model, n_features)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Nodes run one after another (the default sequential mode): one inter-op thread is all
    # it uses; more would only idle.
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        onx.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    # The converters' graphs take float: float64 rows (--dtype float64) are cast in the
    # timed call, as a user of those graphs must (which rounds them: not exact for
    # LightGBM and HistGradientBoosting, and reported as such in the deviation column).
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32

    def run(names: list[str], X: np.ndarray) -> np.ndarray:
        return session.run(names, {input_name: X.astype(dtype, copy=False)})[0]

    if classifier:
        label = "label" if "label" in outputs else outputs[0]
        proba = "probabilities" if "probabilities" in outputs else outputs[-1]
        return Runner(lambda X: run([proba], X), lambda X: run([label], X))
    return Runner(lambda X: run(outputs[:1], X), None)


def _hummingbird_runner(model: Any, classifier: bool, threads: int) -> Runner:
    # hummingbird-ml pins an old onnx, so it is no extra of ours (see pyproject.toml)
    _require(
        "hummingbird",
        "pip install --no-deps hummingbird-ml dill psutil onnxconverter-common",
    )
    _set_torch_threads(threads)
    import hummingbird.ml

    hb = hummingbird.ml.convert(model, "torch", extra_config={"n_threads": threads})
    if classifier:
        return Runner(hb.predict_proba, hb.predict)
    return Runner(hb.predict, None)


def make_runner(
    model: Any, system: System, *, classifier: bool, threads: int, n_features: int
) -> Runner:
    """Convert ``model`` for ``system`` (the part of the work that ``convert_s`` times).

    Raises:
        SkippedError: the system cannot run here (a peer is not installed).
    """
    if system.kind == "native":
        return _native_runner(model, classifier, threads)
    if system.kind == "treecomp":
        return _treecomp_runner(model, system, classifier, threads)
    if system.kind == "onnxml":
        return _onnxml_runner(model, classifier, threads, n_features)
    return _hummingbird_runner(model, classifier, threads)


class TooSlowError(Exception):
    """One call took longer than ``max_call_s``."""


def time_calls(
    fn: Callable[[np.ndarray], np.ndarray], inputs: Sequence[np.ndarray], settings: TimingSettings
) -> tuple[list[float], float, np.ndarray]:
    """Warm up, then time calls of ``fn`` on ``inputs`` in turn.

    Successive calls get different rows: a small batch repeated would let the CPU's branch
    predictor learn its paths through the trees (ONNX Runtime ran one repeated HIGGS-like
    row in 8 µs, distinct rows in 21 µs).

    Args:
        fn: The call to time.
        inputs: Batches of one size, used round robin from the first.
        settings: Warm-up calls, run counts and time budget.

    Returns:
        ``(times, first_call_s, first_output)``: the timed calls' seconds, the first warm-up
        call's seconds and its output, on ``inputs[0]``.

    Raises:
        TooSlowError: the first call took longer than ``settings.max_call_s``.
    """
    start = time.perf_counter()
    first_output = fn(inputs[0])
    first = time.perf_counter() - start
    if first > settings.max_call_s:
        raise TooSlowError(first)
    for i in range(1, settings.warmup):
        fn(inputs[i % len(inputs)])
    times: list[float] = []
    gc.collect()
    gc.disable()  # as timeit does: a collection inside one call is not the system's cost
    try:
        while len(times) < settings.min_runs or (
            sum(times) < settings.budget_s and len(times) < settings.max_runs
        ):
            X = inputs[(settings.warmup + len(times)) % len(inputs)]
            start = time.perf_counter()
            fn(X)
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times, first, first_output


def max_abs_deviation(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest ``|actual - expected|``; a NaN on one side only counts as infinite.

    Raises:
        ValueError: the two hold different numbers of values.
    """
    actual = np.asarray(actual, dtype=np.float64)
    if actual.size != expected.size:
        raise ValueError(f"output shape {actual.shape}, native {expected.shape}")
    actual = actual.reshape(expected.shape)
    diff = np.abs(actual - expected)
    diff[np.isnan(actual) != np.isnan(expected)] = np.inf
    return float(np.nanmax(diff)) if diff.size and not np.isnan(diff).all() else 0.0


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``"TypeError: message"`` on one line, cut to ``limit`` characters.

    An explicit cause comes first, as ``"ValueError (from TypeError: cause): message"``: a
    converter's own message can be a long dump of its node's attributes.
    """

    def one(e: BaseException, n: int) -> str:
        text = re.sub(r"\s+", " ", str(e)).strip()
        return text if len(text) <= n else text[: n - 1] + "…"

    cause = exc.__cause__
    if cause is None:
        return f"{type(exc).__name__}: {one(exc, limit)}"
    return (
        f"{type(exc).__name__} (from {type(cause).__name__}: {one(cause, limit // 2)}): "
        f"{one(exc, limit // 2)}"
    )


def _status_cell(batch: int, status: str, error: str | None) -> dict[str, Any]:
    return {"batch": batch, "status": status, "error": error}


def run_worker(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run one system on one model, as described by the parent's job; never raises.

    Args:
        job: Paths of the model, held-out rows and native outputs, the system's name, the
            batch sizes and the :class:`TimingSettings` fields.

    Returns:
        The worker's result: ``convert_s``, ``strategy``, ``peak_rss_mb``, ``status`` and
        ``error`` of the system, and one cell per batch size.
    """
    import resource

    settings = TimingSettings(**job["settings"])
    system = parse_system(job["system"])
    batches: list[int] = list(job["batch_sizes"])
    result: dict[str, Any] = {
        "system": system.name,
        "model": job["model"],
        "status": "ok",
        "error": None,
        "convert_s": None,
        "strategy": None,
        "cells": [],
    }

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    try:
        with open(job["model_path"], "rb") as f:
            model = pickle.load(f)
        X_all = np.load(job["X_path"])
        native_scores = np.load(job["scores_path"])
        native_labels = np.load(job["labels_path"]) if job["labels_path"] else None
        classifier = native_labels is not None
        result["base_rss_mb"] = rss_mb()
        start = time.perf_counter()
        runner = make_runner(
            model,
            system,
            classifier=classifier,
            threads=settings.threads,
            n_features=X_all.shape[1],
        )
        if system.compiled:  # the first call of a compiled system: count it here too
            runner.scores(X_all[: min(batches)])
        if system.kind != "native":  # nothing to convert: native's own model runs
            result["convert_s"] = time.perf_counter() - start
        result["strategy"] = runner.strategy
    except SkippedError as exc:
        result.update(status="skipped", error=describe_error(exc))
    except Exception as exc:
        result.update(status="error", error=describe_error(exc))
    if result["status"] != "ok":
        result["cells"] = [_status_cell(b, result["status"], result["error"]) for b in batches]
        result["peak_rss_mb"] = rss_mb()
        return result

    too_slow: str | None = None
    for batch in batches:
        if too_slow is not None:
            result["cells"].append(_status_cell(batch, "skipped", too_slow))
            continue
        if system.backend == "numpy" and batch > settings.numpy_max_batch:
            reason = f"numpy backend timed up to {settings.numpy_max_batch} rows only"
            result["cells"].append(_status_cell(batch, "skipped", reason))
            continue
        # Distinct held-out slices of this size (views, not copies), the first one first.
        n_views = max(1, min(len(X_all) // batch, MAX_VIEWS))
        inputs = [X_all[i * batch : (i + 1) * batch] for i in range(n_views)]
        X = inputs[0]
        cell: dict[str, Any] = {"batch": batch, "status": "ok", "error": None}
        try:
            times, first, out = time_calls(runner.scores, inputs, settings)
            cell.update(
                median_s=statistics.median(times),
                min_s=min(times),
                runs=len(times),
                first_call_s=first,
                max_abs_dev=max_abs_deviation(out, native_scores[:batch]),
            )
            if runner.labels is not None and native_labels is not None:
                labels = np.asarray(runner.labels(X)).reshape(-1)
                cell["label_mismatches"] = int(np.sum(labels != native_labels[:batch]))
        except TooSlowError as exc:
            seconds = exc.args[0]
            cell.update(
                status="error",
                error=f"too slow: one call took {seconds:.1f} s (> --max-call-s "
                f"{settings.max_call_s:g})",
                first_call_s=seconds,
            )
            too_slow = f"skipped: batch {batch} was too slow"
        except Exception as exc:
            cell.update(status="error", error=describe_error(exc))
        result["cells"].append(cell)
    result["peak_rss_mb"] = rss_mb()
    return result


def _worker_main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = run_worker(job)
    Path(job["result_path"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# The parent: spawn the workers, gather, report


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    # The workers import this checkout of treecomp (and strategies/) even when not installed.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_system(
    prepared: PreparedModel,
    system: System,
    batch_sizes: Sequence[int],
    settings: TimingSettings,
    *,
    directory: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """Run one system on one model in a fresh worker process and return its result.

    A worker that crashes or runs past ``timeout_s`` becomes a result whose cells are errors.
    """
    stem = directory / f"{prepared.spec.name}--{system.name}"
    job: dict[str, Any] = {
        "model": prepared.spec.name,
        "system": system.name,
        "model_path": prepared.model_path,
        "X_path": prepared.X_path,
        "scores_path": prepared.scores_path,
        "labels_path": prepared.labels_path,
        "batch_sizes": list(batch_sizes),
        "settings": asdict(settings),
        "result_path": f"{stem}-result.json",
    }
    job_path = Path(f"{stem}-job.json")
    job_path.write_text(json.dumps(job))
    command = [sys.executable, "-m", "treecomp.bench", "--worker", str(job_path)]
    error: str | None = None
    try:
        proc = subprocess.run(
            command,
            env=_child_env(settings.threads),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0 or not Path(job["result_path"]).exists():
            tail = re.sub(r"\s+", " ", proc.stderr.strip())[-300:]
            error = f"worker exited with status {proc.returncode}: {tail}"
    except subprocess.TimeoutExpired:
        error = f"worker timed out after {timeout_s:g} s (--timeout)"
    if error is None:
        result: dict[str, Any] = json.loads(Path(job["result_path"]).read_text())
        return result
    return {
        "system": system.name,
        "model": prepared.spec.name,
        "status": "error",
        "error": error,
        "convert_s": None,
        "strategy": None,
        "peak_rss_mb": None,
        "cells": [_status_cell(b, "error", error) for b in batch_sizes],
    }


def build_records(
    results: Sequence[Mapping[str, Any]], systems: Sequence[System]
) -> list[dict[str, Any]]:
    """One record per model, system and batch size, with the ratios to the fastest peer and native.

    ``ratio_to_fastest_peer`` is the fastest peer's median over this cell's median (above 1:
    faster than every peer); ``ratio_to_native`` likewise with native alone.
    """
    peers = {s.name for s in systems if s.peer}
    records: list[dict[str, Any]] = []
    for result in results:
        for cell in result["cells"]:
            records.append(
                {
                    "model": result["model"],
                    "system": result["system"],
                    "batch": cell["batch"],
                    "status": cell["status"],
                    "median_s": cell.get("median_s"),
                    "min_s": cell.get("min_s"),
                    "runs": cell.get("runs"),
                    "first_call_s": cell.get("first_call_s"),
                    "ratio_to_fastest_peer": None,
                    "ratio_to_native": None,
                    "max_abs_dev": cell.get("max_abs_dev"),
                    "label_mismatches": cell.get("label_mismatches"),
                    "convert_s": result.get("convert_s"),
                    "strategy": result.get("strategy"),
                    "peak_rss_mb": result.get("peak_rss_mb"),
                    "base_rss_mb": result.get("base_rss_mb"),
                    "error": cell.get("error"),
                }
            )
    fastest: dict[tuple[str, int], float] = {}
    native: dict[tuple[str, int], float] = {}
    for r in records:
        key = (r["model"], r["batch"])
        if r["median_s"] is not None and r["system"] in peers:
            fastest[key] = min(fastest.get(key, math.inf), r["median_s"])
        if r["median_s"] is not None and r["system"] == "native":
            native[key] = r["median_s"]
    for r in records:
        key = (r["model"], r["batch"])
        if r["median_s"]:
            if key in fastest:
                r["ratio_to_fastest_peer"] = fastest[key] / r["median_s"]
            if key in native:
                r["ratio_to_native"] = native[key] / r["median_s"]
    return records


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, threads, library versions and the date, for ``results.json``."""
    versions: dict[str, str | None] = {}
    for dist in (
        "treecomp",
        "numpy",
        "torch",
        "xgboost",
        "lightgbm",
        "scikit-learn",
        "onnx",
        "onnxruntime",
        "skl2onnx",
        "onnxmltools",
        "hummingbird-ml",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    cpu_model = platform.processor()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
            elif line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
            if flags and cpu_model:
                break
    except OSError:
        pass
    isa = next((name for name in ("avx512f", "avx2", "avx", "sse4_2") if name in flags), None)
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 0
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_available": available,
        "cpu_model": cpu_model,
        # The widest x86 vector extension the CPU has (inductor's and ATen's kernels use it).
        "isa": isa,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": _load_average(),
        "versions": versions,
    }


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# What each record of results.json holds, written into the file beside them.
RECORD_FIELDS = {
    "status": "ok, error (see error) or skipped (a peer not installed, a batch not run)",
    "median_s": "median seconds per call over `runs` timed calls, after warm-up; min_s too",
    "first_call_s": "the first call's seconds (a compiled system recompiles on a new shape)",
    "ratio_to_fastest_peer": "fastest peer's median_s / this median_s (peers: native, onnxml, "
    "hummingbird); > 1: faster than every peer",
    "ratio_to_native": "native median_s / this median_s; > 1: faster than native",
    "max_abs_dev": "max |output - native output| on the cell's first batch: probabilities "
    "of classifiers, predictions of regressors",
    "label_mismatches": "rows whose label differs from native's, classifiers only",
    "convert_s": "seconds to convert (and, compiled, to compile in the first call); "
    "null for native",
    "peak_rss_mb": "the worker's peak resident memory (ru_maxrss), libraries included",
    "base_rss_mb": "the worker's peak resident memory after loading the model and rows, "
    "before converting or importing the system's libraries",
    "strategy": "what treecomp chose (cm.strategy)",
}


# ---------------------------------------------------------------------------------------------
# Report


def format_seconds(seconds: float | None) -> str:
    """``"12.3µs"``, ``"4.56ms"`` or ``"1.23s"``; ``"-"`` for ``None``."""
    if seconds is None:
        return "-"
    if seconds < 0.99995e-3:  # what rounds to 1000.0 µs reads as 1 ms
        return f"{seconds * 1e6:.1f}µs"
    if seconds < 0.9995:  # and what rounds to 1000 ms (":.3g": "1e+03ms") as 1 s
        return f"{seconds * 1e3:.3g}ms"
    return f"{seconds:.3g}s"


def _short(system: str) -> str:
    return system.removeprefix("treecomp-")


def _cell_text(record: Mapping[str, Any]) -> str:
    if record["status"] == "skipped":
        return "skipped"
    if record["median_s"] is None:
        return "slow" if str(record["error"] or "").startswith("too slow") else "error"
    ratio = record["ratio_to_fastest_peer"]
    suffix = ""
    if ratio is not None:
        suffix = (
            f" x{ratio:.0f}"
            if ratio >= 100
            else f" x{ratio:.3g}"
            if ratio >= 1
            else f" x{ratio:.2g}"
        )
    return format_seconds(record["median_s"]) + suffix


def format_tables(
    records: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    systems: Sequence[str],
    *,
    width: int = 150,
) -> str:
    """The timing table (model and batch rows, system columns) and the per-system details.

    Args:
        records: :func:`build_records`' output.
        models: Model names, in row order.
        systems: System names, in column order.
        width: Columns are split into several tables to keep lines about this wide.
    """
    by_key = {(r["model"], r["system"], r["batch"]): r for r in records}
    batches = sorted({r["batch"] for r in records})
    lines = [
        "Median seconds per call; xR = fastest peer's median / this one's "
        "(peers: native, onnxml, hummingbird): R > 1 means faster than every peer.",
        "treecomp-* columns are shown without the 'treecomp-' prefix.",
    ]
    label_width = max([len(m) for m in models] + [5]) + 9
    cell_width = max([len(_short(s)) for s in systems] + [15]) + 2
    per_table = max(1, (width - label_width) // cell_width)
    for start in range(0, len(systems), per_table):
        chunk = systems[start : start + per_table]
        lines.append("")
        lines.append(
            f"{'model':<{label_width - 8}}{'batch':>8}"
            + "".join(f"{_short(s):>{cell_width}}" for s in chunk)
        )
        for model in models:
            for batch in batches:
                row = [by_key.get((model, s, batch)) for s in chunk]
                text = [_cell_text(c) if c is not None else "-" for c in row]
                lines.append(
                    f"{model:<{label_width - 8}}{batch:>8}"
                    + "".join(f"{t:>{cell_width}}" for t in text)
                )
    lines += ["", "Per model and system: conversion (incl. compile), peak RSS, worst deviation."]
    header = (
        f"{'model':<20}{'system':<40}{'convert':>9}{'peak RSS':>10}"
        f"{'max |Δ|':>10}{'labels≠':>9}  strategy / error"
    )
    lines.append(header)
    notes: list[str] = []
    for model in models:
        for system in systems:
            cells = [by_key[(model, system, b)] for b in batches if (model, system, b) in by_key]
            if not cells:
                continue
            first = cells[0]
            devs = [c["max_abs_dev"] for c in cells if c["max_abs_dev"] is not None]
            mismatches = [c["label_mismatches"] for c in cells if c["label_mismatches"] is not None]
            rss = first["peak_rss_mb"]
            errors = sorted({c["error"] for c in cells if c["error"]})
            detail = first["strategy"] or ""
            if errors and all(c["median_s"] is None for c in cells):
                detail = errors[0]
            elif errors:
                notes += [f"{model} / {system}: {e}" for e in errors]
            if len(detail) > 100:
                detail = detail[:99] + "…"
            lines.append(
                f"{model:<20}{system:<40}{format_seconds(first['convert_s']):>9}"
                f"{(f'{rss:.0f}MB' if rss else '-'):>10}"
                f"{(f'{max(devs):.1e}' if devs else '-'):>10}"
                f"{(str(max(mismatches)) if mismatches else '-'):>9}  {detail}"
            )
    if notes:
        lines += ["", "Cells that did not run:"] + [f"  {n[:160]}" for n in notes]
    return "\n".join(lines)


def plot(records: Sequence[Mapping[str, Any]], models: Sequence[str], path: Path) -> None:
    """Write a PNG: one log-log panel per model, median time against batch size per system.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(r["system"] for r in records))
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    palette = plt.get_cmap("tab10" if len(systems) <= 10 else "tab20")
    for ax, model in zip(axes.flat, models):
        for i, system in enumerate(systems):
            points = sorted(
                (r["batch"], r["median_s"])
                for r in records
                if r["model"] == model and r["system"] == system and r["median_s"]
            )
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=3,
                linestyle="--" if system in PEERS else "-",
                color=palette(i % palette.N),
                label=_short(system),
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("batch size (rows)")
        ax.set_ylabel("median seconds per call")
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels) or 1), fontsize=8)
    fig.suptitle(
        "treecomp bench: median time per call (solid: treecomp, dashed: peers)", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.04 + 0.025 * (-(-len(labels) // 6)), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sorted(set(values))


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``treecomp bench``."""
    models = "\n".join(f"  {s.name:<20} {s.description}" for s in (*MODELS, TINY))
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"models:\n{models}\n\n"
            "systems: native, onnxml, hummingbird, treecomp-BACKEND[-STRATEGY][-compiled]\n"
            f"  backends: {', '.join(BACKENDS)}; strategies: {', '.join(STRATEGIES)}\n"
            f"  default: {','.join(DEFAULT_SYSTEMS)}\n"
            f"  --quick: {','.join(QUICK_SYSTEMS)}\n"
            "  all: every backend x strategy, compiled torch, numpy and the peers\n\n"
            "Cell ratios are the fastest peer's median over the cell's median: above 1, the\n"
            "system is faster than native, onnxml and hummingbird.\n\n"
            "examples:\n"
            "  treecomp bench --quick --out /tmp/bench\n"
            "  treecomp bench --models xgb-binary --systems native,treecomp-torch-auto,onnxml\n"
            "  treecomp bench --systems all --batch-sizes 1,1000"
        ),
    )
    parser.add_argument(
        "--models",
        default="default",
        metavar="NAMES",
        help="comma-separated model names (listed below), or 'default': all but 'tiny'",
    )
    parser.add_argument(
        "--systems",
        default=None,
        metavar="NAMES",
        help="comma-separated systems, 'default' or 'all' (see below; default: 'default')",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=None,
        metavar="SIZES",
        help="comma-separated rows per call (default 1,1000,10000,100000; --quick 1,1000,10000)",
    )
    parser.add_argument(
        "--threads",
        type=_positive(int),
        default=2,
        metavar="N",
        help="threads for every system (default 2)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller models, fewer batch sizes and systems, shorter timing (a few minutes)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="the rows' float type: float64 rows (what pandas gives) are doubles that no "
        "float32 holds, compared exactly by LightGBM and HistGradientBoosting (default float32)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"write DIR/{RESULTS_FILE} and DIR/{PLOT_FILE}",
    )
    parser.add_argument(
        "--budget",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="seconds of timed calls per cell, past --min-runs (default 1; --quick 0.1)",
    )
    parser.add_argument(
        "--min-runs",
        type=_positive(int),
        default=5,
        metavar="N",
        help="timed calls per cell, at least (default 5)",
    )
    parser.add_argument(
        "--warmup",
        type=_positive(int),
        default=2,
        metavar="N",
        help="untimed calls per cell (default 2)",
    )
    parser.add_argument(
        "--max-call-s",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="a first call slower than this marks the cell too slow and skips larger batches "
        "(default 30; --quick 2)",
    )
    parser.add_argument(
        "--numpy-max-batch",
        type=_positive(int),
        default=1_000,
        metavar="ROWS",
        help="largest batch for the numpy backend (default 1000)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="seconds one worker (one system on one model) may run (default 1200; --quick 120)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def _resolve_models(text: str) -> list[ModelSpec]:
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        for name in [s.name for s in MODELS] if part in ("default", "all") else [part]:
            if name and name not in names:
                names.append(name)
    unknown = [n for n in names if n not in MODEL_SPECS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(MODEL_SPECS)}")
    return [MODEL_SPECS[n] for n in names]


@dataclass(slots=True)
class BenchRun:
    """What one bench run produced: the settings, machine, records and rendered tables."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    models: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""
    complete: bool = False


def run(args: argparse.Namespace) -> BenchRun:
    """Fit the models, run every system on each in its own process, and gather the results.

    With ``args.out``, ``results.json`` is rewritten after every worker, so that a run cut
    short still leaves what it measured. An interrupt (Ctrl-C, or SIGTERM from ``timeout``)
    ends the run early with the cells measured so far (``complete`` is false).

    Args:
        args: Parsed ``treecomp bench`` arguments.
    """
    quick: bool = args.quick
    specs = _resolve_models(args.models)
    systems = resolve_systems(args.systems, quick=quick)
    batch_sizes = args.batch_sizes or list(QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    settings = TimingSettings(
        threads=args.threads,
        warmup=args.warmup,
        min_runs=args.min_runs,
        budget_s=args.budget or (0.1 if quick else 1.0),
        max_call_s=args.max_call_s or (2.0 if quick else 30.0),
        numpy_max_batch=args.numpy_max_batch,
    )
    timeout_s = args.timeout or (120.0 if quick else 1200.0)
    bench = BenchRun(
        settings={
            **asdict(settings),
            "quick": quick,
            "dtype": args.dtype,
            "batch_sizes": batch_sizes,
            "systems": [s.name for s in systems],
            "worker_timeout_s": timeout_s,
        },
        machine=machine_info(args.threads),
        models=[],
    )
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="treecomp-bench-") as tmp:
            _run_models(
                bench,
                specs,
                systems,
                batch_sizes,
                settings,
                results,
                directory=Path(tmp),
                quick=quick,
                timeout_s=timeout_s,
                out=args.out,
                dtype=args.dtype,
            )
        bench.complete = True
    except KeyboardInterrupt:
        _log("\ninterrupted: reporting the cells measured so far")
    bench.machine["load_average_end"] = _load_average()
    _gather(bench, results, systems)
    return bench


def _gather(bench: BenchRun, results: list[dict[str, Any]], systems: Sequence[System]) -> None:
    bench.records = build_records(results, systems)
    models = list(dict.fromkeys(r["model"] for r in bench.records))
    bench.table = format_tables(bench.records, models, [s.name for s in systems])


def _run_models(
    bench: BenchRun,
    specs: Sequence[ModelSpec],
    systems: Sequence[System],
    batch_sizes: Sequence[int],
    settings: TimingSettings,
    results: list[dict[str, Any]],
    *,
    directory: Path,
    quick: bool,
    timeout_s: float,
    out: Path | None,
    dtype: str,
) -> None:
    total = len(specs) * len(systems)
    for spec in specs:
        _log(f"fitting {spec.name}: {spec.description} ...")
        # One thread to fit: fitting is not measured, and on a shared machine OpenMP's
        # spinning barriers made two-thread fits of the quick models take 60 s, not 2.
        prepared = prepare_model(
            spec, directory, quick=quick, threads=1, n_test=max(batch_sizes), dtype=dtype
        )
        bench.models.append(
            {
                "name": spec.name,
                "description": spec.description,
                "estimator": f"{spec.library}.{spec.estimator}",
                "params": dict(spec.quick_params if quick else spec.params),
                "n_features": spec.n_features,
                "nan_fraction": spec.nan_fraction,
                "fit_s": prepared.fit_s,
            }
        )
        for system in systems:
            _log(f"  [{len(results) + 1}/{total}] {spec.name} / {system.name}", end=" ")
            start = time.perf_counter()
            result = run_system(
                prepared, system, batch_sizes, settings, directory=directory, timeout_s=timeout_s
            )
            _log(f"{result['status']} ({time.perf_counter() - start:.1f}s)")
            results.append(result)
            if out is not None:
                bench.records = build_records(results, systems)
                write_json(bench, out)


def write_json(bench: BenchRun, out: Path) -> Path:
    """Write ``out/results.json`` (atomically: a reader never sees half a file)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    document = {
        "complete": bench.complete,
        "machine": bench.machine,
        "settings": bench.settings,
        "models": bench.models,
        "fields": RECORD_FIELDS,
        "results": bench.records,
    }
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=1, default=str))
    partial.replace(path)
    return path


def write_results(bench: BenchRun, out: Path) -> list[Path]:
    """Write ``results.json`` and, where matplotlib is installed, the plot; return the paths."""
    written = [write_json(bench, out)]
    try:
        models = list(dict.fromkeys(r["model"] for r in bench.records))
        plot(bench.records, models, out / PLOT_FILE)
        written.append(out / PLOT_FILE)
    except ImportError:
        _log("matplotlib is not installed: no plot (pip install 'treecomp[bench]')")
    return written


def _log(message: str, end: str = "\n") -> None:
    print(message, end=end, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point of ``treecomp bench`` and ``python -m treecomp.bench``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
        prog: Program name shown in ``--help``.

    Returns:
        The exit status: 0 once the bench ran, whatever its cells' outcomes; 2 for bad
        arguments; 130 when interrupted (after reporting what it measured).
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args.worker)
    try:
        resolve_systems(args.systems, quick=args.quick)
        _resolve_models(args.models)
    except ValueError as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `timeout` stops it as Ctrl-C does
    try:
        bench = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    m = bench.machine
    print(
        f"treecomp bench, {m['date']}: {m['cpu_model']} ({m['isa'] or 'ISA unknown'}), "
        f"{m['cpus_available']} CPUs, {m['threads']} threads, torch {m['versions']['torch']}, "
        f"{args.dtype} rows" + (" (--quick)" if args.quick else "")
    )
    load = m["load_average"]
    if load and load[0] > 0.5:
        print(
            f"note: load average {load[0]:.2f} at the start: other processes share the CPUs "
            "and slow multi-threaded calls down"
        )
    print(bench.table)
    if args.out is not None:
        for path in write_results(bench, args.out):
            print(f"wrote {path}")
    print(
        f"bench took {time.perf_counter() - start:.0f} s"
        + ("" if bench.complete else ", cut short")
    )
    return 0 if bench.complete else 130


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main(prog="python -m treecomp.bench"))
