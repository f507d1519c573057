"""The canary flow over real HTTP on loopback: a good challenger is promoted, a constant one is rolled back.

The flow's body is called through `canary.fn`, so no Prefect API or server starts (artifacts are then skipped);
everything else is real: a `bentoml serve` subprocess, MLflow on SQLite in a temporary home, the prediction log,
real February flights replayed one per request with their labels posted as delayed feedback.
This module uses its own registry home, so the session-wide registry of the other serving tests is not touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TOKEN, Registry, Server, _register_versions, register_fitted, service_for

from flows.canary import canary
from retrainer.app.canary import labelled_traffic, merge
from retrainer.config import CanaryConfig, Params
from retrainer.io import registry
from retrainer.outcomes import CanaryOutcome
from retrainer.serving.replay import ReplayStats, replay

pytestmark = pytest.mark.integration

POLICY = CanaryConfig(
    steps=(50, 100),
    min_requests_per_step=40,
    min_seconds_per_step=0,
    max_seconds_per_step=60,
    max_error_rate=0.02,
    error_rate_tolerance=0.01,
    max_p95_latency_ratio=5.0,  # loopback timings of a few ms jitter; a real blow-up is far above this
    max_p95_latency_ms=2000,
    # v1 and v2 differ for real (max_iter 30 vs 60; thresholds 0.5 vs 0.3): on 3,000 February rows their PSI is
    # about 0.15-0.19, positive rates 0.35 vs 0.57, accuracy 0.63 vs 0.48. At ~50 requests per arm the sample PSI
    # of v1 vs v2 is ~0.7, a constant predictor's ~7: the limits below sit between, with margin on both sides.
    divergence_bins=5,
    max_divergence=1.5,
    min_agreement=0.6,
    min_labels=30,
    significance=0.001,  # ~50 labels per arm: only a gross accuracy drop is called (the table tests cover the rest)
    feedback_delay_seconds=0.2,
)


@pytest.fixture(scope="module")
def canary_registry(
    tmp_path_factory: pytest.TempPathFactory, params: Params, seed_flights: pd.DataFrame, references: dict
) -> Iterator[Registry]:
    """A home of its own with v1 (champion) and v2 (challenger); the env stays pointed at it for the module."""
    home = tmp_path_factory.mktemp("canary-home")
    env = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        _register_versions(params, seed_flights, references)
        yield Registry(home=home, env=env, model_name=params.tracking.registered_model)
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)


@pytest.fixture(scope="module")
def canary_server(canary_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = service_for(canary_registry, tmp_path_factory.mktemp("logs") / "serve.log")
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The canary reads the service's admin token from the environment, as in production."""
    monkeypatch.setenv("RETRAINER_ADMIN_TOKEN", TOKEN)


def _traffic(params: Params, seed_flights: pd.DataFrame, start: int, n: int) -> tuple[list[dict], list]:
    raw = seed_flights.loc[seed_flights["month"] == 2].iloc[start : start + n].reset_index(drop=True)
    return labelled_traffic(raw, params)


def _traffic_file(seed_flights: pd.DataFrame, start: int, n: int, folder: Path) -> str:
    """February flights with their outcomes, as a raw batch file the canary replays."""
    path = folder / f"traffic-{start}-{n}.parquet"
    seed_flights.loc[seed_flights["month"] == 2].iloc[start : start + n].to_parquet(path, index=False)
    return str(path)


def _run(server: Server, reg: Registry, challenger: str, champion: str, traffic: str) -> dict:
    return canary.fn(
        base_url=server.url,
        model_name=reg.model_name,
        challenger_version=challenger,
        expected_champion=champion,
        traffic=traffic,
        policy=POLICY,
        root=ROOT,
        home=reg.home,
    )


def _served_by(server: Server, records: list[dict]) -> set[tuple[str, str]]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text
    return {(p["arm"], p["model_version"]) for p in response.json()["predictions"]}


