"""Peak memory of scoring many rows, per backend: ``python benchmarks/memory.py``.

Fits the benchmark's 500-tree XGBoost model (``treecomp bench``'s ``xgb-binary``, fixed
seed), then, for each backend in a fresh process, scores ``--rows`` rows with
``predict_proba`` and reports the peak RSS against the budget the batch-scoring issue sets:
the process before the call (input included) + the outputs + 1.5 GiB. With ``--file ROWS``
it instead writes a Parquet file of that many rows and runs ``treecomp.score`` on it, whose
peak must stay within the process before the call + 1.5 GiB, whatever the file's size. Not
part of the test suite: ten million rows take minutes per backend.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUDGET = 1.5 * 2**30


def _rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB


def _worker(model_path: str, rows_path: str, backend: str, rows: int, threads: int) -> None:
    import numpy as np
    import xgboost

    import treecomp

    model = xgboost.XGBClassifier()
    model.load_model(model_path)
    base = np.load(rows_path)
    X = base[np.arange(rows) % len(base)]
    options = {} if backend == "numpy" else {"n_threads": threads}
    cm = treecomp.convert(model, backend, **options)
    cm.predict_proba(X[:1000])  # warm-up: sessions, kernels, caches
    before = _rss()
    start = time.perf_counter()
    proba = cm.predict_proba(X)
    seconds = time.perf_counter() - start
    peak = _rss()
    print(
        json.dumps(
            {
                "backend": backend,
                "rows": rows,
                "input_bytes": X.nbytes,
                "output_bytes": proba.nbytes,
                "before_bytes": before,
                "peak_bytes": peak,
                "seconds": seconds,
            }
        )
    )


def _score_worker(model_path: str, data: str, backend: str, threads: int) -> None:
    import xgboost

    import treecomp

    model = xgboost.XGBClassifier()
    model.load_model(model_path)
    options = {} if backend == "numpy" else {"n_threads": threads}
    cm = treecomp.convert(model, backend, **options)
    before = _rss()
    start = time.perf_counter()
    # one output per data file, rewritten by each backend in turn
    rows = treecomp.score(
        cm, data, data + ".scores.parquet", methods=["predict_proba"], overwrite=True
    )
    seconds = time.perf_counter() - start
    out = {"backend": backend, "rows": rows, "before_bytes": before, "peak_bytes": _rss()}
    print(json.dumps({**out, "file_bytes": Path(data).stat().st_size, "seconds": seconds}))


def _write_parquet(path: str, rows: int, base: Any) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"f{j}" for j in range(base.shape[1])]
    writer = None
    for start in range(0, rows, 1 << 20):
        block = base[(start + np.arange(min(1 << 20, rows - start))) % len(base)]
        table = pa.table({n: block[:, j] for j, n in enumerate(names)})
        writer = writer or pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table, row_group_size=1 << 17)
    assert writer is not None
    writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--numpy-rows", type=int, default=None, help="rows for numpy")
    parser.add_argument("--backends", default="torch,onnx,numpy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--file", type=int, default=None, help="rows of a Parquet file to score")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--score-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score_worker:
        model_path, data, backend, threads = args.score_worker
        _score_worker(model_path, data, backend, int(threads))
        return 0
    if args.worker:
        model_path, rows_path, backend, rows, threads = args.worker
        _worker(model_path, rows_path, backend, int(rows), int(threads))
        return 0

    import numpy as np

    from treecomp.bench import MODELS, make_data, make_estimator

    spec = next(m for m in MODELS if m.name == "xgb-binary")
    with tempfile.TemporaryDirectory() as tmp:
        X_train, y_train, X_test = make_data(spec, 20_000, 100_000)
        model = make_estimator(spec, quick=False, threads=args.threads).fit(X_train, y_train)
        model_path, rows_path = str(Path(tmp) / "model.json"), str(Path(tmp) / "rows.npy")
        model.save_model(model_path)
        np.save(rows_path, X_test)
        if args.file:
            return _score_file(args, model_path, str(Path(tmp) / "rows.parquet"), X_test)
        print(
            f"{'backend':<8} {'rows':>10} {'input':>9} {'outputs':>9} {'before':>9} "
            f"{'peak':>9} {'over':>9} {'budget':>9}  time"
        )
        failed = 0
        for backend in args.backends.split(","):
            rows = args.numpy_rows if backend == "numpy" and args.numpy_rows else args.rows
            command = [
                sys.executable,
                __file__,
                "--worker",
                model_path,
                rows_path,
                backend,
                str(rows),
                str(args.threads),
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            over = r["peak_bytes"] - r["before_bytes"]
            allowed = r["output_bytes"] + BUDGET  # the input is in "before" already
            failed += over > allowed
            mib = 2**20
            print(
                f"{backend:<8} {rows:>10} {r['input_bytes'] / mib:>7.0f}MB "
                f"{r['output_bytes'] / mib:>7.0f}MB {r['before_bytes'] / mib:>7.0f}MB "
                f"{r['peak_bytes'] / mib:>7.0f}MB {over / mib:>7.0f}MB {allowed / mib:>7.0f}MB  "
                f"{r['seconds']:.0f} s {'OK' if over <= allowed else 'OVER BUDGET'}"
            )
    return 1 if failed else 0


def _score_file(args: Any, model_path: str, data: str, base: Any) -> int:
    _write_parquet(data, args.file, base)
    print(
        f"{'backend':<8} {'rows':>10} {'file':>9} {'before':>9} {'peak':>9} {'over':>9} "
        f"{'budget':>9}  time"
    )
    failed = 0
    for backend in args.backends.split(","):
        command = [
            sys.executable,
            __file__,
            "--score-worker",
            model_path,
            data,
            backend,
            str(args.threads),
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        over = r["peak_bytes"] - r["before_bytes"]
        failed += over > BUDGET
        mib = 2**20
        print(
            f"{backend:<8} {r['rows']:>10} {r['file_bytes'] / mib:>7.0f}MB "
            f"{r['before_bytes'] / mib:>7.0f}MB {r['peak_bytes'] / mib:>7.0f}MB "
            f"{over / mib:>7.0f}MB {BUDGET / mib:>7.0f}MB  {r['seconds']:.0f} s "
            f"{'OK' if over <= BUDGET else 'OVER BUDGET'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
