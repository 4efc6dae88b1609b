"""The bench's report: records, ratios, the tables, the plot, the machine and ``results.json``.

:func:`build_records` turns the workers' results into one record per model, system and batch
size, with the ratios to the fastest peer and to native; :func:`format_tables` renders them for
the terminal, :func:`plot` as a PNG, and :func:`write_results` writes both with the machine's
description (:func:`machine_info`: CPU model and ISA, threads, library versions, date).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from treecomp.bench.systems import PEERS, System

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
    "median_s": "median seconds per call over `runs` timed calls, after warm-up; min_s too",
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
) -> str:
    """The timing table (model and batch rows, system columns) and the per-system details.

    Args:
        records: :func:`build_records`' output.
        models: Model names, in row order.
        systems: System names, in column order.
        width: Columns are split into several tables to keep lines about this wide.
    """
    by_key = {(r["model"], r["system"], r["batch"]): r for r in records}
    batches = sorted({r["batch"] for r in records})
    lines = [
        "Median seconds per call; xR = fastest peer's median / this one's "
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


def write_json(bench: BenchRun, out: Path) -> Path:
    """Write ``out/results.json`` (atomically: a reader never sees half a file)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    document = {
        "complete": bench.complete,
        "machine": bench.machine,
        "settings": bench.settings,
        "models": bench.models,
        "fields": RECORD_FIELDS,
        "results": bench.records,
    }
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=1, default=str))
    partial.replace(path)
    return path


def write_results(bench: BenchRun, out: Path) -> list[Path]:
    """Write ``results.json`` and, where matplotlib is installed, the plot; return the paths."""
    written = [write_json(bench, out)]
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
