"""The workspace lock with real processes: a second holder waits or ends busy, a killed holder frees it at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrainer.io.locks import WorkspaceBusy, lock_holder, workspace_lock

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from retrainer.io.locks import workspace_lock\n"
    "with workspace_lock(Path(sys.argv[1]), 'retrain of batch b1', timeout_s=0):\n"
    "    print('holding', flush=True)\n"
    "    time.sleep(float(sys.argv[2]))\n"
)


def _hold(lock: Path, seconds: float) -> subprocess.Popen:
    """A real second process that takes the lock and keeps it for `seconds` (or until it is killed)."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "holding"
    return child


def test_a_second_run_ends_busy_naming_the_holder(tmp_path):
    lock = tmp_path / "home" / "workspace.lock"
    child = _hold(lock, 600)
    try:
        assert lock_holder(lock)["pid"] == child.pid
        waited = []
        started = time.monotonic()
        with (
            pytest.raises(WorkspaceBusy, match=rf"held by pid {child.pid} \(retrain of batch b1"),
            workspace_lock(lock, "retrain of batch b2", timeout_s=1.5, on_wait=waited.append),
        ):
            pytest.fail("the lock was taken while another process held it")
        assert time.monotonic() - started >= 1.4
        assert len(waited) == 1 and f"pid {child.pid}" in waited[0] and "waiting up to 1.5 s" in waited[0]
    finally:
        child.kill()
        child.wait(timeout=30)


def test_a_second_run_waits_for_the_first_to_finish(tmp_path):
    lock = tmp_path / "workspace.lock"
    child = _hold(lock, 3)
    waited = []
    started = time.monotonic()
    with workspace_lock(lock, "retrain of batch b2", timeout_s=120, on_wait=waited.append):
        assert time.monotonic() - started > 2, "the lock is only taken after the holder let it go"
        assert lock_holder(lock)["purpose"] == "retrain of batch b2"
    assert waited, "the wait was announced"
    child.wait(timeout=30)


def test_kill_9_of_the_holder_frees_the_workspace_at_once(tmp_path):
    lock = tmp_path / "workspace.lock"
    child = _hold(lock, 600)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert lock_holder(lock) is None, "a dead holder is not reported as holding"
    with workspace_lock(lock, "retrain of batch b2", timeout_s=0):  # no wait at all: WorkspaceBusy if still held
        assert lock_holder(lock)["purpose"] == "retrain of batch b2"
