"""The runners: each system's conversion of a model and the call the worker times.

:func:`make_runner` converts a fitted model for one system (what ``convert_s`` times) and
returns the call to time (``scores``: probabilities of classifiers, predictions of
regressors) and the one giving class labels. A peer that is not installed, or that does not
take the model, raises :class:`SkippedError` with the reason and its install command.

lleaves and TL2cgen compile the model to machine code when converting (lleaves through LLVM,
TL2cgen to C built with gcc); their ``convert_s`` is that compile.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from treecomp.bench.systems import EXPORTED, LLEAVES_INSTALL, TL2CGEN_INSTALL, System


class SkippedError(Exception):
    """A system that cannot run here, such as a peer that is not installed."""


@dataclass(slots=True)
class Runner:
    """A converted system: ``scores`` is what is timed, ``labels`` gives class labels."""

    scores: Callable[[np.ndarray], np.ndarray]
    labels: Callable[[np.ndarray], np.ndarray] | None
    strategy: str | None = None


def _require(module: str, install: str = "pip install 'treecomp[bench]'") -> None:
    if importlib.util.find_spec(module) is None:
        raise SkippedError(f"{module} is not installed ({install})")


def _library(model: Any) -> str:
    """``"xgboost"``, ``"lightgbm"`` or ``"sklearn"``: the package the model's class is from."""
    return type(model).__module__.partition(".")[0]


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # One inter-op thread, as Hummingbird sets and as ONNX Runtime gets below: these models
    # run one operator after another, so the intra-op threads are the ones that count.
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # settable only before torch's first parallel work
            pass


def _native_runner(model: Any, classifier: bool, threads: int) -> Runner:
    params = model.get_params()
    if "n_jobs" in params:  # XGBoost's nthread, LightGBM's num_threads, sklearn's joblib
        model.set_params(n_jobs=threads)
    if classifier:
        return Runner(model.predict_proba, model.predict)
    return Runner(model.predict, None)


def _treecomp_runner(
    model: Any, system: System, classifier: bool, threads: int, tier_up: bool
) -> Runner:
    from treecomp.container import convert

    options: dict[str, Any] = {}
    if system.backend != "numpy":
        options["n_threads"] = threads
    if system.strategy is not None:
        options["strategy"] = system.strategy
    if system.compiled:
        options["compile"] = True
    # The defaults import torch only for a compiled tier: a fresh process's convert does not
    # import it here (its OMP_NUM_THREADS holds the threads, should the tier need torch).
    if system.backend in ("torch", "torchscript") or (system.backend is None and tier_up):
        _set_torch_threads(threads)
    if system.backend is None:
        cm = convert(model, **options)
        if tier_up:  # the defaults as a long-running process has them
            cm.tier_up()
    else:
        cm = convert(model, system.backend, **options)
    if classifier:
        return Runner(cm.predict_proba, cm.predict, cm.strategy)
    return Runner(cm.predict, None, cm.strategy)


def _onnxml_model(model: Any, n_features: int) -> Any:
    library = _library(model)
    if library == "sklearn":
        _require("skl2onnx")
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType as SklFloat

        options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
        return to_onnx(
            model, initial_types=[("input", SklFloat([None, n_features]))], options=options
        )
    _require("onnxmltools")
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [("input", FloatTensorType([None, n_features]))]
    if library == "xgboost":
        return onnxmltools.convert_xgboost(model, initial_types=types)
    if library == "lightgbm":
        return onnxmltools.convert_lightgbm(model, initial_types=types, zipmap=False)
    raise SkippedError(f"no ONNX-ML converter for {type(model).__qualname__}")


def _onnxml_runner(model: Any, classifier: bool, threads: int, n_features: int) -> Runner:
    _require("onnxruntime", "pip install 'treecomp[onnx]'")
    return _session_runner(_onnxml_model(model, n_features), classifier, threads)


def _exported_runner(model: Any, classifier: bool, threads: int) -> Runner:
    """``treecomp-export``: the file ``cm.export_onnx`` writes (convert's defaults), run by
    ONNX Runtime alone as a serving stack runs it; its strategy is the graph's own."""
    _require("onnxruntime", "pip install 'treecomp[onnx]'")
    from treecomp.container import convert

    onx = convert(model).to_onnx()
    runner = _session_runner(onx, classifier, threads)
    runner.strategy = next(
        (p.value for p in onx.metadata_props if p.key == "treecomp.strategy"), None
    )
    return runner


