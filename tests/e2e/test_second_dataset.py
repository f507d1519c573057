"""The second bundled dataset (examples/car_loan: synthetic car loans) end to end through the real pieces, with
nothing but its params file: validation, `dvc repro` with no flights file in the workspace, a first champion, a
gated challenger canaried on a live `retrainer serve` and promoted, /predict and /feedback, a broken challenger
rolled back by the canary, a monitoring pass, and a verified rollback.

The tests run in order and share one workspace (as tests/integration/test_retrain_flow.py does on the flights).
Sizes are cut for time: a one-month bootstrap, a quarter of each month's loans per batch, a two-candidate search.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from retrainer.config import Params, load_params
from retrainer.demo import DemoData
from retrainer.io import registry

pytestmark = pytest.mark.integration
EXAMPLE = Path("examples") / "car_loan" / "params.yaml"
TOKEN = "second-dataset-test-token"
CANARY = {
    "steps": [50, 100],
    "min_requests_per_step": 100,
    "min_seconds_per_step": 0,
    "max_seconds_per_step": 90,
    "feedback_delay_seconds": 0.2,
}
STAGES = ["validate", "ingest", "split", "train", "evaluate", "register"]


def small_params(project_root: Path, dest: Path) -> Path:
    """The example's params with a one-month bootstrap, a two-month window and a two-candidate search.

    The latency budget is 2000 ms for the same reason as in test_retrain_flow (a shared 2-core machine would make
    it a load test); the canary keeps its thresholds but takes two steps of 100 requests with no minimum duration.
    """
    raw = yaml.safe_load((project_root / EXAMPLE).read_text())
    raw["data"]["bootstrap"] = {"start": "2018-09-01", "end": "2018-10-01"}
    raw["split"]["window_months"] = 2
    raw["train"]["search"]["n_candidates"] = 2
    raw["evaluate"]["importance_rows"] = 200
    raw["gate"]["latency_rows"] = 50
    raw["gate"]["budgets"]["latency_p95_ms"] = 2000
    raw["gate"]["improvement"]["bootstrap_samples"] = 100
    raw["canary"].update(CANARY)
    path = dest / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def ws(project_root, tmp_path_factory, prefect_harness, workspace_environment):
    """A fresh workspace on the example's params, with no flights seed in it (its `seeds` link is removed)."""
    from retrainer.io.workspace import create_workspace

    tmp = tmp_path_factory.mktemp("second-dataset")
    workspace = create_workspace(project_root, tmp / "ws", small_params(project_root, tmp), git=True)
    (workspace / "seeds").unlink()
    with workspace_environment(workspace, TOKEN):
        yield workspace


def ws_params(ws: Path) -> Params:
    return load_params(ws / "params.yaml")


def quarter(data: DemoData, month: str, staging: Path, name: str) -> Path:
    """Every 4th loan of a month (about 1,250), as the CSV batch a provider would deliver."""
    full = data.write_batch(pd.Period(month, "M"), staging / "full")
    header, *rows = full.read_text().splitlines(keepends=True)
    path = staging / name
    path.write_text(header + "".join(rows[::4]))
    return path


@pytest.fixture(scope="module")
def batches(ws, tmp_path_factory) -> dict[str, Path]:
    """Batches of Oct, Nov, Dec 2018 (a quarter each), and December as canary traffic."""
    staging = tmp_path_factory.mktemp("provider")
    data = DemoData.from_params(ws_params(ws), ws)
    return {
        "oct": quarter(data, "2018-10", staging, "car_loan-2018-10.csv"),
        "nov": quarter(data, "2018-11", staging, "car_loan-2018-11.csv"),
        "dec-traffic": quarter(data, "2018-12", staging, "traffic-2018-12.csv"),
    }


@pytest.fixture(scope="module")
def memo() -> dict:
    """What earlier tests observed, for the later ones."""
    return {}


