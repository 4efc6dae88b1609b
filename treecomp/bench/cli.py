"""Benchmark: treecomp against the native libraries and their peers, one process per system.

The command line of ``treecomp bench`` and ``python -m treecomp.bench``: it parses the
arguments, fits each model (:mod:`treecomp.bench.models`), runs each system on it in a worker
process (:mod:`treecomp.bench.spawn`) and prints and writes the report
(:mod:`treecomp.bench.report`). The package's docstring says how a run goes.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from treecomp.bench.models import (
    MODELS,
    TINY,
    ModelSpec,
    PreparedModel,
    prepare_model,
    resolve_models,
)
from treecomp.bench.report import (
    PLOT_FILE,
    RESULTS_FILE,
    BenchRun,
    build_fresh_records,
    build_records,
    describe_caches,
    format_fresh_table,
    format_seconds,
    format_tables,
    load_average,
    log,
    machine_info,
    write_json,
    write_results,
)
from treecomp.bench.spawn import run_fresh_process, run_system
from treecomp.bench.systems import (
    BACKENDS,
    DEFAULT_SYSTEMS,
    EXPORTED,
    LLEAVES_INSTALL,
    PEERS,
    QUICK_SYSTEMS,
    STRATEGIES,
    TL2CGEN_INSTALL,
    System,
    resolve_systems,
)
from treecomp.bench.timing import MAX_VIEWS, FreshSettings, TimingSettings, merge_rounds

DEFAULT_BATCH_SIZES = (1, 1_000, 10_000, 100_000)
QUICK_BATCH_SIZES = (1, 1_000, 10_000)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sorted(set(values))


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``treecomp bench``."""
    models = "\n".join(f"  {s.name:<20} {s.description}" for s in (*MODELS, TINY))
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"models:\n{models}\n\n"
            f"systems: {', '.join(PEERS)}, treecomp, {EXPORTED} (the exported ONNX file in\n"
            "  ONNX Runtime), treecomp-BACKEND[-STRATEGY][-compiled]\n"
            f"  backends: {', '.join(BACKENDS)}; strategies: {', '.join(STRATEGIES)}\n"
            f"  default: {','.join(DEFAULT_SYSTEMS)}\n"
            f"  --quick: {','.join(QUICK_SYSTEMS)}\n"
            "  all: every backend x strategy, compiled torch, numpy and the peers\n"
            "  hummingbird, lleaves (LightGBM only) and tl2cgen run when installed:\n"
            f"  {LLEAVES_INSTALL}; {TL2CGEN_INSTALL}\n\n"
            "Cell ratios are the fastest peer's median over the cell's median: above 1, the\n"
            "system is faster than every peer in the run.\n\n"
            "--fresh: per model, system and batch size, N new processes (--fresh-processes,\n"
            "systems taking turns) load the pickled model, convert it (treecomp: convert's\n"
            "defaults, no tier_up()) and time their first K batches (--fresh-batches) of\n"
            "distinct rows, no warm-up. The report gives the median of the first batches and\n"
            "of the later ones, each as native's first-batch median over it (x >= 1: at least\n"
            "as fast as a fresh native process's first batch, which pays its own warm-up).\n"
            "The kernel and package caches are warm, as a user's second job finds them (an\n"
            "untimed process per model and treecomp system fills them first), unless\n"
            "--cold-caches gives each process empty ones.\n\n"
            "examples:\n"
            "  treecomp bench --quick --out /tmp/bench\n"
            "  treecomp bench --models xgb-binary --systems native,treecomp-torch-auto,onnxml\n"
            "  treecomp bench --systems all --batch-sizes 1,1000\n"
            "  treecomp bench --models xgb-binary --systems native,treecomp --batch-sizes 10000 "
            "--fresh"
        ),
    )
    parser.add_argument(
        "--models",
        default="default",
        metavar="NAMES",
        help="comma-separated model names (listed below), or 'default': all but 'tiny'",
    )
    parser.add_argument(
        "--systems",
        default=None,
        metavar="NAMES",
        help="comma-separated systems, 'default' or 'all' (see below; default: 'default')",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=None,
        metavar="SIZES",
        help="comma-separated rows per call (default 1,1000,10000,100000; --quick 1,1000,10000)",
    )
    parser.add_argument(
        "--threads",
        type=_positive(int),
        default=2,
        metavar="N",
        help="threads for every system (default 2)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller models, fewer batch sizes and systems, shorter timing (a few minutes)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="the rows' float type: float64 rows (what pandas gives) are doubles that no "
        "float32 holds, compared exactly by LightGBM and HistGradientBoosting (default float32)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"write DIR/{RESULTS_FILE} and DIR/{PLOT_FILE}",
    )
    parser.add_argument(
        "--budget",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="seconds of timed calls per cell, past --min-runs (default 1; --quick 0.1)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive(int),
        default=1,
        metavar="N",
        help="run each model's systems N times in turn, a fresh process each, and report "
        "each cell's median over the rounds (the machine's speed drifts: taking turns "
        "shares the drift; default 1)",
    )
    parser.add_argument(
        "--min-runs",
        type=_positive(int),
        default=5,
        metavar="N",
        help="timed calls per cell, at least (default 5)",
    )
    parser.add_argument(
        "--warmup",
        type=_positive(int),
        default=2,
        metavar="N",
        help="untimed calls per cell (default 2)",
    )
    parser.add_argument(
        "--max-call-s",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="a first call slower than this marks the cell too slow and skips larger batches "
        "(default 30; --quick 2)",
    )
    parser.add_argument(
        "--numpy-max-batch",
        type=_positive(int),
        default=1_000,
        metavar="ROWS",
        help="largest batch for the numpy backend (default 1000)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="time fresh processes' first batches instead of warm calls (see below; "
        "--warmup, --min-runs, --budget and --max-call-s do not apply)",
    )
    parser.add_argument(
        "--fresh-processes",
        type=_positive(int),
        default=None,
        metavar="N",
        help=f"with --fresh: processes per model, system and batch size (default "
        f"{FreshSettings().processes})",
    )
    parser.add_argument(
        "--fresh-batches",
        type=_positive(int),
        default=None,
        metavar="K",
        help=f"with --fresh: batches each process times, from its first (default "
        f"{FreshSettings().batches})",
    )
    parser.add_argument(
        "--cold-caches",
        action="store_true",
        help="with --fresh: empty kernel and package caches for each process, as on a "
        "machine's very first run (default: warm, as a user's second job finds them)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="seconds one worker (one system on one model, or one --fresh process) may run "
        "(default 1200; --quick 120)",
    )
    return parser


