"""The queue behind :class:`treecomp.Serving`: requests, their wake-ups, the batcher.

Callers queue :class:`Request` objects in a :class:`Batcher`. The caller whose request fills
a batch takes it and scores it in its own thread (see :meth:`Batcher.submit`); the
batcher's worker thread scores the batches that no thread fills (its oldest request has
waited ``max_wait_ms``, or coroutines filled it, which must not block their event loop).
Threads wait on a lock each and are woken one after the other (:class:`Chain`); coroutines
await a future resolved through their event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from treecomp.inputs import dtype_name, prepare

if TYPE_CHECKING:  # the model is handed in: the queue sits below the container
    from treecomp.container import CompiledModel

# The float types of the single rows that are prepared with their batch (Batcher._score_raw).
RAW_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_names = itertools.count(1)
# Every live batcher, for a forked child to reset (see Batcher._reset).
_batchers: weakref.WeakSet[Batcher] = weakref.WeakSet()


def _after_fork() -> None:
    for batcher in list(_batchers):
        batcher._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


@dataclass(frozen=True, slots=True)
class ServingStats:
    """What a :class:`treecomp.Serving` has scored since it started.

    Attributes:
        requests: Requests answered (with a result or an error raised by the engine).
        rows: Rows scored.
        batches: Calls to the engine: ``rows / batches`` is the mean batch.
    """

    requests: int
    rows: int
    batches: int


# How long a thread waits for the one woken before it to wake it (see Chain) once its
# answer is ready, before it wakes itself: only a thread interrupted between its wake-up
# and the next one's (KeyboardInterrupt) fails to.
_STALL_S = 0.05
# Batches over which the worker keeps the peak of the rows in flight (see _note_load).
_EPOCH = 8


class Request:
    """One caller's rows, the methods it asked for, and how its answer reaches it.

    The rows are prepared (:func:`treecomp.inputs.prepare`), or one float row as the caller
    gave it (``raw``), prepared with its batch. A thread waits on a lock (CPython's cheapest
    wake-up; a ``concurrent.futures.Future`` adds about 10 us a request), released by the
    thread woken before it (see :class:`Chain`); a coroutine awaits an asyncio future that
    the scoring thread resolves through the coroutine's event loop, once per batch and loop.
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
        "raw",
        "rows",
    )

    def __init__(
        self,
        rows: npt.NDArray[np.floating],
        methods: tuple[str, ...],
        loop: asyncio.AbstractEventLoop | None = None,
        raw: bool = False,
    ) -> None:
        self.rows = rows
        self.raw = raw
        self.n = 1 if raw else rows.shape[0]
        self.methods = methods
        self.arrived = time.monotonic()
        # Set before the caller is woken: the batch's results and where this request's rows
        # start in them, or the error.
        self.answer: tuple[dict[str, npt.NDArray[Any]], int] | None = None
        self.error: BaseException | None = None
        self.cancelled = False  # the awaiting coroutine was cancelled: skip the request
        self.abandoned = False  # the waiting thread was interrupted: skip the request
        self.chain: Chain | None = None  # set once answered, before the wake-ups
        self.awake = False  # woken (or awake by itself): the chain passes it over
        self.loop = loop
        self.done: Any
        if loop is None:
            self.done = threading.Lock()
            self.done.acquire()
        else:
            self.done = loop.create_future()

    def wait(self) -> tuple[dict[str, npt.NDArray[Any]], int]:
        """Block until answered, then wake the next thread of the batch."""
        while not self.done.acquire(timeout=_STALL_S):
            chain = self.chain
            if chain is not None and chain.claim(self):
                break  # answered, and the thread before this one did not wake it
        assert self.chain is not None  # set before any wake-up
        self.chain.wake_next()
        return self.result()

    async def wait_async(self) -> tuple[dict[str, npt.NDArray[Any]], int]:
        """Wait until answered (a coroutine's request)."""
        try:
            await self.done
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.result()

    def result(self) -> tuple[dict[str, npt.NDArray[Any]], int]:
        """The answer, once there is one: raises the request's error."""
        if self.error is not None:
            raise self.error
        assert self.answer is not None  # one of the two is set before any wake-up
        return self.answer


