"""The parent's side of a worker: the job file, the process, its timeout and its result.

:func:`run_system` runs one system on one model in a fresh ``python -m treecomp.bench.worker``
process with the bench's threads, so that no system inherits another's state (imports,
thread pools, caches); :func:`run_fresh_process` runs one such process for ``--fresh``. A
worker that crashes or runs past its timeout becomes a result whose cells are errors.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from treecomp.bench.models import PreparedModel
from treecomp.bench.systems import System
from treecomp.bench.timing import FreshSettings, TimingSettings, status_cell


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    # The workers import this checkout of treecomp (and strategies/) even when not installed.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _spawn(
    job: dict[str, Any], stem: Path, env: dict[str, str], timeout_s: float
) -> tuple[dict[str, Any] | None, str | None]:
    """Run ``job`` in a worker process: ``(result, None)``, or ``(None, why it failed)``."""
    job["result_path"] = f"{stem}-result.json"
    job_path = Path(f"{stem}-job.json")
    job_path.write_text(json.dumps(job))
    command = [sys.executable, "-m", "treecomp.bench.worker", str(job_path)]
    try:
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"worker timed out after {timeout_s:g} s (--timeout)"
    if proc.returncode != 0 or not Path(job["result_path"]).exists():
        tail = re.sub(r"\s+", " ", proc.stderr.strip())[-300:]
        return None, f"worker exited with status {proc.returncode}: {tail}"
    return json.loads(Path(job["result_path"]).read_text()), None


def _files(prepared: PreparedModel) -> dict[str, Any]:
    return {
        "model": prepared.spec.name,
        "model_path": prepared.model_path,
        "X_path": prepared.X_path,
        "scores_path": prepared.scores_path,
        "labels_path": prepared.labels_path,
    }


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
    job: dict[str, Any] = {
        **_files(prepared),
        "system": system.name,
        "batch_sizes": list(batch_sizes),
        "settings": asdict(settings),
    }
    stem = directory / f"{prepared.spec.name}--{system.name}"
    result, error = _spawn(job, stem, _child_env(settings.threads), timeout_s)
    if result is not None:
        return result
    return {
        "system": system.name,
        "model": prepared.spec.name,
        "status": "error",
        "error": error,
        "convert_s": None,
        "strategy": None,
        "peak_rss_mb": None,
        "cells": [status_cell(b, "error", error) for b in batch_sizes],
    }


def run_fresh_process(
    prepared: PreparedModel,
    system: System,
    batch: int,
    settings: TimingSettings,
    fresh: FreshSettings,
    *,
    prime: bool,
    directory: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """One fresh process's first batches (:func:`treecomp.bench.worker.run_fresh`).

    With ``fresh.cold_caches`` the process gets its own empty kernel cache
    (``TREECOMP_KERNEL_DIR``) and package cache (``TORCHINDUCTOR_CACHE_DIR``), removed
    after it. A worker that crashes or runs past ``timeout_s`` becomes an error result.

    Args:
        prepared: The model's files.
        system: The system to run.
        batch: Rows per call.
        settings: The threads (the other fields are the warm bench's).
        fresh: Batches to time, and whether the caches are cold.
        prime: Run the untimed process that warms the caches instead (see the worker).
        directory: Where the job and result files go.
        timeout_s: Seconds the process may run.
    """
    job: dict[str, Any] = {
        **_files(prepared),
        "mode": "fresh",
        "system": system.name,
        "batch": batch,
        "batches": fresh.batches,
        "prime": prime,
        "settings": asdict(settings),
    }
    env = _child_env(settings.threads)
    with tempfile.TemporaryDirectory(prefix="caches-", dir=directory) as caches:
        if fresh.cold_caches:
            env["TREECOMP_KERNEL_DIR"] = str(Path(caches) / "kernels")
            env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(caches) / "inductor")
        result, error = _spawn(job, Path(caches) / "fresh", env, timeout_s)
    if result is not None:
        return result
    return {
        "system": system.name,
        "model": prepared.spec.name,
        "batch": batch,
        "status": "error",
        "error": error,
        "batch_s": [],
    }
