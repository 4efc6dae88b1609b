"""Scoring files larger than memory: Parquet or CSV in, Parquet or CSV out, in batches.

:func:`score` streams the input through pyarrow (Parquet row groups, CSV blocks) a batch at
a time, scores each batch with a :class:`~treecomp.CompiledModel` and appends the outputs,
with the key columns asked for, to the destination. Memory holds one batch, whatever the
file's size. The output is written under a temporary name (``.<destination>.<host>.<pid>.
<token>.partial``, beside it) and renamed only when every row is scored, so an interrupted
or failed run never leaves a file that looks complete; an existing destination is replaced
only with ``overwrite=True``.

Nothing is left behind either: a failure or ``KeyboardInterrupt`` removes the partial file
as it unwinds, and so does SIGTERM or SIGHUP (whose default action would kill the process on
the spot): while scoring in the main thread, they unwind the call and are then delivered
again, so the process still dies of the signal. SIGKILL cannot be caught: the partial files
of processes that no longer exist on this host are removed by the next run to the same
destination.

Needs pyarrow (``pip install 'treecomp[parquet]'``); imported only when called.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from treecomp.batching import output_names
from treecomp.container import CompiledModel, load
from treecomp.inputs import categories_by_value
from treecomp.ir import METHODS

# Rows per batch by default: 64 Ki rows of 100 float64 features are 50 MiB, and the
# backends' own chunking bounds their scratch memory.
BATCH_ROWS = 1 << 16
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
# What follows ``.<destination>.`` in a partial file's name: ``<host>.<pid>.<token>``, or a
# bare ``<pid>`` as written before host and token were added.
_PARTIAL = re.compile(r"(?:(?P<host>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}|(?P<old_pid>[0-9]+))")
# Signals whose default action ends the process without unwinding it (no finally runs).
_FATAL_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def score(
    model: CompiledModel | str | os.PathLike[str],
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    methods: Sequence[str] = ("predict",),
    keep: Sequence[str] = (),
    batch_rows: int = BATCH_ROWS,
    progress: bool = False,
    overwrite: bool = False,
) -> int:
    """Score every row of ``source`` into ``destination``; returns the number of rows.

    Args:
        model: A compiled model, or the path of an artifact written by ``cm.save``.
        source: A ``.parquet`` or ``.csv`` file.
        destination: A ``.parquet`` or ``.csv`` file to write, which appears only when the
            whole input is scored.
        methods: Outputs to write, each a method of the model: ``predict`` (column
            ``prediction``), ``predict_proba`` (``proba_<class>``), ``decision_function``
            (``decision``, or ``decision_<k>``), ``score_samples`` (``score``), ``apply``
            (``leaf_<tree>``).
        keep: Input columns copied to the output before the scores (keys, ids). A pandas
            index saved in a Parquet file is kept too.
        batch_rows: Rows read and scored at a time.
        progress: Show a tqdm bar over the batches.
        overwrite: Replace ``destination`` if it exists (else that is an error, raised
            before any work).

    Raises:
        FileExistsError: ``destination`` exists and ``overwrite`` is False.
        ValueError: a feature column is missing, an unexpected column is present, or a
            column cannot be read as numbers (the message names the column and the batch);
            no output file is left behind.
    """
    import pyarrow as pa

    source, destination = Path(source), Path(destination)
    in_format, out_format = _format(source), _format(destination)
    _check_destination(destination, overwrite)
    if not isinstance(model, CompiledModel):
        model = load(model)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown or list(methods)}; choose from {METHODS}")
    for method in methods:
        getattr(model, method)  # AttributeError, with its reason, for a method it lacks
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    remove_stale_partials(destination)
    temporary = destination.with_name(
        f".{destination.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    )
    writer: Any = None
    rows = 0
    with _unwound_by_fatal_signals():
        try:
            schema, batches = _batches(source, in_format, batch_rows, progress)
            for batch in batches:
                writer = _write(
                    model, batch, methods, keep, source, rows, writer, temporary, out_format
                )
                rows += batch.num_rows
            if writer is None:  # no rows: an empty output with the right columns
                empty = schema.empty_table()
                writer = _write(model, empty, methods, keep, source, 0, None, temporary, out_format)
            writer.close()
            writer = None
            _publish(temporary, destination, overwrite)
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{source}, after row {rows}: {exc}") from None
        finally:
            if writer is not None:
                writer.close()
            temporary.unlink(missing_ok=True)
    return rows


def _check_destination(destination: Path, overwrite: bool) -> None:
    if not destination.parent.is_dir():
        raise FileNotFoundError(f"{destination}: folder {destination.parent} does not exist")
    if destination.is_dir():
        raise IsADirectoryError(f"{destination} is a folder")
    if destination.exists() and not overwrite:
        raise FileExistsError(
            f"{destination} exists; pass overwrite=True (treecomp score --overwrite) to replace it"
        )


def _publish(temporary: Path, destination: Path, overwrite: bool) -> None:
    """Give the finished output its name, replacing a file there only if ``overwrite``."""
    if overwrite:
        os.replace(temporary, destination)
        return
    try:
        # A hard link never replaces: a destination that appeared while scoring is kept.
        os.link(temporary, destination)
    except FileExistsError:
        raise FileExistsError(
            f"{destination} appeared while scoring and was kept; pass overwrite=True "
            "(treecomp score --overwrite) to replace it"
        ) from None
    except OSError:  # a file system without hard links: check, then rename
        _check_destination(destination, overwrite)
        os.replace(temporary, destination)


def remove_stale_partials(destination: str | os.PathLike[str]) -> list[Path]:
    """Remove the partial files of ``destination`` whose writer is dead; returns them.

    A run killed by SIGKILL (or a crash, or a power cut) cannot remove its own partial
    file. One is stale when it was written on this host by a process that no longer exists;
    partial files of live processes, and of other hosts sharing the folder, are left alone.
    :func:`score` calls this before writing.
    """
    destination = Path(destination)
    prefix, host, removed = f".{destination.name}.", socket.gethostname(), []
    with os.scandir(destination.parent) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(".partial")):
                continue
            owner = _PARTIAL.fullmatch(name[len(prefix) : -len(".partial")])
            if owner is None or owner["host"] not in (None, host):
                continue
            if _alive(int(owner["pid"] or owner["old_pid"])):
                continue
            with contextlib.suppress(FileNotFoundError):  # another run removed it first
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (True when that cannot be known)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # no process has such a number
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


class _FatalSignal(BaseException):
    """Raised in the main thread by a fatal signal, so that scoring unwinds (a BaseException:
    no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _unwound_by_fatal_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception while the block runs, then die of them.

    Only signals left at their default action are taken (a handler the application set up
    stays in charge), and only in the main thread, the one Python runs handlers in. After the
    block has unwound (its ``finally`` removing the partial file), the default action is
    restored and the signal sent again, so the exit status still says what killed it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not caught:  # a second signal while unwinding must not cut the cleanup short
            caught.append(signum)
            raise _FatalSignal(signum)

    taken = [s for s in _FATAL_SIGNALS if signal.getsignal(s) is signal.SIG_DFL]
    for signum in taken:
        signal.signal(signum, handler)
    try:
        yield
    except _FatalSignal:
        pass  # unwound: now die of it
    finally:
        for signum in taken:
            signal.signal(signum, signal.SIG_DFL)
        if caught:  # even if the unwinding raised something else on the way
            os.kill(os.getpid(), caught[0])
            raise SystemExit(128 + caught[0])  # only reached while the signal is blocked


def _write(
    model: CompiledModel,
    batch: Any,
    methods: Sequence[str],
    keep: Sequence[str],
    source: Path,
    start: int,
    writer: Any,
    temporary: Path,
    out_format: str,
) -> Any:
    """Score one batch and append it; returns the writer (opened on the first batch)."""
    where = f"{source}, rows {start}..{start + batch.num_rows - 1}"
    features, keys = _features_and_keys(model, batch, keep, where)
    table = _outputs(model, methods, features, keys, where)
    if writer is None:
        writer = _writer(temporary, out_format, table.schema)
    writer.write_table(table)
    return writer


def _format(path: Path) -> str:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"{path}: unknown file type {path.suffix!r}; use .parquet or .csv"
        ) from None


