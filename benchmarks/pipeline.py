"""A compiled scikit-learn Pipeline against ``pipeline.predict_proba``, rows of a DataFrame.

``python benchmarks/pipeline.py`` fits a Pipeline (median imputer + StandardScaler on two
numeric columns, MinMaxScaler on a third, most-frequent imputer + OneHotEncoder on a string
column, OrdinalEncoder on another; then ``--trees`` XGBoost trees of depth 6, one thread) on
5 000 rows with 10 % missing values, converts it on each backend, checks every label against
the pipeline's on 10 000 held-out rows (unseen categories included), and prints the best of
3 timings of ``predict_proba`` on those rows and on one row, with the time of the input
encoding alone (:func:`treecomp.transforms.encode`).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import xgboost
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, OrdinalEncoder, StandardScaler

import treecomp
from treecomp.transforms import encode


def frame(n: int, seed: int, *, unseen: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n) * 10,
            "b": rng.uniform(0, 5, n),
            "c": rng.normal(size=n),
            "color": rng.choice(["red", "green", "blue"] + ["purple"] * unseen, n).astype(object),
            "size": rng.choice(["S", "M", "L"] + ["XL"] * unseen, n).astype(object),
        }
    )
    for column in df.columns:
        df.loc[rng.random(n) < 0.1, column] = np.nan
    return df


def best_ms(function: Callable[[Any], Any], X: Any, repeat: int) -> float:
    function(X)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            function(X)
        best = min(best, (time.perf_counter() - start) / repeat)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), ["a", "b"]),
            ("minmax", MinMaxScaler(), ["c"]),
            (
                "onehot",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                ),
                ["color"],
            ),
            (
                "ordinal",
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                ["size"],
            ),
        ]
    )
    train = frame(5000, 3)
    model = xgboost.XGBClassifier(n_estimators=args.trees, max_depth=6, n_jobs=1)
    pipeline = Pipeline([("pre", pre), ("model", model)])
    pipeline.fit(train, (train["a"].fillna(0) > 0) ^ (train["color"] == "red"))
    rows, one = frame(10_000, 4, unseen=True), frame(1, 5)
    print(f"{platform.processor() or platform.machine()}, {args.trees} trees; ms, best of 3")
    print(
        f"{'native':7s}  10 000 rows {best_ms(pipeline.predict_proba, rows, 3):8.2f}   "
        f"1 row {best_ms(pipeline.predict_proba, one, 50):7.3f}"
    )
    for backend in ("onnx", "torch", "kernel", "numpy"):
        cm = treecomp.convert(pipeline, backend)
        assert (cm.predict(rows) == pipeline.predict(rows)).all(), backend
        print(
            f"{backend:7s}  10 000 rows {best_ms(cm.predict_proba, rows, 3):8.2f}   "
            f"1 row {best_ms(cm.predict_proba, one, 50):7.3f}   ({cm.strategy})"
        )
    transforms = cm.transforms
    assert transforms is not None
    print(
        f"{'encode':7s}  10 000 rows {best_ms(lambda X: encode(transforms, X), rows, 3):8.2f}   "
        f"1 row {best_ms(lambda X: encode(transforms, X), one, 50):7.3f}"
    )


if __name__ == "__main__":
    main()
