"""The ``"onnx"`` backend: a forest's engine graphs in ONNX Runtime sessions.

The engine runs graphs; it does not build them. Its factory
(:func:`treecomp.backends.get_backend`) hands it the function that builds them
(:func:`treecomp.onnx.export.build_with_plan` bound to the forest), which it calls with the
options of each graph it needs: the engine stands beside the exporter, not on top of it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import onnx

from treecomp import reference
from treecomp.batching import (
    SlicePool,
    physical_cpus,
    rows_per_chunk,
    score_in_chunks,
    side_by_side,
)
from treecomp.inputs import Precision, check_positive

if TYPE_CHECKING:
    from treecomp.engine import Link
    from treecomp.ir import Forest

# The onnx backend scores calls of fewer rows than this with a graph planned for one row
# (see strategies.tree_ensemble.SPLIT_FROM_ROWS, where the plans part).
SMALL_BATCH = 5_000
# Tree walks (rows x trees) per thread, at least, before the onnx backend splits a call.
PARALLEL_WALKS = 50_000
# ONNX Runtime walks the trees of one row on all its threads from this many trees in a node
# on (its parallel_tree_ setting): the onnx backend then scores single rows in a session of
# several threads, with a graph whose sums are exact there. 2 threads, distinct rows, one
# process each, session calls in us, one thread / several: XGBoost 500 trees 27.5 / 20.2,
# LightGBM 300 trees 38.4 / 23.1 (ONNX-ML's graphs: 17.9, 20.3); with one tree a target
# (several outputs), 10 classes x 100 rounds 57.5 / 32.2 and RandomForest 100 trees
# 31.4 / 19.2 (ONNX-ML's: 33.5, 15.0).
PARALLEL_TREES = 80


class BuildGraph(Protocol):
    """Builds one engine graph of the engine's forest: the model and its plan in words."""

    def __call__(self, *, engine_outputs: str, **options: Any) -> tuple[onnx.ModelProto, str]: ...


