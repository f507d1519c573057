"""Two workspaces (two "machines": separate folders, separate homes, so separate file locks) share one MLflow
registry on a real PostgreSQL: compare-and-set promotion holds across them under the database's advisory lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from retrainer.io import registry
from retrainer.io.backend import DATABASE_ENV, DatabaseUnreachable, advisory_lock, connect_database

pytestmark = pytest.mark.team

MODEL = "shared-model"
RACERS = 4  # two processes per workspace, each with its own version
START_TIMEOUT_S = 600  # a child imports MLflow and opens the store: minutes on a loaded 2-core machine

RACE = """
import json, sys
from retrainer.io import registry
from retrainer.io.project import Workspace
from retrainer.io.tracking import connect
connect()
workspace = Workspace.at(sys.argv[1])
expected = registry.alias_version(sys.argv[2], registry.CHAMPION)
print("ready", expected, flush=True)
sys.stdin.readline()
outcome = registry.promote_if_current(sys.argv[2], sys.argv[3], expected, workspace.registry_lock)
print(json.dumps([outcome.promoted, outcome.champion_version, outcome.reason]), flush=True)
"""

HOLD = """
import sys, time
from retrainer.io.backend import advisory_lock
with advisory_lock(sys.argv[1], "held-by-a-child"):
    print("holding", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def shared_registry(fresh_database, tmp_path):
    """A fresh PostgreSQL database as RETRAINER_DATABASE_URL (MLFLOW_TRACKING_URI unset, so MLflow derives its store
    from it), holding versions 1..5 of a model with v1 the champion."""
    import mlflow

    from retrainer.io.tracking import connect

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATABASE_ENV, fresh_database)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        assert connect(tmp_path) == fresh_database
        client = mlflow.MlflowClient()
        client.create_registered_model(MODEL)
        for _ in range(RACERS + 1):
            client.create_model_version(MODEL, source=(tmp_path / "artifacts").as_uri())
        registry.set_alias(MODEL, registry.CHAMPION, "1")
        yield fresh_database
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def _start_racer(workspace, version: str) -> subprocess.Popen:
    env = {**os.environ, "RETRAINER_HOME": str(workspace / ".retrainer")}
    command = [sys.executable, "-c", RACE, str(workspace), MODEL, version]
    return subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_racers_on_two_workspaces_sharing_a_postgresql_registry_promote_exactly_once(shared_registry, tmp_path):
    workspaces = [tmp_path / "machine-a", tmp_path / "machine-b"]
    racers = [_start_racer(workspaces[i % 2], str(i + 2)) for i in range(RACERS)]
    try:
        for racer in racers:  # every racer has read the champion before any of them tries to move it
            assert racer.stdout.readline().split() == ["ready", "1"]
        for racer in racers:
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outcomes = {str(i + 2): json.loads(racer.stdout.readline()) for i, racer in enumerate(racers)}
    finally:
        for racer in racers:
            racer.wait(timeout=START_TIMEOUT_S)
    winners = [version for version, (promoted, _, _) in outcomes.items() if promoted]
    assert len(winners) == 1, outcomes
    (winner,) = winners
    assert registry.alias_version(MODEL, registry.CHAMPION) == winner
    for version, (promoted, seen, reason) in outcomes.items():
        if version != winner:
            assert not promoted and seen == winner, outcomes
            assert reason == f"{registry.STALE}: champion is v{winner}, compared against v1"
    assert [racer.returncode for racer in racers] == [0] * RACERS
    assert all((w / ".retrainer").is_dir() for w in workspaces), "each machine used its own home"
    assert not any((w / ".retrainer" / "registry.lock").exists() for w in workspaces), "no file lock was used"
    assert not any((w / ".retrainer" / "mlflow.db").exists() for w in workspaces), "no SQLite store was created"


def test_a_killed_holder_of_the_advisory_lock_does_not_block_the_next(fresh_database):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, fresh_database], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        import sqlalchemy as sa

        with (
            pytest.raises(sa.exc.OperationalError, match="lock timeout"),
            advisory_lock(fresh_database, "held-by-a-child", timeout_s=0.5),
        ):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    started = time.perf_counter()
    with advisory_lock(fresh_database, "held-by-a-child", timeout_s=60):
        pass
    assert time.perf_counter() - started < 30, "the server released the dead holder's lock"


def test_an_unreachable_database_is_named_by_host_and_port():
    from retrainer.io.processes import free_port

    port = free_port()
    url = f"postgresql://someone:s3cret@127.0.0.1:{port}/team"
    with pytest.raises(DatabaseUnreachable) as caught, connect_database(url):
        pass
    message = str(caught.value)
    assert f"postgresql://127.0.0.1:{port}/team" in message and DATABASE_ENV in message
    assert "s3cret" not in message


def test_pointing_mlflow_at_an_unreachable_team_database_fails_at_once_naming_it(monkeypatch, tmp_path):
    from retrainer.io.processes import free_port
    from retrainer.io.tracking import connect

    port = free_port()
    monkeypatch.setenv(DATABASE_ENV, f"postgresql://postgres@127.0.0.1:{port}/retrainer")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(DatabaseUnreachable, match=f"127.0.0.1:{port}/retrainer"):
        connect(tmp_path)


def test_a_rollback_on_one_machine_moves_the_shared_champion_and_rollout_state_the_other_reads(
    shared_registry, tmp_path
):
    from retrainer.io.project import Workspace
    from retrainer.serving.rollback import restore_previous
    from retrainer.serving.state import load_state, state_path

    machine_a = Workspace.at(tmp_path / "machine-a", tmp_path / "machine-a" / ".retrainer")
    machine_b = Workspace.at(tmp_path / "machine-b", tmp_path / "machine-b" / ".retrainer")
    for workspace in (machine_a, machine_b):
        workspace.home.mkdir(parents=True)
    assert registry.promote_if_current(MODEL, "2", "1", machine_a.registry_lock).promoted
    assert load_state(state_path(machine_b.home)) is None

    assert restore_previous(MODEL, machine_b, expected_champion="2") == ("2", "1")
    assert registry.alias_version(MODEL, registry.CHAMPION) == "1"
    seen_by_a = load_state(state_path(machine_a.home))
    assert seen_by_a is not None and seen_by_a.champion_version == "1" and seen_by_a.challenger_version is None
    assert not any((w.home / "rollout.json").exists() for w in (machine_a, machine_b)), "state is in the database"


def test_the_monitors_trigger_state_is_shared_through_the_database(fresh_database, tmp_path, monkeypatch):
    from retrainer.io.monitoring import load_trigger_state, save_trigger_state
    from retrainer.steps.trigger import TriggerState

    monkeypatch.setenv(DATABASE_ENV, fresh_database)
    assert load_trigger_state(tmp_path / "a") == TriggerState()
    fired = TriggerState(armed=False, consecutive=3, last_fired="2026-11-30T12:00:00+00:00", champion_version="2")
    save_trigger_state(tmp_path / "a", fired)
    assert load_trigger_state(tmp_path / "b") == fired
    assert not (tmp_path / "a").exists(), "no file under the first home"
