"""The bench's systems: names such as ``treecomp-torch-auto-compiled`` and what they mean.

A system is a way to run a model: the native library, one of its peers (other converters and
compilers) or one configuration of treecomp. This module only names them; the worker's
:mod:`treecomp.bench.runners` builds each one.
"""

from __future__ import annotations

from dataclasses import dataclass

from treecomp.names import for_target

BACKENDS = ("torch", "torchscript", "onnx", "kernel", "numpy")
# Backends with no strategies to choose from.
PLAIN_BACKENDS = ("kernel", "numpy")
# The strategies of every target (tree_ensemble, ONNX's alone, is added for onnx below).
STRATEGIES = ("auto", *for_target("torch"))
# The systems treecomp is compared with: a cell's ratio is the fastest peer's median over its own.
PEERS = ("native", "onnxml", "hummingbird", "lleaves", "tl2cgen")
# The exported ONNX file (cm.to_onnx() of convert's defaults) in a plain ONNX Runtime session,
# as serving stacks load it: to compare with onnxml, the converters' graphs.
EXPORTED = "treecomp-export"
DEFAULT_SYSTEMS = (
    *PEERS,
    "treecomp",
    EXPORTED,
    "treecomp-torch-auto",
    "treecomp-torch-auto-compiled",
    "treecomp-torchscript-auto",
    "treecomp-onnx-auto",
    "treecomp-kernel",
)
# lleaves 1.3 (the latest) compiles with llvmlite's PassManagerBuilder, which llvmlite 0.45 removed.
LLEAVES_INSTALL = "pip install lleaves 'llvmlite<0.45'"
TL2CGEN_INSTALL = "pip install tl2cgen treelite"
# --quick leaves out compile=True, lleaves and tl2cgen, whose compile times alone would exceed
# the quick budget.
QUICK_SYSTEMS = (
    "native",
    "onnxml",
    "hummingbird",
    "treecomp-torch-auto",
    "treecomp-onnx-auto",
    "treecomp-kernel",
)


@dataclass(frozen=True, slots=True)
class System:
    """A way to run a model: the native library, a peer, or one treecomp configuration.

    Attributes:
        name: As written in ``--systems``.
        kind: One of :data:`PEERS` or ``"treecomp"``.
        backend: treecomp's backend; ``None`` for its defaults (``backend="auto"``).
        strategy: treecomp's strategy; ``None`` for the kernel and numpy backends, which
            have none.
        compiled: Whether to pass ``compile=True``.
    """

    name: str
    kind: str
    backend: str | None = None
    strategy: str | None = None
    compiled: bool = False

    @property
    def peer(self) -> bool:
        """Whether it is one of the systems treecomp is compared with."""
        return self.kind in PEERS


def parse_system(name: str) -> System:
    """Parse a system name such as ``"treecomp-torch-auto-compiled"``.

    The strategy is passed to ``treecomp.convert`` as written, so a strategy treecomp does
    not know fails that system's cells with treecomp's own message.

    Args:
        name: One of :data:`PEERS`, ``treecomp`` (the defaults of ``treecomp.convert``) or
            ``treecomp-BACKEND[-STRATEGY][-compiled]``.

    Raises:
        ValueError: the name is none of these, or names an unknown backend.
    """
    if name in PEERS:
        return System(name, name)
    if name == "treecomp":  # treecomp.convert(model): the defaults, compiled tier included
        return System(name, "treecomp")
    if name == EXPORTED:
        return System(name, "treecomp", backend="onnx")
    rest = name.removeprefix("treecomp-")
    if rest == name or not rest:
        raise ValueError(
            f"unknown system {name!r}: use {', '.join(PEERS)} or "
            f"treecomp-BACKEND[-STRATEGY][-compiled] (backends: {', '.join(BACKENDS)})"
        )
    compiled = rest.endswith("-compiled")
    backend, _, strategy = rest.removesuffix("-compiled").partition("-")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} in system {name!r}; use one of {BACKENDS}")
    if strategy and backend in PLAIN_BACKENDS:
        raise ValueError(f"the {backend} backend has no strategies: use treecomp-{backend}")
    if not strategy and backend not in PLAIN_BACKENDS:
        strategy = "auto"
    return System(name, "treecomp", backend, strategy or None, compiled)


def all_systems() -> tuple[str, ...]:
    """Every system: the peers, every backend and strategy, compiled torch, and numpy."""
    names = [*PEERS, "treecomp", EXPORTED]
    for backend in ("torch", "torchscript", "onnx"):
        names += [f"treecomp-{backend}-{s}" for s in STRATEGIES]
    names.append("treecomp-onnx-tree_ensemble")  # ONNX Runtime's tree operator: onnx only
    names += [f"treecomp-torch-{s}-compiled" for s in STRATEGIES]
    return (*names, "treecomp-kernel", "treecomp-numpy")


def resolve_systems(text: str | None, *, quick: bool) -> list[System]:
    """The systems of a ``--systems`` value: names, ``default`` or ``all``, comma-separated."""
    if text is None:
        text = "quick" if quick else "default"
    groups = {"default": DEFAULT_SYSTEMS, "quick": QUICK_SYSTEMS, "all": all_systems()}
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        for name in groups.get(part, (part,)):
            if name and name not in names:
                names.append(name)
    return [parse_system(n) for n in names]
