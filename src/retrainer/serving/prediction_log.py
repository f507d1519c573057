"""Prediction log adapter: every served prediction and every feedback label, in a local SQLite file (the embedded
default) or, with RETRAINER_DATABASE_URL, in the team's PostgreSQL (`prediction_log_pg.py`).

Both backends keep one row per request and run the same SQL statements (`LogStatements`, named parameters, which
sqlite3 and SQLAlchemy both take); only opening a connection and creating the tables differ.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
import pandas as pd

from retrainer.serving.features import float_array
from retrainer.serving.routing import CHALLENGER, CHAMPION

JOURNAL_SEGMENT_BYTES = 16 << 20  # a segment is closed at this size and deleted once the log holds all of it
QUEUE_REQUESTS = 64  # requests handed to the writer thread and not written yet, before hand_over blocks
LOGGER = logging.getLogger("bentoml.retrainer")  # under BentoML's logger: the service's log shows it
LAYOUT_VERSION = 2  # PRAGMA user_version: 2 = one row per request (1, unversioned: one row per prediction)
ARMS = (CHAMPION, CHALLENGER)
KEY_CHARS = 30  # a prediction id is its request's key, then its position in the request as 6 hex digits
MAX_REQUEST_ROWS = 1 << 24
CHUNK_ROWS = 65_536  # read-back rows held as Python objects before they become arrays

# One row per answered request: its predictions as JSON arrays, row for row, and their model inputs as one JSON object
# of columns. One insert per request instead of two per prediction: the writer's time per 1,000 predictions is a
# third of what it was (bench/prediction_log_bench.py), which on two cores is what the request threads get back.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    rows INTEGER NOT NULL,
    champion_version TEXT,
    challenger_version TEXT,
    arm TEXT NOT NULL,
    probability TEXT NOT NULL,
    label TEXT NOT NULL,
    features_digest TEXT NOT NULL,
    features TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE TABLE IF NOT EXISTS feedback (
    request_key TEXT NOT NULL REFERENCES requests(key),
    position INTEGER NOT NULL,
    time TEXT NOT NULL,
    label INTEGER NOT NULL,
    PRIMARY KEY (request_key, position)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS predictions AS
SELECT r.key || printf('%06x', a.key) AS id, r.time AS time, a.value AS arm,
       iif(a.value = 'champion', r.champion_version, r.challenger_version) AS model_version,
       json_extract(r.features_digest, '$[' || a.key || ']') AS features_digest,
       json_extract(r.probability, '$[' || a.key || ']') AS probability,
       json_extract(r.label, '$[' || a.key || ']') AS label,
       r.latency_ms AS latency_ms,
       f.label AS feedback_label
FROM requests r JOIN json_each(r.arm) a LEFT JOIN feedback f ON f.request_key = r.key AND f.position = a.key;
"""
_REQUEST_COLUMNS = (
    "key, time, latency_ms, rows, champion_version, challenger_version, arm, probability, label, features_digest, "
    "features"
)


@dataclass(frozen=True)
class LogStatements:
    """The log's SQL, written once for both backends over their table names (`:name` parameters)."""

    requests: str
    feedback: str

    @property
    def insert(self) -> str:
        values = ", ".join(f":{name.strip()}" for name in _REQUEST_COLUMNS.split(","))
        return f"INSERT INTO {self.requests} ({_REQUEST_COLUMNS}) VALUES ({values})"

    @property
    def request_rows(self) -> str:
        return f"SELECT rows FROM {self.requests} WHERE key = :key"

    @property
    def insert_feedback(self) -> str:
        return (
            f"INSERT INTO {self.feedback} (request_key, position, time, label) VALUES (:key, :position, :time, :label) "
            "ON CONFLICT (request_key, position) DO NOTHING"
        )

    @property
    def feedback_label(self) -> str:
        return f"SELECT label FROM {self.feedback} WHERE request_key = :key AND position = :position"

    @property
    def prediction(self) -> str:
        return (
            "SELECT time, latency_ms, rows, champion_version, challenger_version, arm, probability, label, "
            f"features_digest FROM {self.requests} WHERE key = :key"
        )

    def window(self, where: str, features: bool) -> str:
        """A window's requests, newest first (their stored features too, when `features`)."""
        return (
            "SELECT key, time, latency_ms, champion_version, challenger_version, arm, probability"
            + (", features" if features else ", NULL")
            + f" FROM {self.requests} r WHERE {where} ORDER BY time DESC, seq DESC"
        )

    def window_feedback(self, where: str) -> str:
        """The feedback labels of a window's requests: (request key, position, label)."""
        return (
            f"SELECT f.request_key, f.position, f.label FROM {self.feedback} f JOIN {self.requests} r "
            f"ON r.key = f.request_key WHERE {where}"
        )


