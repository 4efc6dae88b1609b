"""The strategy registry: names to :class:`~strategies.nodes.TreeGroup` subclasses (plans).

The names and their targets are :mod:`treecomp.names`' table, which needs no torch;
this registry binds each to its implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from treecomp import names

if TYPE_CHECKING:
    from strategies.nodes import TreeGroup

# Each strategy class is built as cls(trees, columns, options: GroupOptions).
STRATEGIES: dict[str, Callable[..., TreeGroup]] = {}
# The targets each strategy lowers to: "torch" (eager, compiled, exported) and "onnx".
TARGETS: dict[str, tuple[str, ...]] = {}
S = TypeVar("S", bound="type[TreeGroup]")


def register_strategy(name: str) -> Callable[[S], S]:
    """Register a strategy class under ``name``, a name of :mod:`treecomp.names`,
    for the targets listed there; registering twice, or an unlisted name, raises."""

    def decorator(cls: S) -> S:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        if name not in names.STRATEGIES:
            raise ValueError(f"strategy {name!r} is not in treecomp.names.STRATEGIES")
        cls.name = name
        STRATEGIES[name] = cls
        TARGETS[name] = names.STRATEGIES[name]
        return cls

    return decorator