def _batches(path: Path, kind: str, rows: int, progress: bool) -> tuple[Any, Iterator[Any]]:
    """The file's schema and its record batches of about ``rows`` rows."""
    import pyarrow.csv
    import pyarrow.parquet

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if kind == "parquet":
        # One row group at a time, without pre-buffering: iterating the whole file at once
        # let pyarrow read ahead and hold column chunks, and RSS grew towards the file's size
        # (16M rows x 28 float32, 1.8 GB uncompressed: 3 GB and climbing).
        reader = pyarrow.parquet.ParquetFile(path, pre_buffer=False)
        batches: Any = (
            batch
            for group in range(reader.num_row_groups)
            for batch in reader.iter_batches(batch_size=rows, row_groups=[group])
        )
        schema = reader.schema_arrow
        total = sum(
            -(-reader.metadata.row_group(g).num_rows // rows) for g in range(reader.num_row_groups)
        )
    else:
        # Column types are inferred from the first block; a later value that does not
        # parse as that type stops the read with pyarrow's message, which names the column.
        options = pyarrow.csv.ReadOptions(block_size=1 << 22)
        batches = pyarrow.csv.open_csv(path, read_options=options)
        schema, total = batches.schema, None
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=total, unit="batch")
    return schema, iter(batches)


def _features_and_keys(
    model: CompiledModel, batch: Any, keep: Sequence[str], where: str
) -> tuple[Any, Any]:
    """The batch as (feature DataFrame in the model's column order, key table).

    The feature columns are the model's input columns (``n_features_in_`` and
    ``feature_names_in_``: a Pipeline's own, before its transforms), by name where it has
    names, else every column not kept, in file order.
    """
    names = list(batch.schema.names)
    # A DataFrame's index written by pandas is a key too: kept, never read as a feature.
    index = [
        c
        for c in (batch.schema.pandas_metadata or {}).get("index_columns", [])
        if isinstance(c, str) and c in names and c not in keep
    ]
    keep = [*index, *keep]
    missing_keys = [k for k in keep if k not in names]
    if missing_keys:
        raise ValueError(f"{where}: key columns {missing_keys} are not in the file")
    candidates = [n for n in names if n not in keep]
    fit_names = getattr(model, "feature_names_in_", None)
    if fit_names is not None:
        wanted = [str(n) for n in fit_names]
        missing = [n for n in wanted if n not in names]
        extra = [n for n in candidates if n not in wanted]
        if missing or extra:
            raise ValueError(
                f"{where}: the columns do not match the model's features: missing {missing}, "
                f"unexpected {extra} (list key columns with keep=)"
            )
    else:
        wanted = candidates
        if len(wanted) != model.n_features_in_:
            raise ValueError(
                f"{where}: {len(wanted)} feature columns {wanted}, but the model takes "
                f"{model.n_features_in_} (it has no feature names: every column not in keep= "
                "is a feature, in file order)"
            )
    features = batch.select(wanted).to_pandas()
    # A forest alone reads numbers and pandas categories only (a file's category features
    # hold their values). A Pipeline's encoders read strings too, and its transforms check
    # each column they read as numbers (naming it).
    if model.transforms is None:
        features = categories_by_value(model.forest, features)
        for name in wanted:
            dtype = features[name].dtype
            if str(dtype) != "category" and getattr(dtype, "kind", "O") not in "biuf":
                raise ValueError(
                    f"{where}: column {name!r} has type {batch.schema.field(name).type}, not "
                    "numbers or categories"
                )
    return features, batch.select(list(keep))


