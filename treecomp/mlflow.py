"""MLflow models: a compiled model saved or logged as an MLflow ``python_function`` model.

:func:`save_model` and :func:`log_model` write the model's safe artifact (checksummed JSON,
:meth:`~treecomp.CompiledModel.save`) as the MLflow model's data, with ``treecomp.mlflow`` as
its ``loader_module``: ``mlflow.pyfunc.load_model`` calls :func:`_load_pyfunc`, which rebuilds
the model with :func:`treecomp.load`. Nothing is pickled, neither a torch module nor a Python
model object (MLflow's ``python_model=`` form cloudpickles its object, and warns about it).

Typical use::

    import mlflow
    import treecomp.mlflow

    treecomp.mlflow.save_model(cm, "tc_model")
    loaded = mlflow.pyfunc.load_model("tc_model")
    loaded.predict(frame)                                          # == cm.predict(frame)
    loaded.predict(frame, params={"method": "predict_proba"})      # == cm.predict_proba(frame)

    with mlflow.start_run():
        info = treecomp.mlflow.log_model(cm, "model")
    mlflow.pyfunc.load_model(info.model_uri)

The signature names one column per feature (the model's feature names, else ``x0``, ``x1``,
...), so MLflow checks a frame's columns before the model sees it and hands them over in fit
order; its outputs are what ``predict`` returns. A ``method`` parameter (default
``"predict"``) picks any prediction method the native model has.

MLflow is imported only inside these functions: ``import treecomp`` never needs it.
``mlflow-skinny`` (``pip install -e ".[mlflow]"``) is enough to save, log and load.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from treecomp.backends import available_backends
from treecomp.container import CompiledModel
from treecomp.inputs import categories_by_value
from treecomp.ir import Forest
from treecomp.names import BACKENDS
from treecomp.transforms import Transforms

if TYPE_CHECKING:
    from mlflow.models import Model, ModelSignature
    from mlflow.models.model import ModelInfo

__all__ = ["log_model", "save_model", "signature"]

# The artifact's file name inside the MLflow model's data/ folder.
_ARTIFACT = "model.tc"
# What ``model_config`` may set at load time: treecomp.load's backend and run options.
_LOAD_OPTIONS = ("backend", "device", "precision", "strategy", "batch_size", "n_threads")


def save_model(
    cm: CompiledModel,
    path: str | Path,
    *,
    backend: str | None = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Model:
    """Save ``cm`` as an MLflow ``python_function`` model in the new directory ``path``.

    Args:
        cm: The model, from :func:`treecomp.convert` or :func:`treecomp.load`.
        path: A directory that does not exist yet (MLflow refuses a non-empty one).
        backend: The backend the loaded model runs on (default ``cm.backend``), saved in
            the MLmodel's ``config``: ``mlflow.pyfunc.load_model(uri, model_config={"backend":
            "numpy"})`` changes it when loading, as ``device``, ``precision``, ``strategy``,
            ``batch_size`` and ``n_threads`` override the artifact's own options (saved as
            null, so that MLflow accepts them).
        input_example: Passed to MLflow (a few rows of a DataFrame), checked against the
            signature and stored with the model.
        pip_requirements: The serving environment's requirements. Default: this treecomp
            version, NumPy, pandas and the backend's packages, pinned to the installed
            versions. (The PyPI project named ``treecomp`` is another project: where the
            model is served by ``mlflow models serve`` with a fresh environment, list
            this treecomp's wheel or repository here.)
        extra_pip_requirements: Added to the default requirements.
        metadata: Custom metadata for the MLmodel file.

    Returns:
        The ``mlflow.models.Model`` written.

    Raises:
        TypeError: ``cm`` is not a :class:`~treecomp.CompiledModel`.
        ValueError: an unknown backend.
    """
    import mlflow.pyfunc

    with _pyfunc_arguments(
        cm, backend, input_example, metadata, pip_requirements, extra_pip_requirements
    ) as arguments:
        return mlflow.pyfunc.save_model(path=str(path), **arguments)


def log_model(
    cm: CompiledModel,
    name: str = "model",
    *,
    backend: str | None = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log ``cm`` as an MLflow ``python_function`` model to the active run (one is started,
    as ``mlflow.pyfunc.log_model`` does, where none is active).

    Args:
        cm: The model.
        name: The model's name in the run (MLflow 3's ``name``; its ``artifact_path`` in
            MLflow 2): ``mlflow.pyfunc.load_model(f"runs:/{run_id}/{name}")`` loads it.
        backend, input_example, pip_requirements, extra_pip_requirements, metadata: As for
            :func:`save_model`.
        registered_model_name: Also register the model under this name (needs a tracking
            store with a model registry).

    Returns:
        MLflow's ``ModelInfo``; its ``model_uri`` loads the model.
    """
    import mlflow.pyfunc

    with _pyfunc_arguments(
        cm, backend, input_example, metadata, pip_requirements, extra_pip_requirements
    ) as arguments:
        return mlflow.pyfunc.log_model(
            name=name, registered_model_name=registered_model_name, **arguments
        )


@contextlib.contextmanager
def _pyfunc_arguments(
    cm: CompiledModel,
    backend: str | None,
    input_example: Any,
    metadata: dict[str, Any] | None,
    pip_requirements: list[str] | None,
    extra_pip_requirements: list[str] | None,
) -> Iterator[dict[str, Any]]:
    """What save_model and log_model hand MLflow: the artifact (in a temporary folder,
    which MLflow copies), this module as the loader, the signature, config and
    requirements."""
    config = _model_config(cm, backend)
    with tempfile.TemporaryDirectory() as folder:
        artifact = Path(folder) / _ARTIFACT
        cm.save(artifact)
        yield {
            "loader_module": __name__,
            "data_path": str(artifact),
            "signature": signature(cm),
            "input_example": input_example,
            "model_config": config,
            "metadata": metadata,
            **_requirements(cm, config["backend"], pip_requirements, extra_pip_requirements),
        }


def signature(cm: CompiledModel) -> ModelSignature:
    """The MLflow signature of ``cm``: one input column per feature, the output of
    ``predict``, and the ``method`` parameter.

    Inputs are doubles (any int or float column converts to them exactly where MLflow allows
    the conversion; float32 values keep their value, so the answer stays exact), named by
    ``cm.forest.feature_names`` or ``x0``, ``x1``, ... A feature the model reads as a
    category with known values (a pandas ``category`` column at fit time) takes the values
    themselves: ``string`` for text categories, else their number type.

    The output is the label column of a classifier (``long``, ``double``, ``string`` or
    ``boolean``, the class labels' type), ``long`` (-1/1) for an outlier detector, ``double``
    for a regressor or ranker, or a ``(-1, n_outputs)`` double tensor for several outputs.
    Other methods (``params={"method": ...}``) return their native shapes.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    if not isinstance(cm, CompiledModel):
        raise TypeError(f"expected a treecomp.CompiledModel, got {type(cm).__qualname__}")
    forest = cm.forest
    known = forest.categories or (None,) * forest.n_features
    inputs = Schema(
        [ColSpec(_column_type(values), name) for name, values in zip(_names(forest), known)]
    )
    if cm.transforms is not None:  # a Pipeline: the columns it reads, as its rows bring them
        inputs = Schema([ColSpec(kind, name) for name, kind in _pipeline_columns(cm.transforms)])
    outputs: Any
    if forest.task == "classifier":
        assert forest.classes is not None  # Forest.validate: classifiers have classes
        outputs = Schema([ColSpec(_label_type(np.asarray(forest.classes)))])
    elif forest.task == "outlier":
        outputs = Schema([ColSpec("long")])
    elif forest.n_outputs == 1:
        outputs = Schema([ColSpec("double")])
    else:
        outputs = Schema([TensorSpec(np.dtype(np.float64), (-1, forest.n_outputs))])
    params = ParamSchema([ParamSpec("method", "string", "predict")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


class _PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` wraps: the rebuilt model and its methods."""

    def __init__(self, cm: CompiledModel) -> None:
        self.model = cm

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Score ``model_input`` (a DataFrame MLflow checked against the signature) with
        ``params["method"]`` (default ``"predict"``)."""
        method = (params or {}).get("method") or "predict"
        methods = self.model.forest.methods
        if method not in methods:
            raise ValueError(
                f"method {method!r} is not one this model has; choose from {list(methods)}"
            )
        frame = model_input
        if self.model.transforms is None:  # a Pipeline's encoders read the values themselves
            # A schema has no category type: category features arrive as their values.
            frame = categories_by_value(self.model.forest, model_input)
        return getattr(self.model, method)(frame)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> _PyfuncModel:
    """MLflow's loader hook: rebuild the model from the artifact at ``data_path``."""
    from treecomp.container import load

    options = dict(model_config or {})
    unknown = sorted(set(options) - set(_LOAD_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown model_config keys {unknown} for a treecomp model; "
            f"it takes {list(_LOAD_OPTIONS)}"
        )
    path = Path(data_path)
    if path.is_dir():  # MLflow passes data/'s path for a folder, the file's for a file
        path = path / _ARTIFACT
    backend = options.pop("backend", None)
    chosen = {key: value for key, value in options.items() if value is not None}
    return _PyfuncModel(load(path, backend=backend, **chosen))


def _model_config(cm: CompiledModel, backend: str | None) -> dict[str, Any]:
    if not isinstance(cm, CompiledModel):
        raise TypeError(f"expected a treecomp.CompiledModel, got {type(cm).__qualname__}")
    backend = backend or cm.backend
    if backend not in available_backends():
        raise ValueError(f"unknown backend {backend!r}; available: {available_backends()}")
    # MLflow lets load_model(model_config=...) override only the keys saved: every option is
    # saved, None meaning the artifact's own.
    return {"backend": backend, **dict.fromkeys(_LOAD_OPTIONS[1:])}


def _requirements(
    cm: CompiledModel, backend: str, requirements: list[str] | None, extra: list[str] | None
) -> dict[str, Any]:
    """MLflow's requirement arguments: the caller's, or pinned defaults that spare MLflow
    its inference (which loads the model in a subprocess to see what it imports)."""
    if requirements is not None:
        return {"pip_requirements": requirements, "extra_pip_requirements": extra}
    from importlib.metadata import PackageNotFoundError, version

    from treecomp._version import __version__

    pinned = [f"treecomp=={__version__}"]
    # The packages the backend imports, pinned in the model's requirements.
    for package in ("numpy", "pandas", *BACKENDS[backend]):
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pinned.append(package)
    return {"pip_requirements": pinned + list(extra or [])}


def _pipeline_columns(transforms: Transforms) -> list[tuple[str, str]]:
    """A Pipeline's input columns with their MLflow types: ``string`` where an encoder reads
    text categories, else ``double``.

    MLflow hands the model only the signature's columns. A pipeline fitted on a DataFrame
    finds its columns by name, so the ones it reads are enough; one fitted on an array reads
    them by position, so it needs every column it was fitted on, read or dropped (``x0``,
    ``x1``, ...), or its rows would be too narrow.
    """
    text = {
        source.column
        for source in transforms.sources
        if source.categories is not None and all(isinstance(v, str) for v in source.categories)
    }
    listed = transforms.used_columns if transforms.named else range(len(transforms.columns))
    return [(transforms.columns[c], "string" if c in text else "double") for c in listed]


def _names(forest: Forest) -> list[str]:
    if forest.feature_names is not None:
        return list(forest.feature_names)
    return [f"x{j}" for j in range(forest.n_features)]


def _column_type(values: tuple[Any, ...] | None) -> str:
    """The MLflow type of an input column: double, or the type of a category's values."""
    if not values:
        return "double"
    kinds = {np.asarray([v]).dtype.kind for v in values}
    if kinds <= {"U", "S", "O"}:
        return "string"
    if kinds == {"b"}:
        return "boolean"
    if kinds <= {"i", "u"}:
        return "long"
    return "double"


def _label_type(classes: npt.NDArray[Any]) -> str:
    kind = classes.dtype.kind
    if kind in "iu":
        return "long"
    if kind == "f":
        return "double"
    if kind == "b":
        return "boolean"
    return "string"
