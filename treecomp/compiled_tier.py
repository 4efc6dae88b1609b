"""The compiled torch package as the tier of large batches, found or built in the background.

The default backend on the CPU starts on ONNX Runtime's tree operator, which builds in about a
second (:mod:`treecomp.tiered` composes the two). The compiled torch package (``compile=True``)
is faster on large batches of most forests (1.1-6x native predict at 10 000 rows, against
0.4-2.3x for the operator) but takes 10-60 s to build the first time; later processes load it
from the package cache in milliseconds. So, as a JIT compiler tiers up hot code, the tier:

1. at its first large batch, looks for the forest's package in the cache, in a thread (the
   lowering and its digest: about a second): found, large batches use it from then on;
2. else, once the operator has spent ``BUILD_AFTER_S`` seconds scoring large batches (a
   process that will profit from it), builds it in a child process (niced, and ended with
   this process however this one ends), in a thread that waits for it, and uses it once
   written. The next process finds it at once.

``CompiledModel.tier_up()`` does both now and waits (a server warming up). Only forests that
profit take this path (:func:`worth_compiling`), only with the default backend, only those
the kernel does not walk, and not where ``TREECOMP_BACKGROUND_COMPILE=0`` is set when a model
is converted.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, cast

from treecomp.inputs import Precision
from treecomp.ir_shapes import tree_depths

if TYPE_CHECKING:
    from treecomp.ir import Forest

logger = logging.getLogger(__name__)

# Batches of at least this many rows go to the package once it is loaded: below it the
# operator is as fast or faster (XGBoost, 500 trees of depth 8, 1 000 rows, 2 threads:
# 7.7 ms in the operator, 3.9 ms compiled; 1 row: 19 us against 86 us).
COMPILED_FROM_ROWS = 256
# Forests deeper than this stay on the operator. 10 000 rows, 2 threads, operator /
# compiled, ms: LightGBM 300 trees up to 38 levels 74 / 130; HistGradientBoosting 200 trees
# up to 16 levels 27.5 / 24.5; XGBoost 500 trees of depth 8 75 / 34.
MAX_COMPILED_DEPTH = 16
# Seconds of scoring large batches in the operator after which the package is built.
BUILD_AFTER_S = 5.0
# Forests with fewer tree levels (trees x depth) than this stay on the operator, and do not
# even look for a package: the lookup (a lowering and its digest, in a thread) would cost
# more than the package saves a process that scores little (BUILD_AFTER_S guards the
# build itself). The test suite's forests (at most 25 trees of depth 3 to 8) stay below.
MIN_COMPILED_LEVELS = 200

_children: list[subprocess.Popen[bytes]] = []
_exiting = False


def worth_compiling(forest: Forest) -> bool:
    """Whether the compiled package is expected to beat the tree operator on large batches."""
    depths = tree_depths(forest.trees)
    return int(depths.max()) <= MAX_COMPILED_DEPTH and int(depths.sum()) >= MIN_COMPILED_LEVELS


def enabled() -> bool:
    """Background builds are on unless ``TREECOMP_BACKGROUND_COMPILE=0`` (read per convert)."""
    return os.environ.get("TREECOMP_BACKGROUND_COMPILE", "1") != "0"


class CompiledTier:
    """The compiled torch engine of a forest, found or built in the background: a tier of
    :class:`treecomp.tiered.TieredEngine`, which races it against the operator once loaded.

    Attributes:
        name: ``"compiled"``, as ``cm.strategy`` and the race name it.
        engine: The compiled :class:`treecomp.torch_backend.TorchEngine` once its package is
            loaded, else None.
        state: ``"idle"``, ``"looking"``, ``"missing"`` (not cached, not yet worth a build),
            ``"building"``, ``"ready"`` or ``"failed: <reason>"``.
    """

    name = "compiled"

    def __init__(
        self,
        forest: Forest,
        *,
        precision: Precision,
        options: dict[str, Any],
        cached: Callable[[Forest, Precision, dict[str, Any]], Any],
        check: Callable[[], None],
    ) -> None:
        self.forest = forest
        self.precision = precision
        # The torch side, handed in by treecomp.torch_backend.package_tier: the engine of the
        # cached package (or None), and a check that a package can be built here at all.
        self._cached_engine, self._check = cached, check
        self.options = {k: v for k, v in options.items() if k in ("batch_size", "n_threads")}
        self.engine: Any = None
        self.state = "idle"
        self.busy_s = 0.0  # spent scoring large batches in the operator
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def from_rows(self) -> int:
        """The rows from which a batch goes to this tier (read per call: tests lower it)."""
        return COMPILED_FROM_ROWS

    def note(self, seconds: float) -> None:
        """A large batch took ``seconds`` in the operator: look for the package at the first,
        build it once they add up to ``BUILD_AFTER_S``."""
        self.busy_s += seconds
        self._start("looking", self._look, after="idle")
        if self.busy_s >= BUILD_AFTER_S:
            self._start("building", self._build_and_load, after="missing")

    def tier_up(self, timeout: float | None = None) -> bool:
        """Look for or build the package now and wait for it (at most ``timeout`` seconds
        in all); whether large batches now use it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for state, work, after in (
            ("looking", self._look, "idle"),
            ("building", self._build_and_load, "missing"),
        ):
            self._start(state, work, after=after)
            self._join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.engine is not None

    def _start(self, state: str, work: Any, *, after: str) -> None:
        """Run ``work`` in a thread, in ``state``, if the tier is in ``after`` and idle."""
        with self._lock:
            if self.state != after:
                return
            if _exiting or (self._thread is not None and self._thread.is_alive()):
                return
            self.state = state
            self._thread = threading.Thread(target=self._guard, args=(work,), daemon=True)
            self._thread.start()

    def _join(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _guard(self, work: Any) -> None:
        try:
            work()
        except Exception as exc:  # the operator keeps serving; say why once
            self.state = f"failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
            logger.info("treecomp: no compiled tier for this forest (%s)", self.state)

    def _look(self) -> None:
        engine = self._cached()
        self.engine = engine
        self.state = "missing" if engine is None else "ready"

    def _build_and_load(self) -> None:
        self._build()
        engine = self._cached()
        if engine is None:
            raise RuntimeError("the build wrote no package")
        self.engine = engine
        self.state = "ready"

    def _cached(self) -> Any:
        return self._cached_engine(self.forest, self.precision, self.options)

    def _build(self) -> None:
        """Build the package in a child process, lower priority, and wait for it."""
        self._check()  # no child for a build that cannot run
        spec = {"precision": self.precision, **self.options}
        command = [sys.executable, "-m", "treecomp.package_build", json.dumps(spec)]
        # The child imports treecomp from where this process did.
        paths = [p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]
        # Its temporary files (inductor's and the compilers') in a folder of its own, which
        # it removes if this process dies first (watch_parent), and this process after it.
        # Inductor's cache (the packages with it) stays where this process has it: by
        # default it would follow TMPDIR into that folder.
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        scratch = tempfile.mkdtemp(prefix="treecomp-build-")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "TORCHINDUCTOR_CACHE_DIR": cache_dir(),
            "TMPDIR": scratch,
            "TREECOMP_BUILD_SCRATCH": scratch,
        }
        # Its log in a file with no name (deleted when closed, or when this process dies):
        # nothing is left behind however either process ends.
        with contextlib.ExitStack() as cleanup, tempfile.TemporaryFile() as log:
            cleanup.callback(shutil.rmtree, scratch, ignore_errors=True)
            child = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.PIPE,  # the forest, then held open: see watch_parent
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its compiler workers end with it (_end_children)
            )
            _children.append(child)
            stdin = cast(IO[bytes], child.stdin)
            try:
                with contextlib.suppress(BrokenPipeError):  # it ended: its log says why
                    stdin.write(json.dumps(self.forest.to_dict()).encode() + b"\n")
                    stdin.flush()
                code = child.wait()
            finally:
                _children.remove(child)
                with contextlib.suppress(OSError):
                    stdin.close()
            if code != 0:
                log.seek(0)
                lines = log.read().decode(errors="replace").strip().splitlines()
                tail = lines[-1] if lines else ""
                raise RuntimeError(f"the build process exited with {code}: {tail[:300]}")


