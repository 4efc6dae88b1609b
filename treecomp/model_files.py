"""Reading model files for the command line: artifacts, XGBoost, LightGBM and skops files.

Formats, by what the file holds (not only its suffix):

* a treecomp artifact (``cm.save``): JSON with ``"format": "treecomp.model"``;
* an XGBoost model (``.json``, ``.ubj``), loaded into the estimator its objective belongs to
  (classifier, regressor, ranker) so that ``predict`` means what it means natively;
* a LightGBM model (text, ``.txt``), its objective deciding classifier or regressor;
* a scikit-learn model saved with skops (``.skops``), loaded only when skops' check finds no
  untrusted type in it;
* pickle or joblib files (``.pkl``, ``.pickle``, ``.joblib``): refused unless the caller
  trusts them, because unpickling runs whatever code the file names.

Model files of XGBoost and LightGBM hold no class labels: ``classes`` supplies them; without
it a classifier predicts the native class numbers 0, 1, ...

Files are untrusted input. XGBoost's and LightGBM's parsers trust theirs: a truncated or
crafted file can crash them (treecomp.file_checks lists how), so each such file is checked
by treecomp.file_checks before the library parses it, and whatever goes wrong while reading
becomes a :class:`ModelFileError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from treecomp.container import load
from treecomp.errors import InvalidForestError, UnsupportedModelError
from treecomp.file_checks import FileCheckError, check_lightgbm, check_xgboost, first_line
from treecomp.frontends import parse
from treecomp.ir import Forest

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
# Types of the tree models treecomp reads, which skops does not trust by default: the tree
# structure, losses, dummy initial estimators, HistGradientBoosting's predictors and
# binner. Plain data holders; anything else in a file is refused.
SKOPS_TRUSTED_PREFIXES = (
    "sklearn.tree.",
    "sklearn.ensemble.",
    "sklearn._loss.",
    "sklearn.dummy.",
    "sklearn.preprocessing._encoders.",
    "numpy.",
)
# Errors of treecomp's own that already say what is wrong with a model: passed on as they are.
_OWN_ERRORS = (UnsupportedModelError, InvalidForestError)
# What a library raises on a broken file besides its own error class (its Python code
# indexing a document that lacks a key, or decoding one that is not UTF-8).
_READ_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError)


class ModelFileError(ValueError):
    """A model file that cannot be read, is of an unknown format, or is not trusted."""


def read_forest(
    path: Path, *, classes: list[str] | None = None, trust_pickle: bool = False
) -> tuple[Any, Any, str]:
    """``(forest, artifact model or None, description)`` of the model in ``path``.

    Returns a parsed forest for native model files (a scikit-learn Pipeline from a pickle
    or skops file as it is, for :func:`treecomp.convert`), or a rebuilt CompiledModel for a
    treecomp artifact (as the second element, the first being None).

    Raises:
        ModelFileError: the file is missing, empty, truncated, corrupt, of an unknown format
            or an untrusted pickle.
        treecomp.InvalidArtifactError: a treecomp artifact that is truncated or tampered with.
        treecomp.UnsupportedModelError: a readable model that treecomp cannot compile.
    """
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not raw:
        raise ModelFileError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if _json_format(raw) == "treecomp.model" or suffix == ".tc" or _looks_like_artifact(raw):
        return None, load(path), "treecomp artifact"
    if suffix in PICKLE_SUFFIXES:
        return _pickle(path, trust_pickle)
    if suffix == ".skops":
        return _skops(path)
    if suffix in (".json", ".ubj"):
        return _xgboost(path, raw, classes)
    if suffix in (".txt", ".model", ".lgb") or raw.startswith((b"tree\n", b"tree\r\n")):
        return _lightgbm(path, raw, classes)
    raise ModelFileError(
        f"{path}: unknown model format {suffix!r}; expected a treecomp artifact, an XGBoost "
        ".json/.ubj file, a LightGBM text file, or a .skops file"
    )


def json_format(path: Path) -> str | None:
    """``"treecomp.model"`` for an artifact, ``"forest"`` for ``Forest.to_json()``, else None
    (not JSON, or another library's JSON)."""
    return _json_format(path.read_bytes())


def _json_format(raw: bytes) -> str | None:
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(document, dict):
        return None
    if document.get("format") == "treecomp.model":
        return "treecomp.model"
    return "forest" if "trees" in document and "learner" not in document else None


def _looks_like_artifact(raw: bytes) -> bool:
    """An artifact (canonical JSON, keys sorted) cut short, whatever its name."""
    return raw.startswith(b'{"backend":')


def _with_classes(forest: Forest, classes: list[str] | None, path: Path) -> Forest:
    if classes is None or forest.task != "classifier":
        return forest
    assert forest.classes is not None
    if len(classes) != len(forest.classes):
        raise ModelFileError(
            f"{path}: --classes gives {len(classes)} labels but the model has "
            f"{len(forest.classes)} classes"
        )
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:  # two classes of one label: predict could not tell them apart
        raise ModelFileError(f"{path}: --classes lists {repeated} more than once")
    return dataclasses.replace(forest, classes=np.asarray(classes)).validate()


@contextlib.contextmanager
def _library_output_silenced() -> Iterator[None]:
    """Send what a model library prints nowhere while the block runs: what its native code
    writes to file descriptor 2 (LightGBM prints each fatal error there before raising it,
    and the exception becomes the command's one-line message) and what its Python logger
    prints (LightGBM's warnings about parameters it no longer knows, in ``inspect``'s
    output otherwise)."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no descriptor 2 to silence
            yield
            return
        try:
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


# -------------------------------------------------------------------------------------------
# Pickle, joblib and skops


def _pickle(path: Path, trust_pickle: bool) -> tuple[Any, None, str]:
    if not trust_pickle:
        raise ModelFileError(
            f"{path}: pickle/joblib files run arbitrary code when loaded; save the model "
            "with skops, XGBoost's save_model or LightGBM's save_model instead, or pass "
            "--trust-pickle if you trust where this file came from"
        )
    if path.suffix.lower() == ".joblib":
        # joblib writes NumPy arrays after the pickle stream: plain pickle cannot read it.
        try:
            from joblib import load
        except ImportError as exc:
            raise ModelFileError(f"{path}: reading .joblib files needs joblib") from exc
    else:
        from pickle import load as load_pickle

        def load(file: Path) -> Any:
            with file.open("rb") as f:
                return load_pickle(f)

    try:
        model = load(path)
    except Exception as exc:  # unpickling a broken file raises whatever its bytes lead to
        raise ModelFileError(
            f"{path}: not a readable {path.suffix.lower()[1:]} file "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    return _parsed(model), None, f"pickled {type(model).__qualname__}"


def _skops(path: Path) -> tuple[Any, None, str]:
    try:
        import skops.io
    except ImportError as exc:
        raise ModelFileError(
            f"{path}: reading .skops files needs skops: pip install 'treecomp[cli]'"
        ) from exc
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # a corrupt archive: skops raises zipfile and JSON errors
        raise ModelFileError(
            f"{path}: not a readable skops file ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    unknown = [t for t in untrusted if not t.startswith(SKOPS_TRUSTED_PREFIXES)]
    if unknown:
        raise ModelFileError(
            f"{path}: the file holds types neither skops nor treecomp trusts: {unknown}; "
            "load it yourself with skops.io.load(path, trusted=[...]) if you trust them"
        )
    try:
        model = skops.io.load(path, trusted=untrusted)
    except Exception as exc:  # a schema that lies about its contents fails anywhere in skops
        raise ModelFileError(
            f"{path}: not a readable skops file ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    return _parsed(model), None, f"scikit-learn {type(model).__qualname__} (skops)"


def _parsed(model: Any) -> Any:
    """The forest of a model, or a scikit-learn Pipeline as it is: its transforms and forest
    are compiled together (treecomp.convert), never the forest alone."""
    from treecomp.frontends.pipeline import is_pipeline

    return model if is_pipeline(model) else parse(model)


# -------------------------------------------------------------------------------------------
# XGBoost


def _xgboost(path: Path, raw: bytes, classes: list[str] | None) -> tuple[Forest, None, str]:
    try:
        import xgboost
    except ImportError as exc:
        raise ModelFileError(f"{path}: reading XGBoost files needs xgboost") from exc
    raw = raw.lstrip(b" \t\r\n")  # XGBoost reads a buffer only from its first '{'
    try:
        document = check_xgboost(raw)
        objective = str(document["learner"]["objective"]["name"])
    except (FileCheckError, KeyError, TypeError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise ModelFileError(f"{path}: not a readable XGBoost model ({what})") from None
    if objective.startswith(("binary:", "multi:")) and objective != "binary:logitraw":
        estimator: Any = xgboost.XGBClassifier()
    elif objective.startswith("rank:"):
        estimator = xgboost.XGBRanker()
    else:
        estimator = xgboost.XGBRegressor()
    try:
        with _library_output_silenced():
            # From memory: the bytes checked above are the bytes XGBoost parses.
            estimator.load_model(bytearray(raw))
            forest = parse(estimator)
    except _OWN_ERRORS:
        raise
    except (xgboost.core.XGBoostError, *_READ_ERRORS) as exc:
        raise ModelFileError(f"{path}: not a readable XGBoost model ({first_line(exc)})") from exc
    kind = type(estimator).__qualname__
    return _with_classes(forest, classes, path), None, f"XGBoost {kind} ({objective})"


# -------------------------------------------------------------------------------------------
# LightGBM


def _lightgbm(path: Path, raw: bytes, classes: list[str] | None) -> tuple[Forest, None, str]:
    try:
        import lightgbm
    except ImportError as exc:
        raise ModelFileError(f"{path}: reading LightGBM files needs lightgbm") from exc
    try:
        text = check_lightgbm(raw)
    except FileCheckError as exc:
        raise ModelFileError(f"{path}: not a readable LightGBM model ({exc})") from None
    from treecomp.frontends import lightgbm as frontend

    try:
        with _library_output_silenced():
            booster = lightgbm.Booster(model_str=text)
            objective = str(booster.dump_model().get("objective", "")).split(" ")[0]
            if objective in ("binary", "multiclass", "multiclassova"):
                labels = np.arange(max(2, booster.num_model_per_iteration()))
                forest = frontend._parse(
                    booster, task="classifier", owner="LightGBM file", classes=labels
                )
                kind = f"LightGBM classifier ({objective})"
                forest = _with_classes(forest, classes, path)
            else:
                forest, kind = parse(booster), f"LightGBM Booster ({objective})"
    except (*_OWN_ERRORS, ModelFileError):
        raise
    except (lightgbm.basic.LightGBMError, *_READ_ERRORS) as exc:
        raise ModelFileError(f"{path}: not a readable LightGBM model ({first_line(exc)})") from exc
    return forest, None, kind
