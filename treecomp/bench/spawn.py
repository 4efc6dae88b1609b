"""The parent's side of a worker: the job file, the process, its timeout and its result.

:func:`run_system` runs one system on one model in a fresh ``python -m treecomp.bench.worker``
process with the bench's threads, so that no system inherits another's state (imports,
thread pools, caches); a worker that crashes or runs past its timeout becomes a result whose
cells are errors.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from treecomp.bench.models import PreparedModel
from treecomp.bench.systems import System
from treecomp.bench.timing import TimingSettings, status_cell


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    # The workers import this checkout of treecomp (and strategies/) even when not installed.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


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
    stem = directory / f"{prepared.spec.name}--{system.name}"
    job: dict[str, Any] = {
        "model": prepared.spec.name,
        "system": system.name,
        "model_path": prepared.model_path,
        "X_path": prepared.X_path,
        "scores_path": prepared.scores_path,
        "labels_path": prepared.labels_path,
        "batch_sizes": list(batch_sizes),
        "settings": asdict(settings),
        "result_path": f"{stem}-result.json",
    }
    job_path = Path(f"{stem}-job.json")
    job_path.write_text(json.dumps(job))
    command = [sys.executable, "-m", "treecomp.bench.worker", str(job_path)]
    error: str | None = None
    try:
        proc = subprocess.run(
            command,
            env=_child_env(settings.threads),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0 or not Path(job["result_path"]).exists():
            tail = re.sub(r"\s+", " ", proc.stderr.strip())[-300:]
            error = f"worker exited with status {proc.returncode}: {tail}"
    except subprocess.TimeoutExpired:
        error = f"worker timed out after {timeout_s:g} s (--timeout)"
    if error is None:
        result: dict[str, Any] = json.loads(Path(job["result_path"]).read_text())
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
