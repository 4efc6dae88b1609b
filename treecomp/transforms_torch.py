"""The row transforms (:mod:`treecomp.transforms`) as a torch module.

Every target evaluates the one description of the chains, :func:`treecomp.transforms.
evaluate`, through its own primitives: :class:`TorchPrimitives` inside
:class:`TransformModule`, put in front of the forest's module (:class:`PipelineModule`), so
one ``torch.nn.Module`` scores the encoded rows; the ONNX graph's are in
:mod:`treecomp.onnx.transforms`. The features are computed in float64, then cast to the
forest's input type (float32 for XGBoost and scikit-learn trees), then to the precision
the engine compares in: the native path of a pipeline's rows. A HistGradientBoosting
forest's categorical features then become positions among its known categories, as its
own preprocessing does (the NumPy evaluation, :class:`treecomp.transform_engines.FeaturesEngine`,
does the same with :func:`treecomp.inputs.to_matrix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from treecomp.transforms import OperatorPrimitives, Transforms, blocks, evaluate

if TYPE_CHECKING:
    from treecomp.ir import Forest


def wrap_torch_engine(engine: Any, transforms: Transforms, forest: Forest, dtype: str) -> Any:
    """Put the transforms in front of a torch engine's module: it then scores encoded rows."""
    precision = torch.float32 if dtype == "float32" else torch.float64
    module = PipelineModule(TransformModule(transforms), engine.module, forest, precision)
    engine.module = module.to(engine.device)
    engine._forward = engine.module  # the eager forward (compile= is refused for pipelines)
    return engine


class TorchPrimitives(OperatorPrimitives):
    """The primitives of :func:`treecomp.transforms.evaluate` in torch (the comparisons and
    the arithmetic are Python's operators, shared with NumPy)."""

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        return torch.where(condition, a, b)

    def isnan(self, x: Any) -> Any:
        return torch.isnan(x)

    def as_float(self, condition: Any) -> Any:
        return condition.to(torch.float64)

    def columns(self, x: Any, indices: Any) -> Any:
        return x.index_select(1, indices)

    def concat(self, parts: Sequence[Any]) -> Any:
        return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)


class TransformModule(torch.nn.Module):
    """The transforms as a ``torch.nn.Module``: encoded matrix (float64) in, features
    (float64) out; every constant a buffer."""

    def __init__(self, transforms: Transforms) -> None:
        super().__init__()
        self.plan = blocks(transforms)
        self.n_blocks = len(self.plan[0])
        for b, block in enumerate(self.plan[0]):
            self.register_buffer(f"sources_{b}", torch.from_numpy(block.sources))
            for i, (value, other) in enumerate(zip(block.values, block.others, strict=True)):
                self.register_buffer(f"value_{b}_{i}", torch.from_numpy(value[None, :].copy()))
                self.register_buffer(f"other_{b}_{i}", torch.from_numpy(other[None, :].copy()))
        order = self.plan[1]
        self.register_buffer("order", None if order is None else torch.from_numpy(order))
        self.register_buffer("zero", torch.zeros((), dtype=torch.float64))
        self.primitives = TorchPrimitives()

    def forward(self, X: Any) -> Any:
        constants = []
        for b, block in enumerate(self.plan[0]):
            n = len(block.kinds)
            values = [getattr(self, f"value_{b}_{i}") for i in range(n)]
            others = [getattr(self, f"other_{b}_{i}") for i in range(n)]
            constants.append((values, others))
        indices = [getattr(self, f"sources_{b}") for b in range(self.n_blocks)]
        plan = (self.plan[0], self.order)
        return evaluate(self.primitives, X, plan, constants, indices, self.zero)


class PipelineModule(torch.nn.Module):
    """Transforms, the native cast, then the forest's module: one module from encoded rows
    to ``(raw, transformed)`` (and ``leaf_ids``)."""

    def __init__(self, front: Any, forest_module: Any, forest: Forest, dtype: Any) -> None:
        super().__init__()
        self.front = front
        self.forest = forest_module
        self.native = torch.float32 if forest.input_dtype == "float32" else torch.float64
        self.dtype = dtype
        # HistGradientBoosting's categorical features ("always" encoded), with their lists.
        lists = forest.categories if forest.category_encoding == "always" else None
        listed = [j for j, k in enumerate(lists or ()) if k is not None]
        known = [k for k in lists or () if k is not None]
        width = max((len(k) for k in known), default=0)
        table = np.full((len(listed), width), np.nan)  # NaN pads: it matches no value
        for row, values in enumerate(known):
            table[row, : len(values)] = np.asarray(values, dtype=np.float64)
        self.register_buffer("listed", torch.tensor(listed, dtype=torch.int64) if listed else None)
        self.register_buffer("known", torch.from_numpy(table).to(dtype).unsqueeze(0))

    def features(self, X: Any) -> Any:
        """The rows the forest reads, in the type its module compares in."""
        features = self.front(X).to(self.native).to(self.dtype)
        if self.listed is not None:
            features = self._positions(features)
        return features

    def _positions(self, features: Any) -> Any:
        """HistGradientBoosting's encoding: a listed feature's value becomes its position
        among the forest's known categories, NaN where it is none of them."""
        values = features.index_select(1, self.listed)
        matches = values.unsqueeze(2) == self.known  # (rows, listed, categories)
        position = matches.to(torch.int8).argmax(dim=2).to(features.dtype)
        nan = torch.full_like(position, float("nan"))
        out = features.clone()
        out[:, self.listed] = torch.where(matches.any(dim=2), position, nan)
        return out

    def forward(self, X: Any) -> Any:
        return self.forest(self.features(X))

    def leaf_ids(self, X: Any) -> Any:
        return self.forest.leaf_ids(self.features(X))
