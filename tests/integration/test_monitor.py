"""Monitoring on the real seed flights: a model trained on January-February, served traffic logged through the real
serving runtime, feedback labels, and monitoring passes against its reference profile in a real MLflow registry.

Measured with the params defaults (5,000 served flights a month, all labelled): March drifts on 7 of 21 features
(weather and month) with ROC AUC at the reference; September drifts on 11 of 21 and ROC AUC falls about 0.06 below
the reference. The tests in this module run in order and share one home.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrainer.config import Params
from retrainer.demo import DemoData
from retrainer.io import monitoring as store
from retrainer.io import registry
from retrainer.io.project import Workspace

pytestmark = pytest.mark.integration
ROWS_PER_MONTH = 5000
START = datetime.now(UTC)


def _window_of(params: Params, rows: int) -> Params:
    """The params with the window cut to the newest `rows` predictions, so each month is judged on its own."""
    window = params.monitor.window.model_copy(update={"max_predictions": rows})
    return params.model_copy(update={"monitor": params.monitor.model_copy(update={"window": window})})


@pytest.fixture(scope="module")
def home(tmp_path_factory, params: Params, seed_flights: pd.DataFrame, references: dict[str, pd.DataFrame]):
    """A home whose champion v1 is a real pipeline fitted on January-February with its reference profile."""
    import mlflow
    from threadpoolctl import threadpool_limits

    from retrainer.io.project import pseudonymisation_key
    from retrainer.steps.ingest import integrate
    from retrainer.steps.split import split_by_time
    from retrainer.steps.train import build_pipeline

    path = tmp_path_factory.mktemp("monitor-home")
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(limits=1):
        patch.setenv("RETRAINER_HOME", str(path))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
        patch.delenv("RETRAINER_PARAMS", raising=False)
        patch.delenv("RETRAINER_ALERT_WEBHOOK", raising=False)
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        raw = seed_flights.loc[seed_flights["month"] <= 2].reset_index(drop=True)
        frame, _ = integrate(raw, references, params.data, pseudonymisation_key())
        train, holdout = split_by_time(frame, params.data.time_column, params.split.holdout_fraction)
        numeric, categorical = list(params.features.numeric), list(params.features.categorical)
        features, label = params.features.all, params.data.target.name
        model = build_pipeline(numeric, categorical, params.train).fit(train[features], train[label])
        proba = model.predict_proba(holdout[features])[:, 1]
        assert store.register_with_profile(params, model, train, holdout[label].to_numpy(), proba, 0.5) == "1"
        registry.set_alias(params.tracking.registered_model, registry.CHAMPION, "1")
        yield path
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def runtime(home: Path, project_root: Path, params: Params):
    from retrainer.serving.runtime import ServingConfig, ServingRuntime

    served = ServingRuntime(ServingConfig(root=project_root, home=home, params=params, admin_token=None))
    yield served
    served.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder whose inbox the trigger looks at (the monitor never writes into it)."""
    return tmp_path_factory.mktemp("monitor-ws")


def serve_month(runtime, seed_flights: pd.DataFrame, month: int) -> int:
    """Send a month's flights (evenly spaced, cancelled ones left out) through the runtime; feed every label back."""
    flights = seed_flights.loc[(seed_flights["month"] == month) & seed_flights["arr_delay"].notna()]
    flights = flights.iloc[np.linspace(0, len(flights) - 1, ROWS_PER_MONTH).astype(int)]
    labels = (flights["arr_delay"] > 15).astype(int).tolist()
    leaking = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]
    records = json.loads(flights.drop(columns=leaking).to_json(orient="records", date_format="iso"))
    for first in range(0, len(records), 500):
        scored = runtime.predict(records[first : first + 500])
        for prediction, label in zip(scored.predictions, labels[first : first + 500], strict=True):
            runtime.feedback(prediction["prediction_id"], label)
    return len(records)


class Retrains:
    """Stands in for the inbox drain: records each call instead of training."""

    def __init__(self):
        self.calls: list[Path] = []

    def __call__(self, root: Path) -> list[dict]:
        self.calls.append(root)
        return [{"batch": "flights-2013-09.csv", "status": "promoted", "reasons": ["stand-in retrain"]}]


@pytest.fixture(scope="module")
def retrains() -> Retrains:
    return Retrains()


def test_served_features_are_logged_with_each_prediction(runtime, home, seed_flights, params):
    assert serve_month(runtime, seed_flights, 3) == ROWS_PER_MONTH
    window = store.read_window(
        home / "predictions.db", "1", "", 10**6, params.features.numeric, params.features.categorical
    )
    assert len(window.proba) == ROWS_PER_MONTH and len(window.labels) == ROWS_PER_MONTH
    assert list(window.features.columns) == params.features.all
    assert set(window.features["month"]) == {3.0}
    assert set(window.features["origin"].astype(str)) == {"EWR", "JFK", "LGA"}
    assert window.features["wind_gust"].isna().mean() > 0.3, "missing weather stays missing (NULL), not 0"


