"""The process that builds a forest's compiled package for the default backend's tier.

:class:`treecomp.compiled_tier.CompiledTier` runs ``python -m treecomp.package_build SPEC``,
niced, with the forest's document on standard input, and loads the package from the cache
once this process has written it. Standard input stays open while the parent lives: when it
closes, this build ends (:func:`treecomp.compiled_tier.watch_parent`).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from treecomp.compiled_tier import watch_parent
from treecomp.ir import Forest


def main(argv: list[str]) -> int:
    """Build the package of the forest read from standard input, with the options in
    ``argv[0]``; end when standard input closes (the parent is gone)."""
    source = sys.stdin.buffer.readline()  # all there is: the parent writes one line
    watch_parent(sys.stdin.fileno())
    try:
        os.nice(10)  # the serving process keeps its cores first
    except (AttributeError, OSError):  # no nice() (Windows), or not allowed
        pass
    from strategies import lower_forest
    from treecomp.torch_backend import TorchEngine

    forest = Forest.from_dict(json.loads(source))
    spec = json.loads(argv[0])
    TorchEngine(forest, lower_forest, script=False, compile=True, **spec)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main(sys.argv[1:]))
