"""How the bench times a call and checks its output: the timing loop and the deviation.

:func:`time_calls` is the loop every worker runs (and ``treecomp demo``, shorter): warm-up
calls, then timed calls on distinct batches until a run count and a time budget are met.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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
        rounds: Times each model's systems run in turn, a fresh process each
            (:func:`merge_rounds`).
    """

    threads: int = 2
    warmup: int = 2
    min_runs: int = 5
    max_runs: int = 1000
    budget_s: float = 1.0
    max_call_s: float = 30.0
    numpy_max_batch: int = 1_000
    rounds: int = 1


@dataclass(frozen=True, slots=True)
class FreshSettings:
    """How ``--fresh`` times a fresh process's first batches (see :func:`treecomp.bench.cli.run`).

    Attributes:
        processes: Fresh processes per model, system and batch size.
        batches: Batches each process times, from its first, of distinct rows, no warm-up.
        cold_caches: Give each process empty kernel and package caches (a machine's very
            first run); otherwise the caches are warm, as a user's second job finds them.
    """

    processes: int = 3
    batches: int = 3
    cold_caches: bool = False


# Distinct batches a worker cycles through per batch size (see time_calls).
MAX_VIEWS = 1_000


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


def status_cell(batch: int, status: str, error: str | None) -> dict[str, Any]:
    """The result cell of a batch size that was not timed: its status and why."""
    return {"batch": batch, "status": status, "error": error}


def merge_rounds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One system's worker results on one model, from rounds in which the systems took turns,
    as one result: each cell's median over the rounds' medians (``round_medians_s`` keeps
    them), its best call, its worst deviation and label mismatches. The machine's speed
    drifts (on a shared 2-core VM, the same call took 44 to 80 ms within seconds); systems
    taking turns share the drift, and the median of rounds keeps a slow minute from
    deciding a ratio. A round that failed, or a cell that failed in any round, is
    reported as it failed."""
    failed = [r for r in results if r["status"] != "ok"]
    if len(results) == 1 or failed:
        return failed[0] if failed else results[0]
    merged = dict(results[0], rounds=len(results))
    merged["peak_rss_mb"] = max(r.get("peak_rss_mb") or 0.0 for r in results)
    cells = []
    for parts in zip(*(r["cells"] for r in results), strict=True):
        bad = [c for c in parts if c["status"] != "ok"]
        if bad:
            cells.append(bad[0])
            continue
        cell = dict(parts[0])
        cell["round_medians_s"] = [c["median_s"] for c in parts]
        cell["median_s"] = statistics.median(cell["round_medians_s"])
        cell["min_s"] = min(c["min_s"] for c in parts)
        cell["runs"] = sum(c["runs"] for c in parts)
        cell["max_abs_dev"] = max(c["max_abs_dev"] for c in parts)
        if cell.get("label_mismatches") is not None:
            cell["label_mismatches"] = max(c["label_mismatches"] for c in parts)
        cells.append(cell)
    merged["cells"] = cells
    return merged
