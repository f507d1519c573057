"""Helpers of the retrain-flow tests (imported by name: pytest puts this folder on sys.path): the real params made
small, month batches cut from the demo's data, a cycle run as `retrainer run` runs it, the workspace's records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from retrainer.config import load_params
from retrainer.demo import DemoData
from retrainer.io.batches import BatchRecord

MODEL = "flights-delay"
TOKEN = "retrain-flow-test-token"
CANARY = {
    "steps": [50, 100],
    "min_requests_per_step": 100,
    "min_seconds_per_step": 0,
    "max_seconds_per_step": 60,
    "feedback_delay_seconds": 0.2,
}


def small_params(source: Path, dest: Path) -> Path:
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


def sample_batch(project_root: Path, month: int, staging: Path, name: str, every: int) -> Path:
    """Every `every`-th flight of a month, cut line by line from the CSV batch the demo writes."""
    seed = DemoData.from_params(load_params(project_root / "params.yaml"), project_root)
    full = seed.write_batch(pd.Period(year=2013, month=month, freq="M"), staging / f"full-{month:02d}")
    header, *rows = full.read_text().splitlines(keepends=True)
    path = staging / name
    path.write_text(header + "".join(rows[::every]))
    return path


def run_cycle(batch: Path, ws: Path, **options) -> dict:
    """`retrainer run` as the CLI runs it (the flow started by entrypoint), its result as `--json` prints it."""
    from retrainer.flow_runs import run_cycle as run

    return run(batch, ws, **options).to_dict()


def batch_record(ws: Path) -> BatchRecord:
    """The workspace's batch record (SQLite)."""
    return BatchRecord(ws / ".retrainer" / "batches.db")


def registered_versions() -> set[str]:
    """The versions of MODEL in the current MLflow registry."""
    import mlflow

    return {str(v.version) for v in mlflow.MlflowClient().search_model_versions(f"name='{MODEL}'")}


def set_params(ws: Path, **sections: dict) -> dict:
    """Update sections of the workspace's params (nested dicts merged one level deep); returns the old text's dict."""
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    old = yaml.safe_load((ws / "params.yaml").read_text())
    for name, update in sections.items():
        for key, value in update.items():
            raw[name][key] = {**raw[name][key], **value} if isinstance(value, dict) else value
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return old