def test_march_drifts_on_weather_but_does_not_alarm_or_retrain(home, workspace, params, retrains, project_root):
    from retrainer.app.monitor import monitor_pass

    DemoData.from_params(params, project_root).write_batch(
        pd.Period("2013-03", "M"), workspace / params.retrain.inbox_dir
    )
    result = monitor_pass(_window_of(params, ROWS_PER_MONTH), Workspace.at(workspace), retrains, now=START).to_dict()

    assert result["status"] == "ok" and result["rows"] == ROWS_PER_MONTH and result["labelled"] == ROWS_PER_MONTH
    assert 0.2 < result["drift_share"] < params.monitor.drift.share_max
    assert {"month", "temp"} <= set(result["details"]["assessment"]["features"]) and "temp" in result[
        "drifted_features"
    ]
    assert abs(result["rolling_auc"] - result["reference_auc"]) < 0.03
    assert result["prediction_psi"] < params.monitor.drift.prediction_psi_max
    assert not result["alarm"] and not result["fired"] and result["reason"] == "no alarm"
    assert retrains.calls == []


def test_september_alarms_and_fires_one_retrain_after_two_passes(
    runtime, home, workspace, params, retrains, seed_flights, project_root
):
    from retrainer.app.monitor import monitor_pass

    serve_month(runtime, seed_flights, 9)
    shutil.rmtree(workspace / params.retrain.inbox_dir)
    DemoData.from_params(params, project_root).write_batch(
        pd.Period("2013-09", "M"), workspace / params.retrain.inbox_dir
    )
    september = _window_of(params, ROWS_PER_MONTH)

    first = monitor_pass(september, Workspace.at(workspace), retrains, now=START + timedelta(hours=1)).to_dict()
    assert first["alarm"] and first["drift_share"] >= params.monitor.drift.share_max
    assert first["reference_auc"] - first["rolling_auc"] >= params.monitor.performance.max_drop
    assert not first["fired"] and first["reason"] == "consecutive: alarm 1/2 passes"

    second = monitor_pass(september, Workspace.at(workspace), retrains, now=START + timedelta(hours=2)).to_dict()
    assert second["fired"] and second["reason"].startswith("fired: drift_share")
    assert "performance_drop" in second["reason"]
    assert retrains.calls == [workspace]
    assert second["retrain"] == [
        {
            "batch": "flights-2013-09.csv",
            "batch_id": None,
            "status": "promoted",
            "challenger_version": None,
            "champion_version": None,
            "reason": "stand-in retrain",
        }
    ]

    third = monitor_pass(september, Workspace.at(workspace), retrains, now=START + timedelta(hours=3)).to_dict()
    assert third["alarm"] and not third["fired"] and third["reason"].startswith("hysteresis: not re-armed")
    assert len(retrains.calls) == 1, "a persisting signal must not start a second retrain"


def test_every_decision_is_recorded_and_the_latest_figures_reach_the_metrics(home, params):
    from retrainer.serving.monitor_gauges import MonitorGauges

    decisions = store.read_decisions(home)
    assert [(d["alarm"], d["fired"]) for d in decisions] == [(False, False), (True, False), (True, True), (True, False)]
    assert all(d["reason"] and d["model_version"] == "1" for d in decisions)
    assert decisions[1]["pending_labelled_rows"] > params.monitor.trigger.min_new_labels

    latest = json.loads((home / "monitor" / "latest.json").read_text())
    report = Path(latest["report"]["html"])
    assert report.read_text().count('<img src="data:image/png;base64,') >= 2
    assert Path(latest["report"]["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gauges = MonitorGauges(home / "monitor" / "latest.json")
    text = gauges.text()
    assert f'retrainer_monitor_drift_share{{model_version="1"}} {float(latest["drift_share"])!r}' in text
    assert 'retrainer_monitor_trigger_armed{model_version="1"} 0' in text
    assert 'retrainer_monitor_feature_drifted{model_version="1",feature="temp"} 1' in text
    assert gauges.text() is text, "unchanged file: the cached text, no re-read"


def test_the_monitor_flow_publishes_its_report_and_alert_as_prefect_artifacts(home, workspace, params, prefect_harness):
    import yaml
    from prefect.artifacts import Artifact

    from flows.monitor import monitor

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    raw["monitor"]["window"]["max_predictions"] = ROWS_PER_MONTH
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    result = monitor(root=str(workspace))
    assert result["alarm"] and not result["fired"], "still disarmed after the September retrain"
    report = Artifact.get("monitor-report")
    assert "# Monitor v1: ALARM" in report.data and "suppressed" in report.data and "hysteresis" in report.data
    assert Artifact.get("monitor-alert").data == report.data
    link = Artifact.get("monitor-report-link")
    assert f"({Path(result['report']['html']).as_uri()})" in link.data
    assert len(store.read_decisions(home)) == 5


def test_the_monitor_command_prints_json_and_exits_4_on_an_alarm(home, workspace, prefect_harness, monkeypatch):
    from typer.testing import CliRunner

    from retrainer.cli import EXIT_ALARM, app

    monkeypatch.chdir(workspace)  # the params file written by the flow test is the workspace's params.yaml
    outcome = CliRunner().invoke(app, ["monitor", "--json"])
    assert outcome.exit_code == EXIT_ALARM == 4, outcome.output
    printed = json.loads(outcome.stdout[outcome.stdout.index("{") :])
    assert printed["alarm"] and not printed["fired"] and printed["model_version"] == "1"
    assert printed["drifted_features"][:2] == ["month", "temp"]
    assert len(store.read_decisions(home)) == 6