def test_good_challenger_is_promoted_through_every_step(
    canary_server: Server, canary_registry: Registry, params: Params, seed_flights: pd.DataFrame, tmp_path: Path
):
    name = canary_registry.model_name
    assert registry.alias_version(name, registry.CHAMPION) == "1"
    result = _run(canary_server, canary_registry, "2", "1", _traffic_file(seed_flights, 0, 600, tmp_path))

    assert result["outcome"] == CanaryOutcome.PROMOTED, result["reasons"]
    assert [s["weight"] for s in result["steps"]] == [50, 100]
    assert [s["decision"]["action"] for s in result["steps"]] == ["continue", "promote"]
    for step in result["steps"]:
        assert step["replay"]["failed"] == 0
        assert step["decision"]["numbers"]["challenger_requests"] >= POLICY.min_requests_per_step
        assert step["decision"]["numbers"]["challenger_error_rate"] == 0.0
    # labels came back through /feedback and were counted for the last step's accuracy comparison
    assert result["steps"][-1]["decision"]["numbers"]["challenger_labels"] >= POLICY.min_labels
    assert "challenger_accuracy" in result["steps"][-1]["decision"]["numbers"]

    assert registry.alias_version(name, registry.CHAMPION) == "2"
    assert registry.version_tags(name, "2")["canary_verdict"] == CanaryOutcome.PROMOTED
    rollout = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()
    assert (rollout["champion_version"], rollout["challenger_version"], rollout["challenger_weight"]) == ("2", None, 0)
    records, _ = _traffic(params, seed_flights, 1000, 20)
    assert _served_by(canary_server, records) == {("champion", "2")}


def _register_broken_model(params: Params, seed_flights: pd.DataFrame, references: dict, fault: str) -> str:
    """A real, logged sklearn pipeline that is broken in one way a bad retrain can be:

    - "constant": the classifier always answers 'not delayed' (probability 0);
    - "raises": it was trained on one more feature than the service builds, so every predict raises.
    """
    from sklearn.dummy import DummyClassifier

    if fault == "constant":
        broken = {"model": DummyClassifier(strategy="constant", constant=0)}
    else:
        broken = {"extra_feature": "not_built_when_serving"}
    return register_fitted(params, seed_flights, references, every=50, run_params={"model": fault}, **broken)


def test_constant_challenger_is_rolled_back_while_clients_keep_getting_answers(
    canary_server: Server,
    canary_registry: Registry,
    params: Params,
    seed_flights: pd.DataFrame,
    references: dict,
    tmp_path: Path,
):
    name = canary_registry.model_name
    champion = registry.alias_version(name, registry.CHAMPION)
    broken = _register_broken_model(params, seed_flights, references, "constant")
    registry.set_alias(name, registry.CHALLENGER, broken)

    result = _run(canary_server, canary_registry, broken, champion, _traffic_file(seed_flights, 2000, 600, tmp_path))

    assert result["outcome"] == CanaryOutcome.ROLLED_BACK, result
    assert len(result["steps"]) == 1  # stopped at the first step, never reached 100%
    decision = result["steps"][0]["decision"]
    assert decision["action"] == "rollback"
    assert any("diverge" in r for r in decision["reasons"]), decision["reasons"]
    assert decision["numbers"]["challenger_requests"] >= POLICY.min_requests_per_step
    traffic = result["steps"][0]["replay"]
    assert traffic["sent"] > 0 and traffic["failed"] == 0 and traffic["succeeded"] == traffic["sent"]
    assert traffic["by_arm"].get("challenger", 0) >= POLICY.min_requests_per_step

    assert registry.alias_version(name, registry.CHAMPION) == champion
    assert registry.alias_version(name, registry.CHALLENGER) is None
    tags = registry.version_tags(name, broken)
    assert tags["canary_verdict"] == CanaryOutcome.ROLLED_BACK and "diverge" in tags["canary_reasons"]
    rollout = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()
    assert (rollout["champion_version"], rollout["challenger_version"], rollout["challenger_weight"]) == (
        champion,
        None,
        0,
    )
    records, _ = _traffic(params, seed_flights, 3000, 20)
    assert _served_by(canary_server, records) == {("champion", champion)}


