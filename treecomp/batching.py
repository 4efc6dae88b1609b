"""Scoring in chunks with bounded scratch memory, shared by every backend.

A backend scores ``rows_per_chunk`` rows at a time, sized so that one chunk's intermediates
stay within :data:`SCRATCH_BYTES`, and writes each chunk's results straight into output
arrays allocated once for the whole input. Peak memory is then the input, the outputs and
one chunk's scratch, whatever the number of rows: no list of per-chunk results, no final
concatenation (which briefly held every output twice), no copy per output dtype.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Scratch memory one chunk may use. With the outputs and the input this keeps a whole
# scoring call within its 1.5 GiB budget over them (measured in benchmarks/memory.py).
SCRATCH_BYTES = 1 << 30
MIN_ROWS, MAX_ROWS = 256, 1_000_000


def cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def physical_cpus() -> int:
    """The default thread count of torch and ONNX Runtime, without importing either:
    ``OMP_NUM_THREADS`` where set, else the physical cores among the CPUs this process may
    run on (Linux's CPU topology; elsewhere, or unreadable, :func:`cpus`)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(cpus())
    cores: set[tuple[str, str]] = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            cores.add((package, (topology / "core_id").read_text().strip()))
        except OSError:
            return cpus()
    return len(cores) or cpus()


def rows_per_chunk(bytes_per_row: int, batch_size: int | None = None) -> int:
    """Rows per chunk: ``batch_size`` when given, else what fits in :data:`SCRATCH_BYTES`."""
    if batch_size is not None:
        return batch_size
    return int(np.clip(SCRATCH_BYTES // max(1, bytes_per_row), MIN_ROWS, MAX_ROWS))


def chunks(n: int, size: int, *, progress: bool = False) -> Iterator[slice]:
    """Slices of ``size`` rows covering ``range(n)``, with a tqdm bar when asked."""
    starts: Any = range(0, n, size)
    if progress and n > size:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=-(-n // size), unit="batch")
    for start in starts:
        yield slice(start, min(n, start + size))


def score_in_chunks(
    n: int,
    size: int,
    widths: Sequence[int],
    dtypes: Sequence[Any],
    score: Callable[[slice], Sequence[npt.NDArray[Any]]],
    *,
    progress: bool = False,
) -> list[npt.NDArray[Any]]:
    """Outputs ``(n, width)`` of each dtype, filled chunk by chunk from ``score(rows)``.

    A single chunk's results are returned as they are (converted to the dtype), with no
    copy into a preallocated array: what a one-row call costs.
    """
    if n <= size:
        results = score(slice(0, n))
        return [
            np.asarray(r).reshape(n, w).astype(d, copy=False)
            for r, w, d in zip(results, widths, dtypes, strict=True)
        ]
    outputs = [np.empty((n, w), dtype=d) for w, d in zip(widths, dtypes, strict=True)]
    for rows in chunks(n, size, progress=progress):
        for out, part in zip(outputs, score(rows), strict=True):
            out[rows] = np.asarray(part).reshape(rows.stop - rows.start, -1)
    return outputs


# Output names per method: a Series name, or the prefix of ``<prefix>_<j>`` columns.
_PREFIXES = {
    "predict": "prediction",
    "predict_proba": "proba",
    "decision_function": "decision",
    "score_samples": "score",
    "apply": "leaf",
}


def output_names(classes: Any, method: str, shape: tuple[int, ...]) -> str | list[str]:
    """The column name of a 1-D output of ``method``, or the names of its flattened columns:
    ``proba_<class>`` (the labels as text, numbered instead if two would read the same),
    else ``<prefix>_<j>``. Shared by file scoring and Dask."""
    prefix = _PREFIXES[method]
    if len(shape) == 1:
        return prefix
    width = int(np.prod(shape[1:], dtype=np.int64))
    labels = [str(j) for j in range(width)]
    if method == "predict_proba" and classes is not None and len(classes) == width:
        named = [str(c) for c in np.asarray(classes).tolist()]
        if len(set(named)) == width:  # labels 1 and "1" would make two columns "proba_1"
            labels = named
    return [f"{prefix}_{label}" for label in labels]


def side_by_side(
    score: Callable[[Any], Sequence[npt.NDArray[Any]]], X: Any, parts: int, pool: ThreadPoolExecutor
) -> list[npt.NDArray[Any]]:
    """``score(X)`` as ``parts`` row slices scored at once, the first on this thread and the
    others on ``pool``, their outputs joined by rows. Worth it where ``score`` releases the
    GIL while it runs (ONNX Runtime, torch kernels)."""
    bounds = np.linspace(0, X.shape[0], parts + 1).astype(np.int64)
    slices = [X[start:stop] for start, stop in itertools.pairwise(bounds)]
    futures = [pool.submit(score, part) for part in slices[1:]]
    results = [score(slices[0])] + [future.result() for future in futures]
    return [np.concatenate(outputs) for outputs in zip(*results, strict=True)]


class SlicePool:
    """A pool of ``workers`` threads for :func:`side_by_side`, made on first use and made
    again in a forked child (the parent's threads do not exist there)."""

    def __init__(self, workers: int, name: str, initializer: Callable[[], None] | None = None):
        self.workers, self.name, self.initializer = max(1, workers), name, initializer
        self._pool: tuple[int, ThreadPoolExecutor] | None = None
        self._lock = threading.Lock()

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool[0] != os.getpid():
                pool = ThreadPoolExecutor(
                    self.workers, thread_name_prefix=self.name, initializer=self.initializer
                )
                self._pool = (os.getpid(), pool)
            return self._pool[1]
