"""The retrain flow end to end under Prefect's test harness, on a small DVC workspace, real MLflow on SQLite.

The tests in this module run in order and share one workspace: a first promotion, cached reruns, an honest
rejection, the inbox drain, and failures that must come back as a status rather than an exception. Faults and
concurrency around a cycle are in test_retrain_faults.py (a workspace of their own, so the two run side by side).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml
from retrain_kit import (
    CANARY,
    MODEL,
    TOKEN,
    batch_record,
    registered_versions,
    sample_batch,
    small_params,
)

from retrainer.io import registry
from retrainer.io.batches import batch_id
from retrainer.io.tables import read_json
from retrainer.stages import DATASET, TRAIN, TRAIN_REPORT, file_md5

pytestmark = pytest.mark.integration
ALL_STAGES = ("validate", "reference@0", "reference@1", "ingest", "split", "train", "evaluate", "register")


@pytest.fixture(scope="module")
def ws(project_root, tmp_path_factory, prefect_harness, workspace_environment):
    """A fresh workspace with its own MLflow store and run record; no bootstrap model, no champion."""
    from retrainer.io.workspace import create_workspace

    tmp = tmp_path_factory.mktemp("retrain-flow")
    workspace = create_workspace(project_root, tmp / "ws", small_params(project_root, tmp))
    with workspace_environment(workspace, TOKEN):
        yield workspace


@pytest.fixture(scope="module")
def batches(project_root, tmp_path_factory) -> dict[str, Path]:
    """Small real batches as a provider would drop them: 1/4 of February and March, 1/8 of April to July.

    `apr-traffic` is a quarter of April's flights as client traffic for the canary of the March challenger.
    """
    staging = tmp_path_factory.mktemp("provider")
    return {
        "feb": sample_batch(project_root, 2, staging, "flights-2013-02-sample.csv", every=4),
        "mar": sample_batch(project_root, 3, staging, "flights-2013-03-sample.csv", every=4),
        "apr": sample_batch(project_root, 4, staging, "flights-2013-04-sample.csv", every=8),
        "may": sample_batch(project_root, 5, staging, "flights-2013-05-sample.csv", every=8),
        "jun": sample_batch(project_root, 6, staging, "flights-2013-06-sample.csv", every=8),
        "jul": sample_batch(project_root, 7, staging, "flights-2013-07-sample.csv", every=8),
        "apr-traffic": sample_batch(project_root, 4, staging, "traffic-2013-04.csv", every=4),
    }


@pytest.fixture(scope="module")
def service(ws, workspace_service):
    """`retrainer serve` on the workspace, started on first use (it needs a champion), stopped with the module."""
    return lambda: workspace_service(ws)


@pytest.fixture(scope="module")
def memo() -> dict:
    """What earlier tests in this module observed (results, timings) for the later ones."""
    return {}


def test_first_batch_without_a_champion_is_gated_on_floors_and_budgets_and_promoted(ws, batches, memo):
    from flows.retrain import retrain

    started = time.perf_counter()
    result = retrain(batch=str(batches["feb"]), root=str(ws))
    memo["first_seconds"] = time.perf_counter() - started
    memo["first"] = result

    assert result["status"] == "promoted", result["reasons"]
    assert [s["stage"] for s in result["stages"]] == list(ALL_STAGES)
    assert all(s["ran"] for s in result["stages"]), result["stages"]
    checks = result["gate"]["checks"]
    names = [c["name"] for c in checks]
    assert names and all(n.startswith(("floor:", "budget:")) for n in names), names
    assert {"floor:roc_auc", "floor:pr_auc"} <= set(names)
    assert result["compared_champion"] is None
    version = result["challenger_version"]
    assert registry.alias_version(MODEL, registry.CHAMPION) == version == result["champion_version"]
    assert registry.alias_version(MODEL, registry.CHALLENGER) is None
    tags = registry.version_tags(MODEL, version)
    assert tags["gate_verdict"] == "pass"
    assert tags["batch_id"] == batch_id(batches["feb"]) == result["batch_id"]
    assert tags["parent_champion"] == "none"
    assert tags["data_md5"] == file_md5(ws / TRAIN)
    assert (ws / "data" / "batches" / f"{result['batch_id']}.csv").read_bytes() == batches["feb"].read_bytes()
    stored = batch_record(ws).get(result["batch_id"])
    assert stored["status"] == "promoted"
    assert stored["result"]["challenger_version"] == version


def test_rerunning_a_processed_batch_returns_its_recorded_outcome_without_work(ws, batches, memo):
    from flows.retrain import retrain

    before = registered_versions()
    result = retrain(batch=str(batches["feb"]), root=str(ws))
    assert result["already_processed"] is True
    assert result["status"] == memo["first"]["status"] == "promoted"
    assert result["challenger_version"] == memo["first"]["challenger_version"]
    assert result["stages"] == memo["first"]["stages"], "the recorded result, not a new run"
    assert registered_versions() == before


def test_a_renamed_copy_of_a_processed_batch_is_recognised_by_its_content(ws, batches, tmp_path, memo):
    from flows.retrain import retrain

    copy = tmp_path / "renamed.csv"
    shutil.copyfile(batches["feb"], copy)
    result = retrain(batch=str(copy), root=str(ws))
    assert result["already_processed"] is True
    assert result["batch_id"] == memo["first"]["batch_id"]


def _forced_rerun(ws: Path, batch: Path) -> tuple[dict, float]:
    from flows.retrain import retrain

    started = time.perf_counter()
    result = retrain(batch=str(batch), root=str(ws), force=True)
    return result, time.perf_counter() - started


def test_a_forced_rerun_with_nothing_changed_is_served_from_the_dvc_cache_and_keeps_the_lineage(ws, batches, memo):
    """All stages skipped by DVC, the recorded decision reused, and nothing re-tagged or re-promoted.

    The time bound is a generous behavioural check of the cache: no training, evaluation or registration.
    """
    before = registered_versions()
    version = memo["first"]["challenger_version"]
    result, seconds = _forced_rerun(ws, batches["feb"])

    assert [s["stage"] for s in result["stages"]] == list(ALL_STAGES)
    assert [s["stage"] for s in result["stages"] if s["ran"]] == []
    assert result.get("reused") is True
    assert result["status"] == "promoted"
    assert result["challenger_version"] == version
    assert registered_versions() == before, "a rerun of the same data must not register a new version"
    assert registry.alias_version(MODEL, registry.CHAMPION) == version
    tags = registry.version_tags(MODEL, version)
    assert tags["promoted_from"] == "none", "promoted over no champion, not over itself"
    assert tags["parent_champion"] == "none"
    assert seconds < 0.5 * memo["first_seconds"], (seconds, memo["first_seconds"])


def test_after_a_reused_forced_rerun_the_batch_keeps_its_recorded_outcome(ws, batches, memo):
    from flows.retrain import retrain

    stored = batch_record(ws).get(memo["first"]["batch_id"])
    assert stored["status"] == "promoted"
    assert stored["result"] is not None
    assert stored["result"]["challenger_version"] == memo["first"]["challenger_version"]
    assert retrain(batch=str(batches["feb"]), root=str(ws)).get("status") == "promoted"
    again, _ = _forced_rerun(ws, batches["feb"])
    assert again.get("reused") is True


def test_a_gate_pass_over_a_champion_is_packaged_and_canaried_on_the_running_service(ws, batches, memo, service):
    """The March challenger passes the gate against the February champion (seeded, so the same every run); it is
    packaged as a Bento and judged by the canary on the live service with April traffic. Whatever the canary decides,
    the registry, the service and the result must agree on it.
    """
    from flows.retrain import retrain

    running = service()
    champion = memo["first"]["challenger_version"]
    result = retrain(batch=str(batches["mar"]), root=str(ws), canary_traffic=str(batches["apr-traffic"]))
    memo["canary"] = result

    assert result["gate"]["passed"], result["gate"]["reasons"]
    assert result["status"] in {"promoted", "rolled_back"}, result["reasons"]
    challenger = result["challenger_version"]
    assert result["compared_champion"] == champion != challenger
    tags = registry.version_tags(MODEL, challenger)
    assert result["bento_tag"].startswith("retrainer:") and tags["bento_tag"] == result["bento_tag"]
    bento = ws / ".retrainer" / "bentoml" / "bentos" / "retrainer" / result["bento_tag"].split(":")[1]
    assert (bento / "bento.yaml").is_file()

    canary = result["canary"]
    assert canary["challenger_version"] == challenger and canary["expected_champion"] == champion
    weights = [step["weight"] for step in canary["steps"]]
    assert weights and weights == CANARY["steps"][: len(weights)]
    for step in canary["steps"]:
        assert step["replay"]["failed"] == 0
        assert step["decision"]["numbers"]["challenger_requests"] >= CANARY["min_requests_per_step"]
    rollout = httpx.get(f"{running.url}/rollout", timeout=10).json()
    assert rollout["challenger_weight"] == 0 and rollout["challenger_version"] is None
    if result["status"] == "promoted":
        assert [s["decision"]["action"] for s in canary["steps"]] == ["continue", "promote"]
        assert registry.alias_version(MODEL, registry.CHAMPION) == challenger == rollout["champion_version"]
        assert tags["canary_verdict"] == "promoted" and tags["promoted_from"] == champion
    else:
        assert canary["steps"][-1]["decision"]["action"] == "rollback"
        assert registry.alias_version(MODEL, registry.CHAMPION) == champion == rollout["champion_version"]
        assert registry.alias_version(MODEL, registry.CHALLENGER) is None
        assert tags["canary_verdict"] == "rolled_back" and tags["canary_reasons"]
    assert result["champion_version"] == rollout["champion_version"]
    assert batch_record(ws).get(result["batch_id"])["status"] == result["status"]


def _make_next_challenger_worse(ws: Path) -> None:
    """A one-feature model under a policy that demands a supported improvement: honestly worse."""
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    selection = {"enabled": True, "method": "mutual_info", "k": 1, "sample_rows": 2000}
    raw["train"]["feature_selection"] = selection
    raw["gate"]["improvement"].update(policy="must_improve", margin=0.0)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_worse_challenger_is_rejected_with_the_failing_checks_as_reasons(ws, batches, memo):
    from flows.retrain import retrain

    champion = registry.alias_version(MODEL, registry.CHAMPION)
    assert champion == memo["canary"]["champion_version"]
    _make_next_challenger_worse(ws)
    result = retrain(batch=str(batches["apr"]), root=str(ws))
    memo["rejected"] = result

    assert result["status"] == "rejected", result["reasons"]
    assert len(read_json(ws / TRAIN_REPORT)["features"]) == 1, "the challenger really is a one-feature model"
    challenger = result["challenger_version"]
    assert challenger != champion
    assert result["compared_champion"] == champion
    failed = {c["name"]: c["detail"] for c in result["gate"]["checks"] if not c["passed"]}
    assert "improvement:roc_auc" in failed, failed
    assert failed["improvement:roc_auc"] in result["reasons"]
    assert set(result["reasons"]) == set(failed.values())
    assert any(n.startswith("regression:") for n in {c["name"] for c in result["gate"]["checks"]})
    assert result["metrics"]["challenger"]["roc_auc"] < result["metrics"]["champion"]["roc_auc"]

    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert registry.alias_version(MODEL, registry.CHALLENGER) is None
    tags = registry.version_tags(MODEL, challenger)
    assert tags["gate_verdict"] == "fail"
    assert tags["gate_status"] == "rejected"
    assert tags["parent_champion"] == champion
    assert tags["batch_id"] == batch_id(batches["apr"])
    assert "promoted_from" not in tags
    assert batch_record(ws).get(result["batch_id"])["status"] == "rejected"


def test_drain_inbox_processes_each_waiting_batch_exactly_once(ws, batches, memo):
    from flows.retrain import drain_inbox

    inbox = ws / "data" / "incoming"
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(batches["feb"], inbox / "resent-february.csv")
    shutil.copyfile(batches["may"], inbox / batches["may"].name)
    (inbox / "notes.txt").write_text("not a batch")
    before = registered_versions()

    results = drain_inbox(root=str(ws))
    assert [r["batch_id"] for r in results] == [batch_id(batches["may"])]
    (result,) = results
    assert result["status"] in {"promoted", "rejected", "rolled_back"}, result["reasons"]
    assert len(registered_versions() - before) == 1
    assert batch_record(ws).get(result["batch_id"])["status"] == result["status"]

    assert drain_inbox(root=str(ws)) == []
    assert len(registered_versions() - before) == 1


def test_drain_inbox_retrains_once_on_every_batch_gathered_since_the_last_training(ws, batches):
    """Two batches waiting: one cycle on the newest, the older one validated, accepted and trained in it."""
    import pandas as pd

    from flows.retrain import drain_inbox

    inbox = ws / "data" / "incoming"
    for name in ("jun", "jul"):
        shutil.copyfile(batches[name], inbox / batches[name].name)
    before = registered_versions()

    results = drain_inbox(root=str(ws))
    assert [r["batch_id"] for r in results] == [batch_id(batches["jul"])]
    (result,) = results
    assert result["status"] in {"promoted", "rejected", "rolled_back"}, result["reasons"]
    june = batch_id(batches["jun"])
    assert [(i["batch_id"], i["status"], i["trained_with"]) for i in result["included"]] == [
        (june, "included", result["batch_id"])
    ]
    assert batch_record(ws).get(june)["status"] == "included"
    assert len(registered_versions() - before) == 1, "one training for both batches"
    assert (ws / "data" / "batches" / f"{june}.csv").read_bytes() == batches["jun"].read_bytes()
    assert {6, 7} <= set(pd.read_parquet(ws / DATASET, columns=["month"])["month"])
    assert drain_inbox(root=str(ws)) == []


def test_an_included_batch_whose_copy_fails_is_recorded_failed_and_stays_waiting(ws, project_root, tmp_path):
    """Fault injected with a stand-in (a full disk cannot be caused here): accepting the batch raises."""
    from retrainer.app.retrain import RetrainSteps, include_earlier
    from retrainer.io.batches import pending_batches
    from retrainer.io.project import Workspace

    inbox = ws / "data" / "incoming"
    path = sample_batch(project_root, 8, tmp_path, "flights-2013-08-sample.csv", every=16)
    waiting = inbox / path.name
    shutil.copyfile(path, waiting)

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    workspace, record = Workspace.at(ws), batch_record(ws)
    steps = RetrainSteps(accept=disk_full)
    (outcome,) = include_earlier([waiting], "cycle", workspace.load_params(), workspace, record, steps)
    assert outcome.status == "failed" and "No space left" in outcome.reasons[0]
    assert record.get(batch_id(waiting))["status"] == "failed"
    assert not (ws / "data" / "batches" / f"{batch_id(waiting)}.csv").exists(), "nothing half-accepted"
    assert waiting in pending_batches(inbox, record), "a failed batch is taken again by the next drain"
    waiting.unlink()


def test_run_cycle_on_a_missing_file_returns_failed(ws, memo):
    from retrainer.flow_runs import run_cycle

    champion = registry.alias_version(MODEL, registry.CHAMPION)
    result = run_cycle(ws / "data" / "incoming" / "no-such-batch.csv", ws).to_dict()
    assert result["status"] == "failed"
    assert "no-such-batch.csv" in " ".join(result["reasons"])
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion


def test_run_cycle_on_a_garbage_file_returns_quarantined_and_keeps_it_out_of_training(ws, tmp_path):
    from retrainer.flow_runs import run_cycle

    champion = registry.alias_version(MODEL, registry.CHAMPION)
    versions = registered_versions()
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00\x01 this is not a table \xff\xfe\n" * 50)
    identifier = batch_id(garbage)

    result = run_cycle(garbage, ws).to_dict()
    assert result["status"] == "quarantined", result
    assert any("binary content" in reason for reason in result["reasons"]), result["reasons"]
    accepted = list((ws / "data" / "batches").glob(f"{identifier}.*"))
    assert not accepted, "a bad batch must never reach training"
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert registered_versions() == versions
    quarantined = Path(result["quarantine_dir"])
    assert any(p.read_bytes() == garbage.read_bytes() for p in quarantined.rglob("*") if p.is_file())
    assert batch_record(ws).get(identifier)["status"] == result["status"]
