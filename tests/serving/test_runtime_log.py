"""The runtime answers first and logs right after: feedback waits for owed rows, a failed write keeps them."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, Registry, raw_records

from retrainer.config import Params
from retrainer.io.monitoring import read_window
from retrainer.io.project import DEAD_LETTER_FILE, LOG_FILE
from retrainer.serving.prediction_log import (
    Recovery,
    prediction_ids,
    recover_dead_letter,
)
from retrainer.serving.runtime import PendingPrediction, ServingConfig, ServingRuntime, UnknownPrediction

pytestmark = pytest.mark.integration


REFUSED = "the log refuses writes"


def _refuse_inserts(log_file: Path) -> None:
    with sqlite3.connect(log_file) as other:
        other.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON requests BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END")


@pytest.fixture
def runtime(registry_home: Registry, params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A runtime over the test registry, with its own log and rollout state under tmp_path."""
    for key, value in registry_home.env.items():
        monkeypatch.setenv(key, value)
    served = ServingRuntime(ServingConfig(root=ROOT, home=tmp_path, params=params, admin_token=None))
    yield served
    served.close()


def test_feedback_for_a_prediction_still_owed_to_the_log_waits_for_it(runtime, seed_flights: pd.DataFrame):
    scored = runtime.score(raw_records(seed_flights, 3))
    prediction_id = scored.predictions[1]["prediction_id"]
    assert runtime.log.get(prediction_id) is None, "scoring alone logs nothing"
    writer = threading.Timer(0.3, runtime.write_log, args=(scored,))
    writer.start()
    tick = time.perf_counter()
    runtime.feedback(prediction_id, 1)
    assert time.perf_counter() - tick >= 0.25, "feedback waited for the write"
    writer.join()
    assert runtime.log.feedback_label(prediction_id) == 1
    assert runtime.log.get(prediction_id).probability == scored.predictions[1]["probability"]


def test_feedback_for_an_unknown_prediction_fails_without_waiting(runtime):
    tick = time.perf_counter()
    with pytest.raises(UnknownPrediction):
        runtime.feedback("00000000-0000-7000-8000-000000000000", 0)
    assert time.perf_counter() - tick < 1.0, "nothing was owed, so nothing to wait for"


def test_a_failed_log_write_keeps_the_answered_rows_in_the_dead_letter_file(
    runtime, seed_flights: pd.DataFrame, tmp_path: Path
):
    """A real fault: another connection adds a trigger that aborts every insert, so the runtime's write fails."""
    _refuse_inserts(tmp_path / LOG_FILE)
    scored = runtime.score(raw_records(seed_flights, 4))
    with pytest.raises(sqlite3.IntegrityError, match=REFUSED):
        runtime.write_log(scored)
    ids = [p["prediction_id"] for p in scored.predictions]
    (line,) = (tmp_path / DEAD_LETTER_FILE).read_text().splitlines()
    kept = json.loads(line)
    assert REFUSED in kept["error"]
    request = kept["request"]
    assert prediction_ids(request["key"], len(request["arm"])) == ids
    assert request["probability"] == [p["probability"] for p in scored.predictions]
    assert request["versions"] == {"champion": "1"} and len(request["features_digest"]) == 4
    assert request["features"]["carrier"] == list(scored.request_log.features["carrier"])
    with pytest.raises(PendingPrediction):  # answered moments ago and not in the log (kept for recover-log): retry
        runtime.feedback(ids[0], 1)


def test_the_log_thread_writes_queued_requests_and_counts_what_it_could_not(
    runtime, seed_flights: pd.DataFrame, tmp_path: Path
):
    first = runtime.score(raw_records(seed_flights, 5))
    runtime.log_later(first)
    runtime.feedback(first.predictions[-1]["prediction_id"], 0)  # waits for the thread's write
    assert all(runtime.log.get(p["prediction_id"]) for p in first.predictions)
    _refuse_inserts(tmp_path / LOG_FILE)  # a real fault, as above
    second = runtime.score(raw_records(seed_flights, 2, start=10))
    runtime.log_later(second)
    runtime.close()  # writes what is queued, then stops the thread
    assert runtime.log_failures == 2
    kept = json.loads((tmp_path / DEAD_LETTER_FILE).read_text())["request"]
    assert prediction_ids(kept["key"], 2) == [p["prediction_id"] for p in second.predictions]


def test_recovery_writes_what_the_dead_letter_file_kept_once_the_log_takes_writes_again(
    runtime, seed_flights: pd.DataFrame, tmp_path: Path, params: Params
):
    _refuse_inserts(tmp_path / LOG_FILE)
    scored = runtime.score(raw_records(seed_flights, 6))
    with pytest.raises(sqlite3.IntegrityError, match=REFUSED):
        runtime.write_log(scored)
    dead_letter = tmp_path / DEAD_LETTER_FILE
    dead_letter.write_bytes(dead_letter.read_bytes() * 2)  # the same request kept twice is logged once
    refused = recover_dead_letter(runtime.log, dead_letter)
    assert (refused.written, refused.kept) == (0, 2) and REFUSED in refused.errors[0]
    assert dead_letter.read_bytes().count(b"\n") == 2, "both lines went back to the file"

    with sqlite3.connect(tmp_path / LOG_FILE) as other:
        other.execute("DROP TRIGGER refuse")
    done = recover_dead_letter(runtime.log, dead_letter)
    assert (done.written, done.predictions, done.already_logged, done.kept) == (1, 6, 1, 0)
    assert not dead_letter.exists()
    for prediction in scored.predictions:
        logged = runtime.log.get(prediction["prediction_id"])
        assert (logged.probability, logged.arm) == (prediction["probability"], "champion")
    window = read_window(tmp_path / LOG_FILE, "1", "", 100, params.features.numeric, params.features.categorical)
    assert window.features["carrier"].tolist() == list(scored.request_log.features["carrier"])
    assert recover_dead_letter(runtime.log, dead_letter) == Recovery(), "nothing left to do"


def test_the_service_serves_the_registrys_champion_on_start_and_on_reload(
    registry_home: Registry, params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed_flights
):
    """The saved rollout state says v2 while the registry's champion is v1 (a rollback done while the service was
    down): the service starts on v1. A promotion made elsewhere (the alias moves to v2) is adopted when the service
    is asked (`reload`, what POST /admin/reload and a finished promotion call), never silently ignored."""
    from retrainer.io import registry
    from retrainer.serving.routing import RolloutState
    from retrainer.serving.state import save_state, state_path

    for key, value in registry_home.env.items():
        monkeypatch.setenv(key, value)
    assert registry.alias_version(registry_home.model_name, registry.CHAMPION) == "1"
    save_state(RolloutState(champion_version="2"), state_path(tmp_path))
    served = ServingRuntime(ServingConfig(root=ROOT, home=tmp_path, params=params, admin_token=None))
    try:
        assert served.state.champion_version == "1"
        assert {p["model_version"] for p in served.predict(raw_records(seed_flights, 3)).predictions} == {"1"}
        registry.set_alias(registry_home.model_name, registry.CHAMPION, "2")
        assert served.reload().champion_version == "2"
        assert {p["model_version"] for p in served.predict(raw_records(seed_flights, 3)).predictions} == {"2"}
    finally:
        registry.set_alias(registry_home.model_name, registry.CHAMPION, "1")
        served.close()