def test_validation_applies_the_datasets_own_rules_with_one_key_column(ws, batches, tmp_path):
    from retrainer.app.validate import validate_batch
    from retrainer.io.project import Workspace

    params = ws_params(ws)
    assert validate_batch(batches["oct"], params, Workspace.at(ws)).passed
    frame = pd.read_csv(batches["oct"])
    frame.loc[1, "id"] = frame.loc[0, "id"]
    frame.loc[2, "salary_range"] = "100K+"
    bad = tmp_path / "car_loan-2018-10-bad.csv"
    frame.to_csv(bad, index=False)
    outcome = validate_batch(bad, params, Workspace.at(ws))
    assert not outcome.passed
    failed = {f["check"]: f for f in outcome.failures}
    assert failed["unique_key"]["expectation"] == "expect_column_values_to_be_unique"
    assert failed["unique_key"]["column"] == "id"
    assert failed["categories.salary_range"]["examples"] == ["100K+"]
    assert outcome.quarantine_dir and Path(outcome.quarantine_dir).is_dir()


def test_dvc_repro_bootstraps_from_the_params_data_paths_alone(ws):
    from retrainer.io.workspace import dvc, reproduce

    assert not (ws / "seeds").exists()
    first = reproduce(ws)
    assert first.ran == STAGES
    assert "Data and pipelines are up to date" in dvc(ws, "status")
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    assert "examples/car_loan/car_loan.parquet" in {d["path"] for d in lock["stages"]["ingest"]["deps"]}
    assert not any(name.startswith("reference@") for name in lock["stages"])


def set_feature_selection(ws: Path, k: int | None) -> None:
    """Keep only the `k` most informative features (None: all of them) in the next training."""
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["train"]["feature_selection"] = {"enabled": k is not None, "method": "mutual_info", "k": k or 1}
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


def test_the_first_batch_makes_the_first_champion(ws, batches, memo):
    """A deliberately weak first champion (its two most informative features only), so the next challenger,
    trained on all seven, is better for real and the canary has something to promote."""
    from flows.retrain import retrain

    set_feature_selection(ws, 2)
    result = retrain(batch=str(batches["oct"]), root=str(ws))
    memo["first"] = result
    assert result["status"] == "promoted", result["reasons"]
    name = ws_params(ws).tracking.registered_model
    assert registry.alias_version(name, registry.CHAMPION) == result["challenger_version"]
    assert result["metrics"]["challenger"]["roc_auc"] > 0.6


