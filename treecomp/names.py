"""The names users pass for strategies and backends: one table each, importable without torch.

:func:`strategies.registry.register_strategy` and :func:`treecomp.backends.register_backend`
bind implementations to these names and refuse any other; the artifact's schema, the command
line, MLflow's requirements and the benchmark read them from here, so that a file, a flag
and an implementation can never disagree on which names exist. Neither registry can be the
source itself: importing the strategies' registry registers every strategy (the plans and
the ONNX Runtime operator's), and the backend registry sits above every engine it builds.
"""

from __future__ import annotations

# Strategy -> the targets it lowers to: "torch" (eager, compiled, exported) and "onnx".
STRATEGIES: dict[str, tuple[str, ...]] = {
    "gemm": ("torch", "onnx"),
    "tree_traversal": ("torch", "onnx"),
    "perfect_tree_traversal": ("torch", "onnx"),
    "tree_ensemble": ("onnx",),  # ONNX Runtime's TreeEnsemble operator: ONNX graphs only
}
# Short names accepted wherever a strategy is.
ALIASES = {"tt": "tree_traversal", "ptt": "perfect_tree_traversal"}
# Every value a strategy option may take: "auto" (the selector's choice), a name, an alias.
STRATEGY_CHOICES = ("auto", *STRATEGIES, *ALIASES)

# Backend -> the packages (import names) its engines import beyond NumPy.
BACKENDS: dict[str, tuple[str, ...]] = {
    "numpy": (),
    "torch": ("torch",),
    "torchscript": ("torch",),
    "onnx": ("onnx", "onnxruntime"),
    "kernel": (),  # a C kernel built once per machine: NumPy and a C compiler
}


def for_target(target: str) -> tuple[str, ...]:
    """The strategies that lower to ``target`` (``"torch"`` or ``"onnx"``), in table order."""
    return tuple(name for name, targets in STRATEGIES.items() if target in targets)