def test_raising_challenger_is_rolled_back_at_the_first_step_with_failures_bounded_by_its_weight(
    canary_server: Server,
    canary_registry: Registry,
    params: Params,
    seed_flights: pd.DataFrame,
    references: dict,
    tmp_path: Path,
):
    """Every request routed to this challenger fails (5xx); at a 10 % first step only about a tenth of the
    replayed requests fail, the error ceiling is crossed at the first look, and the challenger never gets more."""
    name = canary_registry.model_name
    champion = registry.alias_version(name, registry.CHAMPION)
    broken = _register_broken_model(params, seed_flights, references, "raises")
    registry.set_alias(name, registry.CHALLENGER, broken)

    result = canary.fn(
        base_url=canary_server.url,
        model_name=name,
        challenger_version=broken,
        expected_champion=champion,
        traffic=_traffic_file(seed_flights, 6000, 1000, tmp_path),
        steps=[10, 100],
        policy=POLICY,
        root=ROOT,
        home=canary_registry.home,
    )

    assert result["outcome"] == CanaryOutcome.ROLLED_BACK, result
    assert [s["weight"] for s in result["steps"]] == [10]
    decision = result["steps"][0]["decision"]
    assert any("error rate" in r for r in decision["reasons"]), decision["reasons"]
    traffic = result["steps"][0]["replay"]
    assert traffic["failed"] > 0 and traffic["succeeded"] > 0
    # sticky hashing sends ~10 % of keys to the challenger: the failed share stays near that, far from half
    assert traffic["failed"] <= 0.2 * traffic["sent"], traffic
    assert registry.alias_version(name, registry.CHAMPION) == champion
    assert registry.version_tags(name, broken)["canary_verdict"] == CanaryOutcome.ROLLED_BACK
    records, _ = _traffic(params, seed_flights, 7000, 20)
    assert _served_by(canary_server, records) == {("champion", champion)}


def test_canary_aborts_without_touching_traffic_when_the_champion_is_not_the_expected_one(
    canary_server: Server, canary_registry: Registry, seed_flights: pd.DataFrame, tmp_path: Path
):
    before = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()
    stale = "1" if before["champion_version"] != "1" else "2"
    result = _run(canary_server, canary_registry, "2", stale, _traffic_file(seed_flights, 4000, 50, tmp_path))
    assert result["outcome"] == CanaryOutcome.ABORTED
    assert result["steps"] == [] and f"expected v{stale}" in result["reasons"][0]
    assert httpx.get(f"{canary_server.url}/rollout", timeout=10).json() == before


def test_steps_override_is_validated_before_any_traffic(canary_server: Server, canary_registry: Registry):
    before = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()
    with pytest.raises(ValueError, match="end at 100"):
        canary.fn(
            base_url=canary_server.url,
            model_name=canary_registry.model_name,
            challenger_version="2",
            expected_champion=before["champion_version"],
            steps=[10, 50],
            policy=POLICY,
            root=ROOT,
            home=canary_registry.home,
        )
    assert httpx.get(f"{canary_server.url}/rollout", timeout=10).json() == before


def test_replay_refuses_anything_but_loopback():
    with pytest.raises(ValueError, match="loopback"):
        replay("http://example.com:3000", [{}], [1])
    with pytest.raises(ValueError, match="loopback"):
        replay("http://10.0.0.1:3000", [{}], [1])


