"""Scoring Dask DataFrames and Arrays with a compiled model, partition by partition.

:func:`predict` maps one of the model's methods over the partitions of a dask DataFrame
(``map_partitions``) or the row blocks of a dask Array (``map_blocks``) and returns a lazy
collection with the same partitions, index and divisions. The scheduler is Dask's: the
threaded scheduler, processes, or a ``distributed`` cluster.

The model enters the task graph once, as its safe artifact (checksummed JSON bytes, see
:mod:`treecomp.artifact`) in a single ``dask.delayed`` node that every partition task
depends on, so a distributed cluster moves it to each worker once per computation instead
of pickling it into every task. Each worker process rebuilds the model with
:func:`treecomp.loads` the first time a task needs it and keeps it in a small cache keyed
by the artifact's SHA-256, shared by the worker's threads (:func:`build_counts` reports
the builds).

Needs dask (``pip install 'treecomp[distributed]'``); imported only when called.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt

from treecomp.batching import output_names
from treecomp.container import CompiledModel, loads_for_batches
from treecomp.ir import METHODS

# Models kept per process. A worker that scores many models in turn rebuilds the oldest
# one when it comes back; eight forests of a few MB each are nothing next to a partition.
CACHE_SIZE = 8

_models: OrderedDict[str, CompiledModel] = OrderedDict()
_builds: Counter[str] = Counter()
# One lock for lookups and builds: the threads of a worker that all start on the same
# model wait for the first one's build instead of each building a copy. Builds of other
# models wait too, which costs only their first partition's latency.
_lock = threading.Lock()


def predict(
    cm: CompiledModel,
    data: Any,
    method: str = "predict",
    *,
    backend: str | None = None,
    **options: Any,
) -> Any:
    """Score a dask DataFrame or dask Array with one of the model's methods, lazily.

    Nothing is computed: the result is a dask collection with ``data``'s partitions, which
    ``.compute()``, ``.persist()``, ``.to_parquet()`` and friends run on whatever
    scheduler is active. The method is checked, and the output's metadata inferred, by
    calling it on zero rows of ``data``'s metadata here, so a method the model lacks, the
    wrong number of columns, columns that do not match the fit-time names and dtypes that
    are never numbers (dates) fail now, not inside a worker. What only the values show
    (text that does not parse as a number, NaN where the model rejects it) fails when
    the partition is computed, with the same message as ``cm.<method>(X)``.

    Outputs, for a DataFrame input (named as :func:`treecomp.scoring.score` names its
    columns):

    - ``predict``: a Series named ``prediction`` (a DataFrame ``prediction_0``, ... for
      multi-output regressors).
    - ``predict_proba``: a DataFrame with one float64 column per class, named
      ``proba_<label>`` after ``str()`` of each class label (``proba_0``, ... by
      position when the labels do not name the columns one to one).
    - ``decision_function``: a Series ``decision``, or ``decision_0``, ... per class.
    - ``score_samples``: a Series ``score``.
    - ``apply``: int64 leaf ids, one column per tree ``leaf_0``, ... (the native
      ``apply`` shape flattened row-major, e.g. ``(n_stages, n_classes)`` for
      scikit-learn's gradient boosting), or a Series ``leaf`` for a single tree.

    The index and divisions are ``data``'s. For a dask Array input the result is a dask
    Array of the native output's shape and dtype, chunked like ``data``'s rows; the column
    chunks of ``data`` are merged first, since each row needs all its features.

    Example::

        import dask.dataframe as dd
        import treecomp
        import treecomp.dask

        cm = treecomp.convert(model)
        features = dd.read_parquet("features/")[list(cm.feature_names_in_)]
        proba = treecomp.dask.predict(cm, features, "predict_proba")
        proba.to_parquet("scores/")  # runs on the active scheduler, e.g. a Client

    Args:
        cm: The compiled model.
        data: A dask DataFrame holding exactly the model's feature columns (checked against
            the fit-time names where the native library checks them; pandas categorical
            columns are encoded by value, so partitions may have different categories), or a
            2-D dask Array of ``cm.n_features_in_`` columns.
        method: ``"predict"``, ``"predict_proba"``, ``"decision_function"``,
            ``"score_samples"`` or ``"apply"``.
        backend: The backend the workers run (default: ``cm.batch_backend``: the kernel
            where the model's own large batches run it, else ``cm.backend``).
        **options: Options for :func:`treecomp.loads` on the workers. Workers run on the
            CPU unless ``device=`` says otherwise, and with one backend thread per task
            (Dask's parallelism is its worker threads) unless ``n_threads=`` or the
            model's own ``n_threads`` says otherwise; ``n_threads=None`` lets the backend
            use every core in each task. With ``backend`` or options given, the model is
            also rebuilt here once, to check them before any task runs.

    Returns:
        A dask Series, DataFrame or Array, not yet computed.

    Raises:
        ValueError: ``method`` is not one of the five methods; the columns or their number
            do not match the model; ``data`` is not 2-D or its width is unknown.
        AttributeError: the model has no such method (the native model lacks it).
        TypeError: ``data`` is not a dask DataFrame or Array, or has columns of a type that
            is never a number (dates, durations).
    """
    try:
        import dask.array as da
        from dask.delayed import delayed
    except ImportError as exc:
        raise ImportError("treecomp.dask needs dask: pip install 'treecomp[distributed]'") from exc
    if not isinstance(cm, CompiledModel):
        raise TypeError(f"expected a treecomp.CompiledModel, got {type(cm).__qualname__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    getattr(cm, method)  # AttributeError, with its reason, for a method the model lacks

    artifact = cm.dumps()
    checked = backend is None and not options  # nothing new to check by building it here
    backend = backend or cm.batch_backend
    run_options = _worker_options(cm, backend, options)
    key = _cache_key(artifact, backend, run_options)
    # The model the metadata is inferred with: the caller's, or the workers' configuration
    # built once here (and cached: a threaded scheduler's tasks then find it built).
    local = cm if checked else _model(artifact, key, backend, run_options)
    # One graph node holds the bytes; its key names the model, so the same model scored
    # twice shares the node, and a worker fetches it once for all its partitions.
    blob = delayed(artifact, name=f"treecomp-model-{key}")

    if isinstance(data, da.Array):
        return _predict_array(local, data, blob, key, backend, run_options, method)
    dd = _dataframe_module()
    if dd is not None and isinstance(data, dd.DataFrame):
        empty = getattr(local, method)(data._meta)
        names = output_names(local.forest.classes, method, empty.shape)
        return data.map_partitions(
            _score_partition,
            blob,
            key,
            backend,
            run_options,
            method,
            names,
            meta=_pandas(empty, data._meta.index, names),
        )
    if dd is not None and isinstance(data, dd.Series):
        raise TypeError(
            "expected a dask DataFrame of the feature columns, got a dask Series: use "
            "series.to_frame()"
        )
    raise TypeError(
        f"expected a dask DataFrame or dask Array, got {type(data).__qualname__}; score "
        f"in-memory data with cm.{method}(X)"
    )


def build_counts() -> dict[str, int]:
    """How often this process built each model for Dask tasks, by cache key.

    Each count is 1 unless a model left the cache (more than :data:`CACHE_SIZE` models
    scored in turn) and came back. On a cluster, ``client.run(treecomp.dask.build_counts)``
    shows it for every worker process.
    """
    with _lock:
        return dict(_builds)


# ----------------------------------------------------------------------------------------
def _predict_array(
    local: CompiledModel,
    data: Any,
    blob: Any,
    key: str,
    backend: str | None,
    options: dict[str, Any],
    method: str,
) -> Any:
    import dask.array as da

    if data.ndim != 2:
        raise ValueError(
            f"expected a 2-D dask Array of shape (n_samples, {local.n_features_in_}), "
            f"got {data.ndim}-D shape {data.shape}"
        )
    if np.isnan(data.shape[1]):
        raise ValueError("the dask Array's column count is unknown; call compute_chunk_sizes()")
    if data.numblocks[1] > 1:
        data = data.rechunk({1: -1})
    meta = getattr(local, method)(np.empty((0, data.shape[1]), dtype=data.dtype))
    chunks = (data.chunks[0], *((size,) for size in meta.shape[1:]))
    # map_blocks keeps the input's axes unless told: a 1-D output drops the feature axis,
    # a 3-D one (apply of a multi-class gradient boosting) gains one.
    axes: dict[str, Any] = {}
    if meta.ndim == 1:
        axes["drop_axis"] = 1
    elif meta.ndim > 2:
        axes["new_axis"] = list(range(2, meta.ndim))
    return da.map_blocks(
        _score_block,
        data,
        blob,
        key,
        backend,
        options,
        method,
        dtype=meta.dtype,
        chunks=chunks,
        meta=meta,
        **axes,
    )


def _dataframe_module() -> Any:
    """``dask.dataframe``, or None where dask was installed without its dataframe extra (no
    dask DataFrame can exist then)."""
    try:
        import dask.dataframe as dd
    except ImportError:
        return None
    return dd


def _worker_options(
    cm: CompiledModel, backend: str | None, options: dict[str, Any]
) -> dict[str, Any]:
    """``options``, plus one backend thread per task unless the caller or the model chose.

    Dask runs a task per worker thread and its nannies start workers with
    ``OMP_NUM_THREADS=1`` for that reason; ONNX Runtime ignores that and starts a pool per
    session whose threads spin between calls. Measured on 2 cores with the 1M-row Parquet
    set and 8-tree model of ``tests/test_dask.py`` (two single-threaded workers, warm,
    4 runs each): 2.0-2.7 s with ONNX Runtime's default pools, 0.9-1.2 s with
    ``n_threads=1``. The numpy backend has no threads to set.
    """
    if (
        (backend or cm.backend) == "numpy"
        or "n_threads" in options
        or cm.options.get("n_threads") is not None
    ):
        return options
    return {**options, "n_threads": 1}


def _cache_key(artifact: bytes, backend: str | None, options: dict[str, Any]) -> str:
    """SHA-256 of the artifact and the worker-side overrides: one cache entry per model
    *as run*, since the same artifact on another backend is another compiled program."""
    digest = hashlib.sha256(artifact)
    digest.update(repr((backend, sorted(options.items()))).encode())
    return digest.hexdigest()


def _model(
    artifact: bytes, key: str, backend: str | None, options: dict[str, Any]
) -> CompiledModel:
    """The model of ``artifact`` in this process, built on first use."""
    with _lock:
        model = _models.get(key)
        if model is None:
            model = loads_for_batches(artifact, backend, **options)
            _models[key] = model
            _builds[key] += 1
            while len(_models) > CACHE_SIZE:
                _models.popitem(last=False)
        else:
            _models.move_to_end(key)
        return model


def _score_partition(
    part: Any,
    artifact: bytes,
    key: str,
    backend: str | None,
    options: dict[str, Any],
    method: str,
    names: Any,
) -> Any:
    """One partition's output, as pandas with the partition's index (runs on a worker)."""
    values = getattr(_model(artifact, key, backend, options), method)(part)
    return _pandas(values, part.index, names)


def _score_block(
    block: npt.NDArray[Any],
    artifact: bytes,
    key: str,
    backend: str | None,
    options: dict[str, Any],
    method: str,
) -> npt.NDArray[Any]:
    """One row block's output (runs on a worker)."""
    return np.asarray(getattr(_model(artifact, key, backend, options), method)(block))


def _pandas(values: npt.NDArray[Any], index: Any, names: Any) -> Any:
    import pandas as pd

    values = np.asarray(values)
    # dtype= keeps the native dtype: pandas would turn object labels into its string dtype
    # for rows but not for the empty metadata, and the partitions must match the metadata.
    if values.ndim == 1:
        return pd.Series(values, index=index, name=names, dtype=values.dtype)
    flat = values.reshape(values.shape[0], int(np.prod(values.shape[1:], dtype=np.int64)))
    return pd.DataFrame(flat, index=index, columns=names, dtype=flat.dtype)
