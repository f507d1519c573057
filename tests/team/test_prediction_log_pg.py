"""The prediction log and feedback on a real PostgreSQL (RETRAINER_DATABASE_URL): the embedded log's contract on the
team database, the real service over HTTP writing to it, the canary's and the monitor's reads of it, no `.db` file
under the home, and a database that goes down while the service answers (nothing answered is lost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from retrainer.io.backend import DATABASE_ENV, connect_database
from retrainer.serving.log_store import open_prediction_log, read_predictions
from retrainer.serving.prediction_log import (
    FeedbackOutcome,
    PredictionLog,
    RequestLog,
    kept_requests,
    new_request_key,
)

pytestmark = pytest.mark.team

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
START_TIMEOUT_S = 600.0  # BentoML took minutes to answer on a loaded 2-core machine; this only catches a dead start
NUMERIC, CATEGORICAL = ("temp", "distance"), ("carrier",)


def _request(rng: np.random.Generator, n: int, arms: list[str], when: str) -> RequestLog:
    proba = rng.random(n).round(6).tolist()
    records = [{"temp": float(i), "distance": 100.0 + i, "carrier": "UA" if i % 2 else None} for i in range(n)]
    features = {
        "temp": [r["temp"] for r in records],
        "distance": [np.nan] * n,
        "carrier": [r["carrier"] for r in records],
    }
    versions = {"champion": "1", "challenger": "2"} if "challenger" in arms else {"champion": "1"}
    return RequestLog(
        new_request_key(), when, 2.5, versions, arms, proba, [int(p >= 0.5) for p in proba], records, features
    )


def test_the_team_log_keeps_the_embedded_contract_and_reads_back_what_sqlite_reads(
    fresh_database, tmp_path, monkeypatch
):
    rng = np.random.default_rng(3)
    requests = [
        _request(rng, 5, ["champion"] * 5, "2026-01-01T00:00:01.000+00:00"),
        _request(rng, 4, ["champion", "challenger", "challenger", "champion"], "2026-01-01T00:00:02.000+00:00"),
        _request(rng, 3, ["champion"] * 3, "2026-01-01T00:00:03.000+00:00"),
    ]
    embedded = PredictionLog(tmp_path / "embedded.db", NUMERIC, CATEGORICAL)
    monkeypatch.setenv(DATABASE_ENV, fresh_database)
    home = tmp_path / ".retrainer"
    team = open_prediction_log(home / "predictions.db", NUMERIC, CATEGORICAL)
    assert type(team).__name__ == "PostgresPredictionLog" and team.location.endswith(fresh_database.rsplit("/", 1)[1])
    for log in (embedded, team):
        assert [log.record(r) for r in requests] == [5, 4, 3]
        first, mixed = requests[0].ids, requests[1].ids
        assert log.record_feedback(first[1], 1, "t") is FeedbackOutcome.RECORDED
        assert log.record_feedback(first[1], 1, "t") is FeedbackOutcome.REPEATED
        assert log.record_feedback(first[1], 0, "t") is FeedbackOutcome.CONFLICT
        assert log.record_feedback(mixed[2], 0, "t") is FeedbackOutcome.RECORDED
        assert log.record_feedback(first[0][:-6] + "000005", 1, "t") is FeedbackOutcome.UNKNOWN, "past its request"
        assert log.record_feedback(str(uuid.uuid4()), 1, "t") is FeedbackOutcome.UNKNOWN
        assert log.feedback_label(first[1]) == 1 and log.feedback_label(first[2]) is None
        got = log.get(mixed[1])
        assert (got.arm, got.model_version, got.probability) == ("challenger", "2", requests[1].probabilities[1])
        assert log.has_request(requests[2].key) and not log.has_request(new_request_key())
    with pytest.raises(team.errors):
        team.record(requests[0])  # a key it holds: refused, as SQLite refuses it
    assert not home.exists() or not list(home.rglob("*.db")), "the team log creates no file"

    for window in (
        {"since": ""},
        {"since": "2026-01-01T00:00:02", "arm": "champion"},
        {"since": "", "arm": "challenger"},
        {"since": "", "until": "2026-01-01T00:00:03", "max_rows": 6},
    ):
        read = {}
        for name, env in (("embedded", None), ("team", fresh_database)):
            if env is None:
                monkeypatch.delenv(DATABASE_ENV)
            else:
                monkeypatch.setenv(DATABASE_ENV, env)
            read[name] = read_predictions(tmp_path / "embedded.db", "1" if window.get("arm") != "challenger" else "2",
                                          numeric=NUMERIC, categorical=CATEGORICAL, **window)  # fmt: skip
        embedded_rows, team_rows = read["embedded"], read["team"]
        assert len(team_rows.probability) > 0, window
        np.testing.assert_array_equal(team_rows.probability, embedded_rows.probability)
        np.testing.assert_array_equal(team_rows.feedback, embedded_rows.feedback)
        np.testing.assert_array_equal(team_rows.latency_ms, embedded_rows.latency_ms)
        pd.testing.assert_frame_equal(team_rows.features, embedded_rows.features)
        assert (team_rows.first_time, team_rows.last_time) == (embedded_rows.first_time, embedded_rows.last_time)
    with connect_database(fresh_database) as connection:
        import sqlalchemy as sa

        view = connection.execute(sa.text("SELECT id, arm, probability, feedback_label FROM retrainer_predictions"))
        rows = {row.id: row for row in view}
    assert len(rows) == 12 and rows[requests[1].ids[2]].arm == "challenger"
    assert rows[requests[0].ids[1]].feedback_label == 1 and rows[requests[0].ids[3]].feedback_label is None
    assert rows[requests[2].ids[0]].probability == requests[2].probabilities[0]
    team.close()
    embedded.close()


@dataclass
class TeamService:
    url: str
    home: Path
    workspace: Path
    database: str
    env: dict[str, str]
    log: Path


def _register_champion(params, january_sample: pd.DataFrame, references) -> None:
    """A real pipeline fitted on January flights, registered with its reference profile in the team's MLflow store
    (on the same PostgreSQL) and made champion."""
    from threadpoolctl import threadpool_limits

    from retrainer.io import registry
    from retrainer.io.monitoring import register_with_profile
    from retrainer.io.project import pseudonymisation_key
    from retrainer.steps.ingest import integrate
    from retrainer.steps.train import build_pipeline

    frame, _ = integrate(january_sample, references, params.data, pseudonymisation_key())
    numeric, categorical = list(params.features.numeric), list(params.features.categorical)
    features, label = [*numeric, *categorical], params.data.target.name
    with threadpool_limits(limits=1):
        model = build_pipeline(numeric, categorical, params.train).set_params(model__max_iter=20)
        model.fit(frame[features], frame[label])
        proba = model.predict_proba(frame[features])[:, 1]
    version = register_with_profile(params, model, frame, frame[label].to_numpy(), proba, 0.5)
    registry.set_alias(params.tracking.registered_model, registry.CHAMPION, version)


@pytest.fixture(scope="module")
def team_service(postgres_server, params, january_sample, references, tmp_path_factory) -> Iterator[TeamService]:
    """`retrainer serve` with every piece of state on the session's PostgreSQL (MLflow store, rollout state, the log)
    and its home in a temporary workspace."""
    import mlflow

    from retrainer.io.servers import create_database
    from retrainer.serving.launch import start_service

    database = create_database(postgres_server.url(), f"t_{uuid.uuid4().hex[:12]}")
    workspace = tmp_path_factory.mktemp("team-workspace")
    home = workspace / ".retrainer"
    env = {DATABASE_ENV: database, "RETRAINER_HOME": str(home), "RETRAINER_ADMIN_TOKEN": TOKEN,
           "RETRAINER_ROOT": str(ROOT), "BENTOML_HOME": str(workspace / "bentoml")}  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RETRAINER_PARAMS"):
            patch.delenv(name, raising=False)
        try:
            _register_champion(params, january_sample, references)
            running = start_service(ROOT, workspace / "serve.log", timeout=START_TIMEOUT_S)
            try:
                yield TeamService(running.url, home, workspace, database, env, running.log_path)
            finally:
                running.stop()
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def _records(seed_flights: pd.DataFrame, n: int, start: int = 0) -> list[dict]:
    """Real February flights as a client sends them (no outcome columns, time_hour as ISO text)."""
    outcomes = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]
    rows = seed_flights.loc[seed_flights["month"] == 2].iloc[start : start + n].drop(columns=outcomes)
    return json.loads(rows.to_json(orient="records", date_format="iso"))


def _logged_ids(database: str, ids: list[str]) -> set[str]:
    import sqlalchemy as sa

    with connect_database(database) as connection:
        found = connection.execute(sa.text("SELECT id FROM retrainer_predictions WHERE id = ANY(:ids)"), {"ids": ids})
        return {row.id for row in found}


def _wait_until(check, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting until {what}")
        time.sleep(0.2)


def _no_db_files(home: Path) -> list[Path]:
    return sorted(home.rglob("*.db")) + sorted(home.rglob("*.db-wal"))


def test_the_service_logs_to_postgresql_and_feedback_canary_and_monitor_use_it(
    team_service: TeamService, seed_flights, params
):
    from retrainer.app.monitor import monitor_pass
    from retrainer.io.project import Workspace
    from retrainer.serving.replay import read_arm

    since = pd.Timestamp.now(tz="UTC").isoformat(timespec="milliseconds")
    with httpx.Client(base_url=team_service.url, timeout=60) as http:
        answered = []
        for start in range(0, 120, 40):
            response = http.post("/predict", json={"records": _records(seed_flights, 40, start)})
            assert response.status_code == 200, response.text
            answered += response.json()["predictions"]
        ids = [p["prediction_id"] for p in answered]
        first = http.post("/feedback", json={"prediction_id": ids[0], "label": 1})
        again = http.post("/feedback", json={"prediction_id": ids[0], "label": 1})
        other = http.post("/feedback", json={"prediction_id": ids[0], "label": 0})
        unknown = http.post("/feedback", json={"prediction_id": str(uuid.uuid4()), "label": 0})
    assert first.status_code == 200 and first.json()["already_recorded"] is False, first.text
    assert again.status_code == 200 and again.json()["already_recorded"] is True
    assert (other.status_code, unknown.status_code) == (409, 404)
    _wait_until(lambda: len(_logged_ids(team_service.database, ids)) == len(ids), "every answer is in PostgreSQL")

    with pytest.MonkeyPatch.context() as patch:
        for name, value in team_service.env.items():
            patch.setenv(name, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        workspace = Workspace.at(team_service.workspace, team_service.home)
        canary = read_arm(workspace.prediction_log, "champion", "1", since)
        result = monitor_pass(params, workspace, retrain=lambda root: []).to_dict()
    assert sorted(canary.probabilities) == sorted(p["probability"] for p in answered)
    assert canary.feedback_labels == [1] and canary.feedback_probabilities == [answered[0]["probability"]]
    assert result["rows"] == len(ids) and result["labelled"] == 1, result
    assert _no_db_files(team_service.home) == [], "no SQLite file under the home with the team database set"


def test_a_database_down_keeps_every_answer_and_recover_log_writes_them_back(
    team_service: TeamService, postgres_server, seed_flights
):
    from retrainer.io.project import DEAD_LETTER_FILE
    from retrainer.io.servers import start_postgres

    dead_letter = team_service.home / DEAD_LETTER_FILE
    before = kept_requests(dead_letter)
    postgres_server.stop()
    try:
        with httpx.Client(base_url=team_service.url, timeout=60) as http:
            responses = [
                http.post("/predict", json={"records": _records(seed_flights, 25, 200 + 25 * i)}) for i in range(4)
            ]
            assert [r.status_code for r in responses] == [200] * 4, responses[-1].text
            answered = [p["prediction_id"] for r in responses for p in r.json()["predictions"]]
            feedback = http.post("/feedback", json={"prediction_id": answered[0], "label": 1})
        _wait_until(lambda: kept_requests(dead_letter) == before + 4, "the dead-letter file keeps the 4 requests")
        assert feedback.status_code == 503 and "cannot record feedback" in feedback.json()["error"], feedback.text
    finally:
        start_postgres(postgres_server.data_dir.parent, port=postgres_server.port)
    assert _logged_ids(team_service.database, answered) == set(), "they were answered while the database was down"

    recover = subprocess.run(
        [sys.executable, "-m", "retrainer.cli", "recover-log"],
        cwd=ROOT,
        env={**os.environ, **team_service.env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert recover.returncode == 0, recover.stdout + recover.stderr
    assert "4 requests (100 predictions) written" in recover.stdout, recover.stdout
    assert _logged_ids(team_service.database, answered) == set(answered)
    assert kept_requests(dead_letter) == 0
    with httpx.Client(base_url=team_service.url, timeout=60) as http:  # the service reconnects by itself
        response = http.post("/predict", json={"records": _records(seed_flights, 5, 400)})
    assert response.status_code == 200, response.text
    later = [p["prediction_id"] for p in response.json()["predictions"]]
    _wait_until(lambda: _logged_ids(team_service.database, later) == set(later), "the service logs to PG again")
    assert _no_db_files(team_service.home) == []
