"""Frontends: one module per library, each parsing fitted models into a :class:`~treecomp.Forest`.

Parsers register under ``"package.ClassName"`` (the top-level package and the class's
qualified name), so that no library is imported until one of its models is parsed. Lookup
walks ``type(model).__mro__``: subclasses (``ExtraTreeClassifier``, ``XGBRFClassifier``)
reach their parent's parser unless they register their own.
"""

from __future__ import annotations

# Importing the frontend modules registers them; none imports its library at module level.
from treecomp.frontends import lightgbm, sklearn, xgboost  # noqa: F401
from treecomp.frontends.registry import Parser, parse, register, supported_models
from treecomp.ir import Forest

__all__ = ["Parser", "parse", "register", "supported_models"]


@register("treecomp.Forest")
def _forest(forest: Forest) -> Forest:
    """A forest already in the IR (parsed before, or read from an artifact): as it is."""
    return forest
