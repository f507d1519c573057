"""Two real service replicas behind a real HAProxy (the system package), sharing the team's PostgreSQL (rollout
state, prediction log, feedback), as replicas on different hosts would: traffic through the proxy, one replica
SIGKILLed mid-traffic, then: no client error beyond the requests in flight, every answered prediction in the shared
log once the killed replica's journal is replayed, a weight change made through one replica reaching the other
within the bound, and a canary analysis over the log that sees both replicas' traffic and decides."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import ROOT, THRESHOLDS, TOKEN, Registry, Server

from retrainer.app.canary import labelled_traffic, metrics_urls
from retrainer.config import CanaryConfig, Params
from retrainer.io.processes import free_port
from retrainer.io.project import LOG_FILE
from retrainer.io.proxy import SERVED_BY_HEADER, start_proxy
from retrainer.serving.log_store import open_prediction_log
from retrainer.serving.replay import read_arm, scrape_counters
from retrainer.steps.canary import ArmStats, StepProgress, analyse_canary
from retrainer.team import replica_bentoml_home

pytestmark = pytest.mark.team

CLIENTS = 3
RECORDS_PER_REQUEST = 5
SCHEDULING_SLACK_S = 2.0  # thread and process scheduling on a loaded 2-core machine, on top of the stated bound
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def replicas(haproxy, registry_home: Registry, fresh_database: str, tmp_path: Path, monkeypatch):
    """Two replicas from source (the test registry's models) whose shared state is a fresh PostgreSQL database, and
    HAProxy in front of them. (Replicas of one host sharing the SQLite files: tests/serving/test_replicas.py.)"""
    monkeypatch.setenv("RETRAINER_DATABASE_URL", fresh_database)  # this process reads the same log
    env = {
        "RETRAINER_DATABASE_URL": fresh_database,
        "MLFLOW_TRACKING_URI": registry_home.env["MLFLOW_TRACKING_URI"],
        "RETRAINER_HOME": str(tmp_path / "home"),
        "RETRAINER_ROOT": str(ROOT),
        "RETRAINER_ADMIN_TOKEN": TOKEN,
        "BENTOML_HOME": str(registry_home.home / "bentoml"),
    }
    target = "retrainer.serving.service:RetrainerService"
    shared = registry_home.home / "bentoml"  # each replica a BentoML home of its own, as serve_replicas gives them
    homes = [str(replica_bentoml_home(tmp_path / f"bentoml-{i}", shared)) for i in (1, 2)]
    started = [Server(target, {**env, "BENTOML_HOME": homes[i - 1]}, tmp_path / f"replica-{i}.log") for i in (1, 2)]
    started = [server.start() for server in started]
    proxy = start_proxy(tmp_path / "proxy", free_port(), [s.url for s in started])
    yield started, proxy, env
    proxy.stop()
    for server in started:
        if server.proc is not None:
            server.stop()


def _weight_seen(url: str, weight: float, timeout_s: float) -> float | None:
    """Seconds until `url`'s /rollout shows the challenger weight, or None after `timeout_s`."""
    tick = time.monotonic()
    while time.monotonic() - tick <= timeout_s:
        if httpx.get(f"{url}/rollout", timeout=5).json()["challenger_weight"] == weight:
            return time.monotonic() - tick
        time.sleep(0.05)
    return None


def _sigkill_replica(server: Server) -> float:
    """SIGKILL the replica for real: its BentoML worker (a session of its own) first, then the server process.
    Returns the monotonic time by which all of its processes were gone (their listening sockets closed)."""
    parent = psutil.Process(server.proc.pid)
    processes = [*parent.children(recursive=True), parent]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"
    gone = time.monotonic()
    server.proc = None
    server._log.close()
    return gone


@dataclass
class Traffic:
    """What the clients saw: answered predictions (id, arm, replica), failures, feedback still pending."""

    answered: list[tuple[str, str, str]] = field(default_factory=list)
    requests: list[tuple[set[str], str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time the request was sent, error)
    pending_feedback: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


def _send_feedback(client: httpx.Client, prediction_id: str, label: int, traffic: Traffic) -> None:
    """Feedback through the proxy (it may land on the other replica); a 503 is retried as its Retry-After says."""
    for _ in range(3):
        answer = client.post("/feedback", json={"prediction_id": prediction_id, "label": label})
        if answer.status_code != 503:
            break
        time.sleep(float(answer.headers["Retry-After"]))
    if answer.status_code == 503:
        with traffic.lock:
            traffic.pending_feedback.append((prediction_id, label))
    elif answer.status_code != 200:
        raise RuntimeError(f"feedback {answer.status_code}: {answer.text[:200]}")


def _client(url: str, records: list[dict], labels: list[int], offset: int, stop: threading.Event, traffic: Traffic):
    """Predict RECORDS_PER_REQUEST records at a time through the proxy, then send the first one's label."""
    with httpx.Client(base_url=url, timeout=60) as client:
        start = offset
        while not stop.is_set():
            window = slice(start % (len(records) - RECORDS_PER_REQUEST), None)
            batch = records[window][:RECORDS_PER_REQUEST]
            start += RECORDS_PER_REQUEST * CLIENTS
            try:
                sent = time.monotonic()
                answer = client.post("/predict", json={"records": batch})
                if answer.status_code != 200:
                    raise RuntimeError(f"predict {answer.status_code}: {answer.text[:200]}")
                predictions, replica = answer.json()["predictions"], answer.headers[SERVED_BY_HEADER]
                with traffic.lock:
                    traffic.answered += [(p["prediction_id"], p["arm"], replica) for p in predictions]
                    traffic.requests.append(({p["arm"] for p in predictions}, replica))
                sent = time.monotonic()
                _send_feedback(client, predictions[0]["prediction_id"], labels[window][0], traffic)
            except (httpx.HTTPError, RuntimeError) as exc:
                with traffic.lock:
                    traffic.failures.append((sent, f"{type(exc).__name__}: {exc}"))


def _run_traffic(url: str, records, labels, traffic: Traffic, until, on_the_way=None) -> None:
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(url, records, labels, i * RECORDS_PER_REQUEST, stop, traffic))
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    try:
        for condition, action in zip(until, [on_the_way, None], strict=False):
            deadline = time.monotonic() + 600
            while not condition() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert condition(), "the traffic did not reach its mark in 600 s"
            if action:
                action()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def _check_the_canary_counts_every_replica(first: str, second: str, proxy: str, records: list[dict]) -> None:
    """Requests through the proxy land on both replicas; the canary's counters (canary.replica_urls) count them all."""
    policy = CanaryConfig(replica_urls=(first, second))
    before = scrape_counters(metrics_urls(proxy, policy))
    sent: list[tuple[set[str], str]] = []
    with httpx.Client(base_url=proxy, timeout=60) as client:
        for start in range(0, 8 * RECORDS_PER_REQUEST, RECORDS_PER_REQUEST):
            answer = client.post("/predict", json={"records": records[start : start + RECORDS_PER_REQUEST]})
            assert answer.status_code == 200, answer.text
            sent.append(({p["arm"] for p in answer.json()["predictions"]}, answer.headers[SERVED_BY_HEADER]))
    after = scrape_counters(metrics_urls(proxy, policy))
    each = [scrape_counters((url,)) for url in (first, second)]  # what a scrape of one replica (or the proxy) sees
    assert {replica for _, replica in sent} == {"r1", "r2"}
    for arm in ("champion", "challenger"):
        key = ("retrainer_requests_total", arm)
        counted = after.get(key, 0) - before.get(key, 0)
        assert counted == sum(arm in arms for arms, _ in sent) > max(one.get(key, 0) for one in each)


def test_two_replicas_behind_the_proxy_survive_a_sigkill_and_the_canary_reads_both(
    replicas, params: Params, seed_flights, registry_home: Registry
):
    (first, second), proxy, env = replicas
    bound = params.serve.state_refresh_seconds
    assert httpx.post(f"{first.url}/admin/weights", json={"challenger_weight": 0.4}, headers=ADMIN).status_code == 200
    assert _weight_seen(second.url, 0.4, timeout_s=120) is not None, "the other replica loads v2, then adopts it"
    assert httpx.post(f"{second.url}/admin/weights", json={"challenger_weight": 0.5}, headers=ADMIN).status_code == 200
    took = _weight_seen(first.url, 0.5, timeout_s=bound + SCHEDULING_SLACK_S)
    assert took is not None, f"a weight change made through one replica did not reach the other in {bound} s"

    raw = seed_flights.loc[(seed_flights["month"] == 2) & seed_flights["arr_delay"].notna()].iloc[:3000]
    records, labels = labelled_traffic(raw, params)
    _check_the_canary_counts_every_replica(first.url, second.url, proxy.url, records)
    since = datetime.now(UTC).isoformat(timespec="milliseconds")
    traffic = Traffic()
    killed_at: list[int] = []
    gone_at: list[float] = []

    def both_served() -> bool:
        return {r for _, r in traffic.requests} == {"r1", "r2"} and traffic.count() >= 30

    def kill_second() -> None:
        killed_at.append(traffic.count())
        gone_at.append(_sigkill_replica(second))

    def enough() -> bool:
        challenger_requests = sum("challenger" in arms for arms, _ in traffic.requests)
        return challenger_requests >= params.canary.min_requests_per_step and traffic.count() >= killed_at[0] + 60

    _run_traffic(proxy.url, records, labels, traffic, until=[both_served, enough], on_the_way=kill_second)
    started = time.monotonic()

    # The requests a client may lose are those in flight to the killed replica: sent to it before its processes were
    # gone (a connection its dying socket still accepted is one). Every request sent after that is retried by the
    # proxy on the live replica, so none of those may fail.
    late = [error for sent, error in traffic.failures if sent > gone_at[0]]
    assert not late, f"requests sent after the killed replica was gone failed: {late} (all: {traffic.failures})"
    served_by = {r for _, _, r in traffic.answered}
    assert served_by == {"r1", "r2"}
    after_kill = [r for _, r in traffic.requests[killed_at[0] + CLIENTS :]]
    assert after_kill and set(after_kill) == {"r1"}, "after the kill, the proxy sends everything to the live replica"

    recovered = subprocess.run(
        [sys.executable, "-m", "retrainer.cli", "recover-log"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    log = open_prediction_log(Path(env["RETRAINER_HOME"]) / LOG_FILE)
    try:
        missing = [i for i, _, _ in traffic.answered if log.get(i) is None]
        assert not missing, f"{len(missing)} answered predictions are not in the log, e.g. {missing[:3]}"
        with httpx.Client(base_url=proxy.url, timeout=60) as client:  # feedback that waited for the replay
            for prediction_id, label in traffic.pending_feedback:
                answer = client.post("/feedback", json={"prediction_id": prediction_id, "label": label})
                assert answer.status_code == 200, answer.text
    finally:
        log.close()

    log_path = Path(env["RETRAINER_HOME"]) / LOG_FILE
    assert not log_path.exists(), "the log is the database's, not a file of the home"
    rows = {arm: read_arm(log_path, arm, version, since) for arm, version in (("champion", "1"), ("challenger", "2"))}
    answered_by_arm = {arm: sum(a == arm for _, a, _ in traffic.answered) for arm in rows}
    for arm, arm_rows in rows.items():
        # Both replicas' answers are in what the canary reads (and requests the killed one journaled, unanswered).
        assert len(arm_rows.probabilities) >= answered_by_arm[arm] > 0
        assert arm_rows.feedback_labels, f"labels sent through the proxy reached the {arm}'s predictions"
    arms = {
        arm: ArmStats(
            requests=sum(arm in arms for arms, _ in traffic.requests),
            latencies_ms=arm_rows.latencies_ms,
            probabilities=arm_rows.probabilities,
            feedback_labels=arm_rows.feedback_labels,
            feedback_probabilities=arm_rows.feedback_probabilities,
            threshold=THRESHOLDS[version],
        )
        for (arm, arm_rows), version in zip(rows.items(), ("1", "2"), strict=True)
    }
    # The traffic lasts seconds, not the policy's minute per step; the request minimum stays the policy's own.
    policy = params.canary.model_copy(update={"min_seconds_per_step": 0})
    progress = StepProgress(index=0, total=1, elapsed_seconds=time.monotonic() - started)
    decision = analyse_canary(arms["champion"], arms["challenger"], progress, policy)
    assert decision.action in ("promote", "rollback"), decision
