"""Packaging: MLflow versions into the BentoML store, an offline Bento build, and `bentoml serve <tag>`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pandas as pd
import psutil
import pytest
from conftest import ROOT, Registry, Server, raw_records

pytestmark = pytest.mark.integration


def test_build_bento_then_serve_it(registry_home: Registry, seed_flights: pd.DataFrame, tmp_path):
    bentoml_home = registry_home.home / "bentoml"
    env = {**os.environ, **registry_home.env, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    code = (
        "import sys; from pathlib import Path; from retrainer.serving.package import build_bento; "
        f"tag = build_bento('{registry_home.model_name}', ['1', '2'], Path('{ROOT}')); "
        "print('sklearn' in sys.modules); print(tag)"
    )
    built = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr[-3000:]
    *_, sklearn_loaded, tag = built.stdout.strip().splitlines()
    # packing never scores: scikit-learn's imports (about 3 s of CPU here) stay out of every packaging process
    assert sklearn_loaded == "False"
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


PACKAGE_FOR_A_RUN = (
    "import sys\n"
    "from pathlib import Path\n"
    "from retrainer.app.promotion import package_bento\n"
    "from retrainer.io.project import Workspace\n"
    "package_bento(Workspace.at(Path(sys.argv[1])), ['1', '2'])\n"
)


def _packagers(pid: int) -> list[psutil.Process]:
    """The children of `pid` that run `retrainer.cli package` (once exec'd: a forked child first shows our script)."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if "retrainer.cli" in child.cmdline() and "package" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _gone(process: psutil.Process) -> bool:
    """Whether a process has ended (a zombie waiting to be reaped by whoever adopted it counts as ended)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_packaging_child_dies_with_a_killed_run_and_builds_nothing(registry_home: Registry, tmp_path):
    """A real process packages as a retrain cycle does (`package_bento`: a `retrainer package` child); it is
    SIGKILLed as soon as that child exists. The child must die with it at once, before it builds a Bento or tags
    a version for a run that no longer exists (it used to live on as an orphan and re-tag versions ~50 s later)."""
    bentoml_home = tmp_path / "bentoml"
    env = {**os.environ, **registry_home.env, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    run = subprocess.Popen([sys.executable, "-c", PACKAGE_FOR_A_RUN, str(ROOT)], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while not (packagers := _packagers(run.pid)) and time.monotonic() < deadline:
            assert run.poll() is None, "the run ended before it started its packager"
            time.sleep(0.05)
        assert packagers, "no packaging child within 300 s"
        (packager,) = packagers
    finally:
        run.kill()
        run.wait(timeout=60)
    deadline = time.monotonic() + 30
    while not _gone(packager) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(packager), f"the packager (pid {packager.pid}) outlived the killed run"
    assert not (bentoml_home / "bentos").exists() or not any((bentoml_home / "bentos").rglob("bento.yaml"))
