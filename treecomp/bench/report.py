"""The bench's report: records, ratios, the tables, the plot, the machine and ``results.json``.

:func:`build_records` turns the workers' results into one record per model, system and batch
size, with the ratios to the fastest peer and to native; :func:`format_tables` renders them for
the terminal, :func:`plot` as a PNG, and :func:`write_results` writes both with the machine's
description (:func:`machine_info`: CPU model and ISA, threads, library versions, date).
:func:`build_fresh_records` and :func:`format_fresh_table` do the same for ``--fresh``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from treecomp.bench.systems import PEERS, System
from treecomp.bench.timing import FreshSettings

RESULTS_FILE = "results.json"
PLOT_FILE = "bench.png"


def build_records(
    results: Sequence[Mapping[str, Any]], systems: Sequence[System]
) -> list[dict[str, Any]]:
    """One record per model, system and batch size, with the ratios to the fastest peer and native.

    ``ratio_to_fastest_peer`` is the fastest peer's median over this cell's median (above 1:
    faster than every peer); ``ratio_to_native`` likewise with native alone.
    """
    peers = {s.name for s in systems if s.peer}
    records: list[dict[str, Any]] = []
    for result in results:
        for cell in result["cells"]:
            records.append(
                {
                    "model": result["model"],
                    "system": result["system"],
                    "batch": cell["batch"],
                    "status": cell["status"],
                    "median_s": cell.get("median_s"),
                    "min_s": cell.get("min_s"),
                    "round_medians_s": cell.get("round_medians_s"),
                    "runs": cell.get("runs"),
                    "first_call_s": cell.get("first_call_s"),
                    "ratio_to_fastest_peer": None,
                    "ratio_to_native": None,
                    "max_abs_dev": cell.get("max_abs_dev"),
                    "label_mismatches": cell.get("label_mismatches"),
                    "convert_s": result.get("convert_s"),
                    "strategy": result.get("strategy"),
                    "peak_rss_mb": result.get("peak_rss_mb"),
                    "base_rss_mb": result.get("base_rss_mb"),
                    "error": cell.get("error"),
                }
            )
    fastest: dict[tuple[str, int], float] = {}
    native: dict[tuple[str, int], float] = {}
    for r in records:
        key = (r["model"], r["batch"])
        if r["median_s"] is not None and r["system"] in peers:
            fastest[key] = min(fastest.get(key, math.inf), r["median_s"])
        if r["median_s"] is not None and r["system"] == "native":
            native[key] = r["median_s"]
    for r in records:
        key = (r["model"], r["batch"])
        if r["median_s"]:
            if key in fastest:
                r["ratio_to_fastest_peer"] = fastest[key] / r["median_s"]
            if key in native:
                r["ratio_to_native"] = native[key] / r["median_s"]
    return records


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, threads, library versions and the date, for ``results.json``."""
    versions: dict[str, str | None] = {}
    for dist in (
        "treecomp",
        "numpy",
        "torch",
        "xgboost",
        "lightgbm",
        "scikit-learn",
        "onnx",
        "onnxruntime",
        "skl2onnx",
        "onnxmltools",
        "hummingbird-ml",
        "lleaves",
        "llvmlite",
        "tl2cgen",
        "treelite",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    cpu_model = platform.processor()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
            elif line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
            if flags and cpu_model:
                break
    except OSError:
        pass
    isa = next((name for name in ("avx512f", "avx2", "avx", "sse4_2") if name in flags), None)
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 0
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_available": available,
        "cpu_model": cpu_model,
        # The widest x86 vector extension the CPU has (inductor's and ATen's kernels use it).
        "isa": isa,
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load_average(),
        "versions": versions,
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# What each record of results.json holds, written into the file beside them.
RECORD_FIELDS = {
    "status": "ok, error (see error) or skipped (a peer not installed, a batch not run)",
    "median_s": "median seconds per call over `runs` timed calls, after warm-up; min_s too; "
    "with --rounds, the median of the rounds' medians (round_medians_s)",
    "first_call_s": "the first call's seconds (a compiled system recompiles on a new shape)",
    "ratio_to_fastest_peer": "fastest peer's median_s / this median_s (peers: the run's "
    f"systems among {', '.join(PEERS)}); > 1: faster than every peer",
    "ratio_to_native": "native median_s / this median_s; > 1: faster than native",
    "max_abs_dev": "max |output - native output| on the cell's first batch: probabilities "
    "of classifiers, predictions of regressors",
    "label_mismatches": "rows whose label differs from native's, classifiers only",
    "convert_s": "seconds to convert (and, compiled, to compile in the first call; for "
    "lleaves and tl2cgen, their compile); null for native",
    "peak_rss_mb": "the worker's peak resident memory (ru_maxrss), libraries included",
    "base_rss_mb": "the worker's peak resident memory after loading the model and rows, "
    "before converting or importing the system's libraries",
    "strategy": "what treecomp chose (cm.strategy)",
}


# ---------------------------------------------------------------------------------------------
# Tables and plot


def format_seconds(seconds: float | None) -> str:
    """``"12.3µs"``, ``"4.56ms"`` or ``"1.23s"``; ``"-"`` for ``None``."""
    if seconds is None:
        return "-"
    if seconds < 0.99995e-3:  # what rounds to 1000.0 µs reads as 1 ms
        return f"{seconds * 1e6:.1f}µs"
    if seconds < 0.9995:  # and what rounds to 1000 ms (":.3g": "1e+03ms") as 1 s
        return f"{seconds * 1e3:.3g}ms"
    return f"{seconds:.3g}s"


def _short(system: str) -> str:
    return system.removeprefix("treecomp-")


def _cell_text(record: Mapping[str, Any]) -> str:
    if record["status"] == "skipped":
        return "skipped"
    if record["median_s"] is None:
        return "slow" if str(record["error"] or "").startswith("too slow") else "error"
    ratio = record["ratio_to_fastest_peer"]
    suffix = ""
    if ratio is not None:
        suffix = (
            f" x{ratio:.0f}"
            if ratio >= 100
            else f" x{ratio:.3g}"
            if ratio >= 1
            else f" x{ratio:.2g}"
        )
    return format_seconds(record["median_s"]) + suffix


def format_tables(
    records: Sequence[Mapping[str, Any]],
    models: Sequence[str],
    systems: Sequence[str],
    *,
    width: int = 150,
    rounds: int = 1,
) -> str:
    """The timing table (model and batch rows, system columns) and the per-system details.

    Args:
        records: :func:`build_records`' output.
        models: Model names, in row order.
        systems: System names, in column order.
        width: Columns are split into several tables to keep lines about this wide.
        rounds: Rounds the systems took turns in (``--rounds``), whose medians' median
            each cell shows.
    """
    by_key = {(r["model"], r["system"], r["batch"]): r for r in records}
    batches = sorted({r["batch"] for r in records})
    median = (
        "Median seconds per call"
        if rounds == 1
        else f"Median over {rounds} rounds (the systems taking turns) of each round's median "
        "seconds per call"
    )
    lines = [
        f"{median}; xR = fastest peer's median / this one's "
        f"(peers: {', '.join(s for s in systems if s in PEERS)}): R > 1 means faster than "
        "every peer.",
        "treecomp-* columns are shown without the 'treecomp-' prefix.",
    ]
    label_width = max([len(m) for m in models] + [5]) + 9
    cell_width = max([len(_short(s)) for s in systems] + [15]) + 2
    per_table = max(1, (width - label_width) // cell_width)
    for start in range(0, len(systems), per_table):
        chunk = systems[start : start + per_table]
        lines.append("")
        lines.append(
            f"{'model':<{label_width - 8}}{'batch':>8}"
            + "".join(f"{_short(s):>{cell_width}}" for s in chunk)
        )
        for model in models:
            for batch in batches:
                row = [by_key.get((model, s, batch)) for s in chunk]
                text = [_cell_text(c) if c is not None else "-" for c in row]
                lines.append(
                    f"{model:<{label_width - 8}}{batch:>8}"
                    + "".join(f"{t:>{cell_width}}" for t in text)
                )
    lines += ["", "Per model and system: conversion (incl. compile), peak RSS, worst deviation."]
    header = (
        f"{'model':<20}{'system':<40}{'convert':>9}{'peak RSS':>10}"
        f"{'max |Δ|':>10}{'labels≠':>9}  strategy / error"
    )
    lines.append(header)
    notes: list[str] = []
    for model in models:
        for system in systems:
            cells = [by_key[(model, system, b)] for b in batches if (model, system, b) in by_key]
            if not cells:
                continue
            first = cells[0]
            devs = [c["max_abs_dev"] for c in cells if c["max_abs_dev"] is not None]
            mismatches = [c["label_mismatches"] for c in cells if c["label_mismatches"] is not None]
            rss = first["peak_rss_mb"]
            errors = sorted({c["error"] for c in cells if c["error"]})
            detail = first["strategy"] or ""
            if errors and all(c["median_s"] is None for c in cells):
                detail = errors[0]
            elif errors:
                notes += [f"{model} / {system}: {e}" for e in errors]
            if len(detail) > 100:
                detail = detail[:99] + "…"
            lines.append(
                f"{model:<20}{system:<40}{format_seconds(first['convert_s']):>9}"
                f"{(f'{rss:.0f}MB' if rss else '-'):>10}"
                f"{(f'{max(devs):.1e}' if devs else '-'):>10}"
                f"{(str(max(mismatches)) if mismatches else '-'):>9}  {detail}"
            )
    if notes:
        lines += ["", "Cells that did not run:"] + [f"  {n[:160]}" for n in notes]
    return "\n".join(lines)


def plot(records: Sequence[Mapping[str, Any]], models: Sequence[str], path: Path) -> None:
    """Write a PNG: one log-log panel per model, median time against batch size per system.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(r["system"] for r in records))
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    palette = plt.get_cmap("tab10" if len(systems) <= 10 else "tab20")
    for ax, model in zip(axes.flat, models):
        for i, system in enumerate(systems):
            points = sorted(
                (r["batch"], r["median_s"])
                for r in records
                if r["model"] == model and r["system"] == system and r["median_s"]
            )
            if not points:
                continue
            xs, ys = zip(*points)
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=3,
                linestyle="--" if system in PEERS else "-",
                color=palette(i % palette.N),
                label=_short(system),
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("batch size (rows)")
        ax.set_ylabel("median seconds per call")
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(models) :]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels) or 1), fontsize=8)
    fig.suptitle(
        "treecomp bench: median time per call (solid: treecomp, dashed: peers)", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.04 + 0.025 * (-(-len(labels) // 6)), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# --fresh: a fresh process's first batches


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _worst(values: Sequence[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def build_fresh_records(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per model, system and batch size from its fresh processes' results.

    ``first_s`` is the median of the processes' first batches, ``rest_s`` that of all their
    later batches; both ratios divide native's ``first_s`` (native's first call pays its own
    warm-up, as a fresh native process does) by this record's. The caches' priming processes
    (``"prime"`` in their result) make no record.
    """
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for result in results:
        if not result.get("prime"):
            key = (result["model"], result["system"], result["batch"])
            groups.setdefault(key, []).append(result)
    records: list[dict[str, Any]] = []
    for (model, system, batch), runs in groups.items():
        ok = [r for r in runs if r["status"] == "ok"]
        failed = [r for r in runs if r["status"] != "ok"]
        first = [r["batch_s"][0] for r in ok]
        rest = [t for r in ok for t in r["batch_s"][1:]]
        records.append(
            {
                "model": model,
                "system": system,
                "batch": batch,
                "status": failed[0]["status"] if failed else "ok",
                "processes": len(ok),
                "first_s": _median(first),
                "rest_s": _median(rest),
                "first_ratio_to_native": None,
                "rest_ratio_to_native": None,
                "batch_s": [r["batch_s"] for r in ok],
                "load_s": _median([r["load_s"] for r in ok]),
                "convert_s": _median([r["convert_s"] for r in ok]),
                "max_abs_dev": _worst([r["max_abs_dev"] for r in ok]),
                "label_mismatches": _worst([r["label_mismatches"] for r in ok]),
                "kernel_built": [r["kernel_built"] for r in ok],
                "strategy": ok[-1]["strategy"] if ok else None,
                "error": failed[0]["error"] if failed else None,
            }
        )
    native = {
        (r["model"], r["batch"]): r["first_s"]
        for r in records
        if r["system"] == "native" and r["first_s"]
    }
    for r in records:
        base = native.get((r["model"], r["batch"]))
        if base is not None:
            for name in ("first", "rest"):
                if r[f"{name}_s"]:
                    r[f"{name}_ratio_to_native"] = base / r[f"{name}_s"]
    return records


def describe_caches(fresh: FreshSettings, primes: Sequence[Mapping[str, Any]]) -> str:
    """What the fresh processes found in the kernel and package caches, in one sentence."""
    if fresh.cold_caches:
        return (
            "cold: each process got empty kernel and package caches (TREECOMP_KERNEL_DIR, "
            "TORCHINDUCTOR_CACHE_DIR in a new temporary directory), as on a machine's very "
            "first run: treecomp's convert compiles the kernel (and a first batch of a "
            "non-kernel forest finds no compiled package)"
        )
    paths = next((p["caches"] for p in primes if p.get("caches")), None)
    where = f" (kernels: {paths['kernels']}; packages: {paths['packages']})" if paths else ""
    return (
        "warm, as a user's second job finds them: before the timed processes, one untimed "
        "process per model and treecomp system converted the model, called tier_up() and "
        f"scored a batch, building what was missing{where}"
    )


FRESH_RECORD_FIELDS = {
    "status": "ok, error (see error; some processes may have run) or skipped",
    "processes": "fresh processes measured",
    "batch_s": "each process's timed calls, in order: its first K batches of distinct rows, "
    "no warm-up, after loading and converting the model",
    "first_s": "median over the processes of their first batch's seconds",
    "rest_s": "median of the processes' later batches (2 to K), pooled",
    "first_ratio_to_native": "native first_s / this first_s; >= 1: a fresh process's first "
    "batch at least as fast as a fresh native process's (which pays its own warm-up)",
    "rest_ratio_to_native": "native first_s / this rest_s",
    "load_s": "median seconds to unpickle the model (with the imports that brings)",
    "convert_s": "median seconds to convert (treecomp: treecomp.convert's defaults with "
    "n_threads, no tier_up()); null for native",
    "max_abs_dev": "max |output - native output| over every timed batch of every process",
    "label_mismatches": "rows of the timed batches whose label differs from native's (the "
    "worst process), classifiers only",
    "kernel_built": "per process, whether it compiled the kernel into the kernel cache "
    "(null: not a treecomp system)",
    "strategy": "what treecomp chose (cm.strategy)",
}


def format_fresh_table(
    records: Sequence[Mapping[str, Any]],
    fresh: FreshSettings,
    *,
    threads: int,
    caches: str,
    primes: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The ``--fresh`` report: what the numbers mean, then one row per model, batch and system.

    Args:
        records: :func:`build_fresh_records`' output.
        fresh: The processes and batches measured, and the caches' state.
        threads: Threads every system got.
        caches: :func:`describe_caches`' sentence.
        primes: The priming processes' results; those that failed are listed.
    """
    rest = f"batches 2-{fresh.batches}" if fresh.batches > 2 else "batch 2"
    lines = [
        f"Fresh processes: per model, system and batch size, {fresh.processes} new processes "
        "(systems taking turns), each loading the pickled model, converting it (treecomp: "
        f"treecomp.convert's defaults, n_threads={threads}, no tier_up()) and timing its "
        + (f"first {fresh.batches} batches" if fresh.batches > 1 else "first batch")
        + f" of distinct rows with no warm-up; {threads} "
        "threads per system.",
        "first: median of the processes' first batches"
        + (f"; rest: median of their {rest}." if fresh.batches > 1 else "."),
        "xR = native's first-batch median / this median (native's first call pays its own "
        "warm-up): R >= 1 means at least as fast as a fresh native process's first batch.",
        "load: unpickling the model (with the imports it brings; treecomp's own import, "
        "about 0.15 s, comes before: the worker is part of it); convert: before the first "
        "batch, not in it; kernel built: processes that compiled treecomp's C kernel.",
        f"Caches: {caches}.",
        "",
        f"{'model':<20}{'batch':>7}  {'system':<30}{'load':>9}{'convert':>9}"
        f"{'first':>17}{'rest':>17}{'max |Δ|':>10}{'labels≠':>9}{'kernel built':>14}  "
        "strategy / error",
    ]

    def timed(seconds: float | None, ratio: float | None) -> str:
        if ratio is None:
            return format_seconds(seconds)
        # Two decimals where the 1.0x bar is in reach; the bar is "at least 1.0x".
        return format_seconds(seconds) + (f" x{ratio:.2f}" if ratio < 10 else f" x{ratio:.3g}")

    for r in records:
        built = [b for b in r["kernel_built"] if b is not None]
        detail = r["strategy"] or ""
        if r["error"]:
            detail = r["error"] if not r["processes"] else f"{detail} ({r['error']})"
        if len(detail) > 100:
            detail = detail[:99] + "…"
        dev, mismatches = r["max_abs_dev"], r["label_mismatches"]
        lines.append(
            f"{r['model']:<20}{r['batch']:>7}  {r['system']:<30}"
            f"{format_seconds(r['load_s']):>9}{format_seconds(r['convert_s']):>9}"
            f"{timed(r['first_s'], r['first_ratio_to_native']):>17}"
            f"{timed(r['rest_s'], r['rest_ratio_to_native']):>17}"
            f"{(f'{dev:.1e}' if dev is not None else '-'):>10}"
            f"{(str(mismatches) if mismatches is not None else '-'):>9}"
            f"{(f'{sum(built)}/{len(built)}' if built else '-'):>14}  {detail}"
        )
    failed = [p for p in primes if p["status"] == "error"]
    if failed:
        lines += ["", "Priming processes that failed (the caches may be cold for these):"]
        lines += [f"  {p['model']} / {p['system']}: {str(p['error'])[:160]}" for p in failed]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# results.json


@dataclass(slots=True)
class BenchRun:
    """What one bench run produced: the settings, machine, records and rendered tables."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    models: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""
    complete: bool = False
    mode: str = "warm"  # or "fresh" (--fresh: build_fresh_records' records, no plot)


def write_json(bench: BenchRun, out: Path) -> Path:
    """Write ``out/results.json`` (atomically: a reader never sees half a file)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    document = {
        "complete": bench.complete,
        "machine": bench.machine,
        "settings": bench.settings,
        "models": bench.models,
        "mode": bench.mode,
        "fields": FRESH_RECORD_FIELDS if bench.mode == "fresh" else RECORD_FIELDS,
        "results": bench.records,
    }
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=1, default=str))
    partial.replace(path)
    return path


def write_results(bench: BenchRun, out: Path) -> list[Path]:
    """Write ``results.json`` and, where matplotlib is installed, the plot (not for
    ``--fresh``); return the paths."""
    written = [write_json(bench, out)]
    if bench.mode == "fresh":  # a handful of numbers per cell: the table says them
        return written
    try:
        models = list(dict.fromkeys(r["model"] for r in bench.records))
        plot(bench.records, models, out / PLOT_FILE)
        written.append(out / PLOT_FILE)
    except ImportError:
        log("matplotlib is not installed: no plot (pip install 'treecomp[bench]')")
    return written


def log(message: str, end: str = "\n") -> None:
    """Progress goes to stderr, so that stdout holds the report alone."""
    print(message, end=end, file=sys.stderr, flush=True)
