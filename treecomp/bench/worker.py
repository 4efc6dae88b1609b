"""The worker: one system on one model, in its own process.

:func:`run_worker` converts the model for the system, times each batch size with
:func:`~treecomp.bench.timing.time_calls` and compares the outputs with the native ones;
:func:`run_fresh` (``--fresh``) times a fresh process's first batches of one size instead. The
parent starts it as ``python -m treecomp.bench.worker JOB`` (see
:mod:`treecomp.bench.spawn`) and reads the result file it writes.
"""

from __future__ import annotations

import json
import pickle
import re
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from treecomp.bench.runners import SkippedError, make_runner
from treecomp.bench.systems import parse_system
from treecomp.bench.timing import (
    MAX_VIEWS,
    TimingSettings,
    TooSlowError,
    max_abs_deviation,
    status_cell,
    time_calls,
)


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
        result["cells"] = [status_cell(b, result["status"], result["error"]) for b in batches]
        result["peak_rss_mb"] = rss_mb()
        return result

    too_slow: str | None = None
    for batch in batches:
        if too_slow is not None:
            result["cells"].append(status_cell(batch, "skipped", too_slow))
            continue
        if system.backend == "numpy" and batch > settings.numpy_max_batch:
            reason = f"numpy backend timed up to {settings.numpy_max_batch} rows only"
            result["cells"].append(status_cell(batch, "skipped", reason))
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


def _kernels() -> set[str]:
    """The kernels built in the kernel cache (``TREECOMP_KERNEL_DIR`` where set)."""
    from treecomp.kernel import kernel_dir

    return {p.name for p in kernel_dir().glob("*.so") if not p.name.endswith(".partial.so")}


def run_fresh(job: Mapping[str, Any]) -> dict[str, Any]:
    """A fresh process's first batches of one system on one model (``--fresh``); never raises.

    The process loads the pickled model (``load_s``: the unpickling, and the imports it
    brings), converts it (``convert_s``; for the ``treecomp`` system ``treecomp.convert``'s
    defaults but ``n_threads``, with no ``tier_up()``), then times its first
    ``job["batches"]`` calls on distinct rows with no warm-up. The collector stays on, as
    in a user's process. With ``job["prime"]`` it is the untimed process that warms the
    machine's caches: it converts with ``tier_up()`` (which builds or loads the compiled
    package where the defaults use one), scores one batch and reports the caches' paths.

    Args:
        job: Paths of the model, rows and native outputs, the system's name, the batch
            size, the batches to time and the :class:`TimingSettings` fields.

    Returns:
        ``batch_s`` (the calls' seconds, first first), ``convert_s``, ``load_s``,
        ``strategy``, ``max_abs_dev`` and ``label_mismatches`` over the timed batches,
        ``kernel_built`` (whether this process compiled the kernel; None for systems other
        than treecomp's), ``status`` and ``error``.
    """
    system = parse_system(job["system"])
    batch: int = job["batch"]
    n_batches: int = 1 if job["prime"] else job["batches"]
    threads: int = job["settings"]["threads"]
    result: dict[str, Any] = {
        "system": system.name,
        "model": job["model"],
        "batch": batch,
        "status": "ok",
        "error": None,
        "load_s": None,
        "convert_s": None,
        "batch_s": [],
        "strategy": None,
        "max_abs_dev": None,
        "label_mismatches": None,
        "kernel_built": None,
    }
    try:
        start = time.perf_counter()
        with open(job["model_path"], "rb") as f:
            model = pickle.load(f)
        result["load_s"] = time.perf_counter() - start
        X_all = np.load(job["X_path"])
        if len(X_all) < n_batches * batch:
            raise ValueError(f"{len(X_all)} rows saved, {n_batches} batches of {batch} asked")
        inputs = [X_all[i * batch : (i + 1) * batch] for i in range(n_batches)]
        before = _kernels() if system.kind == "treecomp" else None
        start = time.perf_counter()
        runner = make_runner(
            model,
            system,
            classifier=job["labels_path"] is not None,
            threads=threads,
            n_features=X_all.shape[1],
            tier_up=job["prime"],
        )
        if system.kind != "native":
            result["convert_s"] = time.perf_counter() - start
        outputs = []
        for X in inputs:
            start = time.perf_counter()
            outputs.append(runner.scores(X))
            result["batch_s"].append(time.perf_counter() - start)
        if before is not None:
            result["kernel_built"] = bool(_kernels() - before)
        if job["prime"] and system.kind == "treecomp":  # untimed: torch may be imported
            from treecomp.kernel import kernel_dir

            result["caches"] = {"kernels": str(kernel_dir()), "packages": None}
            try:
                from treecomp.package_cache import package_dir
            except ImportError:  # no torch: no packages
                pass
            else:
                result["caches"]["packages"] = str(package_dir())
        result["strategy"] = runner.strategy
        # Checked once timed: what a first batch returns must be native's too.
        native_scores = np.load(job["scores_path"])
        result["max_abs_dev"] = max(
            max_abs_deviation(out, native_scores[i * batch : (i + 1) * batch])
            for i, out in enumerate(outputs)
        )
        if runner.labels is not None:
            native_labels = np.load(job["labels_path"])
            result["label_mismatches"] = sum(
                int(np.sum(np.asarray(runner.labels(X)).reshape(-1) != labels))
                for X, labels in zip(
                    inputs, np.split(native_labels[: len(inputs) * batch], len(inputs))
                )
            )
    except SkippedError as exc:
        result.update(status="skipped", error=describe_error(exc))
    except Exception as exc:
        result.update(status="error", error=describe_error(exc))
    return result


def worker_main(job_path: str) -> int:
    """Run the job in ``job_path`` and write its result where the job says; returns 0."""
    job = json.loads(Path(job_path).read_text())
    result = run_fresh(job) if job.get("mode") == "fresh" else run_worker(job)
    Path(job["result_path"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
