"""treecomp.Serving: concurrent requests gathered into batches, each caller its own answer."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_close, assert_equal
from tests.zoo import fitted, pd
from treecomp import serving as serving_module
from treecomp import serving_queue

# Every test that waits for threads bounds the wait, and its threads are daemons: a
# deadlock fails instead of hanging.
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def xgb() -> tuple[treecomp.CompiledModel, np.ndarray]:
    model, X = fitted("xgboost_binary")
    return treecomp.convert(model), np.asarray(X)


@pytest.fixture(scope="module")
def gb() -> tuple[treecomp.CompiledModel, np.ndarray]:
    """A classifier with every method but score_samples, that refuses NaN."""
    model, X = fitted("sklearn_gb")
    return treecomp.convert(model), np.asarray(X)


def in_threads(n: int, target: Callable[[int], Any]) -> list[Any]:
    """``target(k)`` for k < n, each in its own thread, all released at once; the results,
    or the exceptions raised, in order."""
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def run(k: int) -> None:
        start.wait()
        try:
            results[k] = target(k)
        except Exception as exc:
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
        assert not thread.is_alive(), "a request was never answered"
    return results


def error_of(call: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def test_32_threads_of_single_rows_get_their_own_answers(xgb: Any) -> None:
    cm, X = xgb
    rows_per_thread = 8
    with treecomp.Serving(cm, max_batch_size=16, max_wait_ms=2) as serving:

        def requests(k: int) -> list[Any]:
            rows = range(k, k + 32 * rows_per_thread, 32)
            return [(serving.predict(X[i]), serving.predict_proba(X[i])) for i in rows]

        answers = in_threads(32, requests)
        stats = serving.stats
    expected_labels = cm.predict(X)
    for k, own in enumerate(answers):
        assert not isinstance(own, Exception), own
        for j, (label, proba) in enumerate(own):
            i = k + 32 * j
            # Each answer is compared with cm.predict on its own row, one row at a time.
            assert label == cm.predict(X[i : i + 1])[0] == expected_labels[i]
            assert_equal(proba, cm.predict_proba(X[i : i + 1])[0])
    assert stats.requests == stats.rows == 2 * 32 * rows_per_thread
    assert stats.batches < stats.requests  # requests were gathered
    assert stats.rows / stats.batches <= 16
    assert serving._batcher._inflight_rows == 0  # every caller that returned was counted out


def test_mixed_methods_in_one_batch(gb: Any) -> None:
    cm, X = gb
    methods = ("predict", "predict_proba", "decision_function", "apply")
    # Eight requests, max_batch_size=8, a wait far beyond the test: one full batch, scored
    # as soon as the eighth arrives.
    with treecomp.Serving(cm, max_batch_size=8, max_wait_ms=600_000) as serving:
        answers = in_threads(8, lambda k: getattr(serving, methods[k % 4])(X[k : k + 1]))
        assert serving.stats == serving_module.ServingStats(requests=8, rows=8, batches=1)
    for k, answer in enumerate(answers):
        expected = getattr(cm, methods[k % 4])(X[k : k + 1])
        if methods[k % 4] in ("predict", "apply"):
            assert_equal(answer, expected)
        else:
            # ONNX Runtime's single-row graph and its batch graph may round the link's exp
            # differently in the last place; both are this model's own answers.
            assert_close(answer, expected, "float64")


def test_a_bad_row_fails_only_its_own_request(gb: Any) -> None:
    cm, X = gb
    nan_row = X[3].copy()
    nan_row[4] = np.nan
    text_row = X[5].astype(object)
    text_row[2] = "seven"
    bad = {
        3: nan_row,  # the model refuses NaN, as scikit-learn does
        5: text_row,
        9: X[9, :-1],  # one feature short
        12: [[*X[12].tolist(), 0.0]],  # one feature too many
    }
    with treecomp.Serving(cm, max_batch_size=32, max_wait_ms=5) as serving:
        answers = in_threads(32, lambda k: serving.predict(bad.get(k, X[k])))
    for k, answer in enumerate(answers):
        if k not in bad:
            assert answer == cm.predict(X[k : k + 1])[0]
            continue
        given = bad[k]
        as_rows = given if isinstance(given, list) else given.reshape(1, -1)
        expected = error_of(lambda rows=as_rows: cm.predict(rows))
        assert type(answer) is type(expected)
        assert str(answer) == str(expected)


def test_an_engine_failure_is_rescored_request_by_request(
    xgb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the engine fail on a batch, each request is scored again on its own, and only
    the one it fails on gets the error."""
    cm, X = xgb
    score = cm._outputs

    def fragile(engine: Any, rows: np.ndarray, methods: Any) -> Any:
        if (rows == 1234.5).any():
            raise RuntimeError("the engine choked on 1234.5")
        return score(engine, rows, methods)

    monkeypatch.setattr(cm, "_outputs", fragile)
    poisoned = X[7].copy()
    poisoned[0] = 1234.5
    with treecomp.Serving(cm, max_batch_size=16, max_wait_ms=600_000) as serving:
        answers = in_threads(16, lambda k: serving.predict(poisoned if k == 7 else X[k]))
        stats = serving.stats
    for k, answer in enumerate(answers):
        if k == 7:
            assert isinstance(answer, RuntimeError) and "1234.5" in str(answer)
        else:
            assert answer == cm.predict(X[k : k + 1])[0]
    assert stats.batches == 1 + 16  # the batch, then each request alone