SQLITE_STATEMENTS = LogStatements("requests", "feedback")


class FeedbackOutcome(enum.Enum):
    """What posting a label for a prediction did. The first label stands: a later, different one is a conflict."""

    RECORDED = "recorded"  # stored now
    REPEATED = "repeated"  # this same label was stored earlier: nothing changes (idempotent)
    CONFLICT = "conflict"  # a different label was stored earlier and stands
    UNKNOWN = "unknown"  # no such prediction in the log


class LogLayoutError(RuntimeError):
    """The log file was written in a layout this version does not read."""


class LoggedPrediction(NamedTuple):
    """One prediction of the log, as `PredictionLog.get` reads it back."""

    id: str
    time: str
    arm: str
    model_version: str
    features_digest: str
    probability: float
    label: int
    latency_ms: float


def new_request_key() -> str:
    """A request's key: a time-ordered (version 7) UUID's first 30 characters, which its predictions' ids share.

    The leading 48 bits are the Unix time in milliseconds, so keys (and ids) grow with time and land at the end of
    the log's index; 50 random bits follow. The last 6 hex digits of an id number the prediction within its request.
    """
    raw = bytearray(os.urandom(16))
    raw[:6] = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw[6] = raw[6] & 0x0F | 0x70  # version 7
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 9562 variant
    return str(uuid.UUID(bytes=bytes(raw)))[:KEY_CHARS]


def prediction_ids(key: str, n: int) -> list[str]:
    """The ids of a request's `n` predictions: its key, then each one's position as 6 hex digits."""
    if n > MAX_REQUEST_ROWS:
        raise ValueError(f"a request holds at most {MAX_REQUEST_ROWS} predictions, not {n}")
    return [f"{key}{i:06x}" for i in range(n)]


def split_id(prediction_id: str) -> tuple[str, int] | None:
    """(request key, position) of a prediction id in canonical UUID text; None for anything else."""
    if len(prediction_id) != KEY_CHARS + 6:
        return None
    try:
        return prediction_id[:KEY_CHARS], int(prediction_id[KEY_CHARS:], 16)
    except ValueError:
        return None


def features_digest(record: Mapping[str, object]) -> str:
    """SHA-256 of the record as canonical JSON (sorted keys, no spaces, UTF-8): identifies the input without storing it.

    orjson writes the same bytes as `json.dumps(sort_keys=True, separators=(",", ":"))` for ASCII records, about four
    times faster.
    """
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


@dataclass(frozen=True)
class RequestLog:
    """What one answered request owes the log: its answers row for row, its records (for the digests) and features."""

    key: str
    time: str
    latency_ms: float
    versions: Mapping[str, str]  # arm -> the model version that served it, for each arm in `arms`
    arms: Sequence[str]
    probabilities: Sequence[float]
    labels: Sequence[int]
    records: Sequence[Mapping[str, object]]
    features: Mapping[str, object] | None = None

    @property
    def size(self) -> int:
        return len(self.arms)

    @property
    def ids(self) -> list[str]:
        return prediction_ids(self.key, self.size)

    def entry(self, feature_names: Sequence[str], numeric: Collection[str]) -> dict:
        """The request as the log stores it (and the dead-letter file keeps it); the digests are computed here."""
        n = self.size
        if not len(self.probabilities) == len(self.labels) == len(self.records) == n:
            raise ValueError(f"request {self.key}: arms, probabilities, labels and records differ in length")
        if unknown := set(self.arms) - set(self.versions):
            raise ValueError(f"request {self.key}: no model version for arm(s) {sorted(unknown)}")
        features = None
        if self.features is not None and feature_names:
            features = {name: _column(self.features[name], name in numeric) for name in feature_names}
            if short := [name for name, column in features.items() if len(column) != n]:
                raise ValueError(f"request {self.key}: features {short} do not have one value per prediction ({n})")
        return {
            "key": self.key,
            "time": self.time,
            "latency_ms": self.latency_ms,
            "versions": dict(self.versions),
            "arm": list(self.arms),
            "probability": self.probabilities,
            "label": self.labels,
            "features_digest": [features_digest(record) for record in self.records],
            "features": features,
        }


