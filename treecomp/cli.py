"""Command line: ``treecomp convert``, ``inspect``, ``score``, ``bench`` and ``demo``.

* ``treecomp convert MODEL --to onnx|pt2|torchscript|artifact|triton -o OUT``: a model file
  (a treecomp artifact, an XGBoost ``.json``/``.ubj``, a LightGBM text file, a ``.skops``
  file; pickles only with ``--trust-pickle``) to a serving file, or for ``triton`` a model
  in the Triton model repository OUT (``--name``, ``--max-batch-size``).
* ``treecomp inspect MODEL``: what the model is, and the strategies the selector would
  choose (a forest saved with ``Forest.to_json()`` works too).
* ``treecomp score MODEL DATA OUT``: score a Parquet or CSV file in batches.
* ``treecomp bench`` (see ``treecomp bench --help``) and ``treecomp demo``.

Exit codes: 0 done, 2 bad usage or an unreadable, unsupported or untrusted model or input:
a one-line message on stderr (``--debug`` shows the traceback). 1 is a bug in treecomp,
said in one line too. Model files are untrusted input: a truncated, corrupt or crafted
file is refused with exit code 2 before XGBoost's or LightGBM's parser can crash on it
(see treecomp.file_checks).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from treecomp._version import __version__
from treecomp.backends import available_backends
from treecomp.errors import InvalidArtifactError, InvalidForestError, UnsupportedModelError
from treecomp.inputs import PRECISIONS
from treecomp.ir import METHODS, Forest, tree_depths
from treecomp.names import STRATEGY_CHOICES

_EXPECTED = (OSError, ValueError, TypeError, AttributeError, ImportError, RuntimeError)


def _model(args: argparse.Namespace, **options: Any) -> Any:
    """The CompiledModel of ``args.model`` (any file treecomp.model_files reads)."""
    import numpy as np

    from treecomp.container import convert, load
    from treecomp.model_files import read_forest

    classes = args.classes.split(",") if getattr(args, "classes", None) else None
    forest, compiled, kind = read_forest(
        args.model, classes=classes, trust_pickle=getattr(args, "trust_pickle", False)
    )
    if compiled is not None and not options:
        return compiled, kind
    if compiled is not None:
        return load(args.model, **options), kind
    if isinstance(forest, Forest) and forest.task == "classifier" and classes is None:
        if kind.startswith(("XGBoost", "LightGBM")):
            args.notes.append(
                f"note: {args.model} holds no class labels: the classes are the native "
                f"numbers {np.asarray(forest.classes).tolist()} (set them with --classes)"
            )
    return convert(forest, **options), kind


def _forest_of(path: Path, args: argparse.Namespace) -> tuple[Forest, str]:
    from treecomp.model_files import json_format, read_forest

    if path.is_file() and json_format(path) == "forest":
        return Forest.from_json(path.read_bytes()), "treecomp Forest JSON"
    classes = args.classes.split(",") if args.classes else None
    forest, compiled, kind = read_forest(path, classes=classes, trust_pickle=args.trust_pickle)
    if forest is not None and not isinstance(forest, Forest):  # a Pipeline: its forest
        from treecomp.frontends.pipeline import parse_pipeline

        return parse_pipeline(forest)[1], f"{kind}, the forest after its transforms"
    return (compiled.forest if forest is None else forest), kind


def _inspect(args: argparse.Namespace) -> int:
    import numpy as np

    forest, kind = _forest_of(args.model, args)
    depths = tree_depths(forest.trees)
    histogram = np.bincount(depths)
    print(f"model:       {kind}")
    print(f"task:        {forest.task}")
    print(f"trees:       {forest.n_trees} (depth {depths.min()}..{depths.max()})")
    print("depths:      " + ", ".join(f"{d}: {c}" for d, c in enumerate(histogram.tolist()) if c))
    print(f"features:    {forest.n_features}")
    print(
        f"outputs:     {forest.n_outputs} ({forest.aggregation}, then {forest.post_transform.kind})"
    )
    print(f"comparison:  x {forest.comparison} threshold, inputs as {forest.input_dtype}")
    categorical = sum(int(t.is_categorical.sum()) for t in forest.trees)
    zero = sum(int(t.zero_is_missing.sum()) for t in forest.trees)
    print(
        f"splits:      {categorical} categorical, {zero} zero-as-missing; NaN "
        f"{'goes each node default way' if forest.allow_nan else 'is rejected'}"
    )
    if forest.classes is not None:
        print(f"classes:     {np.asarray(forest.classes).tolist()}")
    import strategies
    from strategies.selector import estimates

    for target in ("torch", "onnx"):
        for device in ("cpu", "cuda"):
            for batch in (1, 10_000):
                plan = strategies.plan_forest(
                    forest, "float32", batch_size=batch, device=device, target=target
                ).description
                print(f"strategy:    {target:<5} {device:<4} batch {batch:>6}: {plan}")
                if plan.startswith("tree_ensemble"):
                    print("               (ONNX Runtime's tree operator: chosen wherever exact)")
                    continue
                costs = estimates(forest.trees, batch=batch, device=device)
                print("               estimates for the whole forest: " + _costs(costs))
    return 0


def _costs(costs: dict[str, float]) -> str:
    def text(ns: float) -> str:
        if ns == float("inf"):
            return "too large"
        return next(
            f"{ns / scale:.3g} {unit}"
            for scale, unit in ((1e9, "s"), (1e6, "ms"), (1e3, "us"), (1.0, "ns"))
            if ns >= scale or unit == "ns"
        )

    return ", ".join(f"{name} {text(ns)}" for name, ns in costs.items())


def _convert(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"precision": args.precision}
    if args.strategy and args.to not in ("onnx", "triton"):  # ONNX graphs: at export
        options["strategy"] = args.strategy
    backend = {"onnx": "numpy", "pt2": "torch", "torchscript": "torchscript"}.get(args.to, "numpy")
    if args.to == "artifact":
        backend = args.backend or "auto"
    cm, kind = _model(args, backend=backend, **options)
    out = args.output
    if args.to == "onnx":
        cm.export_onnx(out, strategy=args.strategy)
    elif args.to == "pt2":
        cm.export_pt2(out)
    elif args.to == "triton":
        from treecomp.triton import write_repository

        batch = {} if args.max_batch_size is None else {"max_batch_size": args.max_batch_size}
        name = args.name or args.model.stem
        out = write_repository(cm, out, name=name, strategy=args.strategy, **batch)
    elif args.to == "torchscript":
        import torch

        torch.jit.save(cm.torch_module, str(out))
    else:
        cm.save(out)
    print(f"wrote {out} ({args.to}) from {args.model} ({kind})")
    return 0


def _score(args: argparse.Namespace) -> int:
    from treecomp.scoring import score

    options = {} if args.backend is None else {"backend": args.backend}
    model, _ = _model(args, **options)
    rows = score(
        model,
        args.data,
        args.out,
        methods=args.method or ["predict"],
        keep=args.keep or [],
        batch_rows=args.batch_rows,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    print(f"scored {rows} rows of {args.data} into {args.out} ({model.backend}, {model.strategy})")
    return 0


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        type=Path,
        help="a treecomp artifact, an XGBoost .json/.ubj, a LightGBM text file or a .skops file",
    )
    parser.add_argument(
        "--classes", help="comma-separated class labels (XGBoost and LightGBM files hold none)"
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a .pkl/.joblib file (unpickling runs code: only for files you trust)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="treecomp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"treecomp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="convert a model file to ONNX, .pt2, TorchScript")
    _model_arguments(convert)
    convert.add_argument(
        "--to", required=True, choices=["onnx", "pt2", "torchscript", "artifact", "triton"]
    )
    convert.add_argument(
        "-o", "--output", required=True, type=Path, help="file (--to triton: repository) to write"
    )
    convert.add_argument("--precision", default="auto", choices=PRECISIONS)
    convert.add_argument(
        "--strategy",
        help=f"a lowering, one of {', '.join(STRATEGY_CHOICES)} (default: auto, the selector's)",
    )
    convert.add_argument(
        "--backend",
        help=f"backend saved in an artifact (--to artifact): {', '.join(available_backends())}",
    )
    convert.add_argument("--name", help="model name in the repository (--to triton; MODEL's stem)")
    convert.add_argument(
        "--max-batch-size", type=int, help="rows per request and batch (--to triton; 4096)"
    )

    inspect = sub.add_parser("inspect", help="summarise a model and the selector's choices")
    _model_arguments(inspect)

    score = sub.add_parser(
        "score",
        help="score a Parquet or CSV file in batches, writing Parquet or CSV",
        description="Score every row of DATA (.parquet or .csv) with MODEL into OUT (.parquet "
        "or .csv), one batch at a time. OUT appears only when every row is scored.",
    )
    _model_arguments(score)
    score.add_argument("data", type=Path, help="input .parquet or .csv")
    score.add_argument("out", type=Path, help="output .parquet or .csv")
    score.add_argument(
        "--method",
        action="append",
        choices=METHODS,
        help="an output to write (repeatable; default: predict)",
    )
    score.add_argument("--keep", action="append", help="an input column to copy (repeatable)")
    score.add_argument(
        "--backend",
        help=f"backend to score with: {', '.join(available_backends())} (default: the fastest)",
    )
    score.add_argument("--batch-rows", type=int, default=1 << 16, help="rows per batch")
    score.add_argument("--progress", action="store_true", help="show a progress bar")
    score.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    sub.add_parser("demo", help="compile one model per library and compare with native")
    sub.add_parser(
        "bench",
        help="time treecomp against native, onnxml and hummingbird (treecomp bench --help)",
        add_help=False,
    )
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (a test may swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_progress() -> None:
    """treecomp's INFO lines (a compile's steps and times: ``--to pt2`` takes tens of
    seconds on a large forest) on stderr: the command owns its process's treecomp logger."""
    logger = logging.getLogger("treecomp")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("treecomp: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # said once, not again by a root handler


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``treecomp`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # Everything after ``bench`` is the bench's own: forwarded as is, --help included.
        from treecomp.bench import main as bench

        return bench(argv[1:], prog="treecomp bench")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for bad usage
        return int(exc.code or 0)
    if args.command == "demo":
        from treecomp.demo import main as demo

        return demo()
    commands = {"convert": _convert, "inspect": _inspect, "score": _score}
    _log_progress()
    args.notes = []  # said once the command has succeeded: a failure is one line alone
    try:
        code = commands[args.command](args)
    except (*_EXPECTED, UnsupportedModelError, InvalidArtifactError, InvalidForestError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"treecomp {args.command}: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, and an exit code of its own
        if args.debug:
            raise
        message = " ".join(str(exc).split())[:300]
        print(
            f"treecomp {args.command}: internal error ({type(exc).__name__}: {message}); "
            "rerun with --debug to see the traceback",
            file=sys.stderr,
        )
        return 1
    for note in args.notes:
        print(note, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
