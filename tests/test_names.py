"""Strategy and backend names have one source each, which every list of them reads (issue 21).

:mod:`treecomp.names` holds both tables (no torch needed); each registry binds every name to
its implementation and refuses names outside its table.
"""

from __future__ import annotations

import numpy as np
import pytest

import strategies
import treecomp
from tests.test_ir import small_forest
from treecomp import artifact, backends, names
from treecomp.cli import build_parser
from treecomp.inputs import PRECISIONS
from treecomp.ir import METHODS


def test_the_registry_implements_exactly_the_table() -> None:
    assert strategies.TARGETS == names.STRATEGIES
    assert set(names.ALIASES.values()) <= set(names.STRATEGIES)
    assert names.for_target("onnx") == tuple(names.STRATEGIES)
    assert "tree_ensemble" not in names.for_target("torch")


def test_registering_a_name_outside_the_table_raises() -> None:
    from strategies.registry import register_strategy

    with pytest.raises(ValueError, match=r"not in treecomp\.names\.STRATEGIES"):
        register_strategy("forest_of_lookups")(strategies.STRATEGIES["gemm"])


@pytest.mark.parametrize("alias", sorted(names.ALIASES))
def test_an_aliased_strategy_survives_its_artifact(alias: str) -> None:
    """``strategy="tt"`` is saved as given: the artifact's schema must read it back (it
    listed the full names only, so such a model could be neither loaded nor pickled)."""
    cm = treecomp.convert(small_forest(), backend="torch", strategy=alias)
    again = treecomp.loads(cm.dumps())
    X = np.array([[0.2, 1.0], [0.7, 3.0], [0.7, 2.0]])
    assert again.options["strategy"] == alias
    assert np.array_equal(again.apply(X), cm.apply(X))


def test_the_artifact_and_the_command_line_read_the_sources() -> None:
    assert all(artifact._OPTIONS["strategy"](name) for name in names.STRATEGY_CHOICES)
    assert not artifact._OPTIONS["strategy"]("forest_of_lookups")
    parser = build_parser()
    actions = {
        (command, action.dest): action
        for command, sub in parser._subparsers._group_actions[0].choices.items()
        for action in sub._actions
    }
    assert tuple(actions["score", "method"].choices) == METHODS
    assert tuple(actions["convert", "precision"].choices) == PRECISIONS
    for name in (*names.STRATEGY_CHOICES, *backends.available_backends()):
        assert name in f"{actions['convert', 'strategy'].help} {actions['score', 'backend'].help}"


def test_the_backend_registry_implements_exactly_the_table() -> None:
    assert backends.available_backends() == tuple(sorted(names.BACKENDS))
    with pytest.raises(ValueError, match=r"not in treecomp\.names\.BACKENDS"):
        backends.register_backend("jax")(backends.get_backend("numpy"))
    assert "jax" not in backends.available_backends()