def run(args: argparse.Namespace) -> BenchRun:
    """Fit the models, run every system on each in its own process, and gather the results.

    With ``args.out``, ``results.json`` is rewritten after every worker, so that a run cut
    short still leaves what it measured. An interrupt (Ctrl-C, or SIGTERM from ``timeout``)
    ends the run early with the cells measured so far (``complete`` is false).

    Args:
        args: Parsed ``treecomp bench`` arguments.
    """
    quick: bool = args.quick
    specs = resolve_models(args.models)
    systems = resolve_systems(args.systems, quick=quick)
    batch_sizes = args.batch_sizes or list(QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    settings = TimingSettings(
        threads=args.threads,
        warmup=args.warmup,
        min_runs=args.min_runs,
        budget_s=args.budget or (0.1 if quick else 1.0),
        max_call_s=args.max_call_s or (2.0 if quick else 30.0),
        numpy_max_batch=args.numpy_max_batch,
        rounds=args.rounds,
    )
    timeout_s = args.timeout or (120.0 if quick else 1200.0)
    fresh = None
    if args.fresh:
        fresh = FreshSettings(
            processes=args.fresh_processes or FreshSettings().processes,
            batches=args.fresh_batches or FreshSettings().batches,
            cold_caches=args.cold_caches,
        )
    bench = BenchRun(
        settings={
            **asdict(settings),
            "quick": quick,
            "dtype": args.dtype,
            "batch_sizes": batch_sizes,
            "systems": [s.name for s in systems],
            "worker_timeout_s": timeout_s,
            "fresh": asdict(fresh) if fresh else None,
        },
        machine=machine_info(args.threads),
        models=[],
        mode="fresh" if fresh else "warm",
    )
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="treecomp-bench-") as tmp:
            _run_models(
                bench,
                specs,
                systems,
                batch_sizes,
                settings,
                results,
                directory=Path(tmp),
                quick=quick,
                timeout_s=timeout_s,
                out=args.out,
                dtype=args.dtype,
                fresh=fresh,
            )
        bench.complete = True
    except KeyboardInterrupt:
        log("\ninterrupted: reporting the cells measured so far")
    bench.machine["load_average_end"] = load_average()
    _gather(bench, results, systems, fresh)
    return bench


