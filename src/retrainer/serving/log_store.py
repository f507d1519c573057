"""Which prediction log the configuration names: the team database's tables with RETRAINER_DATABASE_URL, else the
embedded SQLite file. The one place that knows both backends (prediction_log.py, prediction_log_pg.py), so neither
imports the other's chooser."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from retrainer.io.backend import database_url
from retrainer.serving.prediction_log import (
    ARMS,
    LogAdapter,
    LoggedRows,
    PredictionLog,
    WindowQuery,
    read_sqlite_window,
)


def open_prediction_log(path: Path, numeric: Iterable[str] = (), categorical: Iterable[str] = ()) -> LogAdapter:
    """The prediction log the configuration names: the team database's tables with RETRAINER_DATABASE_URL (no file
    is created), else the SQLite file `path` (the workspace's `prediction_log`).

    Raises BackendConfigError for a database URL that is not PostgreSQL.
    """
    url = database_url()
    if url is None:
        return PredictionLog(path, numeric, categorical)
    from retrainer.serving.prediction_log_pg import PostgresPredictionLog

    return PostgresPredictionLog(url, numeric, categorical)


def read_predictions(
    path: Path,
    model_version: str,
    since: str,
    *,
    arm: str | None = None,
    until: str | None = None,
    max_rows: int | None = None,
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
) -> LoggedRows:
    """Read, read-only, the predictions of one model version (by one arm, if given) logged in [since, until).

    With `max_rows`, only the newest that many. Features are read only when `numeric` or `categorical` name some;
    requests logged without them (or before a feature was added) read as NaN / None. With RETRAINER_DATABASE_URL the
    team database's log is read (and `path`, the embedded log's file, is neither read nor created). Raises
    ValueError for an unknown arm.
    """
    if arm is not None and arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, not {arm!r}")
    query = WindowQuery(model_version, since, arm, until, max_rows, tuple(numeric), tuple(categorical))
    url = database_url()
    if url is None:
        return read_sqlite_window(path, query)
    from retrainer.serving.prediction_log_pg import read_postgres_window

    return read_postgres_window(url, query)
