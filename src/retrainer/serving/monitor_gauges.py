"""The latest monitoring pass as Prometheus gauges for the service's /metrics, re-read only when the file changes."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path


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


def format_gauges(latest: dict) -> str:
    """Prometheus text for one monitoring result (as written to latest.json)."""
    if latest.get("status") != "ok":
        return ""
    details = latest["details"]
    version = f'model_version="{latest["model_version"]}"'
    state = details["decision"]["state"]
    features = details["assessment"]["features"]
    stamp = datetime.fromisoformat(latest["time"]).timestamp()
    return "".join(
        [
            _gauge(
                "retrainer_monitor_last_pass_timestamp_seconds", "When the last monitoring pass ran", [(version, stamp)]
            ),
            _gauge(
                "retrainer_monitor_window_predictions",
                "Predictions in the monitored window",
                [(version, latest["rows"])],
            ),
            _gauge(
                "retrainer_monitor_window_labels",
                "Window predictions with a feedback label",
                [(version, latest["labelled"])],
            ),
            _gauge(
                "retrainer_monitor_drift_share", "Share of judged features drifting", [(version, latest["drift_share"])]
            ),
            _gauge(
                "retrainer_monitor_prediction_psi",
                "PSI of served vs holdout probabilities",
                [(version, latest["prediction_psi"])],
            ),
            _gauge(
                "retrainer_monitor_rolling_auc",
                "ROC AUC on labelled window predictions",
                [(version, latest["rolling_auc"])],
            ),
            _gauge(
                "retrainer_monitor_reference_auc",
                "Holdout ROC AUC of the version",
                [(version, latest["reference_auc"])],
            ),
            _gauge("retrainer_monitor_alarm", "1 when any signal crossed its threshold", [(version, latest["alarm"])]),
            _gauge(
                "retrainer_monitor_trigger_fired",
                "1 when the last pass started a retrain",
                [(version, latest["fired"])],
            ),
            _gauge(
                "retrainer_monitor_trigger_armed",
                "1 while the trigger is armed (hysteresis)",
                [(version, state["armed"])],
            ),
            _gauge(
                "retrainer_monitor_trigger_consecutive_alarms",
                "Alarming passes in a row",
                [(version, state["consecutive"])],
            ),
            _gauge(
                "retrainer_monitor_feature_psi",
                "PSI of each feature in the window vs the training window",
                [(f'{version},feature="{name}"', stats["psi"]) for name, stats in sorted(features.items())],
            ),
            _gauge(
                "retrainer_monitor_feature_drifted",
                "1 when the feature's drift detectors fired",
                [(f'{version},feature="{name}"', stats["drifted"]) for name, stats in sorted(features.items())],
            ),
        ]
    )


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
