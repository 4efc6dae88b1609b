"""The default backend on the CPU: the tree operator and a tier of large batches, composed.

``backend="auto"`` on the CPU scores with ONNX Runtime's tree operator
(:class:`treecomp.onnx.engine.OnnxEngine`), the fastest engine at one row, and gives large
batches to a *tier*, a sibling engine that is faster there:

- the kernel (:class:`KernelTier`, :mod:`treecomp.kernel`) for forests of numerical splits,
  from :data:`KERNEL_FROM_ROWS` rows on, ready at once: a forest costs only its layout;
- else the compiled torch package (:class:`treecomp.compiled_tier.CompiledTier`), from
  ``COMPILED_FROM_ROWS`` rows on, once found in the package cache or built in the background,
  for the forests that profit.

:class:`TieredEngine` is that composition: two engines side by side, neither owning the
other, and a :class:`Race` between them that times both on the first large batches before the
faster one serves the rest (the rules above come from one CPU; on another the tier can lose).
:func:`treecomp.backends.tiered_engine` composes it for :func:`treecomp.convert`: which
engines a forest gets is decided there, above them all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from treecomp.engine import Engine

logger = logging.getLogger(__name__)

# The kernel tier takes batches from this many rows: it pays no graph call, and its row
# blocks share each tree's top levels. XGBoost, 500 trees of depth 8, one thread, us of
# CPU a row, operator / kernel: 4 rows 31.5 / 41.2, 8 rows 26.4 / 19.5, 16 rows 23.3 / 11.5,
# 32 rows 21.9 / 8.4 (AMD EPYC Zen 4, other work running). treecomp.Serving's batches are
# of this size (half the callers in flight).
KERNEL_FROM_ROWS = 8
# Large batches timed on each side, once the tier is ready, before the faster side serves
# the rest (Race.choose).
TRIALS = 3
# Rows each side scores in those trials at least: a side's first calls on small batches find
# its tables cold, and with three calls of 16 rows the kernel could lose a race it wins
# twice over once warm (XGBoost, 500 trees of depth 8, 16-row calls, us a row over the
# kernel's first ten: 48 23 18 15 17 15 16 14 14 12; the operator's from its second: 22-27).
TRIAL_ROWS = 512
# Calls of fewer than KERNEL_FROM_ROWS rows each side makes before the faster serves them
# (the best of each: one row's time varies with what the caches hold), all of a side's in
# one run: ONNX Runtime's threads spin on a core after each of its calls, so a kernel call
# soon after one finds its helper thread without a core. LightGBM, one row, after
# tier_up(), 3 processes each: sides alternating call by call, the kernel's best 38-44 us
# against the operator's 29-35, which won; 8 calls a turn, the operator won 2 of 3; one
# run a side, the kernel won 3 of 3 (19-20 us against 25-26), and then served 15-16 us.
SMALL_TRIALS = 32
SMALL_RUN = SMALL_TRIALS


class Tier(Protocol):
    """What :class:`TieredEngine` asks of its tier of large batches.

    Attributes:
        name: ``"kernel"`` or ``"compiled"``: how ``cm.strategy`` and the race name it.
        engine: The tier's engine once ready, else None (the operator scores meanwhile).
        state: ``"ready"``, or the tier's way there; ``"failed: <reason>"`` if it cannot.
    """

    name: str
    engine: Any
    state: str

    @property
    def from_rows(self) -> int:
        """The rows from which a batch goes to the tier."""
        ...

    def note(self, seconds: float) -> None:
        """A large batch took ``seconds`` in the operator (a tier may build on that)."""
        ...

    def tier_up(self, timeout: float | None = None) -> bool:
        """Make the engine ready now, waiting at most ``timeout`` seconds; whether it is."""
        ...


class Operator(Engine, Protocol):
    """The operator's engine as the tiered engine uses it (:class:`~treecomp.onnx.engine.
    OnnxEngine`): what it ran, a slice of a large batch scored as large batches are, and
    its graphs for small calls built ahead of them."""

    strategy: str

    def scores(
        self, X: npt.NDArray[np.floating], *, large_plan: bool = False
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...

    def warm(self) -> None:
        """Build what small calls would otherwise build at their first."""
        ...


class Race:
    """Which side scores large batches: the tier (named ``tier``) or ``"operator"``.

    Each side in turn (``run`` calls at a time) until both have TRIALS timings of TRIAL_ROWS
    rows in all, then the one faster per row (the best of each, which a first call's warm-up
    does not skew). The rules that pick a tier come from one CPU; on another the tier can
    lose (the compiled HistGradientBoosting package, 200 trees of depth 7 to 15, on an AMD
    EPYC: 37-47 ms against 31-36 ms in the operator at 10 000 rows), so the engine measures
    before it commits.

    Attributes:
        tier: The tier's name (``"kernel"`` or ``"compiled"``).
        trials: Seconds per row of each side's large batches, until it has tried.
        winner: The side that serves from now on, once both have tried; else None.
    """

    def __init__(
        self, tier: str, *, trials: int = TRIALS, trial_rows: int = TRIAL_ROWS, run: int = 1
    ) -> None:
        self.tier = tier
        self.n_trials, self.min_rows, self.run = trials, trial_rows, run
        self.trials: dict[str, list[float]] = {tier: [], "operator": []}
        self.trial_rows = {tier: 0, "operator": 0}
        self.winner: str | None = None
        self._lock = threading.Lock()

    def choose(self) -> str:
        """The side that scores the next large batch."""
        if self.winner is not None:
            return self.winner
        tier, operator = self.trials[self.tier], self.trials["operator"]
        if not (self._tried(self.tier) and self._tried("operator")):
            return self.tier if len(tier) // self.run <= len(operator) // self.run else "operator"
        with self._lock:
            if self.winner is None:
                fast = min(tier) <= min(operator)
                self.winner = self.tier if fast else "operator"
                if not fast:
                    logger.info("treecomp: %s", self.loss)
        return self.winner

    def trial_slice(self, rows: int) -> int:
        """Rows of a batch of ``rows`` the operator is timed on while the race is on, the
        tier scoring the whole batch: TRIAL_ROWS of batches of twice that or more (a fresh
        process's large batches then never wait for the slower side), else 0 (the batch is
        the operator's trial)."""
        return self.min_rows if self.winner is None and rows >= 2 * self.min_rows else 0

    def _tried(self, side: str) -> bool:
        return len(self.trials[side]) >= self.n_trials and self.trial_rows[side] >= self.min_rows

    def record(self, side: str, seconds: float, rows: int) -> None:
        """A large batch of ``rows`` took ``seconds`` on ``side`` (kept until the side has
        tried, so a long-running server holds a few)."""
        if self.winner is None and not self._tried(side):
            self.trials[side].append(seconds / max(rows, 1))
            self.trial_rows[side] += rows

    @property
    def verdict(self) -> str:
        """The best measured time a row of each side, as ``cm.strategy`` shows them."""
        us = {k: min(v) * 1e6 for k, v in self.trials.items() if v}
        return ", ".join(f"{k} {v:.2f} us/row" for k, v in sorted(us.items()))

    @property
    def loss(self) -> str:
        """What ``cm.strategy`` says of a tier that lost: which, by how much, both times."""
        ratio = min(self.trials[self.tier]) / min(self.trials["operator"])
        return f"{self.tier} tier measured slower, {ratio:.2f}x the operator's time: {self.verdict}"


class KernelTier:
    """The kernel backend (:mod:`treecomp.kernel`) as the tier of large batches: ready from
    the start, as a forest's layout is all it builds (the kernel itself is compiled once per
    machine). Nothing to look for or build; the race still times it."""

    name = "kernel"
    state = "ready"
    from_rows = KERNEL_FROM_ROWS

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def note(self, seconds: float) -> None:
        """Nothing to look for or build."""

    def tier_up(self, timeout: float | None = None) -> bool:
        return True


class TieredEngine:
    """The operator and a tier of large batches, side by side (see the module's notes).

    Batches under ``tier.from_rows`` rows, and every batch until the tier's engine is ready,
    go to the operator; large batches then race (:class:`Race`), and the winner serves them.
    Leaf ids come from the operator.

    An engine built at a call rather than at convert (float32 rows of a double library under
    ``precision="auto"``) may defer its operator where the tier is ready at once (the
    kernel): that call then pays the kernel's layout alone, and the kernel scores every batch
    until the operator's graph, built in a thread started once that first call is scored, is
    ready. So no call waits for the graph (:func:`treecomp.backends.tiered_engine` says
    what each call pays).

    Attributes:
        operator: The tree operator's engine; None while deferred.
        operator_state: ``"deferred"``, ``"building"``, ``"ready"`` or ``"failed: <reason>"``.
        tier: The tier of large batches (:class:`KernelTier` or ``CompiledTier``).
        race: Their race on large batches, from the time both are ready.
    """

    def __init__(
        self,
        operator: Operator | None,
        tier: Tier,
        *,
        build_operator: Callable[[], Operator] | None = None,
    ) -> None:
        if operator is None and (build_operator is None or tier.engine is None):
            raise ValueError("a deferred operator needs its builder and a tier ready at once")
        self.tier = tier
        self.race = Race(tier.name)
        # The kernel's calls cost no graph run: on some forests it beats the operator on
        # small batches too, on others (large tables, tiny forests) it loses. One row, us,
        # operator / kernel (AMD EPYC Zen 4, load 4): XGBoost 10 classes 101 / 43, LightGBM
        # 51 / 72, RandomForest 41 / 94, XGBoost 500 trees 33 / 31. So small batches race too.
        self.small_race = Race(
            tier.name, trials=SMALL_TRIALS, trial_rows=SMALL_TRIALS, run=SMALL_RUN
        )
        self.operator = operator
        self.operator_state = "deferred" if operator is None else "ready"
        self._build_operator = build_operator
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def strategy(self) -> str:
        """The operator's plan, and the tier's once it serves large batches (or why not)."""
        operator, tier = self.operator, self.tier
        if operator is None:
            state = self.operator_state
            if state.startswith("failed: "):
                why = f"no tree operator: {state.removeprefix('failed: ')}"
            else:
                doing = "being built" if state == "building" else "built after the first call"
                why = f"the tree operator's graph is {doing}"
            return f"{tier.engine.strategy}, every batch ({why})"
        plan = operator.strategy
        if tier.state.startswith("failed"):
            return f"{plan} (no {tier.name} tier: {tier.state.removeprefix('failed: ')})"
        if tier.engine is None:
            return plan
        small = ""
        if self.small_race.winner == tier.name:
            small = f"; batches under {tier.from_rows} rows: the {tier.name} (measured faster)"
        if self.race.winner == "operator":
            return f"{plan} ({self.race.loss}){small}"
        return f"{plan}; batches of {tier.from_rows}+ rows: {tier.engine.strategy}{small}"

    @property
    def large_batches(self) -> str:
        """Which side scores large batches now: the tier's name, or ``"operator"``."""
        if self.tier.engine is None or self.race.winner == "operator":
            return "operator"
        return self.tier.name

    def tier_up(self, timeout: float | None = None) -> bool:
        """Build a deferred operator now (a server warming up wants no build left to run
        beside its calls), then the tier's :meth:`Tier.tier_up`, waiting at most
        ``timeout`` seconds in all: whether large batches now go to the tier."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._start_operator()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.tier.tier_up(
            None if deadline is None else max(0.0, deadline - time.monotonic())
        )

    def _start_operator(self) -> None:
        """Build the deferred operator in a thread, once.

        Not a daemon thread: a process that ends right after its first call waits for the
        build (about a second) rather than being torn down inside ONNX Runtime's session
        construction, which aborted it ("terminate called without an active exception",
        exit status -6) after its work was done: 2 of 6 fresh processes scoring three
        batches of the LightGBM benchmark model."""
        with self._lock:
            if self.operator_state != "deferred":
                return
            self.operator_state = "building"
            self._thread = threading.Thread(
                target=self._operator_in_thread, name="treecomp-operator", daemon=False
            )
            self._thread.start()

    def _operator_in_thread(self) -> None:
        assert self._build_operator is not None  # checked in __init__
        try:
            operator = self._build_operator()
            operator.warm()  # its small calls' graphs too: then no call waits for a graph
            self.operator, self.operator_state = operator, "ready"
        except Exception as exc:  # the kernel keeps scoring every batch; say why once
            self.operator_state = f"failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
            logger.info("treecomp: no tree operator for this engine (%s)", self.operator_state)

    def leaf_ids(self, X: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        operator = self.operator
        if operator is None:  # deferred: the tier's (the kernel's) leaves, as exact
            ids: npt.NDArray[np.int64] = self.tier.engine.leaf_ids(X)
            self._start_operator()
            return ids
        return operator.leaf_ids(X)

    def scores(
        self, X: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        rows, tier, race, operator = X.shape[0], self.tier, self.race, self.operator
        if operator is None:  # deferred: the kernel scores every batch meanwhile
            out: tuple[Any, Any] = tier.engine.scores(X)
            self._start_operator()  # once this batch is scored: it does not slow this one
            return out
        engine = tier.engine
        if rows < tier.from_rows:
            if engine is None or tier.name != "kernel":
                return operator.scores(X)
            small = self.small_race
            side = small.winner or small.choose()
            if small.winner is not None:  # decided: nothing more to time
                return (engine if side == tier.name else operator).scores(X)
            start = time.perf_counter()
            out = (engine if side == tier.name else operator).scores(X)
            small.record(side, time.perf_counter() - start, rows)
            return out
        if engine is not None:
            side = race.choose()
            trial = race.trial_slice(rows) if side == "operator" else 0
            if trial:  # racing on a large batch: the operator times a slice, the tier scores
                # The slice in the large batches' graph (a graph for small ones would be built).
                start = time.perf_counter()
                operator.scores(X[:trial], large_plan=True)
                race.record("operator", time.perf_counter() - start, trial)
                side = tier.name
            if side == tier.name:
                start = time.perf_counter()
                out = engine.scores(X)
                race.record(side, time.perf_counter() - start, rows)
                return out
        start = time.perf_counter()
        out = operator.scores(X)
        elapsed = time.perf_counter() - start
        tier.note(elapsed)  # the operator's time on large batches decides when a tier builds
        if engine is not None:  # timed against a ready tier only
            race.record("operator", elapsed, rows)
        return out