def _column(values: object, numeric: bool) -> np.ndarray | list:
    """One feature column as JSON can hold it: float64 (NaN is written as null) or a list of text and None."""
    if numeric:
        return float_array(values)
    if isinstance(values, np.ndarray):
        return values.tolist()
    return pd.Series(values, copy=False).to_numpy(dtype=object, na_value=None).tolist()


def _json(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def append_durably(fd: int, data: bytes, size: int, sync: bool) -> int:
    """Append `data` to the file open as `fd` (O_APPEND) whose length is `size`; returns the new length.

    All of it or nothing: a failed write (ENOSPC, EIO) is cut back to `size`, so no half line is left behind for
    the next append to run into. With `sync`, the bytes are on the disk (fsync) when this returns; without, they are
    in the kernel, which keeps them when the process is killed.
    """
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise
    return size + len(data)


def append_dead_letter(path: Path, entry: Mapping[str, object], error: BaseException) -> None:
    """Keep a request the log could not take: one JSON line with the error and the request as the log stores it.

    The line is on the disk (fsynced) when this returns; otherwise it raises OSError and the file is as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    line = _json({"error": f"{type(error).__name__}: {error}", "request": entry}) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        append_durably(fd, line, os.fstat(fd).st_size, sync=True)
    finally:
        os.close(fd)


class LogUnavailable(RuntimeError):
    """An answered request could be recorded nowhere (journal full or unwritable): it must not be answered."""


class NotKept(RuntimeError):
    """The log refused a request and the dead-letter file could not take it either (it stays in the journal)."""


def journal_line(request: RequestLog) -> bytes:
    """A request as the journal keeps it: the answers and the validated records (digests and features come later)."""
    return (
        _json(
            {
                "key": request.key,
                "time": request.time,
                "latency_ms": request.latency_ms,
                "versions": dict(request.versions),
                "arm": request.arms,
                "probability": request.probabilities,
                "label": request.labels,
                "records": request.records,
            }
        )
        + b"\n"
    )


@dataclass
class _Segment:
    path: Path
    fd: int
    size: int = 0
    last_ticket: int = 0


class Journal:
    """Answered requests written ahead of their answer, one JSON line each, in segment files this process holds.

    A line is handed to the kernel (write(2)) before the answer is sent, so a killed process loses none; lines are
    not fsynced (a power cut can lose the newest, as it can the log's own last commits). Each segment is locked
    (flock) while its process lives and deleted once the log holds every request in it; a segment nobody holds was
    left by a process that died, and `replay_journal` writes it into the log.
    """

    def __init__(self, folder: Path, segment_bytes: int = JOURNAL_SEGMENT_BYTES):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.segment_bytes = folder, segment_bytes
        self.pinned = False  # a request is only here: keep every segment for the next start to replay
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._open_segment()

    def _open_segment(self) -> None:
        path = self.folder / f"{os.getpid()}-{time.time_ns()}.jsonl"
        # Locked under a name `replay_journal` does not read, then renamed: it never finds a segment not yet locked.
        opening = path.with_name(f".{path.name}.new")
        fd = os.open(opening, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel when this process dies
        opening.rename(path)
        self._segments.append(_Segment(path, fd))

    def append(self, ticket: int, line: bytes) -> None:
        """Write one request's line (whole, or not at all: OSError)."""
        with self._lock:
            if self._segments[-1].size >= self.segment_bytes:
                self._open_segment()
            segment = self._segments[-1]
            segment.size = append_durably(segment.fd, line, segment.size, sync=False)
            segment.last_ticket = max(segment.last_ticket, ticket)

    def release(self, oldest_owed: int | None) -> None:
        """Delete the closed segments whose every request the log (or the dead-letter file) now holds."""
        with self._lock:
            while len(self._segments) > 1 and not self.pinned:
                if oldest_owed is not None and oldest_owed <= self._segments[0].last_ticket:
                    return
                _remove(self._segments.pop(0))

    def close(self, settled: bool) -> None:
        """Delete every segment when all their requests are settled (and none is pinned); else leave them to replay."""
        with self._lock:
            for segment in self._segments:
                if settled and not self.pinned:
                    _remove(segment)
                else:
                    os.close(segment.fd)
            self._segments = []


def _remove(segment: _Segment) -> None:
    segment.path.unlink(missing_ok=True)
    os.close(segment.fd)


@dataclass(frozen=True)
class Recovery:
    """What `recover_dead_letter` did with the requests the dead-letter file kept."""

    written: int = 0  # requests now in the log
    predictions: int = 0  # their predictions
    already_logged: int = 0  # requests the log already had (a recovery that was interrupted, a line kept twice)
    kept: int = 0  # lines that could not be written: appended back to the dead-letter file, byte for byte
    errors: tuple[str, ...] = ()


def recover_dead_letter(log: LogAdapter, dead_letter: Path) -> Recovery:
    """Write the requests the service kept in the dead-letter file into the log.

    The file is first renamed (atomically), so a running service appends new failures to a fresh file meanwhile; a
    recovery interrupted before it finished is picked up again from the renamed file. Lines that still cannot be
    written (or cannot be read) are appended back to the dead-letter file unchanged.
    """
    claimed = dead_letter.with_name(dead_letter.name + ".recovering")
    if not claimed.exists():
        if not dead_letter.exists():
            return Recovery()
        dead_letter.rename(claimed)
    written = predictions = already = 0
    kept: list[bytes] = []
    errors: list[str] = []
    for number, line in enumerate(claimed.read_bytes().splitlines(keepends=True), start=1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)["request"]
            if log.has_request(entry["key"]):
                already += 1
                continue
            predictions += log.write_entry(entry)
            written += 1
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, *log.errors) as exc:
            kept.append(line if line.endswith(b"\n") else line + b"\n")
            errors.append(f"line {number}: {type(exc).__name__}: {exc}")
    if kept:
        with dead_letter.open("ab") as out:
            out.write(b"".join(kept))
    claimed.unlink()
    return Recovery(written, predictions, already, len(kept), tuple(errors))


def replay_journal(
    log: LogAdapter,
    folder: Path,
    dead_letter: Path,
    features: Callable[[Sequence[Mapping[str, object]]], Mapping[str, object]] | None = None,
) -> Recovery:
    """Write into the log the journal segments left by processes that died (a segment a live process holds is skipped).

    `features` rebuilds a request's model inputs from its records (the runtime's FeatureBuilder); without it they are
    logged without features. A request the log refuses goes to the dead-letter file; a segment is deleted only when
    each of its requests is in one of the two, else it stays for the next replay and counts as `kept`.
    """
    parts = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running service holds it
            parts.append(_replay_segment(log, path, dead_letter, features))
        finally:
            os.close(fd)
    return Recovery(
        *(sum(getattr(part, name) for part in parts) for name in ("written", "predictions", "already_logged", "kept")),
        tuple(error for part in parts for error in part.errors),
    )


def _replay_segment(
    log: LogAdapter,
    path: Path,
    dead_letter: Path,
    features: Callable[[Sequence[Mapping[str, object]]], Mapping[str, object]] | None,
) -> Recovery:
    """One locked journal segment into the log (see `replay_journal`); deleted when nothing of it is left."""
    written = predictions = already = left = 0
    errors: list[str] = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done = _replay_line(log, orjson.loads(line), dead_letter, features)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OSError, *log.errors) as exc:
            # *log.errors: the log could not even be asked (a database that is down): the segment stays for later
            left += 1
            errors.append(f"{path.name} line {number}: {type(exc).__name__}: {exc}")
            continue
        if done is None:
            already += 1
        elif done:
            written, predictions = written + 1, predictions + done
        else:
            errors.append(f"{path.name} line {number}: the log refused it, kept in {dead_letter.name}")
    if not left:
        path.unlink(missing_ok=True)
    return Recovery(written, predictions, already, left, tuple(errors))


