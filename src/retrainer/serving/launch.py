"""Start `retrainer serve` as a subprocess on a loopback port and wait until it is ready (demo, tests, benches)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from retrainer.io.processes import free_port, stop_process_group, wait_until_ready


@dataclass
class RunningService:
    """A started service: its URL, its process (a group of its own) and its log file."""

    proc: subprocess.Popen
    url: str
    log_path: Path

    def stop(self) -> None:
        stop_process_group(self.proc)


def start_service(
    root: Path, log_path: Path, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> RunningService:
    """`retrainer serve` for the project at `root` on a free port; returns once /readyz answers 200.

    The service needs a champion to be ready. `env` is added to this process's environment (e.g. the admin token).
    """
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "retrainer.cli", "serve", "--port", str(port)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            cwd=root,
            env={**os.environ, **(env or {}), "BENTOML_DO_NOT_TRACK": "true"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, f"{url}/readyz", log_path, timeout, name="retrainer serve")
    except BaseException:
        stop_process_group(proc)
        raise
    return RunningService(proc=proc, url=url, log_path=log_path)
