"""Command line: ``treecomp inspect FOREST.json`` summarises a saved forest; ``treecomp demo``;
``treecomp bench`` times compiled models against the native libraries (see ``--help``).
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
    sub.add_parser("demo", help="compile one model per library and compare with native")
    sub.add_parser(
        "bench",
        help="time treecomp against native, onnxml and hummingbird (treecomp bench --help)",
        add_help=False,
    )
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.path)
    from treecomp.demo import main as demo

    return demo()


if __name__ == "__main__":
    sys.exit(main())
