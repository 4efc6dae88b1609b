"""Time categorical membership: ``python benchmarks/categories.py [--threads 1]``.

Two measurements. ``lookup``: one membership test of a million walkers in eager torch
(:func:`strategies.nodes.category_member`), in the direct table and in the hash table of
the same categories. ``forest``: a LightGBM model of 100 trees of 31 leaves on three
categorical features of 50 levels and five numerical ones, 10 000 rows scored by each
torch strategy (eager) and by the onnx backend, best of ``--repeat``, in the direct tables
the model's small codes get (``--hash``: in hash tables). Run it under another checkout
(``PYTHONPATH=...``) to compare versions.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def best(function: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``repeat`` calls, in ms (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def lookup(repeat: int) -> None:
    from strategies import categories, nodes, programs
    from treecomp.arrays import record

    generator = torch.Generator().manual_seed(0)
    walkers, rows, levels = 1_000_000, 50, 40
    lists = [np.flatnonzero(np.random.default_rng(r).random(levels) < 0.3) for r in range(rows)]
    direct = categories.CategorySets(lists, kind="direct")
    hashed = categories.CategorySets(lists, kind="hash")
    code = torch.randint(0, levels, (walkers,), generator=generator)
    row = torch.randint(1, rows + 1, (walkers,), generator=generator)
    for name, sets in (("direct", direct), ("hash", hashed)):
        table = torch.from_numpy(sets.table)
        types = ("int64", "int64", "bool" if sets.table.dtype == bool else "int64")
        steps = record(
            lambda c, r, t, layout=sets.layout: nodes.category_member(c, r, t, layout), *types
        ).flat()

        def run(table: torch.Tensor = table, steps: list = steps) -> torch.Tensor:
            return programs.run_steps(steps, [code, row, table])

        ms = best(run, repeat)
        print(f"lookup of {walkers:,} walkers, {name} table: {ms:.1f} ms")


def forest(repeat: int) -> None:
    import lightgbm

    import treecomp

    rng = np.random.default_rng(0)
    n = 20_000
    X = np.column_stack([rng.integers(0, 50, (n, 3)).astype(np.float64), rng.normal(size=(n, 5))])
    effect = rng.normal(size=(3, 50))
    y = effect[0, X[:, 0].astype(int)] + effect[1, X[:, 1].astype(int)] + X[:, 3]
    y += effect[2, X[:, 2].astype(int)] * X[:, 4] + rng.normal(scale=0.1, size=n)
    model = lightgbm.LGBMRegressor(
        n_estimators=100, num_leaves=31, min_data_per_group=5, cat_smooth=1.0, verbose=-1
    ).fit(X, y, categorical_feature=[0, 1, 2])
    test = X[:10_000]
    native = best(lambda: model.predict(test), repeat)
    print(f"forest: LightGBM predict {native:.0f} ms")
    for backend, strategy in [
        ("torch", "gemm"),
        ("torch", "tree_traversal"),
        ("torch", "perfect_tree_traversal"),
        ("onnx", "tree_traversal"),
        ("onnx", "perfect_tree_traversal"),
    ]:
        cm = treecomp.convert(model, backend, strategy=strategy, precision="float64")
        np.testing.assert_array_equal(cm.apply(test), model.predict(test, pred_leaf=True))
        ms = best(lambda cm=cm: cm.predict(test), repeat)
        print(f"forest: {backend} {strategy} {ms:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["lookup", "forest"])
    parser.add_argument(
        "--hash", action="store_true", help="forest: hash tables even where direct ones fit"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.hash:
        from strategies.categories import CategorySets

        CategorySets.__init__.__kwdefaults__["kind"] = "hash"  # type: ignore[index]
    if args.only != "forest":
        lookup(args.repeat)
    if args.only != "lookup":
        forest(args.repeat)


if __name__ == "__main__":
    main()
