"""Monitoring adapters: the prediction-log window, the champion's reference profile, trigger state and decisions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retrainer.config import Params
from retrainer.io.backend import read_state, write_state
from retrainer.io.batches import BatchRecord, pending_batches
from retrainer.io.project import MONITOR_DIR
from retrainer.io.tables import read_table, write_json
from retrainer.serving.log_store import read_predictions
from retrainer.steps.trigger import TriggerState

PROFILE_ARTIFACT = "reports/reference_profile.json"
STATE_FILE = "trigger_state.json"
DECISIONS_FILE = "decisions.jsonl"
LATEST_FILE = "latest.json"


@dataclass(frozen=True)
class LogWindow:
    """The newest predictions of one model version: model inputs, probabilities, and feedback where it arrived."""

    features: pd.DataFrame
    proba: np.ndarray
    labels: np.ndarray
    labelled_proba: np.ndarray
    first_time: str | None
    last_time: str | None


def monitor_dir(home: Path) -> Path:
    """Where monitoring keeps its state, decisions, latest figures and reports."""
    return home / MONITOR_DIR


def load_profile(model_name: str, version: str) -> dict:
    """The reference profile logged with a model version's MLflow run."""
    import mlflow

    run_id = mlflow.MlflowClient().get_model_version(model_name, version).run_id
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{PROFILE_ARTIFACT}")
    except Exception as exc:
        raise LookupError(f"v{version} has no reference profile ({PROFILE_ARTIFACT}); retrain to create one") from exc


def register_with_profile(
    params: Params, model, train: pd.DataFrame, holdout_labels: np.ndarray, holdout_proba: np.ndarray, threshold: float
) -> str:
    """Register a model fitted outside the pipeline, with its reference profile and threshold; returns its version."""
    from retrainer.io.tracking import log_training_run
    from retrainer.steps.evaluate import classification_metrics
    from retrainer.steps.profile import profile_from_params

    metrics = classification_metrics(holdout_labels, holdout_proba, threshold)
    registration = log_training_run(
        experiment=params.tracking.experiment,
        model_name=params.tracking.registered_model,
        model=model,
        features=params.features.all,
        train_frame=train,
        metrics={f"holdout_{k}": v for k, v in metrics.items()},
        tags={"threshold": f"{threshold:.6f}"},
        reports={
            "reference_profile": profile_from_params(params, train, holdout_labels, holdout_proba, threshold, metrics)
        },
    )
    return registration.version


def read_window(
    log_path: Path,
    model_version: str,
    since: str,
    max_rows: int,
    numeric: Sequence[str],
    categorical: Sequence[str],
) -> LogWindow:
    """The newest `max_rows` predictions of a version logged at or after `since`, read-only."""
    rows = read_predictions(log_path, model_version, since, max_rows=max_rows, numeric=numeric, categorical=categorical)
    labels, labelled_proba = rows.labelled()
    return LogWindow(rows.features, rows.probability, labels, labelled_proba, rows.first_time, rows.last_time)


def load_trigger_state(home: Path) -> TriggerState:
    """The trigger state the last pass left (a fresh, armed state the first time): the file under the home, or with
    RETRAINER_DATABASE_URL the team database's document, so a monitor on another host continues it."""
    payload = read_state(monitor_dir(home) / STATE_FILE)
    return TriggerState() if payload is None else TriggerState.from_dict(payload)


def save_trigger_state(home: Path, state: TriggerState) -> None:
    """Save the trigger state where `load_trigger_state` reads it (atomically in either place)."""
    write_state(monitor_dir(home) / STATE_FILE, state.to_dict())


def append_decision(home: Path, record: dict) -> Path:
    """Append one trigger decision (fired or suppressed, and why) to the decisions log, one JSON object a line."""
    path = monitor_dir(home) / DECISIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    return path


def read_decisions(home: Path) -> list[dict]:
    """Every recorded trigger decision, oldest first."""
    path = monitor_dir(home) / DECISIONS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_latest(home: Path, payload: dict) -> Path:
    """The latest pass's figures, which the service's /metrics reads."""
    path = monitor_dir(home) / LATEST_FILE
    write_json(payload, path)
    return path


def count_pending(inbox: Path, record: BatchRecord, target_column: str) -> tuple[int, int]:
    """Batch files the inbox drain would process (as drain_inbox decides) and how many labelled rows they hold."""
    waiting, labelled = pending_batches(inbox, record), 0
    for path in waiting:
        try:
            labelled += int(read_table(path)[target_column].notna().sum())
        except (KeyError, ValueError, OSError, pd.errors.ParserError):
            continue
    return len(waiting), labelled


def post_webhook(url: str, payload: dict, timeout_s: float = 5.0) -> str | None:
    """POST the alert as JSON; returns the error text instead of raising (an alert must not stop the monitor)."""
    import httpx

    try:
        httpx.post(url, json=payload, timeout=timeout_s).raise_for_status()
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
