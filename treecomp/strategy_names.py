"""The names of the lowerings, and the targets each runs on: one table, importable without torch.

:func:`strategies.registry.register_strategy` registers each implementation under a name of
this table (and refuses any other), taking its targets from here; the artifact's schema, the
command line and the benchmark read the names from here too, so that a file, a flag and a
lowering can never disagree on which names exist.
"""

from __future__ import annotations

# Name -> the targets it lowers to: "torch" (eager, compiled, exported) and "onnx".
STRATEGIES: dict[str, tuple[str, ...]] = {
    "gemm": ("torch", "onnx"),
    "tree_traversal": ("torch", "onnx"),
    "perfect_tree_traversal": ("torch", "onnx"),
    "tree_ensemble": ("onnx",),  # ONNX Runtime's TreeEnsemble operator: ONNX graphs only
}
# Short names accepted wherever a strategy is.
ALIASES = {"tt": "tree_traversal", "ptt": "perfect_tree_traversal"}
# Every value a strategy option may take: "auto" (the selector's choice), a name, an alias.
CHOICES = ("auto", *STRATEGIES, *ALIASES)


def for_target(target: str) -> tuple[str, ...]:
    """The names that lower to ``target`` (``"torch"`` or ``"onnx"``), in table order."""
    return tuple(name for name, targets in STRATEGIES.items() if target in targets)
