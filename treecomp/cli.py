"""Command line: ``treecomp inspect FOREST.json`` summarises a saved forest; ``treecomp score
MODEL DATA OUT`` scores a Parquet or CSV file in batches; ``treecomp demo``; ``treecomp bench``
times compiled models against the native libraries (see ``--help``).

Exit codes: 0 done, 2 bad usage or input (a one-line message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from treecomp.ir import Forest, tree_depths


def _inspect(path: Path) -> int:
    forest = Forest.from_json(path.read_bytes())
    depths = tree_depths(forest.trees).tolist()
    print(f"task:        {forest.task}")
    print(f"trees:       {forest.n_trees} (depth {min(depths)}..{max(depths)})")
    print(f"features:    {forest.n_features}")
    print(
        f"outputs:     {forest.n_outputs} ({forest.aggregation}, then {forest.post_transform.kind})"
    )
    print(f"comparison:  x {forest.comparison} threshold, inputs as {forest.input_dtype}")
    print(f"categorical: {sum(int(t.is_categorical.sum()) for t in forest.trees)} splits")
    if forest.classes is not None:
        print(f"classes:     {list(forest.classes)}")
    return 0


def _score(args: argparse.Namespace) -> int:
    import treecomp

    options = {} if args.backend is None else {"backend": args.backend}
    model = treecomp.load(args.model, **options)
    rows = treecomp.score(
        model,
        args.data,
        args.out,
        methods=args.method or ["predict"],
        keep=args.keep or [],
        batch_rows=args.batch_rows,
        progress=args.progress,
    )
    print(f"scored {rows} rows of {args.data} into {args.out} ({model.backend}, {model.strategy})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``treecomp`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # Everything after ``bench`` is the bench's own: forwarded as is, --help included.
        from treecomp.bench import main as bench

        return bench(argv[1:], prog="treecomp bench")
    parser = argparse.ArgumentParser(prog="treecomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="summarise a forest saved with Forest.to_json()")
    inspect.add_argument("path", type=Path)
    score = sub.add_parser(
        "score",
        help="score a Parquet or CSV file in batches, writing Parquet or CSV",
        description="Score every row of DATA (.parquet or .csv) with MODEL (an artifact "
        "written by cm.save) into OUT (.parquet or .csv), one batch at a time. OUT appears "
        "only when every row is scored.",
    )
    score.add_argument("model", type=Path, help="a treecomp artifact (cm.save)")
    score.add_argument("data", type=Path, help="input .parquet or .csv")
    score.add_argument("out", type=Path, help="output .parquet or .csv")
    score.add_argument(
        "--method",
        action="append",
        choices=["predict", "predict_proba", "decision_function", "score_samples", "apply"],
        help="an output to write (repeatable; default: predict)",
    )
    score.add_argument("--keep", action="append", help="an input column to copy (repeatable)")
    score.add_argument("--backend", help="run on this backend instead of the saved one")
    score.add_argument("--batch-rows", type=int, default=1 << 16, help="rows per batch")
    score.add_argument("--progress", action="store_true", help="show a progress bar")
    sub.add_parser("demo", help="compile one model per library and compare with native")
    sub.add_parser(
        "bench",
        help="time treecomp against native, onnxml and hummingbird (treecomp bench --help)",
        add_help=False,
    )
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.path)
    if args.command == "score":
        from treecomp.errors import InvalidArtifactError, UnsupportedModelError

        try:
            return _score(args)
        except (
            OSError,
            ValueError,
            AttributeError,
            InvalidArtifactError,
            UnsupportedModelError,
        ) as exc:
            print(f"treecomp score: {exc}", file=sys.stderr)
            return 2
    from treecomp.demo import main as demo

    return demo()


if __name__ == "__main__":
    sys.exit(main())
