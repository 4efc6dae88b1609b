"""Dask batch scoring (treecomp.dask): a Parquet data set on a local cluster, worker loss,
Dask Arrays, categorical columns, bad input, and one model build per worker process."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import treecomp
from tests.helpers import assert_equal

pytest.importorskip("dask", reason="treecomp.dask scores dask collections")
pytest.importorskip("distributed", reason="the cluster tests run a distributed.LocalCluster")
pd = pytest.importorskip("pandas", reason="dask DataFrames are pandas partitions")
pytest.importorskip("pyarrow", reason="the data set is Parquet")
xgboost = pytest.importorskip("xgboost", reason="the tiny model is an XGBoost classifier")

import cloudpickle  # noqa: E402  (distributed depends on it)
import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402
import distributed  # noqa: E402

import treecomp.dask as tcdask  # noqa: E402

# dask's Parquet reader still passes inplace= to pandas 3.1, which deprecates it.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")

# Seconds any one wait may take: generous, for a loaded 2-core machine.
TIMEOUT = 120
ROWS = 1_000_000
PARTITIONS = 8
FEATURES = [f"f{j}" for j in range(10)]


@pytest.fixture(scope="module")
def client() -> Any:
    """Two single-threaded worker processes under nannies (which restart a killed worker)."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,  # a killed worker's restart is expected here
        ) as cluster,
        distributed.Client(cluster, timeout=TIMEOUT) as client,
    ):
        client.wait_for_workers(2, timeout=TIMEOUT)
        yield client


@pytest.fixture(scope="module")
def cm() -> treecomp.CompiledModel:
    """A tiny XGBoost classifier: 8 trees of depth 3 on 10 features, NaN in training."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, len(FEATURES)))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan
    model = xgboost.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1)
    return treecomp.convert(model.fit(pd.DataFrame(X, columns=FEATURES), y))


@pytest.fixture(scope="module")
def frame() -> Any:
    """1,000,000 rows with 10% missing values, indexed by a ``row`` label (not 0..n-1)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(ROWS, len(FEATURES)))
    X[rng.random(X.shape) < 0.1] = np.nan
    index = pd.Index(np.arange(ROWS, dtype=np.int64) * 3 + 7, name="row")
    return pd.DataFrame(X, columns=FEATURES, index=index)


