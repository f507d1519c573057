"""The running service exposes the latest monitoring figures on /metrics and follows the file when it changes."""

from __future__ import annotations

import os

import httpx

from retrainer.io.monitoring import write_latest


def _latest(drift_share: float, temp_drifted: bool) -> dict:
    """The fields of a monitoring result (latest.json) the gauges read."""
    return {
        "status": "ok",
        "time": "2013-09-15T12:00:00+00:00",
        "model_version": "1",
        "rows": 5000,
        "labelled": 4000,
        "drift_share": drift_share,
        "prediction_psi": 0.018,
        "rolling_auc": None,
        "reference_auc": 0.668,
        "alarm": drift_share >= 0.5,
        "fired": False,
        "details": {
            "decision": {"state": {"armed": True, "consecutive": 1}},
            "assessment": {"features": {"temp": {"psi": 12.7, "drifted": temp_drifted}}},
        },
    }


def test_metrics_carry_the_latest_monitoring_pass_and_follow_a_new_one(server, registry_home):
    path = write_latest(registry_home.home, _latest(0.238095, False))
    first = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'retrainer_monitor_drift_share{model_version="1"} 0.238095' in first
    assert 'retrainer_monitor_rolling_auc{model_version="1"} NaN' in first, "no labels judged yet"
    assert 'retrainer_monitor_feature_drifted{model_version="1",feature="temp"} 0' in first
    assert "retrainer_challenger_weight" in first, "the service's own gauges are still there"

    write_latest(registry_home.home, _latest(0.52381, True))
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 2))  # a new pass, even within the file system's mtime resolution
    second = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'retrainer_monitor_drift_share{model_version="1"} 0.52381' in second
    assert 'retrainer_monitor_alarm{model_version="1"} 1' in second
    assert 'retrainer_monitor_feature_drifted{model_version="1",feature="temp"} 1' in second
