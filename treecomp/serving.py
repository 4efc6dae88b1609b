"""Batched serving: concurrent requests of a few rows gathered into one scoring call.

A server calls its model once per request, from many threads or coroutines, and every call
pays fixed costs (Python's checks, the runtime's call, on ONNX Runtime a row's trees split
over threads) that a batch pays once: the benchmark's 500-tree XGBoost model on the default
backend spends 80 to 220 us of CPU on a one-row call and about 40 us a row in calls of 32
rows (``python benchmarks/serving.py``, 2 shared cores). :class:`Serving` does what
Triton's dynamic batcher and Elixir's ``Nx.Serving`` do: requests wait in a queue, and one
worker thread scores whatever has gathered in one call (at most ``max_batch_size`` rows,
waiting at most ``max_wait_ms``, see :class:`Serving`), then hands each caller its own rows.

Each request is checked and prepared on its own, in the caller's thread, by the same
:func:`treecomp.inputs.prepare` that ``cm.predict`` runs: a bad request (wrong width, NaN
where the model refuses it, a string) raises there, with ``cm.predict``'s error, and never
joins a batch. Only prepared rows are concatenated, so one caller's rows cannot change
another's answer; should the engine still fail on a batch, its requests are scored again one
by one, so that only the one at fault gets the error. A request is never split: one larger
than ``max_batch_size`` is scored alone.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from treecomp.container import CompiledModel
from treecomp.inputs import categorical_features, check_positive, prepare
from treecomp.ir import METHODS

_names = itertools.count(1)
# Every live batcher, for a forked child to reset (see _Batcher._reset).
_batchers: weakref.WeakSet[_Batcher] = weakref.WeakSet()


def _after_fork() -> None:
    for batcher in list(_batchers):
        batcher._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


@dataclass(frozen=True, slots=True)
class ServingStats:
    """What a :class:`Serving` has scored since it started.

    Attributes:
        requests: Requests answered (with a result or an error raised by the engine).
        rows: Rows scored.
        batches: Calls to the engine: ``rows / batches`` is the mean batch.
    """

    requests: int
    rows: int
    batches: int


# How long a thread waits for the one woken before it to wake it (see _Chain) once its
# answer is ready, before it wakes itself: only a thread interrupted between its wake-up
# and the next one's (KeyboardInterrupt) fails to.
_STALL_S = 0.05
# Batches over which the worker keeps the peak of the rows in flight (see _note_load).
_EPOCH = 8


class _Request:
    """One caller's prepared rows, the methods it asked for, and how its answer reaches it.

    A thread waits on a lock (CPython's cheapest wake-up; a ``concurrent.futures.Future``
    adds about 10 us a request, a third of what batching leaves of a single-row call),
    released by the thread woken before it (see :class:`_Chain`); a coroutine awaits an
    asyncio future that the worker resolves through the coroutine's event loop, once per
    batch and loop.
    """

    __slots__ = (
        "abandoned",
        "answer",
        "arrived",
        "awake",
        "cancelled",
        "chain",
        "done",
        "error",
        "loop",
        "methods",
        "n",
        "rows",
    )

    def __init__(
        self,
        rows: npt.NDArray[np.floating],
        methods: tuple[str, ...],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.rows = rows
        self.n = rows.shape[0]
        self.methods = methods
        self.arrived = time.monotonic()
        # Set by the worker before it wakes the caller: the batch's results and where this
        # request's rows start in them, or the error.
        self.answer: tuple[dict[str, npt.NDArray[Any]], int] | None = None
        self.error: BaseException | None = None
        self.cancelled = False  # the awaiting coroutine was cancelled: skip the request
        self.abandoned = False  # the waiting thread was interrupted: skip the request
        self.chain: _Chain | None = None  # set once answered, before the wake-ups
        self.awake = False  # woken (or awake by itself): the chain passes it over
        self.loop = loop
        self.done: Any
        if loop is None:
            self.done = threading.Lock()
            self.done.acquire()
        else:
            self.done = loop.create_future()

    def wait(self) -> tuple[dict[str, npt.NDArray[Any]], int]:
        """Block until the worker has answered, then wake the next thread of the batch."""
        while not self.done.acquire(timeout=_STALL_S):
            chain = self.chain
            if chain is not None and chain.claim(self):
                break  # answered, and the thread before this one did not wake it
        assert self.chain is not None  # set before any wake-up
        self.chain.wake_next()
        return self._result()

    async def wait_async(self) -> tuple[dict[str, npt.NDArray[Any]], int]:
        """Wait until the worker has answered (a coroutine's request)."""
        try:
            await self.done
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self._result()

    def _result(self) -> tuple[dict[str, npt.NDArray[Any]], int]:
        if self.error is not None:
            raise self.error
        assert self.answer is not None  # the worker sets one of the two before waking
        return self.answer


class _Chain:
    """Wakes the threads of a batch one after the other: the worker wakes the first, and
    each woken thread the next, while it holds the GIL.

    Woken all at once, 32 threads fight for the GIL, and their requests cost more CPU time
    and come back later. 32 threads of single-row requests on 2 shared cores, both ways
    alternating in 1.5 s rounds (medians of 8), requests per second all at once / one by
    one: 500-tree XGBoost 15 400 / 17 500 (55 / 50 us of CPU a request), its 100-tree
    ``--quick`` version 24 100 / 30 400 (the clients of ``benchmarks/serving.py``, run on
    both versions of this module loaded side by side).
    """

    __slots__ = ("lock", "position", "requests")

    def __init__(self, requests: list[_Request]) -> None:
        self.requests = requests
        self.position = 0
        self.lock = threading.Lock()
        for request in requests:
            request.chain = self

    def wake_next(self) -> None:
        """Wake the first thread of the batch not yet awake (none left: nothing)."""
        with self.lock:
            while self.position < len(self.requests):
                request = self.requests[self.position]
                self.position += 1
                if not request.awake and not request.abandoned:
                    request.awake = True
                    request.done.release()
                    return

    def claim(self, request: _Request) -> bool:
        """Whether ``request``'s thread, answered but not woken, may go on by itself."""
        with self.lock:
            if request.awake:
                return False  # woken meanwhile: its lock is free
            request.awake = True
            return True


def _wake(requests: Sequence[_Request]) -> None:
    """Wake the callers of answered requests: threads through a :class:`_Chain`, coroutines
    with one call into each event loop (each call writes to the loop's self-pipe)."""
    threads = [r for r in requests if r.loop is None]
    if threads:
        _Chain(threads).wake_next()  # the first wakes the next, and so on
    futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for request in requests:
        if request.loop is not None:
            futures.setdefault(request.loop, []).append(request.done)
    for loop, waiting in futures.items():
        try:
            loop.call_soon_threadsafe(_resolve, waiting)
        except RuntimeError:  # the loop is closed: nobody waits there any more
            pass


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # not cancelled meanwhile
            future.set_result(None)


class _Batcher:
    """The queue and the worker thread behind a :class:`Serving`.

    Apart from it so that the thread holds no reference to the :class:`Serving`: one that is
    dropped without ``close()`` is collected, and its finalizer stops the thread.
    """

    def __init__(self, model: CompiledModel, max_rows: int, max_wait_s: float) -> None:
        self.model = model
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.name = f"treecomp-serving-{next(_names)}"
        self.requests = self.rows = self.batches = 0  # written by the worker only
        # Rows that make a full batch: at most max_rows, and half the rows lately in flight
        # at once (see _note_load); until the worker has seen _EPOCH batches, max_rows.
        self._full = max_rows
        self._load = [2 * max_rows, 0]  # the peak of the last epoch, and of this one
        self._epoch_batches = 0
        self._closing = False
        self._reset()
        _batchers.add(self)

    def _reset(self) -> None:
        """A fresh queue and no worker: at the start, and in a forked child (where the
        parent's worker does not exist and its locks may be held by threads that do not)."""
        self._ready = threading.Condition(threading.Lock())
        self._pending: deque[_Request] = deque()
        self._pending_rows = 0
        self._thread: threading.Thread | None = None

    def submit(self, request: _Request) -> None:
        with self._ready:
            if self._closing:
                raise RuntimeError(
                    "this Serving is closed: it takes no more requests (make a new one, or "
                    "call the CompiledModel directly)"
                )
            if self._thread is None:  # started at the first request
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._pending.append(request)
            self._pending_rows += request.n
            # The worker waits for a first request, or for a full batch: wake it for those.
            if len(self._pending) == 1 or self._pending_rows >= self._full:
                self._ready.notify()

    def close(self, timeout: float | None = None) -> None:
        with self._ready:
            self._closing = True
            self._ready.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closing

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    if self._closing:
                        return
                    self._ready.wait()
                # Wait for a full batch until the oldest request has waited max_wait_s; a
                # worker back from a long batch finds it has, and scores what came meanwhile.
                deadline = self._pending[0].arrived + self.max_wait_s
                while self._pending_rows < self._full and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._ready.wait(left)
                batch = self._take()
            try:
                self._score(batch)
            except BaseException as exc:  # never leave a caller waiting, nor end the worker
                waiting = [r for r in batch if r.answer is None and r.error is None]
                for request in waiting:
                    request.error = exc
                _wake(waiting)
            self._epoch_batches += 1
            if self._epoch_batches == _EPOCH:
                self._load, self._epoch_batches = [self._load[1], 0], 0
            self._full = min(self.max_rows, max(1, -(-max(self._load) // 2)))

    def _note_load(self, rows: int) -> None:
        """Note the rows in flight as a batch of ``rows`` rows is answered: those and the
        rows waiting (without the lock: an estimate). How many rows the callers keep in
        flight, half scored while the other half comes back, is the batch to wait for: a
        batch of all of them would leave the engine idle while they come back, and a wait
        for more would wait for callers that do not exist."""
        load = self._pending_rows + rows
        if load > self._load[1]:
            self._load[1] = load

    def _take(self) -> list[_Request]:
        """The oldest requests that fit in one batch (the oldest alone if it does not fit)."""
        first = self._pending.popleft()
        batch, rows = [first], first.n
        while self._pending and rows + self._pending[0].n <= self.max_rows:
            request = self._pending.popleft()
            batch.append(request)
            rows += request.n
        self._pending_rows -= rows
        return batch

    def _score(self, batch: list[_Request]) -> None:
        live = [r for r in batch if not (r.cancelled or r.abandoned)]  # callers that left
        # Rows prepared in different precisions (precision="auto", rows of both float
        # types) run on different engines: one call per precision.
        groups: dict[np.dtype[Any], list[_Request]] = {}
        for request in live:
            groups.setdefault(request.rows.dtype, []).append(request)
        for requests in groups.values():
            self._score_group(requests)

    def _score_group(self, requests: list[_Request]) -> None:
        methods = tuple(dict.fromkeys(m for r in requests for m in r.methods))
        X = requests[0].rows
        if len(requests) > 1:
            X = np.concatenate([r.rows for r in requests])
        try:
            # rows prepared by the callers: the engine model._prepare picks for their dtype
            engine = self.model._engine_for(X.dtype.name)
            results = self.model._outputs(engine, X, methods)
        except Exception as exc:
            if len(requests) == 1:
                self.requests += 1
                requests[0].error = exc
                _wake(requests)
                return
            for request in requests:  # only the request at fault gets the error
                self._score_group([request])
            return
        finally:
            self.batches += 1
        self._note_load(X.shape[0])
        self.requests += len(requests)
        self.rows += X.shape[0]
        start = 0
        for request in requests:  # each caller slices its own rows out, in its own thread
            request.answer = (results, start)
            start += request.n
        _wake(requests)


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
    arrive together are scored together by one worker thread, in batches of at most
    ``max_batch_size`` rows; a request waits at most ``max_wait_ms`` for company.
    Each caller gets the model's answer for its own rows (what ``cm.predict`` gives them in
    a batch), or the error ``cm.predict`` raises on them.

    Inputs are those of ``cm.predict`` (NumPy arrays, lists, pandas frames) plus single
    rows: a 1-D array or list of ``n_features`` numbers, or a pandas Series indexed by
    feature name, is one row, and its answer has no row axis (a label, a vector of
    probabilities).

    Use it as a context manager, or call :meth:`close`: both wait for the requests already
    taken to be answered. Methods the model lacks raise ``AttributeError``, as on the model.

    A batch is scored once it holds ``max_batch_size`` rows, or half the rows the callers
    lately kept in flight at once (one half is scored while the other comes back: a batch
    of all of them would leave the engine idle while they come back, and a wait for more
    would wait for callers that do not exist), or once its oldest request has waited
    ``max_wait_ms``. Until it has answered 8 batches, the worker waits for
    ``max_batch_size`` rows. Serving pays where many callers send requests at once;
    a single caller is faster calling the model itself.

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
        self.max_batch_size = max_batch_size
        self.max_wait_ms = float(max_wait_ms)
        self._batcher = _Batcher(cm, max_batch_size, self.max_wait_ms / 1000.0)
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
    ) -> tuple[_Request, bool]:
        """``X`` checked and prepared as ``cm.predict`` does it (raising its errors here, in
        the caller's thread), and whether it was a single row (1-D)."""
        rows, single = _as_rows(X, self._categorical)
        if self.model.transforms is not None:  # a Pipeline's rows: encoded by its transforms
            prepared = self.model._prepare(rows)[1]
        else:
            prepared = prepare(self.model.forest, rows, self.model.precision)
        return _Request(prepared, methods, loop), single

    def _call(self, X: Any, methods: tuple[str, ...]) -> dict[str, npt.NDArray[Any]]:
        request, single = self._request(X, methods)
        try:
            self._batcher.submit(request)
            answer = request.wait()
        except BaseException:  # KeyboardInterrupt while waiting: out of the batch and chain
            request.abandoned = True
            raise
        return _answer(request, *answer, single)

    async def _acall(self, X: Any, methods: tuple[str, ...]) -> dict[str, npt.NDArray[Any]]:
        request, single = self._request(X, methods, asyncio.get_running_loop())
        self._batcher.submit(request)
        return _answer(request, *(await request.wait_async()), single)

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
    request: _Request, results: dict[str, npt.NDArray[Any]], start: int, single: bool
) -> dict[str, npt.NDArray[Any]]:
    """The caller's own rows of each method's results, copied out of the batch's arrays."""
    stop = start + request.n
    answer = {m: results[m][start:stop].copy() for m in request.methods}
    return {m: a[0] for m, a in answer.items()} if single else answer
