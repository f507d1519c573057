"""Faults and concurrency around a retrain cycle, under Prefect's test harness, on a small DVC workspace whose first
batch made the champion: a cycle failing after it accepted its batch, a month cut short and re-delivered, a busy
workspace, two real `retrainer run` processes at once, a run SIGKILLed right after the champion alias moved.

The tests run in order on one workspace (as test_retrain_flow.py's do on another, side by side with these).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml
from retrain_kit import (
    MODEL,
    TOKEN,
    batch_record,
    registered_versions,
    run_cycle,
    sample_batch,
    set_params,
    small_params,
)

from retrainer.io import registry
from retrainer.io.batches import batch_id
from retrainer.stages import DATASET, TRAIN, file_md5

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ws(project_root, tmp_path_factory, prefect_harness, workspace_environment):
    """A fresh workspace (one-month bootstrap) whose first batch, a quarter of February, is the champion."""
    from retrainer.io.workspace import create_workspace

    tmp = tmp_path_factory.mktemp("retrain-faults")
    workspace = create_workspace(project_root, tmp / "ws", small_params(project_root, tmp))
    with workspace_environment(workspace, TOKEN):
        first = run_cycle(sample_batch(project_root, 2, tmp, "flights-2013-02-sample.csv", every=4), workspace)
        assert first["status"] == "promoted", first
        yield workspace


@pytest.fixture(scope="module")
def service(ws, workspace_service):
    """`retrainer serve` on the workspace, started on first use, stopped with the module."""
    return lambda: workspace_service(ws)


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


@pytest.fixture
def direct_promotion(ws):
    """Promotion on the gate alone (no canary) for the tests below: they are about accepting batches."""
    old = set_params(ws, canary={"enabled": False})
    yield
    (ws / "params.yaml").write_text(yaml.safe_dump(old, sort_keys=False))


def test_a_cycle_that_fails_after_accepting_its_batch_withdraws_it_and_the_next_batch_runs(
    ws, project_root, tmp_path, direct_promotion
):
    """An inf distance let through by a user's policy (finite: warn) in the newest rows, which the split holds out,
    makes the evaluate stage fail for real (sklearn refuses infinity); the batch must leave training, so the next
    clean batch is not poisoned by it."""
    from retrainer.app.results import CycleResult, format_cycle

    set_params(ws, validate={"severity": {"finite": "warn"}})
    clean = sample_batch(project_root, 8, tmp_path, "flights-2013-08-clean.csv", every=12)
    bad = _with_cell_in_last_labelled_row(clean, tmp_path / "flights-2013-08-inf.csv", "distance", "inf")
    champion = registry.alias_version(MODEL, registry.CHAMPION)
    assert champion is not None

    failed = run_cycle(bad, ws)
    assert failed["status"] == "failed", failed
    assert "flights-2013-08-inf.csv" in failed["reasons"][0] and "infinity" in failed["reasons"][0]
    assert failed["champion_version"] == champion, "the JSON reports the champion that is still serving"
    assert f"champion v{champion} unchanged" in format_cycle(CycleResult.from_dict(failed))
    assert registry.alias_version(MODEL, registry.CHAMPION) == champion
    assert not list((ws / "data" / "batches").glob(f"{batch_id(bad)}.*")), "a failed cycle leaves nothing accepted"
    assert batch_record(ws).get(batch_id(bad))["status"] == "failed"

    set_params(ws, validate={"severity": {"finite": "block"}})
    quarantined = run_cycle(bad, ws)
    assert quarantined["status"] == "quarantined" and any("finite.distance" in r for r in quarantined["reasons"])
    after = run_cycle(clean, ws)
    assert after["status"] in {"promoted", "rejected"}, after
    assert (ws / "data" / "batches" / f"{batch_id(clean)}.csv").read_bytes() == clean.read_bytes()


def test_a_month_cut_short_is_quarantined_and_its_re_delivery_replaces_it(ws, project_root, tmp_path, direct_promotion):

    full = sample_batch(project_root, 9, tmp_path, "flights-2013-09.csv", every=12)
    header, *rows = full.read_text().splitlines(keepends=True)
    half = tmp_path / "flights-2013-09-partial.csv"
    half.write_text((header + "".join(rows[: len(rows) // 2])).rstrip("\n"))

    cut = run_cycle(half, ws)
    assert cut["status"] == "quarantined", cut
    assert any("completeness.time_coverage" in r for r in cut["reasons"]), cut["reasons"]

    # a user who accepts partial months (time_coverage: warn) lets the half month in ...
    set_params(ws, validate={"severity": {"time_coverage": "warn"}})
    first = run_cycle(half, ws, force=True)
    assert first["status"] in {"promoted", "rejected"}, first
    set_params(ws, validate={"severity": {"time_coverage": "block"}})
    half_id = batch_id(half)

    # ... then the complete file of the same month is stale against it, and the reasons say how to re-deliver
    stale = run_cycle(full, ws)
    assert stale["status"] == "quarantined"
    assert any(r.startswith("freshness") for r in stale["reasons"]), stale["reasons"]
    assert any(f"--replaces {half_id}" in r for r in stale["reasons"]), stale["reasons"]

    replaced = run_cycle(full, ws, replaces=half_id)  # the command the reasons name, as it is written there
    assert replaced["status"] in {"promoted", "rejected"}, replaced
    assert replaced["replaces"] == half_id
    assert batch_record(ws).get(half_id)["status"] == "superseded"
    assert batch_record(ws).get(half_id)["result"]["superseded_by"] == replaced["batch_id"]
    assert not list((ws / "data" / "batches").glob(f"{half_id}.*"))
    assert (ws / "data" / "superseded" / half_id / f"{half_id}.csv").read_bytes() == half.read_bytes()
    tags = registry.version_tags(MODEL, replaced["challenger_version"])
    assert tags["replaces_batch"] == half_id and tags["batch_id"] == replaced["batch_id"]

    import pandas as pd

    september = pd.read_parquet(ws / DATASET, columns=["month"])["month"].eq(9).sum()
    assert september > (len(rows) // 2), "the whole month is trained on, not the half"


def test_a_replacement_that_is_not_one_is_refused_by_name_and_leaves_nothing_behind(ws, project_root, tmp_path):

    batch = sample_batch(project_root, 10, tmp_path, "flights-2013-10.csv", every=12)
    result = run_cycle(batch, ws, replaces="0123456789abcdef")
    assert result["status"] == "failed"
    assert "--replaces 0123456789abcdef: no accepted batch has that id" in result["reasons"][0]
    assert not list((ws / "data" / "batches").glob(f"{batch_id(batch)}.*"))

    september = batch_id(sample_batch(project_root, 9, tmp_path, "flights-2013-09.csv", every=12))
    other_month = run_cycle(batch, ws, replaces=september)
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
        old = set_params(ws, retrain={"lock_timeout_seconds": 2})
        batch = sample_batch(project_root, 11, tmp_path, "flights-2013-11.csv", every=12)
        busy = run_cycle(batch, ws)
        assert busy["status"] == "failed", busy
        assert f"workspace busy: held by pid {holder.pid} (retrain of batch held-by-test" in busy["reasons"][0]
        assert not list((ws / "data" / "batches").glob(f"{batch_id(batch)}.*"))
        assert batch_record(ws).get(batch_id(batch))["status"] == "failed", "the next run takes it again"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"\x00 not a table\n" * 20)
    assert run_cycle(garbage, ws)["status"] == "quarantined", "the killed holder's lock was released by the kernel"
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
    what happens around a promotion, not about the gate, which small months can fail on their own."""
    old = set_params(
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

    october = sample_batch(project_root, 10, tmp_path, "flights-2013-10-run.csv", every=10)
    november = sample_batch(project_root, 11, tmp_path, "flights-2013-11-run.csv", every=10)
    before = registered_versions()
    later = _retrainer_run(ws, november, tmp_path / "november.log")
    _wait_for(lambda: _lock_holder_pid(ws) == later.pid or later.poll() is not None, 300, "November holds the lock")
    earlier = _retrainer_run(ws, october, tmp_path / "october.log")
    assert earlier.wait(timeout=900) == 0, (tmp_path / "october.log").read_text()[-3000:]
    assert later.wait(timeout=900) == 0, (tmp_path / "november.log").read_text()[-3000:]

    record = batch_record(ws)
    nov, octo = record.get(batch_id(november)), record.get(batch_id(october))
    assert nov["status"] == "promoted", nov["result"]["reasons"]
    assert octo["status"] == "promoted", octo["result"]["reasons"]
    assert any(f"workspace busy: held by pid {later.pid} (retrain of batch" in r for r in octo["result"]["reasons"])
    assert any("waited" in r for r in octo["result"]["reasons"]), octo["result"]["reasons"]
    assert not any("workspace busy" in r for r in nov["result"]["reasons"]), "November never waited"

    new = registered_versions() - before
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
    december = sample_batch(project_root, 12, tmp_path, "flights-2013-12-run.csv", every=10)
    killed = _retrainer_run(ws, december, tmp_path / "killed.log", RETRAINER_CRASH_AFTER_PHASE="alias")
    assert killed.wait(timeout=900) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]

    new = registry.alias_version(MODEL, registry.CHAMPION)
    assert new != champion, "the alias moved before the kill"
    assert "gate_status" not in registry.version_tags(MODEL, new), "killed before any promotion tag"
    assert (ws / ".retrainer" / "promotion.json").is_file()
    assert batch_record(ws).get(batch_id(december))["status"] == "interrupted"
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
    assert batch_record(ws).get(batch_id(december))["status"] == "promoted"
    assert not (ws / ".retrainer" / "promotion.json").exists()

    rerun = run_cycle(december, ws)
    assert rerun["status"] == "promoted" and rerun["already_processed"] is True, rerun
    assert registry.alias_version(MODEL, registry.CHAMPION) == new
    after = registry.version_tags(MODEL, new)
    assert after["gate_status"] == "promoted" and after["parent_champion"] == champion, after
