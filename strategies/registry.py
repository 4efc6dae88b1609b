"""The strategy registry: names to :class:`~strategies.nodes.TreeGroup` subclasses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from strategies.nodes import TreeGroup

# Each strategy class is built as cls(trees, columns, options: GroupOptions).
STRATEGIES: dict[str, Callable[..., TreeGroup]] = {}
# The targets each strategy lowers to: "torch" (eager, compiled, exported) and "onnx".
TARGETS: dict[str, tuple[str, ...]] = {}
S = TypeVar("S", bound=type[TreeGroup])


def register_strategy(
    name: str, *, targets: tuple[str, ...] = ("torch", "onnx")
) -> Callable[[S], S]:
    """Register a strategy class under ``name`` for ``targets``; registering twice raises."""

    def decorator(cls: S) -> S:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = cls
        TARGETS[name] = targets
        return cls

    return decorator