class Chain:
    """Wakes the threads of a batch one after the other: the scoring thread wakes the first,
    and each woken thread the next, while it holds the GIL.

    Woken all at once, 32 threads fight for the GIL, and their requests cost more CPU time
    and come back later. 32 threads of single-row requests on 2 shared cores, both ways
    alternating in 1.5 s rounds (medians of 8), requests per second all at once / one by
    one: 500-tree XGBoost 15 400 / 17 500 (55 / 50 us of CPU a request), its 100-tree
    ``--quick`` version 24 100 / 30 400 (the clients of ``benchmarks/serving.py``, run on
    both versions of this module loaded side by side).
    """

    __slots__ = ("lock", "position", "requests")

    def __init__(self, requests: list[Request]) -> None:
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

    def claim(self, request: Request) -> bool:
        """Whether ``request``'s thread, answered but not woken, may go on by itself."""
        with self.lock:
            if request.awake:
                return False  # woken meanwhile: its lock is free
            request.awake = True
            return True


def wake(requests: Sequence[Request]) -> None:
    """Wake the callers of answered requests: threads through a :class:`Chain`, coroutines
    with one call into each event loop (each call writes to the loop's self-pipe)."""
    threads = [r for r in requests if r.loop is None]
    if threads:
        Chain(threads).wake_next()  # the first wakes the next, and so on
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


class _Tally:
    """What one batch's scoring did: requests answered, rows scored, engine calls (added to
    the batcher's stats under its lock), and the requests whose callers are woken after
    that, so that a caller reading ``Serving.stats`` once answered finds its request counted.
    """

    __slots__ = ("answered", "batches", "requests", "rows")

    def __init__(self) -> None:
        self.requests = self.rows = self.batches = 0
        self.answered: list[Request] = []