def _replay_line(
    log: LogAdapter,
    line: Mapping,
    dead_letter: Path,
    features: Callable[[Sequence[Mapping[str, object]]], Mapping[str, object]] | None,
) -> int | None:
    """None: already logged; the predictions written; 0: the log refused it and the dead-letter file keeps it."""
    if log.has_request(line["key"]):
        return None
    records = line["records"]
    request = RequestLog(
        line["key"],
        line["time"],
        line["latency_ms"],
        line["versions"],
        line["arm"],
        line["probability"],
        line["label"],
        records,
        features(records) if features is not None else None,
    )
    entry = log.entry(request)
    try:
        return log.write_entry(entry)
    except log.errors as exc:
        append_dead_letter(dead_letter, entry, exc)  # raises OSError when it cannot: the segment stays
        return 0


def kept_requests(dead_letter: Path) -> int:
    """How many requests the dead-letter file keeps (0 when there is none)."""
    if not dead_letter.exists():
        return 0
    with dead_letter.open("rb") as lines:
        return sum(1 for line in lines if line.strip())


def _bare_entry(request: RequestLog) -> dict:
    """What a request that `RequestLog.entry` refused still lets the dead-letter file keep."""
    return {
        "key": request.key,
        "time": request.time,
        "versions": dict(request.versions),
        "arm": list(request.arms),
        "probability": list(request.probabilities),
        "label": list(request.labels),
    }


