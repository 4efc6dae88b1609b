"""A Pipeline's engines: its transforms in front of the forest's engine, on each backend.

The transforms are one description (:mod:`treecomp.transforms`); the torch module and the
ONNX graph hold them (:mod:`treecomp.transform_targets`, imported only for torch), and the
backends with no graph to hold them (the reference evaluator, the C kernel) evaluate them in
NumPy first. This module sits above both, so that neither imports the other upward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from treecomp.engine import Engine
from treecomp.errors import UnsupportedModelError
from treecomp.inputs import Precision
from treecomp.transforms import FeaturesEngine, Transforms

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
        from treecomp.transform_targets import wrap_torch_engine

        engine = factory(forest, precision=precision, **options)
        return wrap_torch_engine(engine, transforms, forest, precision)
    if backend == "onnx":
        return factory(forest, precision=precision, transforms=transforms, **options)
    # torchscript: its scripted module is what users save, and it would lack the transforms.
    raise UnsupportedModelError(
        f"backend {backend!r} does not run Pipelines yet; use 'torch', 'onnx', 'kernel' or 'numpy'"
    )
