"""The bench's models: synthetic data, the estimators fitted on it, and their saved outputs.

Each :class:`ModelSpec` is one model of ``treecomp bench --models``, fitted in the parent
process with fixed seeds; :func:`prepare_model` saves it with its held-out rows and the native
model's outputs on them, for the workers to read back.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Rows the parent fits each model on, full and --quick.
TRAIN_ROWS = 20_000
QUICK_TRAIN_ROWS = 3_000


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One benchmark model: how to make its data and fit it, full size and ``--quick``.

    Attributes:
        name: Short name used in ``--models``, tables and results.
        description: What it is, for the table.
        library: ``"xgboost"``, ``"lightgbm"`` or ``"sklearn"``.
        estimator: The estimator class name in that library (``sklearn.ensemble`` for sklearn).
        n_classes: Number of classes; 0 for a regressor.
        params: Estimator parameters of the full-size model.
        quick_params: Estimator parameters under ``--quick``.
        nan_fraction: Fraction of input values set to NaN, in training and held-out rows.
        n_features: Number of input features.
        train_rows: Training rows; ``None`` for the bench's default.
        seed: Seed of the synthetic data.
    """

    name: str
    description: str
    library: str
    estimator: str
    n_classes: int
    params: Mapping[str, Any]
    quick_params: Mapping[str, Any]
    nan_fraction: float = 0.0
    n_features: int = 28
    train_rows: int | None = None
    seed: int = 0

    @property
    def classifier(self) -> bool:
        """Whether the model is a classifier (compared on probabilities and labels)."""
        return self.n_classes > 0


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "xgb-binary",
        "XGBoost binary, 500 trees, depth 8, 28 features (HIGGS-like)",
        "xgboost",
        "XGBClassifier",
        2,
        {"n_estimators": 500, "max_depth": 8, "learning_rate": 0.1},
        {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.1},
        seed=1,
    ),
    ModelSpec(
        "xgb-multiclass",
        "XGBoost 10 classes, 100 rounds (1000 trees), depth 6",
        "xgboost",
        "XGBClassifier",
        10,
        {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.1},
        {"n_estimators": 20, "max_depth": 6, "learning_rate": 0.1},
        seed=2,
    ),
    ModelSpec(
        "lgbm-regression",
        "LightGBM regression, 300 trees, 255 leaves",
        "lightgbm",
        "LGBMRegressor",
        0,
        {"n_estimators": 300, "num_leaves": 255},
        {"n_estimators": 50, "num_leaves": 31},
        seed=3,
    ),
    ModelSpec(
        "rf-classifier",
        "RandomForestClassifier 5 classes, 100 trees, depth 12",
        "sklearn",
        "RandomForestClassifier",
        5,
        {"n_estimators": 100, "max_depth": 12},
        {"n_estimators": 20, "max_depth": 8},
        seed=4,
    ),
    ModelSpec(
        "gb-regressor",
        "GradientBoostingRegressor, 50 trees, depth 3",
        "sklearn",
        "GradientBoostingRegressor",
        0,
        {"n_estimators": 50, "max_depth": 3},
        {"n_estimators": 20, "max_depth": 3},
        seed=5,
    ),
    ModelSpec(
        "hgb-nan",
        "HistGradientBoostingClassifier binary, 200 iterations, 10 % NaN",
        "sklearn",
        "HistGradientBoostingClassifier",
        2,
        # No early stopping: it would stop before 200 iterations on more than 10k rows.
        {"max_iter": 200, "early_stopping": False},
        {"max_iter": 30, "max_leaf_nodes": 15, "early_stopping": False},
        nan_fraction=0.1,
        seed=6,
    ),
    ModelSpec(
        "xgb-regression-nan",
        "XGBoost regression, 300 trees, depth 6, 10 % NaN",
        "xgboost",
        "XGBRegressor",
        0,
        {"n_estimators": 300, "max_depth": 6, "learning_rate": 0.1},
        {"n_estimators": 50, "max_depth": 6, "learning_rate": 0.1},
        nan_fraction=0.1,
        seed=7,
    ),
)
# Not in the default set: a model that fits and converts in moments, for the bench's own tests.
TINY = ModelSpec(
    "tiny",
    "XGBoost binary, 5 trees, depth 3 (for self-tests)",
    "xgboost",
    "XGBClassifier",
    2,
    {"n_estimators": 5, "max_depth": 3},
    {"n_estimators": 5, "max_depth": 3},
    n_features=8,
    train_rows=500,
    seed=8,
)
MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (*MODELS, TINY)}