def _outputs(
    model: CompiledModel, methods: Sequence[str], features: Any, keys: Any, where: str
) -> Any:
    import pyarrow as pa

    columns = {name: keys.column(name) for name in keys.schema.names}
    try:
        results = model.outputs(features, methods)  # the model runs once per batch
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    for method in methods:
        values = np.asarray(results[method])
        for name, column in _columns(model, method, values):
            if name in columns:
                raise ValueError(f"output column {name!r} clashes with a key column")
            columns[name] = column
    return pa.table(columns)


def _columns(model: CompiledModel, method: str, values: np.ndarray) -> list[tuple[str, Any]]:
    names = output_names(model.forest.classes, method, values.shape)
    if isinstance(names, str):
        return [(names, values)]
    flat = values.reshape(values.shape[0], len(names))  # len(names): an empty batch has no -1
    return [(name, flat[:, j]) for j, name in enumerate(names)]


class _CsvWriter:
    """pyarrow's CSV writer with ParquetWriter's interface."""

    def __init__(self, path: Path, schema: Any) -> None:
        import pyarrow.csv

        self._writer = pyarrow.csv.CSVWriter(path, schema)

    def write_table(self, table: Any) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        self._writer.close()


def _writer(path: Path, kind: str, schema: Any) -> Any:
    import pyarrow.parquet

    if kind == "parquet":
        return pyarrow.parquet.ParquetWriter(path, schema)
    return _CsvWriter(path, schema)