def test_canary_without_the_admin_token_refuses_before_any_traffic(
    canary_server: Server, canary_registry: Registry, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("RETRAINER_ADMIN_TOKEN")
    before = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()
    with pytest.raises(ValueError, match="RETRAINER_ADMIN_TOKEN is not set"):
        _run(canary_server, canary_registry, "2", before["champion_version"], None)
    assert httpx.get(f"{canary_server.url}/rollout", timeout=10).json() == before


def test_canary_names_the_url_when_no_service_answers(canary_registry: Registry):
    from retrainer.io.processes import free_port

    with pytest.raises(RuntimeError, match=r"no retrainer service answers at http://127\.0\.0\.1"):
        canary.fn(
            base_url=f"http://127.0.0.1:{free_port()}",
            model_name=canary_registry.model_name,
            challenger_version="2",
            expected_champion="1",
            policy=POLICY,
            root=ROOT,
            home=canary_registry.home,
        )


def test_admin_rollback_over_http_restores_the_champion_the_canary_replaced(
    canary_server: Server, canary_registry: Registry, seed_flights: pd.DataFrame, params: Params
):
    """After the promotion of v2 above (and the constant challenger dropped), /admin/rollback brings v1 back."""
    name = canary_registry.model_name
    before = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()
    assert (before["champion_version"], before["previous_champion_version"]) == ("2", "1"), before
    response = httpx.post(
        f"{canary_server.url}/admin/rollback", json={}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["champion_version"] == "1"
    assert registry.alias_version(name, registry.CHAMPION) == "1"
    records, _ = _traffic(params, seed_flights, 5000, 20)
    assert _served_by(canary_server, records) == {("champion", "1")}


def test_cli_rollback_moves_the_registry_and_the_running_service_and_verifies_both(
    canary_server: Server, canary_registry: Registry, seed_flights: pd.DataFrame, params: Params
):
    """`retrainer rollback` with a service up: the alias moves back, the service is told (/admin/reload), and the
    golden set replayed over HTTP matches the predictions recorded for the restored version to 1e-9."""
    from retrainer.serving.rollback import record_golden_predictions, rollback

    name = canary_registry.model_name
    assert registry.alias_version(name, registry.CHAMPION) == "1"
    assert registry.version_tags(name, "1")["promoted_from"] == "2"
    record_golden_predictions("2", params, ROOT)

    report = rollback(params, ROOT, service_url=canary_server.url, admin_token=TOKEN)
    assert (report.from_version, report.to_version) == ("1", "2")
    assert report.verified, report.reason
    assert report.service is not None and report.service["verified"], report.service
    rollout = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()
    assert rollout["champion_version"] == "2" == registry.alias_version(name, registry.CHAMPION)
    records, _ = _traffic(params, seed_flights, 5100, 20)
    assert _served_by(canary_server, records) == {("champion", "2")}


def test_a_rollback_without_the_admin_token_reaches_the_service_through_the_saved_state(
    canary_server: Server, params: Params
):
    """Without the admin token the service is not told, but it shares the saved rollout state and adopts the restored
    champion within serve.state_refresh_seconds; the report verifies it by the golden replay over HTTP."""
    from retrainer.serving.rollback import record_golden_predictions, rollback

    record_golden_predictions("1", params, ROOT)
    report = rollback(params, ROOT, service_url=canary_server.url, admin_token=None)
    assert report.to_version == "1" and report.verified
    assert report.service is not None and report.service["verified"], report.service
    assert httpx.get(f"{canary_server.url}/rollout", timeout=10).json()["champion_version"] == "1"


def test_traffic_the_service_refuses_rolls_back_naming_the_refusal(
    canary_server: Server, canary_registry: Registry, seed_flights: pd.DataFrame, tmp_path: Path
):
    """Replayed rows without a required field: every request is a 400, and the rollback says so (not "traffic
    source exhausted"), with the field the service named."""
    name = canary_registry.model_name
    champion = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()["champion_version"]
    registry.set_alias(name, registry.CHAMPION, champion)  # earlier tests may have left the two apart
    challenger = "2" if champion == "1" else "1"
    registry.set_alias(name, registry.CHALLENGER, challenger)
    path = tmp_path / "no-carrier.parquet"
    seed_flights.loc[seed_flights["month"] == 2].iloc[:400].drop(columns=["carrier"]).to_parquet(path, index=False)

    result = _run(canary_server, canary_registry, challenger, champion, str(path))

    assert result["outcome"] == CanaryOutcome.ROLLED_BACK, result
    reason = result["steps"][0]["decision"]["reasons"][0]
    refused = r"all \d+ replayed requests failed \(400 x \d+; first: .*records\[0\]\.carrier: Field required"
    assert re.match(refused, reason), reason
    assert registry.alias_version(name, registry.CHAMPION) == champion


def test_replayed_traffic_carries_no_outcome_column(params: Params, seed_flights: pd.DataFrame):
    records, labels = _traffic(params, seed_flights, 0, 50)
    assert not set(params.data.outcome_columns) & set().union(*records)
    assert set(labels) <= {0, 1, None} and len(labels) == 50


CANARY_AND_DIE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from retrainer.io.promotion_journal import Phase, PromotionEntry, PromotionJournal, crash_point\n"
    "_, journal, model, champion, challenger = sys.argv\n"
    "PromotionJournal(Path(journal)).begin(PromotionEntry(model, champion, challenger, 'b1', ()))\n"
    "crash_point(Phase.INTENT)\n"
)


def test_a_run_killed_during_its_canary_is_undone_and_the_service_stops_sending_it_traffic(
    canary_server: Server, canary_registry: Registry, params: Params, tmp_path: Path
):
    """The service gives a challenger half the traffic (a canary under way) and the run that journalled the
    promotion is SIGKILLed (a real process, stopped by RETRAINER_CRASH_AFTER_PHASE=intent) before the alias moved.
    The next run's recovery undoes it: the service's share for the challenger is 0, its alias is gone, the champion
    is untouched."""
    import os
    import signal
    import subprocess
    import sys

    from retrainer.app.promotion import recover_promotion
    from retrainer.io.project import Workspace

    name = canary_registry.model_name
    champion = registry.alias_version(name, registry.CHAMPION)
    challenger = "1" if champion != "1" else "2"
    registry.set_alias(name, registry.CHALLENGER, challenger)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    reloaded = httpx.post(f"{canary_server.url}/admin/reload", json={}, headers=headers, timeout=120)
    assert reloaded.status_code == 200 and reloaded.json()["champion_version"] == champion, reloaded.text
    weighted = httpx.post(
        f"{canary_server.url}/admin/weights", json={"challenger_weight": 0.5}, headers=headers, timeout=60
    )
    assert weighted.status_code == 200 and weighted.json()["challenger_version"] == challenger, weighted.text

    workspace = Workspace(ROOT, tmp_path)
    env = {**os.environ, "RETRAINER_CRASH_AFTER_PHASE": "intent"}
    command = [sys.executable, "-c", CANARY_AND_DIE, str(workspace.promotion_journal), name, champion, challenger]
    assert subprocess.run(command, env=env, timeout=300).returncode == -signal.SIGKILL

    pointed = params.model_copy(update={"canary": params.canary.model_copy(update={"service_url": canary_server.url})})
    line = recover_promotion(pointed, workspace)
    assert line is not None and "undone" in line and f"traffic share for v{challenger} set to 0" in line, line
    rollout = httpx.get(f"{canary_server.url}/rollout", timeout=10).json()
    assert rollout["challenger_weight"] == 0 and rollout["champion_version"] == champion, rollout
    assert registry.alias_version(name, registry.CHALLENGER) is None
    assert registry.alias_version(name, registry.CHAMPION) == champion


def test_replay_counts_the_answered_records_that_have_no_label_to_send_back(
    canary_server: Server, params: Params, seed_flights: pd.DataFrame
):
    """A record whose target is missing (a cancelled flight has no arrival delay) is answered but has no feedback:
    the demo says how many, so "2,927 labels came back" for 3,000 records is explained."""
    raw = seed_flights.loc[seed_flights["month"] == 2]
    cancelled = raw.loc[raw["arr_delay"].isna()].head(3)
    records, labels = labelled_traffic(pd.concat([raw.head(7), cancelled], ignore_index=True), params)
    assert labels.count(None) == 3
    served = replay(canary_server.url, records, labels, max_requests=10, batch_size=5)
    assert (served.succeeded, served.failed) == (2, 0), served.failure_summary()
    assert (served.feedback_sent, served.unlabelled) == (7, 3)

    # a label list taken straight from a table has NaN or NA, not None (int(NaN) crashed); 0 is a label
    missing = (math.nan, np.float32("nan"), pd.NA)
    floats = [missing[i % 3] if label is None else float(label) for i, label in enumerate(labels)]
    assert labels.count(0) > 0
    again = replay(canary_server.url, records, floats, max_requests=10, batch_size=5)
    assert (again.feedback_sent, again.unlabelled, again.failed) == (7, 3, 0), again.failure_summary()
    total = ReplayStats()
    for part in (served, again):  # a canary step's running total keeps the count
        merge(total, part)
    assert total.unlabelled == 6
