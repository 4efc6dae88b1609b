"""Batched serving: concurrent requests of a few rows gathered into one scoring call.

A server calls its model once per request, from many threads or coroutines, and every call
pays fixed costs (Python's checks, the runtime's call, on ONNX Runtime a row's trees split
over threads) that a batch pays once: the benchmark's 500-tree XGBoost model on the default
backend spends 55 to 130 us of CPU on a one-row call from 32 threads and 5 to 12 us a row
in calls of 32 rows, which its kernel tier scores (``python benchmarks/serving.py``, 2
shared cores).
:class:`Serving` does what Triton's dynamic batcher and Elixir's ``Nx.Serving`` do: requests
wait in a queue (:mod:`treecomp.serving_queue`), and whatever has gathered is scored in one
call (at most ``max_batch_size`` rows, waiting at most ``max_wait_ms``, see
:class:`Serving`), then each caller gets its own rows. The thread whose request fills a
batch scores it; a worker thread scores the batches that time out, and those that
coroutines fill.

Each request is checked on its own by the code ``cm.predict`` runs
(:func:`treecomp.inputs.prepare`): a bad request (wrong width, NaN where the model refuses
it, a string) fails alone, with ``cm.predict``'s error, and never joins a batch's engine
call. Requests of several rows, lists and frames are prepared in the caller's thread; a
single float row of the model's width is prepared with its batch, in one call that checks
them all (a row alone costs that call's 6 us), and should that call refuse one of them,
each is prepared alone, so that only the row at fault fails. Only prepared rows reach the
engine, so one caller's rows cannot change another's answer; should the engine still fail
on a batch, its requests are scored again one by one, so that only the one at fault gets
the error. A request is never split: one larger than ``max_batch_size`` is scored alone.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from treecomp.container import CompiledModel
from treecomp.inputs import categorical_features, check_positive, prepare
from treecomp.ir import METHODS
from treecomp.serving_queue import RAW_DTYPES, Batcher, Request, ServingStats

__all__ = ["Serving", "ServingStats"]


class _ServedMethod:
    """A method of :class:`Serving` that exists only where the compiled model has it (as
    ``CompiledModel``'s methods exist only where the native model has them)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        name = function.__name__
        self.method = name if name in METHODS else name.removeprefix("a")
        self.__doc__ = function.__doc__
        self.__name__ = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self.function
        if self.method not in instance.model.forest.methods:
            getattr(instance.model, self.method)  # raises the model's AttributeError
        return self.function.__get__(instance, owner)


class Serving:
    """A compiled model behind a dynamic batcher, for many concurrent callers.

    Thread-safe and asyncio-friendly: call ``predict`` (and the model's other methods) from
    any number of threads, or await ``apredict`` and co. from coroutines. Requests that
    arrive together are scored together, in batches of at most ``max_batch_size`` rows: by
    the thread whose request fills a batch, else by a worker thread; a request waits at
    most ``max_wait_ms`` for company.
    Each caller gets the model's answer for its own rows (what ``cm.predict`` gives them in
    a batch), or the error ``cm.predict`` raises on them.

    Inputs are those of ``cm.predict`` (NumPy arrays, lists, pandas frames) plus single
    rows: a 1-D array or list of ``n_features`` numbers, or a pandas Series indexed by
    feature name, is one row, and its answer has no row axis (a label, a vector of
    probabilities).

    Use it as a context manager, or call :meth:`close`: both wait for the requests already
    taken to be answered. Methods the model lacks raise ``AttributeError``, as on the model.

    A batch is scored once it holds ``max_batch_size`` rows or as many as the callers
    lately kept in flight at once, or half that many once no caller is on its way back
    with an answer (callers gone to work of their own are not waited for), or once its
    oldest request has waited ``max_wait_ms``; it holds no more than that (more queued
    make the next batch). Until 8 batches were answered, a batch waits for
    ``max_batch_size`` rows. Serving pays where many callers send requests at once; a
    single caller gains nothing (its requests are scored one by one, as it sends them).

    Example::

        with treecomp.Serving(cm) as serving:
            label = serving.predict(row)               # from any thread
            proba = await serving.apredict_proba(row)  # from a coroutine

    Args:
        cm: The compiled model.
        max_batch_size: Most rows scored in one call. A request of more rows is scored
            alone, never split.
        max_wait_ms: Longest time a request waits for others before its batch is scored
            (0: none; batches then hold what came while the previous one was scored).

    Attributes:
        model: The compiled model.
        max_batch_size: The option.
        max_wait_ms: The option.
    """

    def __init__(
        self, cm: CompiledModel, *, max_batch_size: int = 64, max_wait_ms: float = 1.0
    ) -> None:
        if not isinstance(cm, CompiledModel):
            raise TypeError(
                f"Serving takes a treecomp.CompiledModel (from treecomp.convert or "
                f"treecomp.load), got {type(cm).__qualname__}"
            )
        check_positive("max_batch_size", max_batch_size)
        if (
            isinstance(max_wait_ms, bool)
            or not isinstance(max_wait_ms, (int, float))
            or not math.isfinite(max_wait_ms)
            or max_wait_ms < 0
        ):
            raise ValueError(
                f"max_wait_ms must be a finite number of milliseconds >= 0, got {max_wait_ms!r}"
            )
        self.model = cm
        self._categorical = bool(categorical_features(cm.forest))
        # Rows that need no encoding: single rows of them are prepared with their batch.
        self._raw_width = cm.forest.n_features if cm.forest.categories is None else -1
        if cm.transforms is not None:  # a Pipeline's rows are encoded by its transforms
            self._raw_width = -1
        self.max_batch_size = max_batch_size
        self.max_wait_ms = float(max_wait_ms)
        self._batcher = Batcher(cm, max_batch_size, self.max_wait_ms / 1000.0)
        # Dropped without close(): stop the worker once the batcher's queue is empty.
        self._finalizer = weakref.finalize(self, self._batcher.close)
        self._finalizer.atexit = False  # the worker is a daemon: nothing to wait for at exit

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"Serving({self.model!r}, max_batch_size={self.max_batch_size}, "
            f"max_wait_ms={self.max_wait_ms:g}, {state})"
        )

    def __dir__(self) -> list[str]:
        methods = self.model.forest.methods
        hidden = {m for m in METHODS if m not in methods} | {
            f"a{m}" for m in METHODS if m not in methods
        }
        return [n for n in super().__dir__() if n not in hidden]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (new requests raise ``RuntimeError``)."""
        return self._batcher.closed

    @property
    def stats(self) -> ServingStats:
        """Requests, rows and engine calls so far (``rows / batches``: the mean batch)."""
        b = self._batcher
        return ServingStats(requests=b.requests, rows=b.rows, batches=b.batches)

    def close(self, timeout: float | None = None) -> None:
        """Take no more requests, and wait until those taken are answered.

        Calling it again does nothing; requests made after it raise ``RuntimeError``.

        Args:
            timeout: Most seconds to wait for the queue to drain (None: until it has).
        """
        self._batcher.close(timeout)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self._batcher.close)

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Serving:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------
    def _request(
        self, X: Any, methods: tuple[str, ...], loop: asyncio.AbstractEventLoop | None = None
    ) -> tuple[Request, bool]:
        """``X`` checked and prepared as ``cm.predict`` does it (raising its errors here, in
        the caller's thread), and whether it was a single row (1-D)."""
        if (
            type(X) is np.ndarray
            and X.ndim == 1
            and X.dtype in RAW_DTYPES
            and X.shape[0] == self._raw_width
        ):
            return Request(X, methods, loop, raw=True), True
        rows, single = _as_rows(X, self._categorical)
        if self.model.transforms is not None:  # a Pipeline's rows: encoded by its transforms
            return Request(self.model._prepare(rows)[1], methods, loop), single
        prepared = prepare(self.model.forest, rows, self.model.precision)
        return Request(prepared, methods, loop), single

    def _call(self, X: Any, methods: tuple[str, ...]) -> dict[str, npt.NDArray[Any]]:
        request, single = self._request(X, methods)
        batcher = self._batcher
        try:
            # The thread whose request fills a batch scores it: it is running already,
            # where the worker would have to be woken (under load, a wake-up waits for a
            # core: see Serving's notes).
            batch = batcher.submit(request, lead=True)
        except BaseException:  # closed, or interrupted before it was queued
            request.abandoned = True
            raise
        try:
            while batch is not None:
                if request in batch:
                    request.awake = True  # answered here: the wake-up chain passes it over
                    batcher.run(batch, lead=True)
                    break
                batcher.run(batch, lead=True)  # a batch of older requests, then its own
                batch = batcher.lead()
            answer = request.result() if batch is not None else request.wait()
        except BaseException:  # KeyboardInterrupt while waiting: out of the batch and chain
            request.abandoned = True
            raise
        finally:
            batcher.returned(request)
        return _answer(request, *answer, single)

    async def _acall(self, X: Any, methods: tuple[str, ...]) -> dict[str, npt.NDArray[Any]]:
        request, single = self._request(X, methods, asyncio.get_running_loop())
        self._batcher.submit(request, lead=False)  # never scored here: it would block the loop
        try:
            answer = await request.wait_async()
        finally:
            self._batcher.returned(request)
        return _answer(request, *answer, single)

    def _check(self, methods: Sequence[str]) -> tuple[str, ...]:
        if isinstance(methods, str):
            raise TypeError(f"methods must be a sequence of method names, got {methods!r}")
        for method in methods:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
            getattr(self.model, method)  # AttributeError where the model lacks it
        return tuple(dict.fromkeys(methods))

    def outputs(self, X: Any, methods: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """Several methods' results on ``X`` from one request (as ``cm.outputs``)."""
        return self._call(X, self._check(methods))

    async def aoutputs(self, X: Any, methods: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """:meth:`outputs` as a coroutine."""
        return await self._acall(X, self._check(methods))

    @_ServedMethod
    def predict(self, X: Any) -> npt.NDArray[Any]:
        """``cm.predict(X)``, scored in a batch with other callers' rows."""
        return self._call(X, ("predict",))["predict"]

    @_ServedMethod
    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """``cm.predict_proba(X)``, scored in a batch with other callers' rows."""
        return self._call(X, ("predict_proba",))["predict_proba"]

    @_ServedMethod
    def decision_function(self, X: Any) -> npt.NDArray[np.float64]:
        """``cm.decision_function(X)``, scored in a batch with other callers' rows."""
        return self._call(X, ("decision_function",))["decision_function"]

    @_ServedMethod
    def score_samples(self, X: Any) -> npt.NDArray[np.float64]:
        """``cm.score_samples(X)``, scored in a batch with other callers' rows."""
        return self._call(X, ("score_samples",))["score_samples"]

    @_ServedMethod
    def apply(self, X: Any) -> npt.NDArray[np.int64]:
        """``cm.apply(X)``, scored in a batch with other callers' rows."""
        return self._call(X, ("apply",))["apply"]

    @_ServedMethod
    async def apredict(self, X: Any) -> npt.NDArray[Any]:
        """:meth:`predict` as a coroutine: the event loop runs on while the batch is scored."""
        return (await self._acall(X, ("predict",)))["predict"]

    @_ServedMethod
    async def apredict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        """:meth:`predict_proba` as a coroutine."""
        return (await self._acall(X, ("predict_proba",)))["predict_proba"]

    @_ServedMethod
    async def adecision_function(self, X: Any) -> npt.NDArray[np.float64]:
        """:meth:`decision_function` as a coroutine."""
        return (await self._acall(X, ("decision_function",)))["decision_function"]

    @_ServedMethod
    async def ascore_samples(self, X: Any) -> npt.NDArray[np.float64]:
        """:meth:`score_samples` as a coroutine."""
        return (await self._acall(X, ("score_samples",)))["score_samples"]

    @_ServedMethod
    async def aapply(self, X: Any) -> npt.NDArray[np.int64]:
        """:meth:`apply` as a coroutine."""
        return (await self._acall(X, ("apply",)))["apply"]


def _as_rows(X: Any, categorical: bool) -> tuple[Any, bool]:
    """``X`` as ``cm.predict`` takes it, and whether it was one row without a row axis
    (``categorical``: whether the model has categorical features)."""
    if type(X) is np.ndarray:
        return (X.reshape(1, -1), True) if X.ndim == 1 else (X, False)
    if isinstance(X, (list, tuple)):
        if X and np.ndim(X[0]) == 0:  # numbers (or strings, refused by prepare): one row
            return [list(X)], True
        return X, False
    if hasattr(X, "to_frame") and hasattr(X, "index") and not hasattr(X, "columns"):
        # A pandas Series: one row named by its index, so the feature names are checked.
        if categorical:
            # A row taken out of a frame loses its columns' dtypes: a category becomes its
            # value, which the model would read as a category code (a silent wrong answer).
            raise TypeError(
                "this model has categorical features, which a pandas Series cannot mark: "
                "pass the row as a one-row DataFrame instead (frame.iloc[[i]])"
            )
        return X.to_frame().T, True
    return X, False


def _answer(
    request: Request, results: dict[str, npt.NDArray[Any]], start: int, single: bool
) -> dict[str, npt.NDArray[Any]]:
    """The caller's own rows of each method's results, copied out of the batch's arrays."""
    if single:
        answer = {}
        for m in request.methods:
            value = results[m][start]
            answer[m] = value.copy() if type(value) is np.ndarray else value
        return answer
    stop = start + request.n
    return {m: results[m][start:stop].copy() for m in request.methods}