def test_asyncio_gather_of_200_requests(xgb: Any) -> None:
    cm, X = xgb
    expected = cm.predict(X[:200])

    async def main() -> tuple[list[Any], list[Any], Any]:
        async with treecomp.Serving(cm, max_batch_size=64, max_wait_ms=50) as serving:
            labels = await asyncio.gather(*(serving.apredict(X[i]) for i in range(200)))
            probas = await asyncio.gather(
                *(serving.apredict_proba(X[i : i + 2]) for i in range(0, 20, 2))
            )
            stats = serving.stats
        return list(labels), list(probas), stats

    labels, probas, stats = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert_equal(np.array(labels), expected)
    for j, proba in enumerate(probas):
        assert_equal(proba, cm.predict_proba(X[2 * j : 2 * j + 2]))
    assert stats.requests == 210
    assert stats.batches <= 10  # the 200 coroutines queue before any waits: full batches


def test_asyncio_errors_reach_their_coroutine(gb: Any) -> None:
    cm, X = gb

    async def main() -> list[Any]:
        async with treecomp.Serving(cm, max_wait_ms=1) as serving:
            calls = [serving.apredict(X[i] if i != 4 else X[i, :3]) for i in range(10)]
            return list(await asyncio.gather(*calls, return_exceptions=True))

    answers = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert isinstance(answers[4], ValueError) and "3 features" in str(answers[4])
    assert [a for i, a in enumerate(answers) if i != 4] == [
        cm.predict(X[i : i + 1])[0] for i in range(10) if i != 4
    ]


def test_a_cancelled_coroutine_is_skipped(xgb: Any) -> None:
    cm, X = xgb

    async def main() -> tuple[list[Any], Any]:
        # Four rows fill a batch; the wait is far beyond the test.
        serving = treecomp.Serving(cm, max_batch_size=4, max_wait_ms=600_000)
        tasks = [asyncio.ensure_future(serving.apredict(X[i])) for i in range(3)]
        await asyncio.sleep(0)  # the three are queued
        tasks[1].cancel()
        tasks.append(asyncio.ensure_future(serving.apredict(X[3])))  # the batch is full
        answers = await asyncio.gather(*tasks, return_exceptions=True)
        await serving.aclose()
        assert serving._batcher._inflight_rows == 0  # the cancelled one too
        return list(answers), serving.stats

    answers, stats = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert isinstance(answers[1], asyncio.CancelledError)
    assert [answers[i] for i in (0, 2, 3)] == [cm.predict(X[i : i + 1])[0] for i in (0, 2, 3)]
    assert stats == serving_module.ServingStats(requests=3, rows=3, batches=1)