def make_data(
    spec: ModelSpec, n_train: int, n_test: int, dtype: str = "float32"
) -> tuple[npt.NDArray[np.floating], npt.NDArray[Any], npt.NDArray[np.floating]]:
    """Synthetic training rows, targets and held-out rows for a model, from its fixed seed.

    Args:
        spec: The model.
        n_train: Training rows.
        n_test: Held-out rows (the largest batch size).
        dtype: ``"float32"`` (rows of float32 numbers) or ``"float64"`` (doubles, most of
            which no float32 holds: what LightGBM and HistGradientBoosting compare exactly).

    Returns:
        ``(X_train, y_train, X_test)``, inputs of ``dtype``.
    """
    from sklearn.datasets import make_classification, make_regression

    n = n_train + n_test
    if spec.classifier:
        X, y = make_classification(
            n_samples=n,
            n_features=spec.n_features,
            n_informative=max(2, spec.n_features // 2),
            n_redundant=spec.n_features // 7,
            n_classes=spec.n_classes,
            n_clusters_per_class=2,
            flip_y=0.02,
            random_state=spec.seed,
        )
    else:
        X, y = make_regression(
            n_samples=n,
            n_features=spec.n_features,
            n_informative=max(2, spec.n_features // 2),
            noise=10.0,
            random_state=spec.seed,
        )
    X = X.astype(dtype)
    if spec.nan_fraction:
        rng = np.random.default_rng(spec.seed)
        X[rng.random(X.shape) < spec.nan_fraction] = np.nan
    return X[:n_train], y[:n_train], X[n_train:]


def make_estimator(spec: ModelSpec, *, quick: bool, threads: int) -> Any:
    """An unfitted estimator for ``spec`` using ``threads`` threads.

    Args:
        spec: The model.
        quick: Use the ``--quick`` parameters.
        threads: Threads for fitting and predicting.
    """
    params = dict(spec.quick_params if quick else spec.params)
    if spec.library == "xgboost":
        import xgboost

        return getattr(xgboost, spec.estimator)(**params, n_jobs=threads, random_state=0)
    if spec.library == "lightgbm":
        import lightgbm

        return getattr(lightgbm, spec.estimator)(
            **params, n_jobs=threads, random_state=0, verbose=-1
        )
    from sklearn import ensemble

    cls = getattr(ensemble, spec.estimator)
    estimator = cls(**params, random_state=0)
    if "n_jobs" in estimator.get_params():
        estimator.set_params(n_jobs=threads)
    return estimator


@dataclass(frozen=True, slots=True)
class PreparedModel:
    """A fitted model saved for the workers, with its held-out rows and native outputs."""

    spec: ModelSpec
    model_path: str
    X_path: str
    scores_path: str
    labels_path: str | None
    fit_s: float


def prepare_model(
    spec: ModelSpec,
    directory: Path,
    *,
    quick: bool,
    threads: int,
    n_test: int,
    dtype: str = "float32",
) -> PreparedModel:
    """Fit a model and save it, its held-out rows and its native outputs for the workers.

    The workers read these files back with :mod:`pickle`: the bench only reads files it made
    itself, in its own temporary directory.

    Args:
        spec: The model.
        directory: Where to write the files.
        quick: Fit the ``--quick`` size.
        threads: Threads to fit with (the workers set their own for predicting).
        n_test: Held-out rows to keep (the largest batch size).
        dtype: The rows' float type (see :func:`make_data`).
    """
    n_train = spec.train_rows or (QUICK_TRAIN_ROWS if quick else TRAIN_ROWS)
    X_train, y_train, X_test = make_data(spec, n_train, n_test, dtype)
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    model = make_estimator(spec, quick=quick, threads=threads)
    start = time.perf_counter()
    with threadpool_limits(limits=threads):  # OpenMP of HistGradientBoosting, BLAS
        model.fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    base = directory / spec.name
    paths = {k: f"{base}-{k}" for k in ("model.pkl", "X.npy", "scores.npy", "labels.npy")}
    with open(paths["model.pkl"], "wb") as f:
        pickle.dump(model, f)
    np.save(paths["X.npy"], np.ascontiguousarray(X_test))
    if spec.classifier:
        np.save(paths["scores.npy"], np.asarray(model.predict_proba(X_test), dtype=np.float64))
        np.save(paths["labels.npy"], np.asarray(model.predict(X_test)))
    else:
        np.save(paths["scores.npy"], np.asarray(model.predict(X_test), dtype=np.float64))
    return PreparedModel(
        spec,
        paths["model.pkl"],
        paths["X.npy"],
        paths["scores.npy"],
        paths["labels.npy"] if spec.classifier else None,
        fit_s,
    )


def resolve_models(text: str) -> list[ModelSpec]:
    """The models of a ``--models`` value: names, ``default`` or ``all``, comma-separated.

    Raises:
        ValueError: a name is none of the models'.
    """
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        for name in [s.name for s in MODELS] if part in ("default", "all") else [part]:
            if name and name not in names:
                names.append(name)
    unknown = [n for n in names if n not in MODEL_SPECS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(MODEL_SPECS)}")
    return [MODEL_SPECS[n] for n in names]
