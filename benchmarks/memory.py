"""Peak memory of scoring many rows, per backend: ``python benchmarks/memory.py``.

Fits the benchmark's 500-tree XGBoost model (``treecomp bench``'s ``xgb-binary``, fixed
seed), then, for each backend in a fresh process, scores ``--rows`` rows with
``predict_proba`` and reports the peak RSS against the budget the batch-scoring issue sets:
the process before the call (input included) + the outputs + 1.5 GiB. Not part of the test
suite: ten million rows take minutes per backend (the NumPy reference much longer).
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--numpy-rows", type=int, default=None, help="rows for numpy")
    parser.add_argument("--backends", default="torch,onnx,numpy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