def _session_runner(onx: Any, classifier: bool, threads: int) -> Runner:
    """An ONNX model in a plain ONNX Runtime session of ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Nodes run one after another (the default sequential mode): one inter-op thread is all
    # it uses; more would only idle.
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        onx.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    # The converters' graphs take float: float64 rows (--dtype float64) are cast in the
    # timed call, as a user of those graphs must (which rounds them: not exact for
    # LightGBM and HistGradientBoosting, and reported as such in the deviation column).
    # treecomp's take the native library's type (double for those two).
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32

    def run(names: list[str], X: np.ndarray) -> np.ndarray:
        return session.run(names, {input_name: X.astype(dtype, copy=False)})[0]

    if classifier:
        label = "label" if "label" in outputs else outputs[0]
        proba = "probabilities" if "probabilities" in outputs else outputs[-1]
        return Runner(lambda X: run([proba], X), lambda X: run([label], X))
    return Runner(lambda X: run(outputs[:1], X), None)


def _hummingbird_runner(model: Any, classifier: bool, threads: int) -> Runner:
    # hummingbird-ml pins an old onnx, so it is no extra of ours (see pyproject.toml)
    _require(
        "hummingbird",
        "pip install --no-deps hummingbird-ml dill psutil onnxconverter-common",
    )
    _set_torch_threads(threads)
    import hummingbird.ml

    hb = hummingbird.ml.convert(model, "torch", extra_config={"n_threads": threads})
    if classifier:
        return Runner(hb.predict_proba, hb.predict)
    return Runner(hb.predict, None)


def _from_probabilities(
    predict: Callable[[np.ndarray], np.ndarray], model: Any, classifier: bool
) -> Runner:
    """A runner for a compiler whose output is a classifier's probabilities or a regressor's value.

    Args:
        predict: The compiled model's call. For a binary classifier it gives the second
            class's probability (one column), otherwise one column per class.
        model: The fitted model, whose ``classes_`` name the labels.
        classifier: Whether the model is a classifier.
    """
    if not classifier:
        return Runner(predict, None)
    classes = np.asarray(model.classes_)

    def proba(X: np.ndarray) -> np.ndarray:
        p = np.reshape(predict(X), (len(X), -1))
        return np.column_stack([1.0 - p[:, 0], p[:, 0]]) if p.shape[1] == 1 else p

    return Runner(proba, lambda X: classes[np.argmax(proba(X), axis=1)])


def _scratch() -> tempfile.TemporaryDirectory[str]:
    # The compiled code is in memory once loaded, so its files can go at once.
    return tempfile.TemporaryDirectory(prefix="treecomp-bench-", ignore_cleanup_errors=True)


def _lleaves_runner(model: Any, classifier: bool, threads: int) -> Runner:
    if _library(model) != "lightgbm":
        raise SkippedError("lleaves compiles LightGBM models only")
    _require("lleaves", LLEAVES_INSTALL)
    import lleaves

    with _scratch() as tmp:
        path = Path(tmp) / "model.txt"
        model.booster_.save_model(path)
        compiled = lleaves.Model(model_file=str(path))
        # Its defaults: doubles (LightGBM's thresholds), the objective's link applied.
        compiled.compile()

    def predict(X: np.ndarray) -> np.ndarray:
        # lleaves starts a thread pool per call: for one row, its own advice is one job.
        return compiled.predict(X, n_jobs=1 if len(X) == 1 else threads)

    return _from_probabilities(predict, model, classifier)


def _treelite_model(model: Any) -> Any:
    """The model in treelite's form, which TL2cgen compiles."""
    import treelite

    library = _library(model)
    if library == "xgboost":
        return treelite.frontend.from_xgboost(model.get_booster())
    if library == "lightgbm":
        return treelite.frontend.from_lightgbm(model.booster_)
    if library == "sklearn":
        import treelite.sklearn

        return treelite.sklearn.import_model(model)
    raise SkippedError(f"treelite does not import {type(model).__qualname__}")


def _tl2cgen_runner(model: Any, classifier: bool, threads: int) -> Runner:
    _require("tl2cgen", TL2CGEN_INSTALL)
    _require("treelite", TL2CGEN_INSTALL)
    if shutil.which("gcc") is None:
        raise SkippedError("tl2cgen builds its C code with gcc, which is not on PATH")
    import tl2cgen

    forest = _treelite_model(model)
    with _scratch() as tmp:
        path = Path(tmp) / "model.so"
        # parallel_comp: the C code in that many files, built in parallel (without it,
        # tl2cgen writes one file and warns that large models build slowly).
        tl2cgen.export_lib(forest, "gcc", path, params={"parallel_comp": threads}, nthread=threads)
        predictor = tl2cgen.Predictor(path, nthread=threads)

    def predict(X: np.ndarray) -> np.ndarray:
        # Rows as they come: the compiled code converts them to its threshold type itself
        # (float32 for XGBoost, float64 otherwise).
        return predictor.predict(tl2cgen.DMatrix(X))

    return _from_probabilities(predict, model, classifier)


def make_runner(
    model: Any,
    system: System,
    *,
    classifier: bool,
    threads: int,
    n_features: int,
    tier_up: bool = True,
) -> Runner:
    """Convert ``model`` for ``system`` (the part of the work that ``convert_s`` times).

    Args:
        model: The fitted model.
        system: How to run it.
        classifier: Whether the model is a classifier.
        threads: Threads the system gets.
        n_features: Input features (for the ONNX converters' input type).
        tier_up: For the ``treecomp`` system (the defaults of ``treecomp.convert``), call
            ``cm.tier_up()`` as a long-running process would; False converts only, as a
            fresh process does before its first batch (``--fresh``).

    Raises:
        SkippedError: the system cannot run here (a peer is not installed, or does not take
            this model).
    """
    if system.name == EXPORTED:
        return _exported_runner(model, classifier, threads)
    if system.kind == "treecomp":
        return _treecomp_runner(model, system, classifier, threads, tier_up)
    if system.kind == "onnxml":
        return _onnxml_runner(model, classifier, threads, n_features)
    peers = {
        "native": _native_runner,
        "hummingbird": _hummingbird_runner,
        "lleaves": _lleaves_runner,
        "tl2cgen": _tl2cgen_runner,
    }
    return peers[system.kind](model, classifier, threads)
