"""The retrain flow end to end under Prefect's test harness, on a small DVC workspace, real MLflow on SQLite.

The tests in this module run in order and share one workspace: a first promotion, cached reruns, an honest
rejection, the inbox drain, and failures that must come back as a status rather than an exception.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from retrainer.config import load_params
from retrainer.demo import DemoData
from retrainer.io import registry
from retrainer.io.batches import BatchRecord, batch_id
from retrainer.io.tables import read_json
from retrainer.stages import DATASET, TRAIN, TRAIN_REPORT, file_md5

pytestmark = pytest.mark.integration
MODEL = "flights-delay"
TOKEN = "retrain-flow-test-token"
CANARY = {
    "steps": [50, 100],
    "min_requests_per_step": 100,
    "min_seconds_per_step": 0,
    "max_seconds_per_step": 60,
    "feedback_delay_seconds": 0.2,
}
ALL_STAGES = ("validate", "reference@0", "reference@1", "ingest", "split", "train", "evaluate", "register")


def _small_params(source: Path, dest: Path) -> Path:
    """The real params with a one-month bootstrap, a two-candidate search and fewer rows timed or permuted.

    Two gate values are set for this small, shared setting; the gate logic itself is untouched (and
    table-tested in tests/steps/test_gate.py):
    - floors roc_auc 0.55 / pr_auc 0.10: a model trained on one month and a quarter of the next, judged on
      late February, scored 0.598 ROC AUC, just under the production floor of 0.60; the test is about the
      flow, so the floor is set honestly below what this tiny data reaches.
    - latency budget 2000 ms: on a busy 2-core machine one-row predict_proba p95 was measured at 15 ms alone
      and over 900 ms while other processes trained; a 50 ms budget would make this test a load test.
    The canary keeps its production thresholds but takes two steps with 100 requests each and no minimum
    duration, so it runs in seconds (`CANARY`); the service URL is set when the test service starts.
    """
    raw = yaml.safe_load((source / "params.yaml").read_text())
    raw["data"]["bootstrap"] = {"start": "2013-01-01", "end": "2013-02-01"}
    raw["train"]["search"]["n_candidates"] = 2
    raw["evaluate"]["importance_rows"] = 500
    raw["gate"]["latency_rows"] = 50
    raw["gate"]["floors"] = {"roc_auc": 0.55, "pr_auc": 0.10}
    raw["gate"]["budgets"]["latency_p95_ms"] = 2000
    raw["canary"].update(CANARY)
    path = dest / "small-params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _sample_batch(project_root: Path, month: int, staging: Path, name: str, every: int) -> Path:
    """Every `every`-th flight of a month, cut line by line from the CSV batch the demo writes."""
    seed = DemoData.from_params(load_params(project_root / "params.yaml"), project_root)
    full = seed.write_batch(pd.Period(year=2013, month=month, freq="M"), staging / f"full-{month:02d}")
    header, *rows = full.read_text().splitlines(keepends=True)
    path = staging / name
    path.write_text(header + "".join(rows[::every]))
    return path


@pytest.fixture(scope="module")
def ws(project_root, tmp_path_factory, prefect_harness, workspace_environment):
    """A fresh workspace with its own MLflow store and run record; no bootstrap model, no champion."""
    from retrainer.io.workspace import create_workspace

    tmp = tmp_path_factory.mktemp("retrain-flow")
    workspace = create_workspace(project_root, tmp / "ws", _small_params(project_root, tmp))
    with workspace_environment(workspace, TOKEN):
        yield workspace


@pytest.fixture(scope="module")
def batches(project_root, tmp_path_factory) -> dict[str, Path]:
    """Small real batches as a provider would drop them: 1/4 of February and March, 1/8 of April to July.

    `apr-traffic` is a quarter of April's flights as client traffic for the canary of the March challenger.
    """
    staging = tmp_path_factory.mktemp("provider")
    return {
        "feb": _sample_batch(project_root, 2, staging, "flights-2013-02-sample.csv", every=4),
        "mar": _sample_batch(project_root, 3, staging, "flights-2013-03-sample.csv", every=4),
        "apr": _sample_batch(project_root, 4, staging, "flights-2013-04-sample.csv", every=8),
        "may": _sample_batch(project_root, 5, staging, "flights-2013-05-sample.csv", every=8),
        "jun": _sample_batch(project_root, 6, staging, "flights-2013-06-sample.csv", every=8),
        "jul": _sample_batch(project_root, 7, staging, "flights-2013-07-sample.csv", every=8),
        "apr-traffic": _sample_batch(project_root, 4, staging, "traffic-2013-04.csv", every=4),
    }


@pytest.fixture(scope="module")
def service(ws, workspace_service):
    """`retrainer serve` on the workspace, started on first use (it needs a champion), stopped with the module."""
    return lambda: workspace_service(ws)


@pytest.fixture(scope="module")
def memo() -> dict:
    """What earlier tests in this module observed (results, timings) for the later ones."""
    return {}


def _record(ws: Path) -> BatchRecord:
    return BatchRecord(ws / ".retrainer" / "batches.db")


def _versions() -> set[str]:
    import mlflow

    return {str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{MODEL}'")}


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
    stored = _record(ws).get(result["batch_id"])
    assert stored["status"] == "promoted"
    assert stored["result"]["challenger_version"] == version


def test_rerunning_a_processed_batch_returns_its_recorded_outcome_without_work(ws, batches, memo):
    from flows.retrain import retrain

    before = _versions()
    result = retrain(batch=str(batches["feb"]), root=str(ws))
    assert result["already_processed"] is True
    assert result["status"] == memo["first"]["status"] == "promoted"
    assert result["challenger_version"] == memo["first"]["challenger_version"]
    assert result["stages"] == memo["first"]["stages"], "the recorded result, not a new run"
    assert _versions() == before


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
    before = _versions()
    version = memo["first"]["challenger_version"]
    result, seconds = _forced_rerun(ws, batches["feb"])

    assert [s["stage"] for s in result["stages"]] == list(ALL_STAGES)
    assert [s["stage"] for s in result["stages"] if s["ran"]] == []
    assert result.get("reused") is True
    assert result["status"] == "promoted"
    assert result["challenger_version"] == version
    assert _versions() == before, "a rerun of the same data must not register a new version"
    assert registry.alias_version(MODEL, registry.CHAMPION) == version
    tags = registry.version_tags(MODEL, version)
    assert tags["promoted_from"] == "none", "promoted over no champion, not over itself"
    assert tags["parent_champion"] == "none"
    assert seconds < 0.5 * memo["first_seconds"], (seconds, memo["first_seconds"])


def test_after_a_reused_forced_rerun_the_batch_keeps_its_recorded_outcome(ws, batches, memo):
    from flows.retrain import retrain

    stored = _record(ws).get(memo["first"]["batch_id"])
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
    assert _record(ws).get(result["batch_id"])["status"] == result["status"]


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
    assert _record(ws).get(result["batch_id"])["status"] == "rejected"


def test_drain_inbox_processes_each_waiting_batch_exactly_once(ws, batches, memo):
    from flows.retrain import drain_inbox

    inbox = ws / "data" / "incoming"
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(batches["feb"], inbox / "resent-february.csv")
    shutil.copyfile(batches["may"], inbox / batches["may"].name)
    (inbox / "notes.txt").write_text("not a batch")
    before = _versions()

    results = drain_inbox(root=str(ws))
    assert [r["batch_id"] for r in results] == [batch_id(batches["may"])]
    (result,) = results
    assert result["status"] in {"promoted", "rejected", "rolled_back"}, result["reasons"]
    assert len(_versions() - before) == 1
    assert _record(ws).get(result["batch_id"])["status"] == result["status"]

    assert drain_inbox(root=str(ws)) == []
    assert len(_versions() - before) == 1


def test_drain_inbox_retrains_once_on_every_batch_gathered_since_the_last_training(ws, batches):
    """Two batches waiting: one cycle on the newest, the older one validated, accepted and trained in it."""
    import pandas as pd

    from flows.retrain import drain_inbox

    inbox = ws / "data" / "incoming"
    for name in ("jun", "jul"):
        shutil.copyfile(batches[name], inbox / batches[name].name)
    before = _versions()

    results = drain_inbox(root=str(ws))
    assert [r["batch_id"] for r in results] == [batch_id(batches["jul"])]
    (result,) = results
    assert result["status"] in {"promoted", "rejected", "rolled_back"}, result["reasons"]
    june = batch_id(batches["jun"])
    assert [(i["batch_id"], i["status"], i["trained_with"]) for i in result["included"]] == [
        (june, "included", result["batch_id"])
    ]
    assert _record(ws).get(june)["status"] == "included"
    assert len(_versions() - before) == 1, "one training for both batches"
    assert (ws / "data" / "batches" / f"{june}.csv").read_bytes() == batches["jun"].read_bytes()
    assert {6, 7} <= set(pd.read_parquet(ws / DATASET, columns=["month"])["month"])
    assert drain_inbox(root=str(ws)) == []


def test_an_included_batch_whose_copy_fails_is_recorded_failed_and_stays_waiting(ws, project_root, tmp_path):
    """Fault injected with a stand-in (a full disk cannot be caused here): accepting the batch raises."""
    from retrainer.app.retrain import RetrainSteps, include_earlier
    from retrainer.io.batches import pending_batches
    from retrainer.io.project import Workspace

    inbox = ws / "data" / "incoming"
    path = _sample_batch(project_root, 8, tmp_path, "flights-2013-08-sample.csv", every=16)
    waiting = inbox / path.name
    shutil.copyfile(path, waiting)

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    workspace, record = Workspace.at(ws), _record(ws)
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
    versions = _versions()
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00\x01 this is not a table \xff\xfe\n" * 50)
    identifier = batch_id(garbage)

    result = run_cycle(garbage, ws).to_dict()
    assert result["status"] == "quarantined", result
    assert any("binary content" in reason for reason in result["reasons"]), result["reasons"]
    accepted = list((ws / "data" / "batches").glob(f"{identifier}.*"))
    assert not accepted, "a bad batch must never reach training"
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert _versions() == versions
    quarantined = Path(result["quarantine_dir"])
    assert any(p.read_bytes() == garbage.read_bytes() for p in quarantined.rglob("*") if p.is_file())
    assert _record(ws).get(identifier)["status"] == result["status"]


def _set_params(ws: Path, **sections: dict) -> dict:
    """Update sections of the workspace's params (nested dicts merged one level deep); returns the old text's dict."""
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    old = yaml.safe_load((ws / "params.yaml").read_text())
    for name, update in sections.items():
        for key, value in update.items():
            raw[name][key] = {**raw[name][key], **value} if isinstance(value, dict) else value
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return old


def _with_cell_in_last_labelled_row(path: Path, dest: Path, column: str, text: str) -> Path:
    """A copy of a CSV batch with one cell's text replaced in its last row with an outcome (a flight that landed,
    so ingest keeps it; the newest rows are the holdout). The flights files hold no quoted commas."""
    header, *rows = path.read_text().splitlines(keepends=True)
    names = header.rstrip("\n").split(",")
    at, outcome = names.index(column), names.index("arr_delay")
    row = max(i for i, line in enumerate(rows) if line.rstrip("\n").split(",")[outcome] != "")
    fields = rows[row].rstrip("\n").split(",")
    fields[at] = text
    rows[row] = ",".join(fields) + "\n"
    dest.write_text(header + "".join(rows))
    return dest


def _run(batch: Path, ws: Path, **options) -> dict:
    """`retrainer run` as the CLI runs it (the flow started by entrypoint), its result as `--json` prints it."""
    from retrainer.flow_runs import run_cycle

    return run_cycle(batch, ws, **options).to_dict()


@pytest.fixture
def direct_promotion(ws):
    """Promotion on the gate alone (no canary) for the tests below: they are about accepting batches."""
    old = _set_params(ws, canary={"enabled": False})
    yield
    (ws / "params.yaml").write_text(yaml.safe_dump(old, sort_keys=False))


def test_a_cycle_that_fails_after_accepting_its_batch_withdraws_it_and_the_next_batch_runs(
    ws, project_root, tmp_path, direct_promotion
):
    """An inf distance let through by a user's policy (finite: warn) in the newest rows, which the split holds out,
    makes the evaluate stage fail for real (sklearn refuses infinity); the batch must leave training, so the next
    clean batch is not poisoned by it."""
    from retrainer.app.results import CycleResult, format_cycle

    _set_params(ws, validate={"severity": {"finite": "warn"}})
    clean = _sample_batch(project_root, 8, tmp_path, "flights-2013-08-clean.csv", every=12)
    bad = _with_cell_in_last_labelled_row(clean, tmp_path / "flights-2013-08-inf.csv", "distance", "inf")
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    assert champion is not None

    failed = _run(bad, ws)
    assert failed["status"] == "failed", failed
    assert "flights-2013-08-inf.csv" in failed["reasons"][0] and "infinity" in failed["reasons"][0]
    assert failed["champion_version"] == champion, "the JSON reports the champion that is still serving"
    assert f"champion v{champion} unchanged" in format_cycle(CycleResult.from_dict(failed))
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert not list((ws / "data" / "batches").glob(f"{batch_id(bad)}.*")), "a failed cycle leaves nothing accepted"
    assert _record(ws).get(batch_id(bad))["status"] == "failed"

    _set_params(ws, validate={"severity": {"finite": "block"}})
    quarantined = _run(bad, ws)
    assert quarantined["status"] == "quarantined" and any("finite.distance" in r for r in quarantined["reasons"])
    after = _run(clean, ws)
    assert after["status"] in {"promoted", "rejected"}, after
    assert (ws / "data" / "batches" / f"{batch_id(clean)}.csv").read_bytes() == clean.read_bytes()


def test_a_month_cut_short_is_quarantined_and_its_re_delivery_replaces_it(ws, project_root, tmp_path, direct_promotion):

    full = _sample_batch(project_root, 9, tmp_path, "flights-2013-09.csv", every=12)
    header, *rows = full.read_text().splitlines(keepends=True)
    half = tmp_path / "flights-2013-09-partial.csv"
    half.write_text((header + "".join(rows[: len(rows) // 2])).rstrip("\n"))

    cut = _run(half, ws)
    assert cut["status"] == "quarantined", cut
    assert any("completeness.time_coverage" in r for r in cut["reasons"]), cut["reasons"]

    # a user who accepts partial months (time_coverage: warn) lets the half month in ...
    _set_params(ws, validate={"severity": {"time_coverage": "warn"}})
    first = _run(half, ws, force=True)
    assert first["status"] in {"promoted", "rejected"}, first
    _set_params(ws, validate={"severity": {"time_coverage": "block"}})
    half_id = batch_id(half)

    # ... then the complete file of the same month is stale against it, and the reasons say how to re-deliver
    stale = _run(full, ws)
    assert stale["status"] == "quarantined"
    assert any(r.startswith("freshness") for r in stale["reasons"]), stale["reasons"]
    assert any(f"--replaces {half_id}" in r for r in stale["reasons"]), stale["reasons"]

    replaced = _run(full, ws, replaces=half_id)  # the command the reasons name, as it is written there
    assert replaced["status"] in {"promoted", "rejected"}, replaced
    assert replaced["replaces"] == half_id
    assert _record(ws).get(half_id)["status"] == "superseded"
    assert _record(ws).get(half_id)["result"]["superseded_by"] == replaced["batch_id"]
    assert not list((ws / "data" / "batches").glob(f"{half_id}.*"))
    assert (ws / "data" / "superseded" / half_id / f"{half_id}.csv").read_bytes() == half.read_bytes()
    tags = registry.version_tags(MODEL, replaced["challenger_version"])
    assert tags["replaces_batch"] == half_id and tags["batch_id"] == replaced["batch_id"]

    import pandas as pd

    september = pd.read_parquet(ws / DATASET, columns=["month"])["month"].eq(9).sum()
    assert september > (len(rows) // 2), "the whole month is trained on, not the half"


def test_a_replacement_that_is_not_one_is_refused_by_name_and_leaves_nothing_behind(ws, project_root, tmp_path):

    batch = _sample_batch(project_root, 10, tmp_path, "flights-2013-10.csv", every=12)
    result = _run(batch, ws, replaces="0123456789abcdef")
    assert result["status"] == "failed"
    assert "--replaces 0123456789abcdef: no accepted batch has that id" in result["reasons"][0]
    assert not list((ws / "data" / "batches").glob(f"{batch_id(batch)}.*"))

    september = batch_id(_sample_batch(project_root, 9, tmp_path, "flights-2013-09.csv", every=12))
    other_month = _run(batch, ws, replaces=september)
    assert other_month["status"] == "failed"
    assert "a replacement re-delivers the same period" in other_month["reasons"][0], other_month["reasons"]
    assert not list((ws / "data" / "batches").glob(f"{batch_id(batch)}.*")), "no stray validation report"
    assert list((ws / "data" / "batches").glob(f"{september}.csv")), "the batch named stays accepted"
    assert not (ws / "data" / "superseded" / september).exists()


HOLD_WORKSPACE = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from retrainer.io.locks import workspace_lock\n"
    "with workspace_lock(Path(sys.argv[1]), 'retrain of batch held-by-test', timeout_s=0):\n"
    "    print('holding', flush=True)\n"
    "    time.sleep(600)\n"
)


def test_a_second_run_on_a_busy_workspace_ends_busy_and_a_killed_holder_frees_it(ws, project_root, tmp_path):
    """Two real processes: one holds the workspace (as a running cycle does), the other's cycle waits, then ends
    `failed` naming the holder, with nothing accepted; kill -9 of the holder frees the workspace at once."""
    import signal
    import subprocess
    import sys

    lock = ws / ".retrainer" / "workspace.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WORKSPACE, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        old = _set_params(ws, retrain={"lock_timeout_seconds": 2})
        batch = _sample_batch(project_root, 11, tmp_path, "flights-2013-11.csv", every=12)
        busy = _run(batch, ws)
        assert busy["status"] == "failed", busy
        assert f"workspace busy: held by pid {holder.pid} (retrain of batch held-by-test" in busy["reasons"][0]
        assert not list((ws / "data" / "batches").glob(f"{batch_id(batch)}.*"))
        assert _record(ws).get(batch_id(batch))["status"] == "failed", "the next run takes it again"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00 not a table\n" * 20)
    assert _run(garbage, ws)["status"] == "quarantined", "the killed holder's lock was released by the kernel"
    (ws / "params.yaml").write_text(yaml.safe_dump(old, sort_keys=False))


def _retrainer_run(ws: Path, batch: Path, log: Path, **env: str):
    """`python -m retrainer.cli run --batch FILE --json` as a real process on the workspace, using this session's
    Prefect test server (so it starts no temporary server of its own); stdout and stderr go to `log`."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    environment = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "OMP_NUM_THREADS": "1", **env}
    command = [sys.executable, "-m", "retrainer.cli", "run", "--batch", str(batch), "--json"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ws, env=environment, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(condition, timeout_s: float, what: str) -> None:
    """Poll `condition` until it is true; fail naming `what` after `timeout_s` seconds (generous: a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(0.2)


def _lock_holder_pid(ws: Path) -> int | None:
    from retrainer.io.locks import lock_holder

    holder = lock_holder(ws / ".retrainer" / "workspace.lock")
    return holder["pid"] if holder else None


@pytest.fixture
def lenient_gate(ws):
    """Every challenger that trains passes the gate and is promoted directly (no canary): the tests below are about
    what happens around a promotion, not about the gate (the worse-challenger test left a one-feature model)."""
    old = _set_params(
        ws,
        train={"feature_selection": {"enabled": False}},
        gate={
            "improvement": {"policy": "must_not_be_worse", "margin": 1.0},
            "max_regression": {"roc_auc": 1.0, "pr_auc": 1.0},
            "slices": {"max_drop": 1.0},
        },
        canary={"enabled": False},
    )
    yield
    (ws / "params.yaml").write_text(yaml.safe_dump(old, sort_keys=False))


def test_two_real_runs_at_once_train_one_after_the_other_and_the_earlier_month_is_not_stale(
    ws, project_root, tmp_path, lenient_gate
):
    """Two real `retrainer run` processes on one workspace with a champion, on two consecutive months. November is
    started first and October as soon as November holds the workspace lock (the way to be sure they overlap on a
    loaded machine): October waits, then trains. No corrupt file, one promotion per champion compared against,
    each version's lineage names its own batch and data, and October's record says it waited for November.
    October is not quarantined as stale although November was trained first (the freshness race)."""
    import subprocess
    import sys

    import joblib

    from retrainer.stages import MODEL as MODEL_FILE

    october = _sample_batch(project_root, 10, tmp_path, "flights-2013-10-run.csv", every=10)
    november = _sample_batch(project_root, 11, tmp_path, "flights-2013-11-run.csv", every=10)
    before = _versions()
    later = _retrainer_run(ws, november, tmp_path / "november.log")
    _wait_for(lambda: _lock_holder_pid(ws) == later.pid or later.poll() is not None, 300, "November holds the lock")
    earlier = _retrainer_run(ws, october, tmp_path / "october.log")
    assert earlier.wait(timeout=900) == 0, (tmp_path / "october.log").read_text()[-3000:]
    assert later.wait(timeout=900) == 0, (tmp_path / "november.log").read_text()[-3000:]

    record = _record(ws)
    nov, octo = record.get(batch_id(november)), record.get(batch_id(october))
    assert nov["status"] == "promoted", nov["result"]["reasons"]
    assert octo["status"] == "promoted", octo["result"]["reasons"]
    assert any(f"workspace busy: held by pid {later.pid} (retrain of batch" in r for r in octo["result"]["reasons"])
    assert any("waited" in r for r in octo["result"]["reasons"]), octo["result"]["reasons"]
    assert not any("workspace busy" in r for r in nov["result"]["reasons"]), "November never waited"

    new = _versions() - before
    assert new == {nov["result"]["challenger_version"], octo["result"]["challenger_version"]}
    parents = [registry.version_tags(MODEL, v).get("promoted_from") for v in sorted(new, key=int)]
    assert len(set(parents)) == len(parents), f"two promotions over the same champion: {parents}"
    assert octo["result"]["compared_champion"] == nov["result"]["challenger_version"]
    for entry, batch in ((nov, november), (octo, october)):
        tags = registry.version_tags(MODEL, entry["result"]["challenger_version"])
        assert tags["batch_id"] == batch_id(batch)
    first, second = (registry.version_tags(MODEL, entry["result"]["challenger_version"]) for entry in (nov, octo))
    assert first["data_md5"] != second["data_md5"], "each version names the data it was trained on"
    assert second["data_md5"] == file_md5(ws / TRAIN), "the last training's data is the workspace's"
    assert "features" in joblib.load(ws / MODEL_FILE), "models/model.pkl is whole"
    status = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status", "--json"],
        cwd=ws,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "changed outs" not in status.stdout and "deleted" not in status.stdout, status.stdout


def test_a_run_killed_right_after_the_champion_alias_moved_is_finished_by_the_next_run(
    ws, project_root, tmp_path, lenient_gate, service
):
    """A real `retrainer run` kills itself with SIGKILL right after moving the champion alias, before it journals
    that (RETRAINER_CRASH_AFTER_PHASE=alias: the one way to stop a real process at that exact point). The registry
    then names the new champion with none of its promotion tags, and the running service still serves the old one.
    `retrainer status` finishes the promotion: tags, golden predictions, the service told (it serves the new
    champion), the batch recorded `promoted`; a rerun of the batch returns that outcome and never tags the
    champion `rejected` against itself."""
    import signal

    from retrainer.app.status import format_status, project_status
    from retrainer.io.project import Workspace
    from retrainer.serving.rollback import golden_record_path

    running = service()
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    assert httpx.get(f"{running.url}/rollout", timeout=10).json()["champion_version"] == champion
    december = _sample_batch(project_root, 12, tmp_path, "flights-2013-12-run.csv", every=10)
    killed = _retrainer_run(ws, december, tmp_path / "killed.log", RETRAINER_CRASH_AFTER_PHASE="alias")
    assert killed.wait(timeout=900) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]

    new = registry.alias_version(MODEL, registry.CHAMPION)
    assert new != champion, "the alias moved before the kill"
    assert "gate_status" not in registry.version_tags(MODEL, new), "killed before any promotion tag"
    assert (ws / ".retrainer" / "promotion.json").is_file()
    assert _record(ws).get(batch_id(december))["status"] == "interrupted"
    assert httpx.get(f"{running.url}/rollout", timeout=10).json()["champion_version"] == champion, "not told yet"

    workspace = Workspace.at(ws)
    report = project_status(workspace.load_params(), ws)
    assert len(report["repaired"]) == 1 and "finished" in report["repaired"][0], report["repaired"]
    assert f"v{new} over v{champion}" in format_status(report)
    tags = registry.version_tags(MODEL, new)
    assert (tags["gate_status"], tags["parent_champion"], tags["promoted_from"]) == ("promoted", champion, champion)
    assert tags["batch_id"] == batch_id(december)
    assert golden_record_path(workspace.home, MODEL, new).is_file(), "golden predictions recorded"
    assert httpx.get(f"{running.url}/rollout", timeout=10).json()["champion_version"] == new, "the service switched"
    assert _record(ws).get(batch_id(december))["status"] == "promoted"
    assert not (ws / ".retrainer" / "promotion.json").exists()

    rerun = _run(december, ws)
    assert rerun["status"] == "promoted" and rerun["already_processed"] is True, rerun
    assert registry.alias_version(MODEL, registry.CHAMPION) == new
    after = registry.version_tags(MODEL, new)
    assert after["gate_status"] == "promoted" and after["parent_champion"] == champion, after
