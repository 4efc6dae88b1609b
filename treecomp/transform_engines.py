"""A Pipeline's engines: its transforms in front of the forest's engine, on each backend.

The transforms are one description (:mod:`treecomp.transforms`); the torch module and the
ONNX graph hold them (:mod:`treecomp.transforms_torch`, :mod:`treecomp.onnx.transforms`),
and the backends with no graph to hold them (the reference evaluator, the C kernel) evaluate them in
NumPy first. This module sits above both, so that neither imports the other upward; it
also prepares a Pipeline's input rows (:func:`prepare`), checked as the forest checks its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from treecomp.engine import Engine
from treecomp.errors import UnsupportedModelError
from treecomp.inputs import Precision, check_values, to_matrix
from treecomp.transforms import Transforms, apply, encode

if TYPE_CHECKING:
    from treecomp.ir import Forest


def make_engine(
    backend: str,
    factory: Callable[..., Engine],
    forest: Forest,
    transforms: Transforms,
    *,
    precision: Precision,
    **options: Any,
) -> Engine:
    """An engine of ``forest`` on ``backend`` that scores the encoded matrix of
    ``transforms``: the transforms lowered into the torch module or the ONNX graph, or
    evaluated in NumPy before an engine with no graph to hold them (the reference
    evaluator, the C kernel)."""
    if options.pop("compile", False) is not False:
        raise UnsupportedModelError(
            "compile=True is not supported for Pipelines yet: convert the Pipeline without "
            "compile=, or convert its final model alone"
        )
    if backend in ("numpy", "kernel"):
        engine = factory(forest, precision=precision, **options)
        return FeaturesEngine(transforms, forest, engine, precision)
    if backend == "torch":
        from treecomp.transforms_torch import wrap_torch_engine

        engine = factory(forest, precision=precision, **options)
        return wrap_torch_engine(engine, transforms, forest, precision)
    if backend == "onnx":
        return factory(forest, precision=precision, transforms=transforms, **options)
    # torchscript: its scripted module is what users save, and it would lack the transforms.
    raise UnsupportedModelError(
        f"backend {backend!r} does not run Pipelines yet; use 'torch', 'onnx', 'kernel' or 'numpy'"
    )


def prepare(transforms: Transforms, forest: Forest, X: Any) -> npt.NDArray[np.float64]:
    """The encoded matrix of ``X``, checked as the native forest checks its input where it
    refuses NaN or infinity (the features are then computed here too, to look)."""
    encoded = encode(transforms, X)
    if not (forest.allow_nan and forest.allow_inf):
        features = apply(transforms, encoded).astype(forest.input_dtype)
        check_values(
            forest, lambda: bool(np.isnan(features).any()), lambda: bool(np.isinf(features).any())
        )
    return encoded


class FeaturesEngine:
    """The forest's engine behind the NumPy evaluation of the transforms: the ``numpy``
    backend, the reference, which has no module to put them in."""

    def __init__(self, transforms: Transforms, forest: Forest, engine: Engine, dtype: str):
        self.transforms = transforms
        self.forest = forest
        self.encodes = forest.categories is not None and forest.category_encoding == "always"
        self.native = forest.input_dtype
        self.dtype = dtype
        self.engine = engine

    def _features(self, X: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        features = apply(self.transforms, np.asarray(X, np.float64)).astype(self.native)
        if self.encodes:  # HistGradientBoosting's values to positions among its categories
            features = to_matrix(self.forest, features)
        return features.astype(self.dtype)

    @property
    def strategy(self) -> str:
        """The forest engine's plan, after the transforms in NumPy."""
        return f"transforms in NumPy, then {getattr(self.engine, 'strategy', 'reference')}"

    def leaf_ids(self, X: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        return self.engine.leaf_ids(self._features(X))

    def scores(
        self, X: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return self.engine.scores(self._features(X))