def _gather(
    bench: BenchRun,
    results: list[dict[str, Any]],
    systems: Sequence[System],
    fresh: FreshSettings | None,
) -> None:
    if fresh is None:
        bench.records = build_records(results, systems)
        models = list(dict.fromkeys(r["model"] for r in bench.records))
        bench.table = format_tables(
            bench.records,
            models,
            [s.name for s in systems],
            rounds=bench.settings.get("rounds", 1),
        )
        return
    primes = [r for r in results if r.get("prime")]
    bench.settings["caches"] = describe_caches(fresh, primes)
    bench.records = build_fresh_records(results)
    bench.table = format_fresh_table(
        bench.records,
        fresh,
        threads=bench.settings["threads"],
        caches=bench.settings["caches"],
        primes=primes,
    )


def _run_models(
    bench: BenchRun,
    specs: Sequence[ModelSpec],
    systems: Sequence[System],
    batch_sizes: Sequence[int],
    settings: TimingSettings,
    results: list[dict[str, Any]],
    *,
    directory: Path,
    quick: bool,
    timeout_s: float,
    out: Path | None,
    dtype: str,
    fresh: FreshSettings | None = None,
) -> None:
    total, done = len(specs) * len(systems) * settings.rounds, 0
    # --fresh times distinct rows in each of a process's batches; warm calls cycle through
    # up to MAX_VIEWS distinct batches, so there are held-out rows for that many single rows
    # (with one row held out, `--batch-sizes 1` timed the same row again and again, which
    # the caches and the branch predictor learn: ONNX-ML's 500-tree model 11 us, not 23).
    n_test = max(max(batch_sizes) * (fresh.batches if fresh else 1), MAX_VIEWS)
    for spec in specs:
        log(f"fitting {spec.name}: {spec.description} ...")
        # One thread to fit: fitting is not measured, and on a shared machine OpenMP's
        # spinning barriers made two-thread fits of the quick models take 60 s, not 2.
        prepared = prepare_model(
            spec, directory, quick=quick, threads=1, n_test=n_test, dtype=dtype
        )
        bench.models.append(
            {
                "name": spec.name,
                "description": spec.description,
                "estimator": f"{spec.library}.{spec.estimator}",
                "params": dict(spec.quick_params if quick else spec.params),
                "n_features": spec.n_features,
                "nan_fraction": spec.nan_fraction,
                "fit_s": prepared.fit_s,
            }
        )
        if fresh is not None:
            _run_fresh(
                bench,
                prepared,
                systems,
                batch_sizes,
                settings,
                fresh,
                results,
                directory=directory,
                timeout_s=timeout_s,
                out=out,
            )
            continue
        rounds: dict[str, list[dict[str, Any]]] = {system.name: [] for system in systems}
        for round_ in range(settings.rounds):  # the systems take turns, round after round
            for system in systems:
                which = f" round {round_ + 1}/{settings.rounds}" if settings.rounds > 1 else ""
                done += 1
                log(f"  [{done}/{total}] {spec.name} / {system.name}{which}", end=" ")
                start = time.perf_counter()
                result = run_system(
                    prepared,
                    system,
                    batch_sizes,
                    settings,
                    directory=directory,
                    timeout_s=timeout_s,
                )
                log(f"{result['status']} ({time.perf_counter() - start:.1f}s)")
                rounds[system.name].append(result)
        for system in systems:
            results.append(merge_rounds(rounds[system.name]))
        if out is not None:
            bench.records = build_records(results, systems)
            write_json(bench, out)


