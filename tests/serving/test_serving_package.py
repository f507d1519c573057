"""Packaging: MLflow versions into the BentoML store, an offline Bento build, and `bentoml serve <tag>`."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pandas as pd
import pytest
from conftest import ROOT, Registry, Server, raw_records

pytestmark = pytest.mark.integration


def test_build_bento_then_serve_it(registry_home: Registry, seed_flights: pd.DataFrame, tmp_path):
    bentoml_home = registry_home.home / "bentoml"
    env = {**os.environ, **registry_home.env, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    code = (
        "from pathlib import Path; from retrainer.serving.package import build_bento; "
        f"print(build_bento('{registry_home.model_name}', ['1', '2'], Path('{ROOT}')))"
    )
    built = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1]
    assert tag.startswith("retrainer:")
    assert (bentoml_home / "bentos" / "retrainer" / tag.split(":")[1] / "bento.yaml").is_file()
    assert (bentoml_home / "models" / registry_home.model_name / "v2").is_dir()

    from retrainer.io import registry
    from retrainer.io.tracking import connect

    with pytest.MonkeyPatch.context() as patch:
        for key, value in registry_home.env.items():
            patch.setenv(key, value)
        connect()
        assert registry.version_tags(registry_home.model_name, "1")["bento_tag"] == tag

    serve_env = {
        "BENTOML_HOME": str(bentoml_home),
        "RETRAINER_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'no-registry.db'}",
    }
    server = Server(tag, serve_env, tmp_path / "bento.log", cwd=tmp_path).start()
    try:
        response = httpx.post(f"{server.url}/predict", json={"records": raw_records(seed_flights, 3)}, timeout=30)
        assert response.status_code == 200, response.text
        assert {p["model_version"] for p in response.json()["predictions"]} == {"1"}
    finally:
        server.stop()
    assert (tmp_path / "home" / "predictions.db").is_file()
