"""The frontend registry: model classes, by ``"package.ClassName"``, to their parsers.

Apart from :mod:`treecomp.frontends` so that each frontend module imports the registry
below it, and the package imports the frontends: nothing imports back up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from treecomp.errors import UnsupportedModelError

if TYPE_CHECKING:
    from treecomp.ir import Forest

Parser = Callable[[Any], "Forest"]
_PARSERS: dict[str, Parser] = {}


def register(*names: str) -> Callable[[Parser], Parser]:
    """Register a parser for models whose class is one of ``names`` (``"sklearn.Foo"``)."""

    def decorator(parser: Parser) -> Parser:
        for name in names:
            if name in _PARSERS:
                raise ValueError(f"a frontend for {name} is already registered")
            _PARSERS[name] = parser
        return parser

    return decorator


def _key(cls: type) -> str:
    return f"{cls.__module__.partition('.')[0]}.{cls.__qualname__}"


def supported_models() -> tuple[str, ...]:
    """Names of the model classes some frontend parses."""
    return tuple(sorted(_PARSERS))


def parse(model: Any) -> Forest:
    """Parse a fitted model into the neutral IR (a validated :class:`~treecomp.Forest`).

    Raises:
        UnsupportedModelError: no frontend handles ``type(model)``, or the model uses an
            option treecomp cannot reproduce exactly.
    """
    for cls in type(model).__mro__:  # a Forest too: its own parser is registered
        parser = _PARSERS.get(_key(cls))
        if parser is not None:
            return parser(model).validate()
    raise UnsupportedModelError(
        f"{type(model).__qualname__} is not supported; "
        f"supported models: {', '.join(supported_models())}"
    )
