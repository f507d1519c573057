"""Faults caused for real against a running service: nothing it answered is lost (issue 14, faults 5 and 6).

A full disk is a real small tmpfs mounted as the service's home; a blocked log writer is a real second process holding
SQLite's write lock; a crash is a real SIGKILL of the service's whole process group.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
from conftest import BIN, ROOT, TOKEN, Registry, Server, raw_records

from retrainer.io.project import DEAD_LETTER_FILE, JOURNAL_DIR, LOG_FILE

pytestmark = pytest.mark.integration

SERVICE = "retrainer.serving.service:RetrainerService"
# A second process takes SQLite's write lock and keeps it until it is killed: the service's log writer waits on it.
HOLD_WRITE_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(600)
"""


def _service(registry: Registry, home: Path, log: Path) -> Server:
    env = {
        **registry.env,
        "RETRAINER_HOME": str(home),
        "RETRAINER_ROOT": str(ROOT),
        "RETRAINER_ADMIN_TOKEN": TOKEN,
        "BENTOML_HOME": str(registry.home / "bentoml"),
    }
    return Server(SERVICE, env, log)


def _logged(home: Path, answered: list[str]) -> tuple[int, int]:
    """How many of the answered prediction ids the log holds, and how many of those with their features."""
    with sqlite3.connect(home / LOG_FILE) as db:
        db.execute("CREATE TEMP TABLE answered (id TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO answered VALUES (?)", [(i,) for i in answered])
        logged = db.execute("SELECT COUNT(*) FROM answered JOIN predictions USING (id)").fetchone()[0]
        with_features = db.execute(
            "SELECT COUNT(*) FROM answered a JOIN requests r ON r.key = substr(a.id, 1, 30) "
            "WHERE json_array_length(r.features, '$.month') = r.rows"
        ).fetchone()[0]
    return logged, with_features


def test_a_service_killed_while_its_log_writer_is_blocked_loses_nothing_it_answered(
    registry_home: Registry, seed_flights: pd.DataFrame, tmp_path: Path
):
    """SIGKILL of the service (its worker, then `bentoml serve`) while another process holds the log's write lock:
    every answered prediction is written into the log when the service starts again (it replays the journal the
    killed one left)."""
    home = tmp_path / "home"
    server = _service(registry_home, home, tmp_path / "serve.log").start()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(home / LOG_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        answered: list[str] = []
        with httpx.Client(base_url=server.url, timeout=3) as http:
            for start in range(0, 1_000, 10):
                try:
                    response = http.post("/predict", json={"records": raw_records(seed_flights, 10, start=start)})
                except httpx.TimeoutException:
                    break  # the writer's queue is full: the service stopped answering
                assert response.status_code == 200, response.text
                answered += [p["prediction_id"] for p in response.json()["predictions"]]
        workers = psutil.Process(server.proc.pid).children(recursive=True)
        for process in (*workers, psutil.Process(server.proc.pid)):  # the worker holds the answers: it dies first
            process.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        psutil.wait_procs(workers, timeout=30)
    finally:
        holder.kill()
        holder.wait()
        server.stop()
    assert len(answered) >= 500, "the service answered while its writer was blocked"
    assert _logged(home, answered)[0] < len(answered), "the kill came before the log had them"
    left = list((home / JOURNAL_DIR).glob("*.jsonl"))

    server.start()  # a new service replays the journal the killed one left
    try:
        assert _logged(home, answered) == (len(answered), len(answered))
        assert left, "the killed service had left its journal"
        assert not any(segment.exists() for segment in left), "a replayed journal is deleted"
    finally:
        server.stop()
    assert not list((home / JOURNAL_DIR).glob("*.jsonl")), "a service stopped cleanly deletes its own journal"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MB tmpfs; skipped (never passed) where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Write a file until the disk has no space left; returns it (delete it to free the space)."""
    filler = disk / "filler"
    block = b"\0" * 65_536
    with filler.open("wb") as out:
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_gets_503_and_loses_nothing_that_was_answered(
    registry_home: Registry, seed_flights: pd.DataFrame, small_disk: Path, tmp_path: Path
):
    """The service's home on a real tmpfs that fills up: what could not be recorded is refused (503 with the reason,
    /readyz not ready, counted), what was answered 200 is in the log after `retrainer recover-log`."""
    from typer.testing import CliRunner

    from retrainer.cli import app

    home = small_disk / "home"
    log_path = tmp_path / "serve.log"
    server = _service(registry_home, home, log_path).start()
    answered: list[str] = []
    statuses: list[int] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            first = http.post("/predict", json={"records": raw_records(seed_flights, 10)})
            assert first.status_code == 200, first.text
            answered += [p["prediction_id"] for p in first.json()["predictions"]]
            filler = _fill(small_disk)
            refusals = []
            for start in range(10, 510, 10):
                response = http.post("/predict", json={"records": raw_records(seed_flights, 10, start=start)})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    answered += [p["prediction_id"] for p in response.json()["predictions"]]
                else:
                    refusals.append(response)
            assert refusals, "the full disk refused some requests"
            assert all(r.status_code == 503 for r in refusals), statuses
            assert "No space left on device" in refusals[-1].json()["error"]
            assert statuses[-1] == 503 and http.get("/readyz").status_code == 503
            metrics = http.get("/metrics").text
            refused = re.search(r"^retrainer_prediction_log_refused_total (\S+)$", metrics, re.MULTILINE)
            assert float(refused.group(1)) == 10 * len(refusals)

            filler.unlink()
            again = http.post("/predict", json={"records": raw_records(seed_flights, 10, start=600)})
            assert again.status_code == 200, again.text
            answered += [p["prediction_id"] for p in again.json()["predictions"]]
            assert http.get("/readyz").status_code == 200
    finally:
        server.stop()
    dead_letter = home / DEAD_LETTER_FILE
    kept_lines = dead_letter.read_bytes().count(b"\n") if dead_letter.exists() else 0
    claimed = log_path.read_text().count(f"kept in {dead_letter}")
    assert claimed == kept_lines, "the service says 'kept' only for what the dead-letter file holds"

    env = {"RETRAINER_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    outcome = CliRunner().invoke(app, ["recover-log"], env=env)
    assert outcome.exit_code == 0, outcome.output
    assert _logged(home, answered)[0] == len(answered)