@atexit.register
def _end_children() -> None:
    """Builds still running when the interpreter exits end with it (no orphans); none
    starts after. A process killed outright (SIGKILL, or SIGTERM without a handler, as
    Docker and Kubernetes stop containers) runs no atexit: its builds see the end of
    their input instead (:func:`watch_parent`)."""
    global _exiting
    _exiting = True

    for child in list(_children):
        if child.poll() is None:
            try:
                if hasattr(os, "killpg"):  # its own session: the compiler workers too
                    os.killpg(child.pid, signal.SIGTERM)
                else:
                    child.terminate()
            except (ProcessLookupError, PermissionError):
                pass


def watch_parent(fd: int) -> None:
    """End this build, its compiler processes with it, once the pipe ``fd`` reads from
    (which the parent never writes to again) closes: the kernel closes it when the parent
    ends, however it ends.

    A pipe, not Linux's ``prctl(PR_SET_PDEATHSIG)``: it works on every OS, and the signal
    follows the parent's *thread* that started the child, not the process."""

    def watch() -> None:
        # os.read, not sys.stdin: a daemon thread blocked in a buffered reader holds its
        # lock, and the interpreter aborts when it cannot take it at exit.
        while os.read(fd, 1 << 16):
            pass
        # The end of the input: the parent is gone.
        backend = sys.modules.get("treecomp.torch_backend")
        if backend is not None:  # the package it may be writing (else trim_packages)
            with contextlib.suppress(Exception):
                for path in backend.package_dir().glob(f"*.{os.getpid()}.*.partial.pt2"):
                    path.unlink(missing_ok=True)
        # Its scratch folder (see CompiledTier._build), before the signal below ends this
        # process too: a compiler still running finds no folder to write into.
        scratch = os.environ.get("TREECOMP_BUILD_SCRATCH")
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        if hasattr(os, "killpg") and os.getpgrp() == os.getpid():  # our own session
            # SIGTERM: the compilers delete their temporary files as they end.
            os.killpg(os.getpid(), signal.SIGTERM)  # this process and its compiler workers
        os._exit(1)

    threading.Thread(target=watch, name="treecomp-parent-watch", daemon=True).start()