@pytest.fixture(scope="module")
def parquet(frame: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frame as 8 Parquet files of 125,000 rows, the index stored as column ``row``."""
    directory = tmp_path_factory.mktemp("features")
    size = ROWS // PARTITIONS
    for part in range(PARTITIONS):
        piece = frame.iloc[part * size : (part + 1) * size]
        piece.to_parquet(directory / f"part.{part}.parquet", engine="pyarrow")
    return directory


@pytest.fixture(scope="module")
def expected(cm: treecomp.CompiledModel, frame: Any) -> dict[str, Any]:
    """One process's answers on the whole pandas frame."""
    return {method: getattr(cm, method)(frame) for method in ("predict", "predict_proba")}


def read(parquet: Path) -> Any:
    ddf = dd.read_parquet(parquet, index="row", calculate_divisions=True)
    assert ddf.npartitions == PARTITIONS and ddf.known_divisions
    return ddf


def gathered(client: Any, collection: Any) -> Any:
    """Compute on the cluster with a deadline (``.compute()`` has none)."""
    return client.compute(collection).result(timeout=TIMEOUT)


def small_frame(cm: treecomp.CompiledModel, rows: int = 4000) -> Any:
    rng = np.random.default_rng(2)
    return pd.DataFrame(rng.normal(size=(rows, cm.n_features_in_)), columns=FEATURES)


# ----------------------------------------------------------------------------------------
def test_parquet_on_cluster_equals_single_process(
    client: Any, cm: treecomp.CompiledModel, frame: Any, parquet: Path, expected: Any
) -> None:
    """predict_proba and predict of 1M Parquet rows on 2 worker processes equal one
    process's answers on the whole pandas frame, row for row, with the index and
    divisions kept."""
    ddf = read(parquet)
    proba = tcdask.predict(cm, ddf, "predict_proba")
    labels = tcdask.predict(cm, ddf, "predict")
    assert isinstance(proba, dd.DataFrame) and isinstance(labels, dd.Series)
    for lazy in (proba, labels):
        assert lazy.npartitions == ddf.npartitions
        assert lazy.divisions == ddf.divisions
    assert list(proba.columns) == ["proba_0", "proba_1"]
    assert labels.name == "prediction"

    out = gathered(client, proba)
    assert list(out.dtypes) == [np.float64, np.float64]
    assert out.index.equals(frame.index)
    assert_equal(out.to_numpy(), expected["predict_proba"])

    out = gathered(client, labels)
    assert out.dtype == labels.dtype == np.int64
    assert out.index.equals(frame.index)
    assert_equal(out.to_numpy(), expected["predict"])


def test_model_is_one_node_of_the_graph(cm: treecomp.CompiledModel, parquet: Path) -> None:
    """The artifact's bytes sit in one task that every partition depends on, not in each."""
    scored = tcdask.predict(cm, read(parquet), "predict_proba")
    artifact = cm.dumps()
    for graph in (scored.__dask_graph__(), scored.optimize().__dask_graph__()):  # as sent
        holders = [key for key, task in graph.items() if artifact in cloudpickle.dumps(task)]
        assert len(holders) == 1 and "treecomp-model-" in str(holders[0])
        dependents = [key for key, task in graph.items() if holders[0] in task.dependencies]
        assert len(dependents) == PARTITIONS


def test_worker_killed_mid_job(
    client: Any,
    cm: treecomp.CompiledModel,
    frame: Any,
    parquet: Path,
    expected: Any,
    tmp_path: Path,
) -> None:
    """A worker dies holding finished partitions and running another: the job still
    returns every row exactly once, with the same output."""
    opened = 4  # partitions scored before the kill; the others wait at a gate
    gate = tmp_path / "open"

    def hold(part: Any) -> Any:
        # The first `opened` tasks to run take a ticket and pass (atomic O_EXCL creates, so
        # whichever partitions the scheduler starts first); later ones wait for the gate
        # outside the worker's thread pool, which stays free to score the ticketed ones.
        if gate.exists():
            return part
        for ticket in range(opened):
            try:
                (tmp_path / f"ticket-{ticket}").touch(exist_ok=False)
                return part
            except FileExistsError:
                continue
        distributed.secede()
        deadline = time.monotonic() + TIMEOUT
        while not gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
            time.sleep(0.02)
        distributed.rejoin()
        return part

    ddf = read(parquet)
    gated = ddf.map_partitions(hold, meta=ddf._meta)
    scored = client.persist(tcdask.predict(cm, gated, "predict_proba"))
    futures = distributed.futures_of(scored)
    assert len(futures) == PARTITIONS

    try:
        deadline = time.monotonic() + TIMEOUT
        while sum(f.status == "finished" for f in futures) < opened:
            assert time.monotonic() < deadline, [f.status for f in futures]
            time.sleep(0.05)
        finished = [f for f in futures if f.status == "finished"]
        holders = client.who_has(finished)
        # The victim holds the most results that no other worker has a copy of.
        sole = [tuple(holders[f.key]) for f in finished if len(holders[f.key]) == 1]
        victim = max(set(sole), key=sole.count)[0]
        lost = [f for f in finished if list(holders[f.key]) == [victim]]

        async def exit_now() -> None:  # run() returns before a coroutine ends, not a function
            os._exit(1)

        client.run(exit_now, workers=[victim], wait=False)
        deadline = time.monotonic() + TIMEOUT
        # The gate is still shut: results the victim held stay lost until it opens.
        while victim in client.scheduler_info()["workers"] or all(
            f.status == "finished" for f in lost
        ):
            assert time.monotonic() < deadline, "the killed worker was never reported lost"
            time.sleep(0.05)
        gate.touch()

        out = gathered(client, scored)
        assert out.index.equals(frame.index)  # every row, once, in order
        assert_equal(out.to_numpy(), expected["predict_proba"])
        client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny's replacement, for later tests
    finally:
        gate.touch()  # a failed assertion must not leave tasks waiting


def test_map_partitions_pickles_the_artifact(
    client: Any, cm: treecomp.CompiledModel, parquet: Path, expected: Any
) -> None:
    """The plain idiom works too: the bound method pickles as the model's artifact (and
    each task rebuilds the model from it, so two partitions make the point)."""
    rows = read(parquet).partitions[:2]
    scored = rows.map_partitions(cm.predict_proba, meta=np.empty((0, 2)))
    assert_equal(gathered(client, scored), expected["predict_proba"][: 2 * ROWS // PARTITIONS])


def test_one_build_per_worker_process(client: Any, cm: treecomp.CompiledModel) -> None:
    """Eight partitions on two worker processes: each process built the model once."""
    before = client.run(tcdask.build_counts)
    pieces = dd.from_pandas(small_frame(cm, 80_000), npartitions=PARTITIONS)
    # backend= gives a model no other test has sent, so the counts start here.
    scored = tcdask.predict(cm, pieces, "predict", backend="numpy")
    assert_equal(gathered(client, scored).to_numpy(), cm.predict(small_frame(cm, 80_000)))

    after = client.run(tcdask.build_counts)
    new = {w: {k: n for k, n in c.items() if k not in before.get(w, {})} for w, c in after.items()}
    # The one new model was built by each process that ran some of the 8 partitions, once.
    assert len({k for per_model in new.values() for k in per_model}) == 1
    assert all(list(per_model.values()) in ([], [1]) for per_model in new.values()), new


def test_one_backend_thread_per_task(client: Any, cm: treecomp.CompiledModel) -> None:
    """Workers run the kernel, where the model's own large batches do (partitions are large
    batches), single-threaded (Dask's threads are the parallelism) unless asked otherwise."""
    assert cm.batch_backend == "kernel"
    rows = dd.from_pandas(small_frame(cm), npartitions=4)
    gathered(client, tcdask.predict(cm, rows))
    gathered(client, tcdask.predict(cm, rows, n_threads=None))

    def threads() -> set[Any]:
        return {
            m.options.get("n_threads") for m in tcdask._models.values() if m.backend == "kernel"
        }

    assert set().union(*client.run(threads).values()) == {1, None}


def test_threaded_scheduler_builds_once(cm: treecomp.CompiledModel) -> None:
    """Four threads starting on the same model wait for one build (the cache's lock)."""
    model = treecomp.loads(cm.dumps(), backend="numpy")  # an artifact new to this process
    before = set(tcdask.build_counts())
    X = small_frame(cm)
    scored = tcdask.predict(model, dd.from_pandas(X, npartitions=16))
    out = scored.compute(scheduler="threads", num_workers=4)
    assert_equal(out.to_numpy(), model.predict(X))
    new = {k: n for k, n in tcdask.build_counts().items() if k not in before}
    assert list(new.values()) == [1]


def test_predict_is_lazy(cm: treecomp.CompiledModel) -> None:
    """Building the graph reads no partition."""

    def poisoned(part: Any) -> Any:
        raise RuntimeError("a partition was computed")

    rows = dd.from_pandas(small_frame(cm), npartitions=4)
    scored = tcdask.predict(cm, rows.map_partitions(poisoned, meta=rows._meta), "predict_proba")
    assert dask.is_dask_collection(scored)
    with pytest.raises(RuntimeError, match="a partition was computed"):
        scored.compute(scheduler="sync")


def test_dask_array(client: Any, cm: treecomp.CompiledModel) -> None:
    """Row chunks kept, column chunks merged, native shapes and dtypes."""
    X = small_frame(cm, 10_000).to_numpy()
    x = da.from_array(X, chunks=(1500, 4))
    for method in ("predict", "predict_proba", "apply"):
        scored = tcdask.predict(cm, x, method)
        expected = getattr(cm, method)(X)
        assert scored.chunks[0] == x.chunks[0]
        assert scored.shape == expected.shape and scored.dtype == expected.dtype
        assert_equal(gathered(client, scored), expected)


def test_multiclass_and_three_dimensional_leaves(client: Any) -> None:
    """Class-named probability columns; apply of shape (n, stages, 1) as an Array and as
    flattened leaf columns."""
    zoo = pytest.importorskip("tests.zoo")
    rf, X_rf = zoo.fitted("sklearn_rf")
    forest = treecomp.convert(rf)
    proba = tcdask.predict(forest, dd.from_array(X_rf, chunksize=30), "predict_proba")
    assert list(proba.columns) == [f"proba_{c}" for c in rf.classes_]
    assert_equal(gathered(client, proba).to_numpy(), forest.predict_proba(X_rf))

    gb, X_gb = zoo.fitted("sklearn_gb")
    boosted = treecomp.convert(gb)
    leaves = boosted.apply(X_gb)
    assert leaves.ndim == 3
    assert_equal(gathered(client, tcdask.predict(boosted, da.from_array(X_gb), "apply")), leaves)
    frame = tcdask.predict(boosted, dd.from_array(X_gb, chunksize=100), "apply")
    assert list(frame.columns) == [f"leaf_{j}" for j in range(leaves[0].size)]
    assert_equal(gathered(client, frame).to_numpy(), leaves.reshape(len(X_gb), -1))


def test_categorical_columns(client: Any, tmp_path: Path) -> None:
    """Pandas categories through dask, from pandas and from Parquet row groups, whose
    partitions each carry their own category order: encoded by value, as natively."""
    zoo = pytest.importorskip("tests.zoo")
    model, X = zoo.fitted("lightgbm_categorical_zero")
    cm = treecomp.convert(model, precision="float64")
    X.to_parquet(tmp_path / "categorical.parquet", row_group_size=50)
    from_parquet = dd.read_parquet(tmp_path / "categorical.parquet", split_row_groups=True)
    orders = {
        tuple(from_parquet.get_partition(i).compute()["c"].cat.categories)
        for i in range(from_parquet.npartitions)
    }
    assert len(orders) > 1, "the partitions should disagree on the category order"
    for rows in (dd.from_pandas(X, npartitions=3), from_parquet):
        index = rows.index.compute()  # Parquet row groups each restart a RangeIndex
        for method in ("predict", "apply"):
            out = gathered(client, tcdask.predict(cm, rows, method))
            assert_equal(out.to_numpy(), getattr(cm, method)(X))
            assert out.index.equals(index)


def test_string_labels_keep_their_dtype(client: Any) -> None:
    """Object labels stay object: the partitions' dtype is the metadata's."""
    ensemble = pytest.importorskip("sklearn.ensemble")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 4))
    y = np.where(X[:, 0] > 0, "yes", "no").astype(object)
    model = ensemble.RandomForestClassifier(3, max_depth=3, random_state=0).fit(X, y)
    cm = treecomp.convert(model)
    scored = tcdask.predict(cm, dd.from_array(X, chunksize=200))
    out = gathered(client, scored)
    assert out.dtype == scored.dtype == cm.predict(X).dtype
    assert_equal(out.to_numpy(), model.predict(X))


def test_bad_input_fails_while_building_the_graph(cm: treecomp.CompiledModel) -> None:
    rows = dd.from_pandas(small_frame(cm), npartitions=2)
    with pytest.raises(ValueError, match="unknown method 'predict_log_proba'"):
        tcdask.predict(cm, rows, "predict_log_proba")
    with pytest.raises(AttributeError, match="no method 'decision_function'"):
        tcdask.predict(cm, rows, "decision_function")
    with pytest.raises(ValueError, match="X has 9 features, but the model expects 10"):
        tcdask.predict(cm, rows[FEATURES[:-1]])
    with pytest.raises(ValueError, match="do not match the feature names"):
        tcdask.predict(cm, rows[FEATURES[::-1]])
    with pytest.raises(TypeError, match="got a dask Series"):
        tcdask.predict(cm, rows["f0"])
    with pytest.raises(TypeError, match=r"in-memory data with cm\.predict\(X\)"):
        tcdask.predict(cm, small_frame(cm))
    x = da.ones((100, 10), chunks=50)
    with pytest.raises(ValueError, match="X has 9 features"):
        tcdask.predict(cm, x[:, :9])
    with pytest.raises(ValueError, match="2-D dask Array"):
        tcdask.predict(cm, x[:, 0])
    with pytest.raises(ValueError, match="column count is unknown"):
        tcdask.predict(cm, da.ones((10, 10)).to_dask_dataframe().to_dask_array().T)
    with pytest.raises(ValueError, match="n_threads must be a positive integer"):
        tcdask.predict(cm, rows, n_threads=0)  # worker options are checked here too


def test_bad_values_fail_with_the_models_message(cm: treecomp.CompiledModel) -> None:
    """What only the rows show (text where numbers belong) fails when computed, with the
    message the in-memory model gives."""
    rows = dd.from_pandas(small_frame(cm), npartitions=2).assign(f9="text")
    scored = tcdask.predict(cm, rows)  # zero rows of text convert fine
    with pytest.raises(TypeError, match="column 'f9' has non-numeric dtype"):
        scored.compute(scheduler="sync")


def test_defaults_on_float64_rows_of_a_double_library(client: Any) -> None:
    """treecomp.convert(model) with no option, a LightGBM model and float64 rows on, just
    below and just above its thresholds: each worker compares them in double, as LightGBM
    does (in float32, many would take the other branch)."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 6))
    y = X[:, 0] - X[:, 1] * X[:, 2] + rng.normal(0, 0.1, 3000)
    lightgbm = pytest.importorskip("lightgbm")
    model = lightgbm.LGBMRegressor(n_estimators=20, num_leaves=31, verbose=-1, n_jobs=1)
    model.fit(X, y)
    from tests.helpers import probe_rows

    rows = probe_rows(treecomp.parse(model), X, "float64", limit=300)
    frame = pd.DataFrame(rows, columns=[f"Column_{j}" for j in range(6)])
    cm = treecomp.convert(model)
    lazy = dd.from_pandas(frame, npartitions=3)
    out = gathered(client, tcdask.predict(cm, lazy, "apply"))
    assert_equal(out.to_numpy(), model.predict(rows, pred_leaf=True))
    out = gathered(client, tcdask.predict(cm, lazy, "predict"))
    np.testing.assert_allclose(out.to_numpy(), model.predict(rows), rtol=1e-12, atol=1e-12)
