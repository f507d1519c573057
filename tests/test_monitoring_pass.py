"""A monitoring pass with nothing to monitor says so, and starts nothing."""

from __future__ import annotations

import logging

import mlflow


def test_a_pass_without_a_champion_reports_it_and_never_retrains(params, tmp_path, monkeypatch, caplog):
    from retrainer.monitoring import run_monitor_pass

    monkeypatch.setenv("RETRAINER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    calls = []
    try:
        with caplog.at_level(logging.WARNING):
            result = run_monitor_pass(params, tmp_path, retrain=calls.append, logger=logging.getLogger("test"))
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert result["status"] == "no champion" and not result["alarm"] and not result["fired"]
    assert calls == []
    assert not (tmp_path / "home" / "monitor" / "decisions.jsonl").exists(), "no decision without a champion"
    assert any("nothing to monitor" in r.message for r in caplog.records if r.name == "test")
