"""Two real retrain cycles from two workspaces (two "machines": separate folders, homes and DVC caches) sharing one
PostgreSQL registry and one S3 object store. Both compare their challenger against the same champion; exactly one
promotes, the other ends "stale champion", and each version's lineage names its own data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from team_kit import create_team_workspace, cut_batch, team_environment, write_team_params

from retrainer.io.backend import DATABASE_ENV

pytestmark = pytest.mark.team

CYCLE_TIMEOUT_S = 1500  # a small retrain took 1-3 min on a loaded 2-core machine; two run at once here
# One retrain cycle in a child process; with a "hold" argument it stops right after reading the champion it compares
# against (mark_challenger), says so, and goes on when told: both machines then hold the same expectation.
CYCLE = """
import json, sys
from pathlib import Path
from retrainer.app import retrain
from retrainer.io.project import Workspace

def mark(name, version):
    expected = retrain.mark_challenger(name, version)
    if sys.argv[3] == "hold":
        print(json.dumps({"compared": expected}), flush=True)
        sys.stdin.readline()
    return expected

steps = retrain.RetrainSteps(mark_challenger=mark)
result = retrain.retrain_batch(Path(sys.argv[2]), Workspace.at(sys.argv[1]), steps=steps)
print(json.dumps(result.to_dict(), default=str), flush=True)
"""


@pytest.fixture
def team_env(fresh_database, s3_server):
    """The environment of both machines: registry and state on PostgreSQL, artifacts and DVC remote in one bucket."""
    return team_environment(fresh_database, s3_server, "two-machines")


def _cycle(workspace: Path, batch: Path, env: dict, hold: bool) -> subprocess.Popen:
    command = [sys.executable, "-c", CYCLE, str(workspace), str(batch), "hold" if hold else "run"]
    return subprocess.Popen(command, cwd=workspace, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate(timeout=CYCLE_TIMEOUT_S)
    assert process.returncode == 0, out[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_machines_retrain_against_one_champion_and_exactly_one_promotes(project_root, team_env, tmp_path):
    from retrainer.io import registry
    from retrainer.io.batches import batch_id

    params_file = write_team_params(project_root, tmp_path)
    machines = [
        create_team_workspace(project_root, tmp_path / name, params_file, team_env)
        for name in ("machine-a", "machine-b")
    ]
    assert all("s3://two-machines/dvc" in (m / ".dvc" / "config").read_text() for m in machines)
    batches = {month: cut_batch(project_root, month, tmp_path / "provider", every=8) for month in (2, 3, 4)}

    first = _result(_cycle(machines[0], batches[2], team_env, hold=False))
    assert first["status"] == "promoted", first["reasons"]
    champion = first["challenger_version"]

    racing = [
        _cycle(machines[0], batches[3], team_env, hold=True),
        _cycle(machines[1], batches[4], team_env, hold=True),
    ]
    for process in racing:  # both have registered a challenger and read the champion before either gates it
        assert json.loads(process.stdout.readline()) == {"compared": champion}
    for process in racing:
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [_result(process) for process in racing]

    statuses = sorted(result["status"] for result in results)
    assert statuses == ["promoted", "rejected"], [(r["status"], r["reasons"]) for r in results]
    winner, loser = sorted(results, key=lambda r: r["status"] != "promoted")
    assert any(reason.startswith(registry.STALE) for reason in loser["reasons"]), loser["reasons"]
    assert winner["compared_champion"] == loser["compared_champion"] == champion

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATABASE_ENV, team_env[DATABASE_ENV])
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        from retrainer.io.tracking import connect

        connect(tmp_path)
        model = yaml.safe_load(params_file.read_text())["tracking"]["registered_model"]
        assert registry.alias_version(model, registry.CHAMPION) == winner["challenger_version"]
        for result, batch in zip(results, (batches[3], batches[4]), strict=True):
            tags = registry.version_tags(model, result["challenger_version"])
            assert tags["batch_id"] == batch_id(batch) == result["batch_id"], "each version names its own data"
    assert not any((m / ".retrainer" / "mlflow.db").exists() for m in machines)
    assert not any((m / ".retrainer" / "batches.db").exists() for m in machines)
