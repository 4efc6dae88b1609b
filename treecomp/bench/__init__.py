"""Benchmark: treecomp against the native libraries and their peers, one process per system.

Run ``treecomp bench`` (or ``python -m treecomp.bench``); ``--quick`` finishes in a few
minutes on two cores, ``--out DIR`` writes ``DIR/results.json`` and ``DIR/bench.png``. Needs
the ``bench`` extra (matplotlib for the plot; skl2onnx and onnxmltools for the ``onnxml``
peer; lleaves and TL2cgen); Hummingbird is benchmarked when it is importable.

How a run goes:

1. The parent fits seven models on synthetic data with fixed seeds (float32 numbers, or
   with ``--dtype float64`` float64 numbers as pandas and scikit-learn hand them; some
   with 10 % NaN), pickles them to a temporary directory with held-out rows and the native
   model's outputs on those rows (computed once, saved as ``.npy``).
2. For each model and system, a worker (``python -m treecomp.bench.worker JOB``) loads the
   model, converts it (``convert_s``; for compiled systems including the first call, and
   the AOTInductor compile or the load of its cached package; for lleaves and TL2cgen their
   compile), then for each batch size warms up, times at least ``--min-runs`` calls and
   keeps the median, and compares its outputs with the native ones (probabilities of
   classifiers, predictions of regressors; labels of classifiers).
   Every worker gets the same threads: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in its
   environment, and each library's own knob (``torch.set_num_threads``, XGBoost
   ``n_jobs``, LightGBM ``n_jobs``, ONNX Runtime ``intra_op_num_threads``, sklearn
   ``n_jobs``, lleaves ``n_jobs``, TL2cgen ``nthread``).
3. A system that fails, is not installed or is too slow is a cell with an ``error``; the
   bench carries on. A peer's deviation from native is recorded, never an error.

Systems are ``native``, ``onnxml`` (skl2onnx / onnxmltools in ONNX Runtime), ``hummingbird``
(its torch backend), ``lleaves`` (LightGBM models compiled by LLVM), ``tl2cgen`` (treelite's
C code generator, built with gcc), ``treecomp`` (``convert``'s defaults), ``treecomp-export``
(the ONNX file ``cm.export_onnx`` writes, in a plain ONNX Runtime session) and
``treecomp-BACKEND[-STRATEGY][-compiled]``, for instance ``treecomp-torch-auto``,
``treecomp-onnx-gemm``, ``treecomp-torch-auto-compiled`` or ``treecomp-numpy``. All but
treecomp's are the peers: a cell's ratio is the fastest peer's median divided by its own, so
a ratio above 1 means faster than every peer.

The modules, each using only those before it: :mod:`~treecomp.bench.systems` (the names),
:mod:`~treecomp.bench.models` (data and estimators), :mod:`~treecomp.bench.timing` (the
timing loop and the deviation), :mod:`~treecomp.bench.runners` (each system's conversion, the
one module that calls ``treecomp.convert``), :mod:`~treecomp.bench.worker` (the worker
process), :mod:`~treecomp.bench.spawn` (the parent's side of it),
:mod:`~treecomp.bench.report` (records, tables, plot, machine) and :mod:`~treecomp.bench.cli`
(the command line). Only the runners and the worker import the ``treecomp`` package itself
(``systems`` reads the strategy names from ``treecomp.names``), so this package, its command
line and the timing loop (which ``treecomp demo`` uses) stand below it in the imports.
"""

from treecomp.bench.cli import DEFAULT_BATCH_SIZES, QUICK_BATCH_SIZES, build_parser, main, run
from treecomp.bench.models import (
    MODEL_SPECS,
    MODELS,
    TINY,
    ModelSpec,
    PreparedModel,
    make_data,
    make_estimator,
    prepare_model,
    resolve_models,
)
from treecomp.bench.report import (
    FRESH_RECORD_FIELDS,
    PLOT_FILE,
    RESULTS_FILE,
    BenchRun,
    build_fresh_records,
    build_records,
    format_seconds,
    format_tables,
    machine_info,
    plot,
    write_json,
    write_results,
)
from treecomp.bench.spawn import run_system
from treecomp.bench.systems import (
    BACKENDS,
    DEFAULT_SYSTEMS,
    EXPORTED,
    PEERS,
    QUICK_SYSTEMS,
    STRATEGIES,
    System,
    all_systems,
    parse_system,
    resolve_systems,
)
from treecomp.bench.timing import (
    FreshSettings,
    TimingSettings,
    TooSlowError,
    max_abs_deviation,
    time_calls,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_SYSTEMS",
    "EXPORTED",
    "FRESH_RECORD_FIELDS",
    "MODELS",
    "MODEL_SPECS",
    "PEERS",
    "PLOT_FILE",
    "QUICK_BATCH_SIZES",
    "QUICK_SYSTEMS",
    "RESULTS_FILE",
    "STRATEGIES",
    "TINY",
    "BenchRun",
    "FreshSettings",
    "ModelSpec",
    "PreparedModel",
    "System",
    "TimingSettings",
    "TooSlowError",
    "all_systems",
    "build_fresh_records",
    "build_parser",
    "build_records",
    "format_seconds",
    "format_tables",
    "machine_info",
    "main",
    "make_data",
    "make_estimator",
    "max_abs_deviation",
    "parse_system",
    "plot",
    "prepare_model",
    "resolve_models",
    "resolve_systems",
    "run",
    "run_system",
    "time_calls",
    "write_json",
    "write_results",
]
