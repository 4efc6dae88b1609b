"""treecomp: compile trained tree ensembles into exact tensor programs.

Typical use::

    import treecomp
    cm = treecomp.convert(model, backend="numpy")
    cm.predict(X)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from treecomp._version import __version__ as __version__
from treecomp.backends import available_backends
from treecomp.container import CompiledModel, convert, load, loads
from treecomp.engine import Engine as Engine  # the protocol a backend implements
from treecomp.errors import InvalidArtifactError, InvalidForestError, UnsupportedModelError
from treecomp.frontends import parse, supported_models
from treecomp.ir import Forest, PostTransform, Tree

if TYPE_CHECKING:
    from treecomp.serving import Serving

__all__ = [
    "CompiledModel",
    "Forest",
    "InvalidArtifactError",
    "InvalidForestError",
    "PostTransform",
    "Serving",
    "Tree",
    "UnsupportedModelError",
    "available_backends",
    "convert",
    "load",
    "loads",
    "parse",
    "score",
    "supported_models",
]


def __getattr__(name: str) -> Any:
    # treecomp.Serving is imported on first use: its asyncio and threads stay out of a
    # plain ``import treecomp``.
    if name == "Serving":
        from treecomp.serving import Serving

        return Serving
    raise AttributeError(f"module 'treecomp' has no attribute {name!r}")


def score(model: Any, source: Any, destination: Any, **options: Any) -> int:
    """Score a Parquet or CSV file larger than memory into another, in batches (see
    :func:`treecomp.scoring.score`, whose options this takes); returns the rows scored."""
    from treecomp.scoring import score as score_file

    return score_file(model, source, destination, **options)
