"""`retrainer serve` as a real process: its workers die with it, and a taken port is refused naming its holder."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import BIN, ROOT, TOKEN, Registry

from retrainer.io.processes import free_port, port_in_use, stop_process_group, wait_until_ready
from retrainer.serving.launch import start_service

pytestmark = pytest.mark.integration

SERVICE = "retrainer.serving.service:RetrainerService"


def _env(registry: Registry, home: Path) -> dict[str, str]:
    return {
        **registry.env,
        "RETRAINER_HOME": str(home),
        "RETRAINER_ADMIN_TOKEN": TOKEN,
        "BENTOML_HOME": str(registry.home / "bentoml"),
    }


def test_a_killed_serve_takes_its_workers_with_it_and_frees_the_port(registry_home: Registry, tmp_path: Path):
    """kill -9 of the `retrainer serve` process: its BentoML worker stops too, nothing answers, the port is free."""
    service = start_service(ROOT, tmp_path / "serve.log", _env(registry_home, tmp_path / "home"))
    workers = psutil.Process(service.proc.pid).children(recursive=True)
    try:
        assert workers, "BentoML serves from worker processes"
        port = int(service.url.rsplit(":", 1)[1])
        os.kill(service.proc.pid, signal.SIGKILL)
        service.proc.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"orphaned workers: {[p.pid for p in alive]}"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{service.url}/healthz", timeout=2)
        assert not port_in_use(port)
    finally:
        for worker in workers:  # never leave an orphan behind when the test fails
            with contextlib.suppress(psutil.Error):
                worker.kill()
        stop_process_group(service.proc)


def test_serve_refuses_a_port_in_use_and_names_the_process_holding_it(registry_home: Registry, tmp_path: Path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "retrainer.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **_env(registry_home, tmp_path / "home")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in done.stderr


def test_bentoml_serve_without_a_host_listens_on_loopback_only(registry_home: Registry, tmp_path: Path):
    """The service's own default host (also a built Bento's, `bentoml serve <tag>`): 127.0.0.1, not 0.0.0.0."""
    port = free_port()
    env = {**os.environ, **_env(registry_home, tmp_path / "home"), "RETRAINER_ROOT": str(ROOT)}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    log_path = tmp_path / "serve.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", SERVICE, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_ready(proc, f"http://127.0.0.1:{port}/readyz", log_path, 300)
        listening = {
            c.laddr.ip
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
        assert listening == {"127.0.0.1"}
    finally:
        stop_process_group(proc)