def _check_layout(conn: sqlite3.Connection, path: Path) -> None:
    kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'predictions'").fetchone()
    if kind is not None and kind[0] == "table":
        raise LogLayoutError(
            f"{path} holds a prediction log in the earlier one-row-per-prediction layout; move it aside "
            f"(e.g. to {path.name}.v1) and the service starts a new log"
        )


class LogAdapter:
    """What the service, the canary and `recover-log` do with a prediction log, on either backend.

    A subclass says where the rows go: `statements` (its table names), `errors` (the exceptions that mean the log
    refused or could not be reached: the caller keeps the request elsewhere), `location` (for messages) and
    `_session()`, a block in which `execute(sql, parameters)` runs statements and returns a cursor (`fetchone()`,
    `rowcount`).
    """

    statements: LogStatements
    errors: tuple[type[BaseException], ...]
    location: str

    @staticmethod
    def _cell(document: bytes) -> bytes | str:
        """A JSON column's value as the backend stores it (SQLite keeps the bytes: its files hold them as BLOBs)."""
        return document

    def __init__(self, numeric: Iterable[str] = (), categorical: Iterable[str] = ()):
        numeric = list(numeric)
        self.numeric = set(numeric)
        self.feature_names = [*numeric, *categorical]

    def _session(self):  # pragma: no cover - every backend defines it
        raise NotImplementedError

    def entry(self, request: RequestLog) -> dict:
        """The request as this log stores it: its features are the ones the log was opened with."""
        return request.entry(self.feature_names, self.numeric)

    def record(self, request: RequestLog) -> int:
        """Append one request's predictions (and their model-input features) as one row; returns how many."""
        return self.write_entry(self.entry(request))

    def write_entry(self, entry: Mapping) -> int:
        """Insert a request as `RequestLog.entry` gives it (one statement, so all of it or nothing); returns how
        many predictions it holds. Raises one of `errors` when the log refuses it (a key it has, a database down)."""
        versions = entry["versions"]
        values = {
            "key": entry["key"],
            "time": entry["time"],
            "latency_ms": entry["latency_ms"],
            "rows": len(entry["arm"]),
            **{f"{arm}_version": versions.get(arm) for arm in ARMS},
            **{name: self._cell(_json(entry[name])) for name in ("arm", "probability", "label", "features_digest")},
            "features": None if entry["features"] is None else self._cell(_json(entry["features"])),
        }
        with self._session() as execute:
            execute(self.statements.insert, values)
        return len(entry["arm"])

    def has_request(self, key: str) -> bool:
        with self._session() as execute:
            return execute(self.statements.request_rows, {"key": key}).fetchone() is not None

    def record_feedback(self, prediction_id: str, label: int, time: str) -> FeedbackOutcome:
        """Store the observed label of a logged prediction unless one is stored already (the first label stands:
        a client's retry is REPEATED, a different label is a CONFLICT and changes nothing); UNKNOWN for an id
        the log does not hold."""
        place = split_id(prediction_id)
        if place is None:
            return FeedbackOutcome.UNKNOWN
        at = {"key": place[0], "position": place[1]}
        with self._session() as execute:
            known = execute(self.statements.request_rows, {"key": at["key"]}).fetchone()
            if known is None or at["position"] >= known[0]:
                return FeedbackOutcome.UNKNOWN
            if execute(self.statements.insert_feedback, {**at, "time": time, "label": int(label)}).rowcount:
                return FeedbackOutcome.RECORDED
            (stored,) = execute(self.statements.feedback_label, at).fetchone()
        return FeedbackOutcome.REPEATED if int(stored) == int(label) else FeedbackOutcome.CONFLICT

    def get(self, prediction_id: str) -> LoggedPrediction | None:
        """One logged prediction by id."""
        place = split_id(prediction_id)
        if place is None:
            return None
        key, position = place
        with self._session() as execute:
            row = execute(self.statements.prediction, {"key": key}).fetchone()
        if row is None or position >= row[2]:
            return None
        time_, latency, _, champion, challenger, *arrays = row
        arm, probability, label, digest = (orjson.loads(values)[position] for values in arrays)
        version = champion if arm == CHAMPION else challenger
        return LoggedPrediction(prediction_id, time_, arm, version, digest, probability, label, latency)

    def feedback_label(self, prediction_id: str) -> int | None:
        """The observed label recorded for a prediction, if any."""
        place = split_id(prediction_id)
        if place is None:
            return None
        with self._session() as execute:
            row = execute(self.statements.feedback_label, {"key": place[0], "position": place[1]}).fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        """Let go of the log's connections."""


