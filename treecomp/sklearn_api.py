"""scikit-learn's conventions for a compiled model, and the methods it has only where the
native model has them.

A :class:`~treecomp.CompiledModel` stands where the native model stood: in a Pipeline
through ``sklearn.frozen.FrozenEstimator``, in ``cross_val_score``, behind
``is_classifier()`` and co. It gets those conventions from :class:`EstimatorConventions`,
which reads only the model's forest and transforms. scikit-learn is imported when a
convention needs it (tags, ``score``), never by ``import treecomp``: a user of XGBoost or
LightGBM alone does not need it installed.

:attr:`EstimatorConventions.n_features_in_` and :attr:`~EstimatorConventions.feature_names_in_`
are also treecomp's one answer to "which input columns does this model take, by name or
position": a model's features, or a Pipeline's own input columns (before its transforms).
File scoring (:mod:`treecomp.scoring`), the command line and Spark UDFs pick columns by
them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from treecomp.ir import Forest
    from treecomp.transforms import Transforms

# The metric of each task's native ``score``: scikit-learn's ClassifierMixin and
# RegressorMixin, which XGBoost's and LightGBM's wrappers inherit too. Outlier detectors
# (IsolationForest) have no ``score``; neither do rankers (LGBMRanker has none, and
# XGBRanker's ranks queries by its evaluation metric, not by r2).
_METRICS = {"classifier": "accuracy_score", "regressor": "r2_score"}


class NativeMethod:
    """A method that exists on a compiled model only where the native model has it.

    A descriptor rather than ``__getattribute__``: only these names pay for the check, not
    every attribute access (seven per call, 2 us of a 20 us single-row prediction).
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.name = function.__name__
        functools.update_wrapper(self, function)  # type: ignore[arg-type]

    def exists(self, forest: Forest) -> bool:
        """Whether the native model of ``forest`` has this method."""
        return self.name in forest.methods

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self.function
        if not self.exists(instance.forest):
            raise AttributeError(
                f"this compiled {instance.forest.task} has no method {self.name!r}: the native "
                "model lacks it, or its native meaning has no exact equivalent (see the "
                "frontend's notes)"
            )
        return self.function.__get__(instance, owner)


class _NativeScore(NativeMethod):
    """``score``, which exists where the native model's task has a metric (:data:`_METRICS`)."""

    def exists(self, forest: Forest) -> bool:
        return forest.task in _METRICS


class EstimatorConventions:
    """scikit-learn's conventions, mixed into :class:`~treecomp.CompiledModel`.

    Attributes:
        forest: The IR the model was compiled from.
        transforms: A Pipeline's row transforms in front of the forest, or None.
    """

    forest: Forest
    transforms: Transforms | None

    if TYPE_CHECKING:  # the compiled model's, which score() reads

        def predict(self, X: Any) -> npt.NDArray[Any]: ...

    def __dir__(self) -> list[str]:
        lacking = {
            name
            for klass in type(self).__mro__
            for name, value in vars(klass).items()
            if isinstance(value, NativeMethod) and not value.exists(self.forest)
        }
        return [name for name in super().__dir__() if name not in lacking]

    @property
    def classes_(self) -> npt.NDArray[Any]:
        """Class labels of a classifier, as the native model reports them."""
        if self.forest.classes is None or self.forest.task != "classifier":
            raise AttributeError(f"this compiled {self.forest.task} has no classes_")
        return self.forest.classes

    @property
    def n_features_in_(self) -> int:
        """Number of input columns: the native model's features, or a Pipeline's own
        input columns (before its transforms)."""
        if self.transforms is not None:
            return len(self.transforms.columns)
        return self.forest.n_features

    @property
    def feature_names_in_(self) -> npt.NDArray[np.object_]:
        """Names of the input columns seen at fit time (a Pipeline's own, before its
        transforms), where the native model has them; rows' columns are then found by
        these names, else by position."""
        names = self.forest.feature_names
        if self.transforms is not None:
            names = self.transforms.columns if self.transforms.named else None
        if names is None:
            raise AttributeError("the native model was fitted without feature names")
        return np.asarray(names, dtype=object)

    def fit(self, X: Any, y: Any = None, **params: Any) -> Any:
        """Refuse to refit: a compiled model is a fitted model's predictions.

        Raises:
            TypeError: always; fit the native model and convert it again. In a Pipeline,
                wrap the compiled model in ``sklearn.frozen.FrozenEstimator``, whose
                ``fit`` does nothing.
        """
        raise TypeError(
            "a CompiledModel cannot be refitted: fit the native model and convert it again "
            "(in a Pipeline, wrap it in sklearn.frozen.FrozenEstimator)"
        )

    @_NativeScore
    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The native model's ``score``: accuracy of a classifier's labels, r2 of a
        regressor's values (averaged over outputs), as scikit-learn's ``ClassifierMixin``
        and ``RegressorMixin`` compute it, so that ``FrozenEstimator(cm).score`` and
        ``cross_val_score`` give the native model's numbers.

        Outlier detectors and rankers have no ``score`` (``AttributeError``), as
        IsolationForest and LGBMRanker have none.

        Raises:
            ImportError: scikit-learn, which computes the metric, is not installed.
        """
        try:
            from sklearn import metrics
        except ImportError as exc:
            raise ImportError(
                "CompiledModel.score computes scikit-learn's metric: install scikit-learn "
                "(pip install scikit-learn)"
            ) from exc
        metric = getattr(metrics, _METRICS[self.forest.task])
        return metric(y, self.predict(X), sample_weight=sample_weight)

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags (scikit-learn 1.6 or later): the estimator type of the native
        model, NaN accepted where it accepts it."""
        from sklearn.utils import ClassifierTags, InputTags, RegressorTags, Tags, TargetTags

        task = self.forest.task
        kind = {"classifier": "classifier", "outlier": "outlier_detector"}.get(task, "regressor")
        return Tags(
            estimator_type=kind,
            target_tags=TargetTags(required=task != "outlier"),
            classifier_tags=ClassifierTags() if kind == "classifier" else None,
            regressor_tags=RegressorTags() if kind == "regressor" else None,
            input_tags=InputTags(
                allow_nan=self.forest.allow_nan, categorical=self.forest.categories is not None
            ),
        )
