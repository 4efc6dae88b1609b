"""The protocol every backend's engine follows: prepared rows in, leaves and scores out.

A backend (:mod:`treecomp.backends`) is a factory of engines; :class:`~treecomp.CompiledModel`
turns what an engine returns into the native library's methods. The protocol sits below
both, so that neither the backends nor the engines import the container.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from strategies import ForestPlan
    from strategies.forest_module import ForestModule
    from treecomp.inputs import Precision
    from treecomp.ir import Forest


# A forest's link of raw sums ``(n_rows, n_outputs)``, for engines that sum in another library
# (torch, ONNX Runtime) and link the sums afterwards: :func:`treecomp.reference.link` over the
# forest, or the kernel's C link (:func:`treecomp.kernel.link_for`), the same numbers.
Link = Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float64]]


class Engine(Protocol):
    """What a backend provides: three evaluations of a prepared input matrix."""

    def leaf_ids(self, X: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        """Native leaf numbers, shape ``(n_rows, n_trees)``."""
        ...

    def scores(
        self, X: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Raw margins and post-transformed scores, each ``(n_rows, n_outputs)``."""
        ...


@runtime_checkable
class DeviceEngine(Engine, Protocol):
    """An engine of torch tensors on a device (the torch engines): what a
    :class:`~treecomp.CompiledModel` offers beyond the native methods where its engine is one
    (tensors in without a copy to NumPy, ``cm.to``, ``cm.torch_module``, ``cm.export_pt2``)."""

    module: Any

    def prepare_tensor(self, X: Any) -> Any:
        """A tensor of rows cast and checked as NumPy rows are, on the engine's device."""
        ...

    def to(self, device: Any) -> None:
        """Move the engine's module to ``device``."""
        ...

    def export_pt2(self, path: Any, *, leaf_indices: bool = False) -> None:
        """Write the module as a ``torch.export`` + AOTInductor package."""
        ...


class Lower(Protocol):
    """The lowering a torch engine is handed (:func:`strategies.lower_forest`): the
    forest's torch module for ``precision`` and ``strategy``, and its plan in words."""

    def __call__(
        self, forest: Forest, precision: Precision, strategy: str, **options: Any
    ) -> tuple[ForestModule, str]: ...


class Plan(Protocol):
    """The lowering the ONNX exporter is handed (:func:`strategies.plan_forest`): the
    forest's plan for ``precision`` and ``strategy``, which needs no torch."""

    def __call__(
        self, forest: Forest, precision: Precision, strategy: str, **options: Any
    ) -> ForestPlan: ...
