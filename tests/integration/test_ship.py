"""`retrainer ship` end to end: the current code and params shipped through the gate with no new batch, on one git
workspace with real DVC and MLflow on SQLite. The tests run in order and share the workspace: the first ship (no
champion) through the Prefect flow, the same change again, a change that trains no new model, then a clearly better
and a clearly worse training params change, each committed as a merge would be."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from retrainer.io import registry
from retrainer.io.project import Workspace

pytestmark = pytest.mark.integration
MODEL = "flights-delay"
# the champion's search space: one modest candidate, so the better and worse changes below are clearly so
BASE_SPACE = {"learning_rate": [0.1], "max_leaf_nodes": [7], "min_samples_leaf": [50], "l2_regularization": [0.0]}


def _small_params(source: Path, dest: Path) -> Path:
    """The real params, made fast: a three-week bootstrap, one candidate of 10 iterations, small gate samples.

    As in test_retrain_flow.py, the floors (0.55 ROC AUC, 0.10 PR AUC) and the latency budget (2000 ms) are set
    below what this tiny setting reaches on a busy 2-core machine; the gate logic is untouched. The canary is off:
    a gate pass over a champion is packaged and promoted directly (the canary path, shared with the batch cycle
    through `roll_out`, is covered by test_retrain_flow.py)."""
    raw = yaml.safe_load((source / "params.yaml").read_text())
    raw["data"]["bootstrap"] = {"start": "2013-01-01", "end": "2013-01-22"}
    raw["train"]["search"].update(n_candidates=1)
    raw["train"]["search"]["space"]["hgb"] = {**BASE_SPACE, "max_iter": [10]}
    raw["evaluate"]["importance_rows"] = 300
    raw["gate"]["improvement"]["bootstrap_samples"] = 100
    raw["gate"]["latency_rows"] = 20
    raw["gate"]["slices"]["min_rows"] = 1000
    raw["gate"]["floors"] = {"roc_auc": 0.55, "pr_auc": 0.10}
    raw["gate"]["budgets"]["latency_p95_ms"] = 2000
    raw["canary"]["enabled"] = False
    path = dest / "ship-params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ws(project_root, tmp_path_factory, prefect_harness, workspace_environment):
    """A fresh git workspace with its own MLflow store and batch record; nothing trained, no champion."""
    from retrainer.io.workspace import create_workspace

    tmp = tmp_path_factory.mktemp("ship")
    workspace = create_workspace(project_root, tmp / "ws", _small_params(project_root, tmp), git=True)
    with workspace_environment(workspace, "ship-test-token"):
        yield workspace


@pytest.fixture(scope="module")
def memo() -> dict:
    """What earlier tests in this module observed, for the later ones."""
    return {}


def _commit(ws: Path, message: str) -> str:
    """Commit every tracked change (as a merge to main would bring it); return the new HEAD."""
    for args in (["add", "-A"], ["commit", "-q", "--allow-empty", "-m", message]):
        subprocess.run(["git", *args], cwd=ws, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, check=True, capture_output=True, text=True)
    return head.stdout.strip()


def _set_space(ws: Path, **space) -> None:
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["train"]["search"]["space"]["hgb"] = {**BASE_SPACE, **space}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _versions() -> set[str]:
    import mlflow

    return {str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{MODEL}'")}


def _ship(ws: Path, **options):
    from retrainer.app.ship import ship_change

    return ship_change(Workspace.at(ws), **options)


def test_the_first_ship_through_the_flow_trains_and_promotes_without_a_champion_and_names_the_commit(ws, memo):
    from flows.retrain import ship

    head = _commit(ws, "the project as merged")
    result = ship(root=str(ws))

    assert result["status"] == "promoted", result["reasons"]
    assert result["batch_id"].startswith(f"change-{head[:8]}-"), result["batch_id"]
    assert result["change"]["commit"] == head and "batch" not in result
    assert all(stage["ran"] for stage in result["stages"]), result["stages"]
    assert result["compared_champion"] is None and result["champion_version"] == result["challenger_version"]
    assert {c["name"].split(":")[0] for c in result["gate"]["checks"]} == {"floor", "budget"}
    tags = registry.version_tags(MODEL, result["challenger_version"])
    assert tags["git_commit"] == head and tags["batch_id"] == result["batch_id"]
    assert tags["validation"].startswith("no new batch"), tags["validation"]
    assert result["bento_tag"], "a gate pass is packaged before it is promoted"
    memo["first"] = result


def test_the_same_change_shipped_again_returns_its_recorded_outcome_without_work(ws, memo):
    before = _versions()
    result = _ship(ws)

    assert result.already_processed and result.status == "promoted"
    assert result.batch_id == memo["first"]["batch_id"]
    assert result.challenger_version == memo["first"]["challenger_version"]
    assert _versions() == before


def test_a_change_that_trains_no_new_model_has_nothing_to_ship_with_its_own_exit_code(ws, memo, monkeypatch):
    from retrainer.cli import EXIT_UNCHANGED, app

    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["monitor"]["window"]["hours"] = 72  # read by the monitor only: no stage trains again
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _commit(ws, "monitor over three days")
    before = _versions()
    monkeypatch.chdir(ws)
    done = CliRunner().invoke(app, ["ship"])

    assert done.exit_code == EXIT_UNCHANGED, done.output
    assert "UNCHANGED" in done.output and "no model change: nothing to ship" in done.output
    assert f"champion v{memo['first']['challenger_version']}" in done.output
    assert _versions() == before
    assert registry.alias_version(MODEL, registry.CHAMPION) == memo["first"]["challenger_version"]


def test_a_clearly_better_params_change_merged_elsewhere_is_checked_out_gated_and_promoted(ws, memo):
    champion = memo["first"]["challenger_version"]
    subprocess.run(["git", "checkout", "-q", "-b", "merged"], cwd=ws, check=True)
    _set_space(ws, max_iter=[60], max_leaf_nodes=[15])
    head = _commit(ws, "a larger model")
    subprocess.run(["git", "checkout", "-q", "-"], cwd=ws, check=True)  # the worker's checkout, before the merge
    result = _ship(ws, commit=head)  # as CD starts it: the merged commit

    here = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, check=True, capture_output=True, text=True)
    assert here.stdout.strip() == head, "the checkout was fast-forwarded to the merged commit"
    assert result.status == "promoted", result.reasons
    assert result.batch_id.startswith(f"change-{head[:8]}-")
    assert result.compared_champion == champion and result.challenger_version not in (None, champion)
    assert result.gate["passed"]
    assert result.metrics["challenger"]["roc_auc"] > result.metrics["champion"]["roc_auc"]
    assert registry.alias_version(MODEL, registry.CHAMPION) == result.challenger_version
    assert registry.version_tags(MODEL, result.challenger_version)["parent_champion"] == champion
    memo["better"] = result


def test_a_clearly_worse_params_change_is_rejected_and_the_champion_stays(ws, memo):
    champion = memo["better"].challenger_version
    _set_space(ws, max_iter=[1], max_leaf_nodes=[2])
    _commit(ws, "a model of one shallow tree")
    result = _ship(ws)

    assert result.status == "rejected", result.reasons
    assert result.compared_champion == champion and not result.gate["passed"]
    failed = [check["detail"] for check in result.gate["checks"] if not check["passed"]]
    assert failed and result.reasons == failed
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert registry.alias_version(MODEL, registry.CHALLENGER) is None
    forced = _ship(ws, force=True)
    assert forced.status == "rejected" and forced.reused and forced.challenger_version == result.challenger_version
