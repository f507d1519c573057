"""Prediction log adapter: every served prediction and every feedback label, in a local SQLite file."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
import pandas as pd

LOG_FILE = "predictions.db"
DEAD_LETTER_FILE = "predictions.failed.jsonl"
QUEUE_REQUESTS = 64  # requests handed to the writer thread and not written yet, before hand_over blocks
LOGGER = logging.getLogger("bentoml.retrainer")  # under BentoML's logger: the service's log shows it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    time TEXT NOT NULL,
    arm TEXT NOT NULL,
    model_version TEXT NOT NULL,
    features_digest TEXT NOT NULL,
    probability REAL NOT NULL,
    label INTEGER NOT NULL,
    latency_ms REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    prediction_id TEXT PRIMARY KEY REFERENCES predictions(id),
    time TEXT NOT NULL,
    label INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions(time);
"""
FEATURES_TABLE = "prediction_features"


class LoggedPrediction(NamedTuple):
    """One row of the prediction log (a tuple, so a batch goes to SQLite without conversion)."""

    id: str
    time: str
    arm: str
    model_version: str
    features_digest: str
    probability: float
    label: int
    latency_ms: float


def prediction_ids(n: int) -> list[str]:
    """`n` time-ordered (version 7) UUIDs as text: the Unix time in milliseconds, then 74 random bits.

    Ids that grow with time land at the end of the log's primary-key index; random (version 4) ids touch pages all
    over it, and inserting 1,000 of them slowed from about 7 ms to 43 ms once the log held 200,000 predictions.
    """
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, :6] = np.frombuffer((time.time_ns() // 1_000_000).to_bytes(6, "big"), dtype=np.uint8)
    raw[:, 6] = raw[:, 6] & 0x0F | 0x70  # version 7
    raw[:, 8] = raw[:, 8] & 0x3F | 0x80  # RFC 9562 variant
    text = raw.tobytes().hex()
    hexes = (text[i : i + 32] for i in range(0, 32 * n, 32))
    return [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in hexes]


def quote(name: str) -> str:
    """An SQL identifier for a column name."""
    return '"' + name.replace('"', '""') + '"'


def features_digest(record: Mapping[str, object]) -> str:
    """SHA-256 of the record as canonical JSON (sorted keys, no spaces, UTF-8): identifies the input without storing it.

    orjson writes the same bytes as `json.dumps(sort_keys=True, separators=(",", ":"))` for ASCII records, about four
    times faster.
    """
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


@dataclass(frozen=True)
class RequestLog:
    """What one answered request owes the log: its records (for the digests), model-input features and answers."""

    records: Sequence[Mapping[str, object]]
    features: Mapping[str, np.ndarray]
    answers: tuple[list, ...]  # ids, arms, versions, probabilities, labels: one list each, row for row
    time: str
    latency_ms: float

    def rows(self) -> list[LoggedPrediction]:
        """The log's rows; the input digests are computed here, off the answer's path."""
        ids, arms, versions, probabilities, labels = self.answers
        n = len(ids)
        digests = [features_digest(record) for record in self.records]
        time_, latency = repeat(self.time, n), repeat(self.latency_ms, n)
        rows = zip(ids, time_, arms, versions, digests, probabilities, labels, latency, strict=True)
        return list(map(LoggedPrediction._make, rows))


def append_dead_letter(
    path: Path, rows: Sequence[LoggedPrediction], features: Mapping[str, object], error: BaseException
) -> None:
    """Keep predictions the log could not take: one JSON line with the error, the rows and their features."""
    entry = {
        "error": f"{type(error).__name__}: {error}",
        "predictions": [row._asdict() for row in rows],
        "features": {name: _cells(column) for name, column in features.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        out.write(orjson.dumps(entry) + b"\n")


def _cells(column: object) -> list:
    """One feature column as SQLite values: numbers (NaN is stored as NULL), text, or None."""
    if isinstance(column, np.ndarray):
        return column.tolist()
    return pd.Series(column, copy=False).to_numpy(dtype=object, na_value=None).tolist()


class PredictionLog:
    """A SQLite prediction log shared by the service's worker threads."""

    def __init__(self, path: Path, numeric: Iterable[str] = (), categorical: Iterable[str] = ()):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        types = {**dict.fromkeys(numeric, "REAL"), **dict.fromkeys(categorical, "TEXT")}
        self.feature_names = list(types)
        self._feature_insert = self._create_features_table(types)

    def _create_features_table(self, types: dict[str, str]) -> str | None:
        """One typed column per model feature, keyed by prediction id; columns new to params are added."""
        if not types:
            return None
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {FEATURES_TABLE} "
            "(prediction_id TEXT PRIMARY KEY REFERENCES predictions(id)) WITHOUT ROWID"  # one lookup per row, not two
        )
        present = {row[1] for row in self._conn.execute(f"PRAGMA table_info({FEATURES_TABLE})")}
        for name, kind in types.items():
            if name not in present:
                self._conn.execute(f"ALTER TABLE {FEATURES_TABLE} ADD COLUMN {quote(name)} {kind}")
        names = ", ".join(["prediction_id", *map(quote, types)])
        return f"INSERT INTO {FEATURES_TABLE} ({names}) VALUES ({', '.join('?' * (len(types) + 1))})"

    def record(self, rows: Iterable[LoggedPrediction], features: Mapping[str, object] | None = None) -> int:
        """Append predictions (and their model-input features, row for row) in one transaction.

        `features` maps each feature name to its column (a numpy array, a Series, or a DataFrame's columns).
        """
        values = list(rows)
        feature_rows = None
        if features is not None and self._feature_insert is not None:
            cells = [_cells(features[name]) for name in self.feature_names]
            feature_rows = list(zip([row[0] for row in values], *cells, strict=True))
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
                if feature_rows:
                    self._conn.executemany(self._feature_insert, feature_rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return len(values)

    def record_feedback(self, prediction_id: str, label: int, time: str) -> bool:
        """Store the observed label of a logged prediction; False when the prediction is unknown."""
        with self._lock:
            known = self._conn.execute("SELECT 1 FROM predictions WHERE id = ?", (prediction_id,)).fetchone()
            if known is None:
                return False
            self._conn.execute(
                "INSERT INTO feedback VALUES (?, ?, ?) "
                "ON CONFLICT(prediction_id) DO UPDATE SET time = excluded.time, label = excluded.label",
                (prediction_id, time, int(label)),
            )
        return True

    def get(self, prediction_id: str) -> LoggedPrediction | None:
        """One logged prediction by id."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM predictions WHERE id = ?", (prediction_id,)).fetchone()
        return LoggedPrediction(*row) if row else None

    def feedback_label(self, prediction_id: str) -> int | None:
        """The observed label recorded for a prediction, if any."""
        with self._lock:
            row = self._conn.execute("SELECT label FROM feedback WHERE prediction_id = ?", (prediction_id,)).fetchone()
        return int(row[0]) if row else None

    def count_by_arm(self) -> dict[str, int]:
        """How many predictions each arm served."""
        with self._lock:
            rows = self._conn.execute("SELECT arm, COUNT(*) FROM predictions GROUP BY arm").fetchall()
        return {arm: int(n) for arm, n in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class LogWriter:
    """Writes answered requests to a PredictionLog, now (`write`) or from a thread of its own (`hand_over`).

    Each request gets a ticket when it is scored (`owe`), so that a reader can wait for everything answered before
    it (`wait_for_owed`). A failed write keeps the rows in the dead-letter file; the thread counts them in `failures`.
    """

    def __init__(self, log: PredictionLog, dead_letter: Path):
        self.log, self.dead_letter = log, dead_letter
        self.failures = 0
        self._settled = threading.Condition()
        self._tickets = 0
        self._owed: set[int] = set()
        self._queue: queue.Queue[tuple[int, RequestLog] | None] = queue.Queue(maxsize=QUEUE_REQUESTS)
        self._thread = threading.Thread(target=self._write_queued, name="prediction-log", daemon=True)
        self._thread.start()

    def owe(self) -> int:
        """A ticket for a request whose predictions the log does not have yet."""
        with self._settled:
            self._tickets += 1
            self._owed.add(self._tickets)
            return self._tickets

    def write(self, ticket: int, request: RequestLog) -> None:
        """Write one request in one transaction; on failure keep its rows in the dead-letter file and raise."""
        rows = request.rows()
        try:
            self.log.record(rows, features=request.features)
        except Exception as exc:
            append_dead_letter(self.dead_letter, rows, request.features, exc)
            raise
        finally:
            with self._settled:
                self._owed.discard(ticket)
                self._settled.notify_all()

    def hand_over(self, ticket: int, request: RequestLog) -> None:
        """Queue a request for the writer thread (blocking while QUEUE_REQUESTS are waiting)."""
        self._queue.put((ticket, request))

    def wait_for_owed(self, timeout: float) -> None:
        """Wait until every request ticketed before now is written (or `timeout` seconds pass)."""
        with self._settled:
            latest = self._tickets
            self._settled.wait_for(lambda: not any(t <= latest for t in self._owed), timeout=timeout)

    def _write_queued(self) -> None:
        while (item := self._queue.get()) is not None:
            ticket, request = item
            try:
                self.write(ticket, request)
            except Exception:
                self.failures += len(request.answers[0])
                LOGGER.exception(
                    "%d predictions kept in %s instead of the log", len(request.answers[0]), self.dead_letter
                )

    def close(self) -> None:
        """Write what is still queued, then stop the thread (the log itself stays open)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
