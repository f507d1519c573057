"""The latest monitoring pass as Prometheus gauges for the service's /metrics, re-read only when the file changes."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

from retrainer.outcomes import MonitorStatus


def _number(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float) and math.isfinite(value):
        return repr(float(value))
    return "NaN"


def _gauge(name: str, help_text: str, samples: list[tuple[str, object]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{{{labels}}} {_number(value)}" for labels, value in samples]
    return "\n".join(lines) + "\n"


SCALARS = (
    ("last_pass_timestamp_seconds", "When the last monitoring pass ran"),
    ("window_predictions", "Predictions in the monitored window"),
    ("window_labels", "Window predictions with a feedback label"),
    ("drift_share", "Share of judged features drifting"),
    ("prediction_psi", "PSI of served vs holdout probabilities"),
    ("rolling_auc", "ROC AUC on labelled window predictions"),
    ("reference_auc", "Holdout ROC AUC of the version"),
    ("alarm", "1 when any signal crossed its threshold"),
    ("trigger_fired", "1 when the last pass started a retrain"),
    ("trigger_armed", "1 while the trigger is armed (hysteresis)"),
    ("trigger_consecutive_alarms", "Alarming passes in a row"),
)
PER_FEATURE = (
    ("feature_psi", "psi", "PSI of each feature in the window vs the training window"),
    ("feature_drifted", "drifted", "1 when the feature's drift detectors fired"),
)


def format_gauges(latest: dict) -> str:
    """Prometheus text for one monitoring result (as written to latest.json)."""
    if latest.get("status") != MonitorStatus.OK:
        return ""
    state = latest["details"]["decision"]["state"]
    features = sorted(latest["details"]["assessment"]["features"].items())
    version = f'model_version="{latest["model_version"]}"'
    values = {
        "last_pass_timestamp_seconds": datetime.fromisoformat(latest["time"]).timestamp(),
        "window_predictions": latest["rows"],
        "window_labels": latest["labelled"],
        "trigger_fired": latest["fired"],
        "trigger_armed": state["armed"],
        "trigger_consecutive_alarms": state["consecutive"],
        **{k: latest[k] for k in ("drift_share", "prediction_psi", "rolling_auc", "reference_auc", "alarm")},
    }
    text = [_gauge(f"retrainer_monitor_{name}", doc, [(version, values[name])]) for name, doc in SCALARS]
    for name, key, doc in PER_FEATURE:
        samples = [(f'{version},feature="{feature}"', stats[key]) for feature, stats in features]
        text.append(_gauge(f"retrainer_monitor_{name}", doc, samples))
    return "".join(text)


class MonitorGauges:
    """Caches the gauges of <home>/monitor/latest.json; a scrape costs one stat() unless the file changed."""

    def __init__(self, path: Path):
        self.path = path
        self._mtime: float | None = None
        self._text = ""

    def text(self) -> str:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return ""
        if mtime != self._mtime:
            try:
                self._text = format_gauges(json.loads(self.path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                self._text = ""
            self._mtime = mtime
        return self._text