class PredictionLog(LogAdapter):
    """The embedded prediction log: a SQLite file (WAL) shared by the service's worker threads.

    Kept on the standard library's sqlite3 rather than SQLAlchemy: one connection in autocommit with WAL and
    synchronous=NORMAL is what the log's measured write cost (bench/prediction_log_bench.py) and its crash guarantees
    were established on; the SQL itself is the shared `LogStatements`.
    """

    statements = SQLITE_STATEMENTS
    errors = (sqlite3.Error,)

    def __init__(self, path: Path, numeric: Iterable[str] = (), categorical: Iterable[str] = ()):
        super().__init__(numeric, categorical)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.location = str(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        _check_layout(self._conn, path)
        self._conn.executescript(_SCHEMA)
        self._conn.execute(f"PRAGMA user_version = {LAYOUT_VERSION}")

    @contextmanager
    def _session(self) -> Iterator[Callable]:
        with self._lock:
            yield self._conn.execute

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class LogWriter:
    """Writes answered requests to a PredictionLog, now (`write`) or from a thread of its own (`hand_over`).

    Each request gets a ticket when it is scored (`owe`), so that a reader can wait for everything answered before
    it (`wait_for_owed`). A request handed over is first written to the journal, before its answer; if the journal
    cannot take it, `hand_over` raises LogUnavailable and the request must not be answered (counted in `refused`).
    A failed log write keeps the rows in the dead-letter file (fsynced), or, when that fails too, in the journal;
    the thread counts them in `failures`.
    """

    def __init__(self, log: LogAdapter, dead_letter: Path, journal: Journal | None = None):
        self.log, self.dead_letter, self.journal = log, dead_letter, journal
        self.failures = 0  # answered predictions the log could not take
        self.refused = 0  # predictions not answered because nothing could record them
        self.unavailable: str | None = None  # why the journal refused the last request, while it does
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

    def _settle(self, ticket: int) -> None:
        with self._settled:
            self._owed.discard(ticket)
            self._settled.notify_all()

    def write(self, ticket: int, request: RequestLog) -> None:
        """Write one request in one transaction; on failure keep its rows in the dead-letter file and raise.

        Raises NotKept when the dead-letter file could not take them either.
        """
        entry = None
        try:
            entry = self.log.entry(request)
            self.log.write_entry(entry)
        except Exception as exc:
            try:
                append_dead_letter(self.dead_letter, entry or _bare_entry(request), exc)
            except OSError as lost:
                raise NotKept(f"{type(exc).__name__}: {exc}; {self.dead_letter.name}: {lost}") from exc
            raise
        finally:
            self._settle(ticket)

    def hand_over(self, ticket: int, request: RequestLog) -> None:
        """Journal a request, then queue it for the writer thread (blocking while QUEUE_REQUESTS are waiting).

        Raises LogUnavailable, with the reason, when the journal cannot take it.
        """
        if self.journal is not None:
            try:
                self.journal.append(ticket, journal_line(request))
            except OSError as exc:
                self._settle(ticket)
                self.refused += request.size
                self.unavailable = f"the prediction log cannot record predictions: {exc}"
                LOGGER.error("%d predictions refused: %s", request.size, self.unavailable)
                raise LogUnavailable(self.unavailable) from exc
            self.unavailable = None
        self._queue.put((ticket, request))

    def wait_for_owed(self, timeout: float) -> None:
        """Wait until every request ticketed before now is written (or `timeout` seconds pass)."""
        with self._settled:
            latest = self._tickets
            self._settled.wait_for(lambda: not any(t <= latest for t in self._owed), timeout=timeout)

    def _oldest_owed(self) -> int | None:
        with self._settled:
            return min(self._owed, default=None)

    def _write_queued(self) -> None:
        while (item := self._queue.get()) is not None:
            ticket, request = item
            try:
                self.write(ticket, request)
            except NotKept as exc:
                self.failures += request.size
                if self.journal is not None:
                    self.journal.pinned = True
                LOGGER.error(
                    "%d answered predictions are neither in the log nor in %s (%s): they stay in the journal %s, "
                    "written into the log at the next start or by `retrainer recover-log`",
                    request.size,
                    self.dead_letter.name,
                    exc,
                    self.journal.folder if self.journal is not None else "(none)",
                )
            except Exception as exc:
                self.failures += request.size
                LOGGER.warning(
                    "%d predictions kept in %s instead of the log: %s: %s",
                    request.size,
                    self.dead_letter,
                    type(exc).__name__,
                    exc,
                )
            if self.journal is not None:
                self.journal.release(self._oldest_owed())

    def close(self) -> None:
        """Write what is still queued, then stop the thread (the log itself stays open)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.journal is not None:
            self.journal.close(settled=self._oldest_owed() is None)


@dataclass(frozen=True)
class LoggedRows:
    """Predictions read back from the log, newest request first, with any feedback label (else NaN)."""

    probability: np.ndarray
    latency_ms: np.ndarray
    feedback: np.ndarray
    features: pd.DataFrame
    first_time: str | None
    last_time: str | None

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """The feedback labels that arrived (as integers) and the probabilities of those predictions."""
        known = ~np.isnan(self.feedback)
        return self.feedback[known].astype(int), self.probability[known]


@dataclass
class _Taken:
    """Rows taken from one request: positions None means its first `count` rows."""

    start: int
    count: int
    positions: np.ndarray | None


@dataclass(frozen=True)
class WindowQuery:
    """Which predictions `read_predictions` reads: one model version (by one arm, if given) logged in [since, until),
    the newest `max_rows` of them at most, with the features `numeric` + `categorical`."""

    model_version: str
    since: str
    arm: str | None = None
    until: str | None = None
    max_rows: int | None = None
    numeric: Sequence[str] = ()
    categorical: Sequence[str] = ()

    def condition(self) -> tuple[str, dict]:
        """The SQL condition on the requests table (alias `r`) and its named parameters."""
        where, args = "r.time >= :since", {"since": self.since, "version": self.model_version}
        if self.until is not None:
            where, args = where + " AND r.time < :until", {**args, "until": self.until}
        if self.arm is not None:
            return f"{where} AND r.{self.arm}_version = :version", args
        return f"{where} AND (r.champion_version = :version OR r.challenger_version = :version)", args

    def empty(self) -> LoggedRows:
        return _rows_of([], [], [], _Columns([*self.numeric, *self.categorical], self.numeric), np.empty(0))


def read_sqlite_window(path: Path, query: WindowQuery) -> LoggedRows:
    """The rows of `query` from the embedded log's file, opened read-only (an absent file reads as no rows)."""
    if not path.exists():
        return query.empty()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        _check_layout(db, path)
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone() is None:
            return query.empty()
        return read_window(db.execute, SQLITE_STATEMENTS, query)


def read_window(execute: Callable, statements: LogStatements, query: WindowQuery) -> LoggedRows:
    """The rows of `query`, read with `execute(sql, parameters)` (an iterable cursor) from either backend's tables."""
    names = [*query.numeric, *query.categorical]
    where, args = query.condition()
    cursor = execute(statements.window(where, bool(names)), args)
    taken, times, proba, latency, columns = {}, [], [], [], _Columns(names, query.numeric)
    total, max_rows = 0, query.max_rows
    for row in cursor:
        if max_rows is not None and total >= max_rows:
            break
        key, time_, latency_ms, champion, challenger, arms, probabilities, features = row
        versions = {CHAMPION: champion, CHALLENGER: challenger}
        positions = _positions(orjson.loads(arms), versions, query.model_version, query.arm)
        if max_rows is not None:
            positions = positions[: max_rows - total]
        if not (count := len(positions)):
            continue
        taken[key] = _Taken(total, count, None if isinstance(positions, range) else np.asarray(positions))
        total += count
        times.append(time_)
        latency.append(np.full(count, latency_ms))
        proba.extend(_pick(orjson.loads(probabilities), positions))
        columns.add(orjson.loads(features) if features else None, positions)
    feedback = np.full(total, np.nan)
    if taken:
        for key, position, label in execute(statements.window_feedback(where), args):
            if (at := _row_index(taken.get(key), position)) is not None:
                feedback[at] = label
    return _rows_of(proba, latency, times, columns, feedback)


def _positions(arms: list[str], versions: dict[str, str | None], model_version: str, arm: str | None) -> Sequence[int]:
    """The rows of a request served by `model_version` (through `arm`, if given)."""
    wanted = {a for a, v in versions.items() if v == model_version and (arm is None or a == arm)}
    if all(versions[a] is None or a in wanted for a in ARMS):
        return range(len(arms))
    return [i for i, a in enumerate(arms) if a in wanted]


def _pick(values: list, positions: Sequence[int]) -> list:
    if isinstance(positions, range):
        return values[: len(positions)]
    return [values[i] for i in positions]


def _row_index(taken: _Taken | None, position: int) -> int | None:
    """Where a request's prediction landed among the rows read, if it was read."""
    if taken is None:
        return None
    if taken.positions is None:
        return taken.start + position if position < taken.count else None
    at = int(np.searchsorted(taken.positions, position))
    return taken.start + at if at < taken.count and taken.positions[at] == position else None


class _Columns:
    """Feature columns gathered request by request, turned into numpy arrays every CHUNK_ROWS rows.

    Bounds the Python objects held at once: a million-row window would otherwise hold every value as one.
    """

    def __init__(self, names: Sequence[str], numeric: Sequence[str]):
        self.types = {name: "float64" if name in set(numeric) else object for name in names}
        self.pending: dict[str, list] = {name: [] for name in names}
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        self.rows, self.seen = 0, False

    def add(self, stored: dict | None, positions: Sequence[int]) -> None:
        """One request's stored features (None: logged without them), at the positions read."""
        self.seen = self.seen or stored is not None
        for name, values in self.pending.items():
            column = (stored or {}).get(name)
            values.extend(_pick(column, positions) if column is not None else [None] * len(positions))
        self.rows += len(positions)
        if self.rows >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        for name, values in self.pending.items():
            self.parts[name].append(np.array(values, dtype=self.types[name]))
            self.pending[name] = []
        self.rows = 0

    def frame(self) -> pd.DataFrame:
        """The features read, or an empty frame when no request read had any."""
        if not self.seen:
            return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in self.types.items()})
        self.flush()
        return pd.DataFrame({name: np.concatenate(parts) for name, parts in self.parts.items()})


def _rows_of(proba: list, latency: list, times: list, columns: _Columns, feedback: np.ndarray) -> LoggedRows:
    return LoggedRows(
        probability=np.array(proba, dtype="float64"),
        latency_ms=np.concatenate(latency) if latency else np.empty(0),
        feedback=feedback,
        features=columns.frame(),
        first_time=min(times) if times else None,
        last_time=max(times) if times else None,
    )
