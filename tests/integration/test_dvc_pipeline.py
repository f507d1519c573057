"""The real DVC pipeline in a temporary git repository on a small slice of the seed data."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from retrainer.io.tables import read_json
from retrainer.io.workspace import create_workspace, dvc, reproduce
from retrainer.stages import PROFILE, REGISTRATION

pytestmark = pytest.mark.integration
ALL_STAGES = {"validate", "reference@0", "reference@1", "ingest", "split", "train", "evaluate", "register"}


def small_params(source: Path, dest: Path) -> Path:
    """The real params with a three-week bootstrap and a two-candidate search, so the test stays fast."""
    raw = yaml.safe_load((source / "params.yaml").read_text())
    raw["data"]["bootstrap"] = {"start": "2013-01-01", "end": "2013-01-22"}
    raw["train"]["search"]["n_candidates"] = 2
    raw["evaluate"]["importance_rows"] = 500
    path = dest / "small-params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def workspace(project_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dvc")
    ws = create_workspace(project_root, tmp / "ws", small_params(project_root, tmp), git=True)
    home = ws / ".retrainer"
    env = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    first = reproduce(ws, env=env)
    return ws, env, first


def _set_params(ws: Path, mutate) -> None:
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    mutate(raw)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_first_repro_runs_every_stage_and_registers_a_tagged_version(workspace):
    ws, env, first = workspace
    assert set(first.ran) == ALL_STAGES
    registration = read_json(ws / REGISTRATION)
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    train_md5 = next(o["md5"] for o in lock["stages"]["split"]["outs"] if o["path"] == "data/processed/train.parquet")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(registration["model_name"], registration["version"])
    assert version.tags["data_md5"] == train_md5
    assert version.tags["git_commit"] == head
    assert version.tags["git_dirty"] in {"true", "false"}
    assert len(version.tags["params_hash"]) == 16
    run = client.get_run(registration["run_id"])
    assert run.data.metrics["holdout_roc_auc"] > 0.5
    assert run.inputs.dataset_inputs[0].dataset.digest == version.tags["dataset_digest"]
    artifacts = {a.path for a in client.list_artifacts(registration["run_id"], "plots")}
    assert {
        "plots/roc.png",
        "plots/pr.png",
        "plots/calibration.png",
        "plots/confusion_matrix.png",
        "plots/feature_importance.png",
    } <= artifacts


def test_the_register_stage_stores_the_reference_profile_with_the_version(workspace, params, tmp_path):
    ws, env, _ = workspace
    registration = read_json(ws / REGISTRATION)
    local = read_json(ws / PROFILE)
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    logged = client.download_artifacts(registration["run_id"], "reports/reference_profile.json", str(tmp_path))
    assert read_json(Path(logged)) == local
    assert set(local["features"]) == set(params.features.all)
    assert len(local["features"]["temp"]["sample"]) == params.monitor.drift.sample_rows
    assert local["metrics"]["roc_auc"] == read_json(ws / "models" / "metrics.json")["roc_auc"]
    assert abs(sum(local["prediction"]["shares"]) - 1) < 1e-9


def test_second_repro_with_nothing_changed_skips_every_stage(workspace):
    ws, env, _ = workspace
    again = reproduce(ws, env=env)
    assert again.ran == []
    assert set(again.skipped) == ALL_STAGES


def test_changing_a_training_param_reruns_only_the_stages_that_read_it(workspace):
    ws, env, _ = workspace
    before = read_json(ws / REGISTRATION)["version"]
    _set_params(ws, lambda raw: raw["train"].update(seed=43))
    rerun = reproduce(ws, env=env)
    assert set(rerun.ran) == {"train", "evaluate", "register"}
    assert {"validate", "ingest", "split"} <= set(rerun.skipped)
    assert int(read_json(ws / REGISTRATION)["version"]) == int(before) + 1


def _changed(ws: Path, env: dict) -> dict:
    """`dvc status --json`: stage name -> what changed ({} when everything is up to date)."""
    return json.loads(dvc(ws, "status", "--json", env=env).strip().splitlines()[-1])


def test_the_data_dependencies_come_from_params(workspace, project_root):
    ws, env, _ = workspace
    own = ws / "own"
    own.mkdir()
    shutil.copy2(project_root / "seeds" / "planes.parquet", own / "planes.parquet")
    _set_params(ws, lambda raw: raw["data"]["references"][1].update(path="own/planes.parquet"))
    assert "reference@1" in _changed(ws, env)
    rerun = reproduce(ws, env=env)
    assert "reference@1" in rerun.ran and "reference@0" in rerun.skipped
    assert _changed(ws, env) == {}

    planes = pd.read_parquet(own / "planes.parquet")
    planes.assign(seats=planes["seats"] + 1).to_parquet(own / "planes.parquet")
    changed = _changed(ws, env)
    assert list(changed) == ["reference@1"]
    assert {"changed deps": {"own/planes.parquet": "modified"}} in changed["reference@1"]
    rerun = reproduce(ws, env=env)
    assert {"reference@1", "ingest"} <= set(rerun.ran)

    shutil.copy2(project_root / "seeds" / "flights.parquet", own / "flights.parquet")
    _set_params(ws, lambda raw: raw["data"].update(batch_source="own/flights.parquet"))
    changed = _changed(ws, env)
    assert list(changed) == ["ingest"]
    assert changed["ingest"][0]["changed deps"]["own/flights.parquet"] == "modified"  # DVC's word for a new path
