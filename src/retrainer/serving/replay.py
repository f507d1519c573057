"""Traffic replay against a running service (loopback only), and read-only views of its evidence for the canary."""

from __future__ import annotations

import ipaddress
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pandas as pd

from retrainer.serving.log_store import read_predictions

LOOPBACK_NAMES = {"localhost"}


@dataclass
class ReplayStats:
    """What one replay did, counted on the client side."""

    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    feedback_sent: int = 0
    feedback_failed: int = 0
    unlabelled: int = 0  # answered records with no label to send back (their target is missing in the data)
    by_arm: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: str = ""
    failures: dict[str, int] = field(default_factory=dict)  # HTTP status (or error type) -> failed requests
    first_failure: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def count_failure(self, kind: str, message: str) -> None:
        """One failed prediction request: its HTTP status (or error type), and the first one's message."""
        self.failed += 1
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.first_failure = self.first_failure or message[:300]

    def failure_summary(self) -> str:
        """`400 x 20; first: records[0].month: Field required`: what the failed requests were answered."""
        kinds = ", ".join(f"{kind} x {n}" for kind, n in sorted(self.failures.items()))
        return f"{kinds}; first: {self.first_failure}" if kinds else "no failures"


def check_loopback(base_url: str) -> None:
    """Refuse any URL that does not point at this machine."""
    host = urlparse(base_url).hostname or ""
    if host in LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"replay only talks to loopback, not {base_url!r}")


def replay(
    base_url: str,
    records: Sequence[dict],
    labels: Sequence[float | None],
    feedback_delay_s: float = 0.0,
    max_requests: int = 1000,
    timeout_s: float = 60.0,
    batch_size: int = 1,
    request_timeout_s: float = 30.0,
) -> ReplayStats:
    """POST records to /predict (batch_size per request), then each known label (0/1; None or NaN where the target
    is missing: counted in `unlabelled`) to /feedback after the delay.

    Stops after max_requests prediction requests, when the records run out, or at timeout_s; labels still waiting
    for their delay at the deadline are dropped (counted as neither sent nor failed).
    """
    check_loopback(base_url)
    if len(labels) != len(records):
        raise ValueError(f"{len(records)} records but {len(labels)} labels")
    stats = ReplayStats()
    started = time.monotonic()
    deadline = started + timeout_s
    pending: deque[tuple[float, str, int]] = deque()
    with httpx.Client(base_url=base_url, timeout=request_timeout_s) as client:
        for first in range(0, len(records), max(batch_size, 1)):
            stats.stopped = _stop_reason(stats.sent, max_requests, deadline)
            if stats.stopped:
                break
            window = slice(first, first + batch_size)
            due = _predict(client, list(records[window]), labels[window], stats, feedback_delay_s)
            pending.extend(due)
            _send_due(client, pending, stats, time.monotonic())
        else:
            stats.stopped = "records exhausted"
        while pending and time.monotonic() < deadline:
            time.sleep(max(0.0, min(pending[0][0] - time.monotonic(), deadline - time.monotonic(), 0.5)))
            _send_due(client, pending, stats, time.monotonic())
    stats.seconds = time.monotonic() - started
    return stats


def _stop_reason(sent: int, max_requests: int, deadline: float) -> str:
    """Why a replay stops before its next request ("" to go on)."""
    if sent >= max_requests:
        return "max_requests"
    return "timeout" if time.monotonic() >= deadline else ""


def _predict(
    client: httpx.Client, batch: list[dict], labels: Sequence[float | None], stats: ReplayStats, delay_s: float
) -> list[tuple[float, str, int]]:
    """POST one batch to /predict and count it; the (due time, prediction id, label) feedback it leads to."""
    stats.sent += 1
    try:
        response = client.post("/predict", json={"records": batch})
        response.raise_for_status()
        predictions = response.json()["predictions"]
    except httpx.HTTPStatusError as exc:
        stats.count_failure(str(exc.response.status_code), _error_text(exc.response))
        return []
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        stats.count_failure(type(exc).__name__, str(exc))
        return []
    stats.succeeded += 1
    due = time.monotonic() + delay_s
    for prediction in predictions:
        stats.by_arm[prediction["arm"]] = stats.by_arm.get(prediction["arm"], 0) + 1
    answered = list(zip(predictions, labels, strict=False))
    labelled = [(prediction, label) for prediction, label in answered if not _no_label(label)]
    stats.unlabelled += len(answered) - len(labelled)
    return [(due, prediction["prediction_id"], int(label)) for prediction, label in labelled]


def _no_label(label: float | None) -> bool:
    """None, NaN of any float type, or pandas' NA: pandas' own test of a missing scalar."""
    return bool(pd.isna(label))


def _error_text(response: httpx.Response) -> str:
    """The service's error message (its {"error": ...} body), else the start of the body."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def _send_due(client: httpx.Client, pending: deque, stats: ReplayStats, now: float) -> None:
    while pending and pending[0][0] <= now:
        _, prediction_id, label = pending.popleft()
        try:
            client.post("/feedback", json={"prediction_id": prediction_id, "label": label}).raise_for_status()
            stats.feedback_sent += 1
        except httpx.HTTPError:
            stats.feedback_failed += 1


@dataclass(frozen=True)
class ArmRows:
    """One arm's logged predictions in a time window, with the feedback labels that arrived for them."""

    probabilities: list[float]
    latencies_ms: list[float]
    feedback_labels: list[int]
    feedback_probabilities: list[float]


def read_arm(log_path: Path, arm: str, model_version: str, since: str, until: str | None = None) -> ArmRows:
    """Read one arm's predictions (by one model version) logged at or after `since` (ISO UTC), read-only."""
    rows = read_predictions(log_path, model_version, since, arm=arm, until=until)
    labels, labelled_proba = rows.labelled()
    return ArmRows(
        probabilities=rows.probability.tolist(),
        latencies_ms=rows.latency_ms.tolist(),
        feedback_labels=labels.tolist(),
        feedback_probabilities=labelled_proba.tolist(),
    )


def scrape_counters(
    urls: Sequence[str], timeout_s: float = 10.0, client: httpx.Client | None = None
) -> dict[tuple[str, str], float]:
    """The per-arm request and error counters from /metrics of every URL (one service, or each replica behind a
    proxy), summed: {(name, arm): value}. Each counter is cumulative per process, so sums of two scrapes of the same
    replicas subtract to the traffic between them. Raises httpx.HTTPError when a replica does not answer.

    Pass `client` when scraping in a loop (a canary's polls): a new httpx client costs about 25 ms of CPU."""
    counters: dict[tuple[str, str], float] = {}
    pattern = r'^(retrainer_(?:requests|errors)_total)\{[^}]*arm="([a-z]+)"[^}]*\} ([0-9.e+-]+)$'
    for url in urls:
        check_loopback(url)
        text = (client or httpx).get(f"{url}/metrics", timeout=timeout_s).text
        for name, arm, value in re.findall(pattern, text, re.MULTILINE):
            counters[(name, arm)] = counters.get((name, arm), 0.0) + float(value)
    return counters
