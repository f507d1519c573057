"""A monitoring pass with nothing to monitor says so, and starts nothing."""

from __future__ import annotations

import logging

import mlflow


def test_a_pass_without_a_champion_reports_it_and_never_retrains(params, tmp_path, monkeypatch, caplog):
    from retrainer.app.monitor import monitor_pass
    from retrainer.io.project import Workspace

    monkeypatch.setenv("RETRAINER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    calls = []
    try:
        with caplog.at_level(logging.WARNING):
            result = monitor_pass(params, Workspace.at(tmp_path), calls.append, log=logging.getLogger("test")).to_dict()
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert result["status"] == "no champion" and not result["alarm"] and not result["fired"]
    assert calls == []
    assert not (tmp_path / "home" / "monitor" / "decisions.jsonl").exists(), "no decision without a champion"
    assert any("nothing to monitor" in r.message for r in caplog.records if r.name == "test")