def test_the_service_scores_loans_and_takes_their_labels(ws, batches, workspace_service, memo):
    from retrainer.app.canary import labelled_traffic

    running = workspace_service(ws)
    params = ws_params(ws)
    records, labels = labelled_traffic(pd.read_csv(batches["nov"]).head(5), params)
    assert "repaid" not in records[0] and "id" in records[0]
    response = httpx.post(f"{running.url}/predict", json={"records": records}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert {p["model_version"] for p in predictions} == {memo["first"]["champion_version"]}
    assert all(0 <= p["probability"] <= 1 for p in predictions)
    feedback = {"prediction_id": predictions[0]["prediction_id"], "label": labels[0]}
    assert httpx.post(f"{running.url}/feedback", json=feedback, timeout=30).status_code == 200
    missing = {k: v for k, v in records[0].items() if k != "car_value"}
    refused = httpx.post(f"{running.url}/predict", json={"records": [missing]}, timeout=30)
    assert refused.status_code == 400 and "car_value" in refused.text


def test_a_gated_challenger_is_canaried_on_the_live_service_and_promoted(ws, batches, workspace_service, memo):
    from flows.retrain import retrain

    running = workspace_service(ws)
    champion = memo["first"]["champion_version"]
    set_feature_selection(ws, None)
    result = retrain(batch=str(batches["nov"]), root=str(ws), canary_traffic=str(batches["dec-traffic"]))
    memo["promoted"] = result
    assert result["gate"]["passed"], result["gate"]["reasons"]
    assert result["status"] == "promoted", result["reasons"]
    assert result["compared_champion"] == champion
    assert result["metrics"]["challenger"]["roc_auc"] > result["metrics"]["champion"]["roc_auc"]
    steps = result["canary"]["steps"]
    assert [s["weight"] for s in steps] == CANARY["steps"]
    assert all(s["replay"]["failed"] == 0 for s in steps)
    rollout = httpx.get(f"{running.url}/rollout", timeout=10).json()
    assert rollout["champion_version"] == result["challenger_version"] == result["champion_version"]


def register_broken(ws: Path) -> str:
    """A real pipeline trained on one more feature than the service builds: every prediction it makes raises."""
    from retrainer.io.tracking import log_training_run
    from retrainer.stages import TRAIN
    from retrainer.steps.train import build_pipeline

    params = ws_params(ws)
    frame = pd.read_parquet(ws / TRAIN).iloc[::5].assign(not_built_when_serving=1.0)
    numeric = [*params.features.numeric, "not_built_when_serving"]
    categorical = list(params.features.categorical)
    model = build_pipeline(numeric, categorical, params.train)
    model.fit(frame[[*numeric, *categorical]], frame[params.data.target.name])
    return log_training_run(
        experiment=params.tracking.experiment,
        model_name=params.tracking.registered_model,
        model=model,
        features=[*numeric, *categorical],
        train_frame=frame,
        tags={"threshold": "0.5"},
    ).version


def test_a_broken_challenger_is_rolled_back_by_the_canary(ws, batches, workspace_service, memo):
    from flows.canary import canary

    running = workspace_service(ws)
    params = ws_params(ws)
    name, champion = params.tracking.registered_model, memo["promoted"]["champion_version"]
    broken = register_broken(ws)
    registry.set_alias(name, registry.CHALLENGER, broken)
    result = canary.fn(
        base_url=running.url,
        model_name=name,
        challenger_version=broken,
        expected_champion=champion,
        traffic=str(batches["dec-traffic"]),
        steps=[10, 100],
        policy=params.canary,
        root=ws,
        home=ws / ".retrainer",
    )
    assert result["outcome"] == "rolled_back", result
    assert [s["weight"] for s in result["steps"]] == [10]
    assert any("error rate" in r for r in result["steps"][0]["decision"]["reasons"])
    assert registry.alias_version(name, registry.CHAMPION) == champion
    assert registry.alias_version(name, registry.CHALLENGER) is None


def test_a_monitoring_pass_judges_the_champions_served_loans(ws, batches, workspace_service):
    from flows.monitor import monitor
    from retrainer.app.canary import load_traffic
    from retrainer.serving.replay import replay

    running = workspace_service(ws)
    params = ws_params(ws)
    records, labels = load_traffic(batches["dec-traffic"], params)
    served = replay(running.url, records, labels, max_requests=len(records), timeout_s=300, batch_size=100)
    assert served.failed == 0
    result = monitor(root=str(ws))
    assert result["status"] == "ok", result
    assert result["model_version"] == registry.alias_version(params.tracking.registered_model, registry.CHAMPION)
    assert result["rows"] >= params.monitor.window.min_predictions
    assert result["drift_share"] is not None


def test_rollback_restores_the_previous_champion_and_verifies_it(ws, workspace_service, memo):
    from retrainer.serving.rollback import rollback

    running = workspace_service(ws)
    params = ws_params(ws)
    report = rollback(params, ws, service_url=running.url, admin_token=TOKEN)
    previous = memo["first"]["champion_version"]
    assert report.verified, report.to_dict()
    assert report.service is not None and report.service["verified"], report.service
    assert registry.alias_version(params.tracking.registered_model, registry.CHAMPION) == previous
    assert httpx.get(f"{running.url}/rollout", timeout=10).json()["champion_version"] == previous