class Batcher:
    """The queue behind a :class:`treecomp.Serving`, and its worker thread.

    Apart from it so that the thread holds no reference to the ``Serving``: one that is
    dropped without ``close()`` is collected, and its finalizer stops the thread.
    """

    def __init__(self, model: CompiledModel, max_rows: int, max_wait_s: float) -> None:
        self.model = model
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.name = f"treecomp-serving-{next(_names)}"
        self.requests = self.rows = self.batches = 0  # written under the lock
        # Rows that make a full batch (see _full_now and _note_load): `_most`, at most
        # max_rows and the rows lately in flight at once, or `_half` of those once no caller
        # is on its way back; until _EPOCH batches were answered, max_rows both.
        self._most = self._half = max_rows
        self._load = [2 * max_rows, 0]  # the peak of the last epoch, and of this one
        self._epoch_batches = 0
        self._closing = False
        self._reset()
        _batchers.add(self)

    def _reset(self) -> None:
        """A fresh queue and no worker: at the start, and in a forked child (where the
        parent's worker does not exist and its locks may be held by threads that do not)."""
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the worker waits on it
        self._idle = threading.Condition(self._lock)  # close() waits on it
        self._pending: deque[Request] = deque()
        self._pending_rows = 0
        self._scoring = 0
        self._inflight_rows = 0  # of requests queued whose callers have not returned
        self._sleeping = False  # the worker waits for a first request, with no deadline
        self._thread: threading.Thread | None = None

    def submit(self, request: Request, lead: bool) -> list[Request] | None:
        """Queue ``request``; where it fills a batch and ``lead``, take that batch for the
        caller's thread to score (see :meth:`run`)."""
        with self._lock:
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
            self._inflight_rows += request.n
            if self._full_now():
                if lead:
                    return self._take()
                self._ready.notify()
            elif self._sleeping:  # the worker times the oldest request's wait
                self._sleeping = False
                self._ready.notify()
        return None

    def returned(self, request: Request) -> None:
        """``request``'s caller has its answer (or left): its rows are no longer in flight."""
        with self._lock:
            self._inflight_rows -= request.n

    def lead(self) -> list[Request] | None:
        """A full batch for the caller's thread to score, if one is waiting (for a caller
        whose request did not fit in the batch it took)."""
        with self._lock:
            if self._pending and self._full_now():
                return self._take()
        return None

    def close(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closing = True
            self._ready.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        while True:
            with self._lock:  # batches that callers' threads score
                while self._scoring and (deadline is None or time.monotonic() < deadline):
                    self._idle.wait(None if deadline is None else deadline - time.monotonic())
                if not self._pending or (thread is not None and thread.is_alive()):
                    return
                # handed back by an interrupted caller after the worker left: scored here
                batch = self._take()
            self.run(batch, lead=False)

    @property
    def closed(self) -> bool:
        return self._closing

    def _work(self) -> None:
        while True:
            with self._lock:
                while True:
                    if not self._pending:
                        if self._closing:
                            return
                        self._sleeping = True
                        self._ready.wait()
                        self._sleeping = False
                        continue
                    if self._closing or self._full_now():
                        break
                    # Wait until the oldest request has waited max_wait_s, unless a caller
                    # fills a batch first and scores it; a worker back from a long batch
                    # finds the wait over, and scores what came meanwhile.
                    left = self._pending[0].arrived + self.max_wait_s - time.monotonic()
                    if left <= 0:
                        break
                    self._ready.wait(left)
                batch = self._take()
            self.run(batch, lead=False)

    def _full_now(self) -> bool:
        """Whether the queued rows make a full batch, with the lock held: as many as the
        callers lately kept in flight at once (at most ``max_rows``), or half that many once
        no caller is on its way back (every request in flight is queued).

        Callers on their way back (answered, or in a batch being scored) come back within
        microseconds where they send their next request at once, and a batch of all of them
        pays its fixed costs (the engine call, the checks, the wake-ups) once for twice the
        rows. Callers gone to work of their own may not come back soon: waiting for them
        (until ``max_wait_ms``) cost throughput and latency, so once none is on its way
        back, half of them is a full batch (the rule before this one, always). 32 threads
        of single-row requests (the clients of ``benchmarks/serving.py``, both rules in one
        process, alternating rounds), requests a second, half / this rule: back to back,
        ``--quick`` 44 100 / 48 400 (22 / 19 us of CPU a request; median of 12 paired 1 s
        rounds 1.15x), the 500-tree model 40 100 / 45 200 (1.09x), load 6.7 to 8.2; with a
        sleep of 0 to 0.4 ms between requests (``--quick``), 17 700 / 20 800, p50 1.18 /
        1.01 ms, and of 0 to 2 ms, 16 600 / 16 900, p50 0.68 / 0.73 ms, where waiting for
        all of them gave 14 500 and 1.05 ms (load 6.4 to 7).
        """
        rows = self._pending_rows
        return rows >= self._most or (rows >= self._half and rows == self._inflight_rows)

    def _note_load(self) -> None:
        """Note the rows in flight as a batch is answered, with the lock held: those of
        every request whose caller has not yet returned (queued, being scored, or answered
        and not yet woken or resumed); their peak over the last epochs sizes the batches
        (:meth:`_full_now`). Callers answered but not yet back count: under load their
        wake-ups are slow, and an estimate without them (rows queued or being scored)
        shrank batch after batch to one or two rows.
        """
        load = self._inflight_rows
        if load > self._load[1]:
            self._load[1] = load
        self._epoch_batches += 1
        if self._epoch_batches == _EPOCH:
            self._load, self._epoch_batches = [self._load[1], 0], 0
            peak = max(1, *self._load)
            self._most = min(self.max_rows, peak)
            self._half = min(self.max_rows, -(-peak // 2))

    def _take(self) -> list[Request]:
        """The oldest requests that fit in one full batch (the oldest alone if it does not
        fit), taken out of the queue, with the lock held. Never more: where more have
        queued (coroutines that resume together, a worker back late), the rest is the next
        batch, scored while this one's callers come back."""
        first = self._pending.popleft()
        batch, rows = [first], first.n
        while self._pending and rows + self._pending[0].n <= self._most:
            request = self._pending.popleft()
            batch.append(request)
            rows += request.n
        self._pending_rows -= rows
        self._scoring += 1
        return batch

    def run(self, batch: list[Request], *, lead: bool) -> None:
        """Score a taken batch and answer its callers, in the worker or (``lead``) in the
        thread of the caller whose request filled it."""
        tally = _Tally()
        try:
            self._score(batch, tally)
        except BaseException as exc:
            # Not an engine's error (_score gives those to their requests): an interrupt of
            # the scoring thread. A caller's thread hands the requests left back to the
            # queue, for the worker, and goes on with its interrupt; the worker gives them
            # the error.
            left = [r for r in batch if r.answer is None and r.error is None]
            if lead:
                with self._lock:
                    self._pending.extendleft(reversed(left))
                    self._pending_rows += sum(r.n for r in left)
                    self._ready.notify()
                raise
            for request in left:
                request.error = exc
            tally.answered.extend(left)
        finally:
            # Counted, then woken, then idle: a caller sees its request in the stats, and a
            # close that drains returns once every caller of the batch is woken.
            with self._lock:
                self.requests += tally.requests
                self.rows += tally.rows
                self.batches += tally.batches
                self._note_load()
            wake(tally.answered)
            with self._lock:
                self._scoring -= 1
                if not self._scoring:
                    self._idle.notify_all()

    def _score(self, batch: list[Request], tally: _Tally) -> None:
        live = [r for r in batch if not (r.cancelled or r.abandoned)]  # callers that left
        # Rows of different float types are prepared apart, and rows prepared in different
        # precisions (precision="auto", rows of both float types) run on different
        # engines: one call per group.
        groups: dict[tuple[bool, np.dtype[Any]], list[Request]] = {}
        for request in live:
            groups.setdefault((request.raw, request.rows.dtype), []).append(request)
        for (raw, _), requests in groups.items():
            if raw:
                self._score_raw(requests, tally)
            else:
                self._score_group(requests, tally)

    def _score_raw(self, requests: list[Request], tally: _Tally) -> None:
        """Score single rows not yet prepared: all at once where the batch passes
        :func:`prepare`'s checks, else each prepared alone, so that the row at fault fails
        its own request only, with the error ``cm.predict`` raises on it."""
        model = self.model
        try:
            X = prepare(model.forest, np.array([r.rows for r in requests]), model.precision)
        except Exception:
            prepared, failed = [], []
            for request in requests:
                try:
                    request.rows = prepare(model.forest, request.rows[None], model.precision)
                    request.raw = False
                    prepared.append(request)
                except Exception as exc:
                    request.error = exc
                    failed.append(request)
            tally.requests += len(failed)
            tally.answered.extend(failed)
            self._score(prepared, tally)
            return
        self._score_group(requests, tally, X)

    def _score_group(
        self, requests: list[Request], tally: _Tally, X: npt.NDArray[Any] | None = None
    ) -> None:
        """Score requests whose rows are prepared in one precision (or stacked in ``X``)."""
        methods = tuple(dict.fromkeys(m for r in requests for m in r.methods))
        if X is None:
            X = requests[0].rows
            if len(requests) > 1:
                X = np.concatenate([r.rows for r in requests])
        tally.batches += 1
        try:
            # prepared rows: the engine model._prepare picks for their dtype
            engine = self.model._engine_for(dtype_name(X.dtype))
            results = self.model._outputs(engine, X, methods)
        except Exception as exc:
            if len(requests) == 1:
                tally.requests += 1
                requests[0].error = exc
                tally.answered.extend(requests)
                return
            for i, request in enumerate(requests):  # only the request at fault gets the error
                if request.raw:
                    request.rows, request.raw = X[i : i + 1], False
                self._score_group([request], tally)
            return
        tally.requests += len(requests)
        tally.rows += X.shape[0]
        start = 0
        for request in requests:  # each caller slices its own rows out, in its own thread
            request.answer = (results, start)
            start += request.n
        tally.answered.extend(requests)
