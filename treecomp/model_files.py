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
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

import treecomp
from treecomp.errors import UnsupportedModelError
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


class ModelFileError(ValueError):
    """A model file that cannot be read, is of an unknown format, or is not trusted."""


def read_forest(
    path: Path, *, classes: list[str] | None = None, trust_pickle: bool = False
) -> tuple[Forest | None, Any, str]:
    """``(forest, artifact model or None, description)`` of the model in ``path``.

    Returns a parsed forest for native model files, or a rebuilt CompiledModel for a
    treecomp artifact (as the second element, the first being None).
    """
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    head = path.read_bytes()[:4096]
    if json_format(path) == "treecomp.model":
        return None, treecomp.load(path), "treecomp artifact"
    if suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise ModelFileError(
                f"{path}: pickle/joblib files run arbitrary code when loaded; save the model "
                "with skops, XGBoost's save_model or LightGBM's save_model instead, or pass "
                "--trust-pickle if you trust where this file came from"
            )
        import pickle

        with path.open("rb") as f:
            model = pickle.load(f)
        return treecomp.parse(model), None, f"pickled {type(model).__qualname__}"
    if suffix == ".skops":
        return _skops(path)
    if suffix in (".json", ".ubj"):
        return _xgboost(path, classes)
    if suffix in (".txt", ".model", ".lgb") or head.startswith(b"tree\n"):
        return _lightgbm(path, classes)
    raise ModelFileError(
        f"{path}: unknown model format {suffix!r}; expected a treecomp artifact, an XGBoost "
        ".json/.ubj file, a LightGBM text file, or a .skops file"
    )


def json_format(path: Path) -> str | None:
    """``"treecomp.model"`` for an artifact, ``"forest"`` for ``Forest.to_json()``, else None
    (not JSON, or another library's JSON)."""
    raw = path.read_bytes()
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    if document.get("format") == "treecomp.model":
        return "treecomp.model"
    return "forest" if "trees" in document and "learner" not in document else None


def _with_classes(forest: Forest, classes: list[str] | None, path: Path) -> Forest:
    if classes is None or forest.task != "classifier":
        return forest
    assert forest.classes is not None
    if len(classes) != len(forest.classes):
        raise ModelFileError(
            f"{path}: --classes gives {len(classes)} labels but the model has "
            f"{len(forest.classes)} classes"
        )
    return dataclasses.replace(forest, classes=np.asarray(classes)).validate()


def _xgboost(path: Path, classes: list[str] | None) -> tuple[Forest, None, str]:
    try:
        import xgboost
    except ImportError as exc:
        raise ModelFileError(f"{path}: reading XGBoost files needs xgboost") from exc
    try:
        booster = xgboost.Booster(model_file=str(path))
    except xgboost.core.XGBoostError as exc:
        raise ModelFileError(
            f"{path}: not a readable XGBoost model ({str(exc).splitlines()[0]})"
        ) from None
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective.startswith(("binary:", "multi:")) and objective != "binary:logitraw":
        estimator: Any = xgboost.XGBClassifier()
    elif objective.startswith("rank:"):
        estimator = xgboost.XGBRanker()
    else:
        estimator = xgboost.XGBRegressor()
    estimator.load_model(str(path))
    forest = treecomp.parse(estimator)
    kind = type(estimator).__qualname__
    return _with_classes(forest, classes, path), None, f"XGBoost {kind} ({objective})"


def _lightgbm(path: Path, classes: list[str] | None) -> tuple[Forest, None, str]:
    try:
        import lightgbm
    except ImportError as exc:
        raise ModelFileError(f"{path}: reading LightGBM files needs lightgbm") from exc
    try:
        booster = lightgbm.Booster(model_file=str(path))
    except lightgbm.basic.LightGBMError as exc:
        raise ModelFileError(
            f"{path}: not a readable LightGBM model ({str(exc).splitlines()[0]})"
        ) from None
    from treecomp.frontends import lightgbm as frontend

    objective = str(booster.dump_model().get("objective", "")).split(" ")[0]
    if objective in ("binary", "multiclass", "multiclassova"):
        n_classes = max(2, booster.num_model_per_iteration())
        labels = np.arange(n_classes)
        forest = frontend._parse(booster, task="classifier", owner="LightGBM file", classes=labels)
        return _with_classes(forest, classes, path), None, f"LightGBM classifier ({objective})"
    return treecomp.parse(booster), None, f"LightGBM Booster ({objective})"


def _skops(path: Path) -> tuple[Forest, None, str]:
    try:
        import skops.io
    except ImportError as exc:
        raise ModelFileError(
            f"{path}: reading .skops files needs skops: pip install 'treecomp[cli]'"
        ) from exc
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # a corrupt archive: skops raises zipfile and JSON errors
        raise ModelFileError(f"{path}: not a readable skops file ({exc})") from None
    unknown = [t for t in untrusted if not t.startswith(SKOPS_TRUSTED_PREFIXES)]
    if unknown:
        raise ModelFileError(
            f"{path}: the file holds types neither skops nor treecomp trusts: {unknown}; "
            "load it yourself with skops.io.load(path, trusted=[...]) if you trust them"
        )
    model = skops.io.load(path, trusted=untrusted)
    try:
        forest = treecomp.parse(model)
    except UnsupportedModelError:
        raise
    return forest, None, f"scikit-learn {type(model).__qualname__} (skops)"