class OnnxEngine:
    """Runs the engine graphs of a forest, built by ``build_graph``, in ONNX Runtime sessions;
    ``link`` links the sums (default: the reference's)."""

    def __init__(
        self,
        forest: Forest,
        build_graph: BuildGraph,
        *,
        precision: Precision,
        strategy: str = "auto",
        device: Any = "cpu",
        batch_size: int | None = None,
        n_threads: int | None = None,
        progress: bool = False,
        transforms: Any = None,
        link: Link | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(
                "backend='onnx' needs onnxruntime: pip install 'treecomp[onnx]'"
            ) from exc
        check_positive("batch_size", batch_size)
        check_positive("n_threads", n_threads)
        self.forest = forest
        self._link = link or partial(reference.link, forest)
        self.precision = precision
        kind = str(device).split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"invalid device {device!r} for backend='onnx': use 'cpu' or 'cuda'")
        providers: list[Any] = ["CPUExecutionProvider"]
        if kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    f"device {str(device)!r} was requested but onnxruntime has no CUDA execution "
                    f"provider here (available: {ort.get_available_providers()}); use device='cpu'"
                )
            index = int(str(device).split(":")[1]) if ":" in str(device) else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        options: dict[str, Any] = {
            "precision": precision,
            "strategy": strategy,
            "batch_size": batch_size or 10_000,
            "device": kind,
        }
        self.session_options = ort.SessionOptions()
        self.threads = 1
        if kind == "cpu":
            # Sessions of one thread, run side by side on slices of the rows: the tree
            # operator then adds trees in their order (the native sum, see
            # _emit_operator_sums) and takes its leanest loops. ONNX Runtime's own threads
            # would split the trees of every node between them and merge per-row score
            # vectors. XGBoost, 500 trees of depth 8, 10 000 rows, 2 threads: 65 ms on two
            # one-thread sessions, 111 ms for the exported graph on ONNX Runtime's threads
            # (ONNX-ML's graph: 82 ms).
            self.threads = n_threads or _default_threads()
            self.session_options.intra_op_num_threads = 1
            self.session_options.inter_op_num_threads = 1
            options["one_thread"] = True
        elif n_threads is not None:
            self.session_options.intra_op_num_threads = n_threads
        self._pool = SlicePool(self.threads - 1, "treecomp-onnx")
        self._run_options = ort.RunOptions()
        # A pipeline's graph reads the encoded rows (treecomp.transforms) in float64.
        self._dtype = np.dtype(precision if transforms is None else "float64")
        if transforms is not None:
            options["transforms"] = transforms
        # The lowering's options, read by every graph this engine builds (frozen: a variant
        # is a copy with its own batch size).
        self.options: Mapping[str, Any] = MappingProxyType(options)
        k = forest.n_outputs
        # The graphs give raw sums; links run after them with the native library's functions
        # (treecomp.reference.link: the C library's or NumPy's; ONNX Runtime's Exp differs by
        # an ulp).
        self._score_outputs = (["raw"], [k])
        self.providers = providers
        self._build_graph = build_graph
        self.model, self.plan = build_graph(engine_outputs="scores", **self.options)
        self.session = self._session(self.model)
        # Built on first use: the leaf-id graph, the scores graph planned for calls of
        # fewer than SMALL_BATCH rows (where the plan for the expected batch size differs),
        # and the one for single rows on several threads (PARALLEL_TREES).
        self._leaf_session: Any = None
        self._small_session: Any = None
        self._row_session: Any = None
        self._row_threads = kind == "cpu" and self.threads > 1 and forest.n_trees >= PARALLEL_TREES
        # Scratch per row: the operator's or the traversal's (rows, trees) tensors, the terms
        # and their scan, in at most 8 bytes each, and the input's copies.
        per_row = 48 * forest.n_trees * max(t.leaf_width for t in forest.trees)
        self.batch_size = rows_per_chunk(per_row + 24 * forest.n_features, batch_size)
        # Rows of the smallest slice worth running beside others (see _parts), and the
        # rows below which _parts is 1: checked inline on every call (a call costs 0.4 us).
        self._rows_per_part = -(-PARALLEL_WALKS // forest.n_trees)
        self._serial_rows = 2 * self._rows_per_part if self.threads > 1 else self.batch_size + 1
        self.progress = progress

    @property
    def strategy(self) -> str:
        """The plan of the graph (as :func:`strategies.describe` words it)."""
        return self.plan

    def _session(self, model: onnx.ModelProto) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(
            model.SerializeToString(), sess_options=self.session_options, providers=self.providers
        )

    def warm(self) -> None:
        """Build now the graphs that small calls otherwise build at their first: a single
        row's (on several threads) and that of calls under SMALL_BATCH rows (LightGBM, 300
        trees x 255 leaves: 0.4-0.6 s each), so that no such call waits for one. A deferred
        operator's thread does this (:class:`treecomp.tiered.TieredEngine`)."""
        self._scores_session(1)
        self._scores_session(2)

    def _scores_session(self, rows: int) -> Any:
        if rows == 1 and self._row_threads:
            if self._row_session is None:
                import onnxruntime as ort

                # One output: ONNX Runtime walks a row's trees on its threads into one
                # score per tree, then adds those in tree order, so the operator's own sum
                # stays the native one. Several: it adds per-thread partial sums, so the
                # graph gets one tree a target and adds them in standard operators.
                one_sum = self.forest.n_outputs == 1
                options = {**self.options, "batch_size": 1, "one_thread": one_sum}
                self.row_model, _ = self._build_graph(engine_outputs="scores", **options)
                threads = ort.SessionOptions()
                threads.intra_op_num_threads = self.threads
                threads.inter_op_num_threads = 1
                self._row_session = ort.InferenceSession(
                    self.row_model.SerializeToString(),
                    sess_options=threads,
                    providers=self.providers,
                )
            return self._row_session
        if rows >= SMALL_BATCH or self.options["batch_size"] < SMALL_BATCH:
            return self.session
        if self._small_session is None:
            options = {**self.options, "batch_size": 1}
            self.small_model, _ = self._build_graph(engine_outputs="scores", **options)
            same = self.small_model.SerializeToString() == self.model.SerializeToString()
            self._small_session = self.session if same else self._session(self.small_model)
        return self._small_session

    def _run(
        self,
        session: Callable[[int], Any],
        names: list[str],
        widths: list[int],
        X: npt.NDArray[np.floating],
        dtype: Any,
    ) -> list[np.ndarray]:
        """Run ``names`` on ``X`` chunk by chunk, each in the session ``session(rows)`` gives,
        into outputs allocated once (see :mod:`treecomp.batching`)."""
        X = np.ascontiguousarray(X, dtype=self._dtype)
        n = X.shape[0]
        if n == 0:
            return [np.zeros((0, w), dtype=dtype) for w in widths]
        if n <= self.batch_size and n < self._serial_rows:  # one call: what a row costs
            return [out.astype(dtype, copy=False) for out in self._call(session(n), names, X)]

        pool = self._pool.get()

        def score(rows: slice) -> list[np.ndarray]:
            chunk = X[rows]
            run = session(len(chunk))
            parts = self._parts(len(chunk))
            if parts == 1:
                return self._call(run, names, chunk)
            # ONNX Runtime releases the GIL while it runs: one slice per thread.
            return side_by_side(lambda part: self._call(run, names, part), chunk, parts, pool)

        return score_in_chunks(
            X.shape[0],
            self.batch_size,
            widths,
            [dtype] * len(widths),
            score,
            progress=self.progress,
        )

    def _call(self, session: Any, names: list[str], X: np.ndarray) -> list[np.ndarray]:
        """``session.run`` on the CPU without the Python wrapper's per-call checks (input
        names, provider fallback: neither can fail here), 1.6 us of a 4.5 us call."""
        binding = getattr(session, "_sess", None) if self.options["device"] == "cpu" else None
        if binding is None:
            return list(session.run(names, {"input": X}))
        return list(binding.run(names, {"input": X}, self._run_options))

    def _parts(self, rows: int) -> int:
        """Slices to run side by side for a chunk of ``rows`` rows: one per thread, each of
        at least PARALLEL_WALKS tree walks (a hand-over costs tens of microseconds)."""
        return max(1, min(self.threads, rows // self._rows_per_part))

    def leaf_ids(self, X: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        if self._leaf_session is None:
            model, _ = self._build_graph(engine_outputs="leaf_ids", **self.options)
            self._leaf_session = self._session(model)
        n_trees = self.forest.n_trees
        return self._run(lambda rows: self._leaf_session, ["leaf_ids"], [n_trees], X, np.int64)[0]

    def scores(
        self, X: npt.NDArray[np.floating], *, large_plan: bool = False
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Raw and transformed scores; with ``large_plan``, in the graph planned for the
        expected batch size whatever the rows (a race times a slice of a large batch there,
        and builds no graph for small batches: :class:`treecomp.tiered.TieredEngine`)."""
        if large_plan:
            outputs = self._run(lambda rows: self.session, *self._score_outputs, X, np.float64)
        elif X.shape[0] == 1 and X.dtype == self._dtype and X.flags.c_contiguous:
            # One row, as treecomp.inputs.prepare gives it: straight to its session. float32
            # sums come out float32 and are widened (exactly) as they are copied out: cheaper
            # than in the graph.
            outputs = self._call(self._scores_session(1), self._score_outputs[0], X)
            outputs = [out.astype(np.float64, copy=False) for out in outputs]
        else:
            outputs = self._run(self._scores_session, *self._score_outputs, X, np.float64)
        return outputs[0], self._link(outputs[0])


def _default_threads() -> int:
    """Sessions side by side by default: torch's thread count where torch is imported (what
    the user set, as every backend uses), else the physical cores, torch's default
    (:func:`treecomp.batching.physical_cpus`), without importing torch: 1.4 s and some
    180 MB of a fresh process, which the tree operator does not need."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return physical_cpus()