def _run_fresh(
    bench: BenchRun,
    prepared: PreparedModel,
    systems: Sequence[System],
    batch_sizes: Sequence[int],
    settings: TimingSettings,
    fresh: FreshSettings,
    results: list[dict[str, Any]],
    *,
    directory: Path,
    timeout_s: float,
    out: Path | None,
) -> None:
    """``--fresh`` on one model: prime the caches (unless cold), then the timed processes.

    The systems take turns, process after process, so that a change in the machine's load
    falls on all of them alike.
    """
    name = prepared.spec.name

    def record(result: dict[str, Any]) -> None:
        results.append(result)
        if out is not None:
            bench.records = build_fresh_records(results)
            write_json(bench, out)

    if not fresh.cold_caches:
        for system in (s for s in systems if s.kind == "treecomp"):
            log(f"  priming the caches: {name} / {system.name}", end=" ")
            start = time.perf_counter()
            result = run_fresh_process(
                prepared,
                system,
                max(batch_sizes),
                settings,
                fresh,
                prime=True,
                directory=directory,
                timeout_s=timeout_s,
            )
            log(f"{result['status']} ({time.perf_counter() - start:.1f}s)")
            record({**result, "prime": True})
    skipped: set[str] = set()  # a system that cannot run here is asked once
    total = fresh.processes * len(batch_sizes) * len(systems)
    done = 0
    for i in range(fresh.processes):
        for batch in batch_sizes:
            for system in systems:
                done += 1
                if system.name in skipped:
                    continue
                log(
                    f"  [{done}/{total}] {name} / {system.name} / {batch} rows, process {i + 1}",
                    end=" ",
                )
                start = time.perf_counter()
                result = run_fresh_process(
                    prepared,
                    system,
                    batch,
                    settings,
                    fresh,
                    prime=False,
                    directory=directory,
                    timeout_s=timeout_s,
                )
                firsts = " ".join(format_seconds(t) for t in result["batch_s"])
                log(f"{result['status']} ({time.perf_counter() - start:.1f}s) {firsts}")
                if result["status"] == "skipped":
                    skipped.add(system.name)
                record(result)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Entry point of ``treecomp bench`` and ``python -m treecomp.bench``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
        prog: Program name shown in ``--help``.

    Returns:
        The exit status: 0 once the bench ran, whatever its cells' outcomes; 2 for bad
        arguments; 130 when interrupted (after reporting what it measured).
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        resolve_systems(args.systems, quick=args.quick)
        resolve_models(args.models)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.fresh and (args.fresh_processes or args.fresh_batches or args.cold_caches):
        parser.error("--fresh-processes, --fresh-batches and --cold-caches go with --fresh")
    start = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `timeout` stops it as Ctrl-C does
    try:
        bench = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    m = bench.machine
    print(
        f"treecomp bench, {m['date']}: {m['cpu_model']} ({m['isa'] or 'ISA unknown'}), "
        f"{m['cpus_available']} CPUs, {m['threads']} threads, torch {m['versions']['torch']}, "
        f"{args.dtype} rows"
        + (" (--quick)" if args.quick else "")
        + (", fresh processes (--fresh)" if args.fresh else "")
    )
    load = m["load_average"]
    if load and load[0] > 0.5:
        print(
            f"note: load average {load[0]:.2f} at the start: other processes share the CPUs "
            "and slow multi-threaded calls down"
        )
    print(bench.table)
    if args.out is not None:
        for path in write_results(bench, args.out):
            print(f"wrote {path}")
    print(
        f"bench took {time.perf_counter() - start:.0f} s"
        + ("" if bench.complete else ", cut short")
    )
    return 0 if bench.complete else 130


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