def test_close_drains_pending_requests_and_refuses_new_ones(xgb: Any) -> None:
    cm, X = xgb
    # A wait of ten minutes and room for 1000 rows: nothing is scored until close().
    serving = treecomp.Serving(cm, max_batch_size=1000, max_wait_ms=600_000)
    answers: list[Any] = [None] * 10

    def request(k: int) -> None:
        answers[k] = serving.predict(X[k])

    threads = [threading.Thread(target=request, args=(k,), daemon=True) for k in range(10)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    while len(serving._batcher._pending) < 10:  # all ten queued, none answered
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert answers == [None] * 10
    start = time.monotonic()
    serving.close()
    assert time.monotonic() - start < TIMEOUT_S
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert_equal(np.array(answers), cm.predict(X[:10]))
    assert serving.closed and serving.stats.batches == 1
    serving.close()  # again: nothing to do
    with pytest.raises(RuntimeError, match="closed"):
        serving.predict(X[0])
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(serving.apredict(X[0]))


def test_a_lone_request_waits_max_wait_ms_and_a_large_one_is_scored_alone(xgb: Any) -> None:
    cm, X = xgb
    with treecomp.Serving(cm, max_batch_size=4, max_wait_ms=50) as serving:
        start = time.perf_counter()
        label = serving.predict(X[0])
        assert time.perf_counter() - start >= 0.045
        assert label == cm.predict(X[:1])[0]
        # Ten rows, more than max_batch_size: one call of its own, never split.
        assert_equal(serving.predict(X[:10]), cm.predict(X[:10]))
        assert serving.stats == serving_module.ServingStats(requests=2, rows=11, batches=2)


def test_a_single_caller_stops_waiting_after_eight_batches(xgb: Any) -> None:
    """The worker waits for max_batch_size rows until it has seen how many rows the callers
    keep in flight (here one): from the ninth batch on, a lone request does not wait."""
    cm, X = xgb
    with treecomp.Serving(cm, max_batch_size=64, max_wait_ms=100) as serving:
        times = []
        for i in range(16):
            start = time.perf_counter()
            assert serving.predict(X[i]) == cm.predict(X[i : i + 1])[0]
            times.append(time.perf_counter() - start)
    assert min(times[:8]) >= 0.095  # each waited max_wait_ms for company
    assert max(times[8:]) < 0.095  # none did


def test_input_types(xgb: Any) -> None:
    cm, X = xgb
    names = [f"f{j}" for j in range(X.shape[1])]
    with treecomp.Serving(cm, max_wait_ms=0) as serving:
        # A 1-D row (array or list) is one row, answered without the row axis.
        assert serving.predict(X[0]) == cm.predict(X[:1])[0]
        assert serving.predict(list(X[1])) == cm.predict(X[1:2])[0]
        assert_equal(serving.predict_proba(X[2]), cm.predict_proba(X[2:3])[0])
        assert_equal(serving.apply(X[3]), cm.apply(X[3:4])[0])
        # 2-D arrays, lists of rows and frames are answered as cm.predict answers them.
        assert_equal(serving.predict(X[:5]), cm.predict(X[:5]))
        assert_equal(serving.predict(X[:5].tolist()), cm.predict(X[:5]))
        assert_equal(serving.predict(X[:0]), cm.predict(X[:0]))
        assert_equal(serving.predict(X[:5].astype(np.float32)), cm.predict(X[:5]))
        frame = pd.DataFrame(X[:5], columns=names)
        assert_equal(serving.predict(frame), cm.predict(frame))
        assert serving.predict(frame.iloc[2]) == cm.predict(frame.iloc[[2]])[0]
        both = serving.outputs(X[:3], ["predict_proba", "predict"])
        assert_equal(both["predict"], cm.predict(X[:3]))
        assert_equal(both["predict_proba"], cm.predict_proba(X[:3]))
        with pytest.raises(ValueError, match="expected a 2-D array"):
            serving.predict(X[:2][None])
        with pytest.raises(ValueError, match="unknown method"):
            serving.outputs(X[:1], ["predict_log_proba"])


def test_frames_with_categories() -> None:
    model, frame = fitted("lightgbm_categorical_zero")
    cm = treecomp.convert(model)
    with treecomp.Serving(cm, max_batch_size=8, max_wait_ms=5) as serving:
        answers = in_threads(16, lambda k: serving.predict(frame.iloc[[k]]))
        assert_equal(np.concatenate(answers), cm.predict(frame.iloc[:16]))
        # A Series row has lost its category dtype: refused rather than read as codes.
        with pytest.raises(TypeError, match="one-row DataFrame"):
            serving.predict(frame.iloc[0])


def test_rows_of_both_precisions_in_one_batch() -> None:
    """precision="auto" scores float32 rows of a float64 model in float32, on another
    engine: a batch of both is scored once per precision, each row as cm.predict does."""
    model, X = fitted("lightgbm_binary_nan")
    cm = treecomp.convert(model)
    rows = [X[k] if k % 2 else X[k].astype(np.float32) for k in range(16)]
    with treecomp.Serving(cm, max_batch_size=16, max_wait_ms=600_000) as serving:
        answers = in_threads(16, lambda k: serving.decision_function(rows[k]))
        assert serving.stats.batches == 2
    for k, answer in enumerate(answers):
        assert answer == cm.decision_function(rows[k][None])[0]


def test_methods_the_model_lacks_and_bad_options(xgb: Any) -> None:
    cm, _ = xgb
    model, _ = fitted("sklearn_multi_output")
    regressor = treecomp.convert(model, "numpy")
    with treecomp.Serving(regressor) as serving:
        assert not hasattr(serving, "predict_proba")
        assert not hasattr(serving, "apredict_proba")
        assert "predict_proba" not in dir(serving) and "predict" in dir(serving)
        message = str(error_of(lambda: regressor.predict_proba))
        assert str(error_of(lambda: serving.predict_proba)) == message
    with pytest.raises(TypeError, match="CompiledModel"):
        treecomp.Serving(model)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_batch_size"):
            treecomp.Serving(cm, max_batch_size=bad)
    for bad in (-1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="max_wait_ms"):
            treecomp.Serving(cm, max_wait_ms=bad)


def test_the_worker_is_a_named_daemon_that_ends(xgb: Any) -> None:
    cm, X = xgb
    serving = treecomp.Serving(cm)
    serving.predict(X[0])
    worker = serving._batcher._thread
    assert worker is not None and worker.daemon and worker.name.startswith("treecomp-serving")
    serving.close()
    assert not worker.is_alive()
    # A Serving dropped without close() stops its worker when it is collected.
    dropped = treecomp.Serving(cm)
    dropped.predict(X[0])
    worker = dropped._batcher._thread
    del dropped
    gc.collect()
    assert worker is not None
    worker.join(TIMEOUT_S)
    assert not worker.is_alive()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_worker_of_its_own(xgb: Any) -> None:
    _, X = xgb
    model, _ = fitted("xgboost_binary")
    cm = treecomp.convert(model, "numpy")  # no runtime threads to lose in the fork
    with treecomp.Serving(cm) as serving:
        expected = serving.predict(X[:4])
        pid = os.fork()
        if pid == 0:  # the child: answer, then leave without running pytest's teardown
            ok = np.array_equal(serving.predict(X[:4]), expected)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_an_interrupted_caller_leaves_the_others_answered(xgb: Any) -> None:
    """KeyboardInterrupt in a thread waiting for its answer: the request leaves the batch,
    and the threads after it are still woken."""
    cm, X = xgb
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    serving = treecomp.Serving(cm, max_batch_size=4, max_wait_ms=600_000)
    answers: dict[int, Any] = {}

    def request(k: int) -> None:
        answers[k] = serving.predict(X[k])

    def queued(n: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while len(serving._batcher._pending) < n:
            assert time.monotonic() < deadline
            time.sleep(0.002)

    first = [threading.Thread(target=request, args=(k,), daemon=True) for k in (0, 1)]
    for thread in first:
        thread.start()
    queued(2)

    def interrupt() -> None:
        queued(3)
        time.sleep(0.05)  # the main thread is waiting for its answer by now
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt, daemon=True)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        serving.predict(X[2])
    interrupter.join(TIMEOUT_S)
    last = threading.Thread(target=request, args=(3,), daemon=True)
    last.start()  # the fourth row: a full batch
    for thread in [*first, last]:
        thread.join(TIMEOUT_S)
        assert not thread.is_alive()
    serving.close()
    assert answers == {k: cm.predict(X[k : k + 1])[0] for k in (0, 1, 3)}
    assert serving.stats.rows == 3  # the interrupted request was not scored
    assert serving._batcher._inflight_rows == 0


def test_half_a_batch_is_full_once_no_caller_is_on_its_way_back(xgb: Any) -> None:
    """A batch waits for the callers on their way back (answered, not yet returned) up to
    as many rows as were lately in flight; once every caller in flight is queued, half of
    that is a full batch (callers gone to work of their own are not waited for)."""
    cm, X = xgb
    batcher = serving_queue.Batcher(cm, 8, 600.0)  # a wait of ten minutes: never reached

    def request(k: int) -> serving_queue.Request:
        return serving_queue.Request(X[k], ("predict",), raw=True)

    first = [request(k) for k in range(8)]
    taken = [batcher.submit(r, lead=True) for r in first]
    assert taken[:7] == [None] * 7 and taken[7] == first  # max_rows, before any epoch
    batcher.run(first, lead=True)
    batcher._most, batcher._half = 8, 4  # as eight callers in flight teach it
    second = [request(k) for k in range(8, 12)]
    # Half a batch queued, the first eight callers on their way back: not full.
    assert [batcher.submit(r, lead=True) for r in second] == [None] * 4
    for r in first[:7]:
        batcher.returned(r)  # seven came back and left
    assert batcher.lead() is None  # one is still on its way back
    batcher.returned(first[7])  # it left too: nobody is on the way
    assert batcher.lead() == second
    batcher.run(second, lead=True)
    # Callers on their way back who come back fill a batch of all of them.
    third = [request(k) for k in range(12, 20)]
    taken = [batcher.submit(r, lead=True) for r in third]
    assert taken[:7] == [None] * 7 and taken[7] == third
    batcher.run(third, lead=True)
    for r in [*second, *third]:
        batcher.returned(r)
    batcher.close(TIMEOUT_S)
    assert batcher._inflight_rows == 0 and (batcher.requests, batcher.batches) == (20, 3)
    labels = [r.result() for r in [*first, *second, *third]]
    for k, (results, start) in enumerate(labels):
        assert results["predict"][start] == cm.predict(X[k : k + 1])[0]


def test_the_thread_whose_request_fills_a_batch_scores_it(
    xgb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No wake-up of the worker for a full batch: the caller that fills it scores it."""
    cm, X = xgb
    score, scorers = cm._outputs, []

    def recorded(engine: Any, rows: np.ndarray, methods: Any) -> Any:
        scorers.append(threading.current_thread())
        return score(engine, rows, methods)

    monkeypatch.setattr(cm, "_outputs", recorded)
    with treecomp.Serving(cm, max_batch_size=4, max_wait_ms=600_000) as serving:
        answers = in_threads(4, lambda k: serving.predict(X[k]))
        worker = serving._batcher._thread
    assert answers == [cm.predict(X[k : k + 1])[0] for k in range(4)]
    assert len(scorers) == 1 and scorers[0] is not worker
    assert scorers[0].name.startswith("Thread-")  # one of in_threads' callers


def test_an_interrupted_scoring_caller_hands_its_batch_back(
    xgb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt in the thread scoring a batch it filled: that thread's call raises
    it, and the worker answers the batch's other requests."""
    cm, X = xgb
    score = cm._outputs
    interrupts = [KeyboardInterrupt()]

    def interrupted(engine: Any, rows: np.ndarray, methods: Any) -> Any:
        if threading.current_thread() is threading.main_thread() and interrupts:
            raise interrupts.pop()
        return score(engine, rows, methods)

    monkeypatch.setattr(cm, "_outputs", interrupted)
    serving = treecomp.Serving(cm, max_batch_size=4, max_wait_ms=600_000)
    answers: dict[int, Any] = {}

    def request(k: int) -> None:
        answers[k] = serving.predict(X[k])

    threads = [threading.Thread(target=request, args=(k,), daemon=True) for k in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    while len(serving._batcher._pending) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    with pytest.raises(KeyboardInterrupt):
        serving.predict(X[3])  # the fourth row fills the batch: scored here, interrupted
    for thread in threads:
        thread.join(TIMEOUT_S)
        assert not thread.is_alive()
    serving.close()
    assert answers == {k: cm.predict(X[k : k + 1])[0] for k in range(3)}
    assert serving.stats.rows == 3  # the interrupted caller's row was not scored
    assert serving._batcher._inflight_rows == 0


def test_a_stalled_wake_up_chain_recovers(xgb: Any) -> None:
    """A thread woken but gone before it wakes the next (interrupted between the two):
    the threads after it wake by themselves once answered."""
    _, X = xgb
    requests = [serving_queue.Request(X[k : k + 1], ("predict",)) for k in range(4)]
    for k, request in enumerate(requests):
        request.answer = ({"predict": np.arange(4)}, k)
    # No thread for the first request: woken, it never wakes the next.
    waiting = [threading.Thread(target=r.wait, daemon=True) for r in requests[1:]]
    for thread in waiting:
        thread.start()
    serving_queue.Chain(requests).wake_next()
    for thread in waiting:
        thread.join(TIMEOUT_S)
        assert not thread.is_alive()
    assert all(r.awake for r in requests)
