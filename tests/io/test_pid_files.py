"""Pid files outlive their processes: stopping by pid file signals only the process that wrote it (real processes)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil

from retrainer.io.processes import stop_pid_file


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "600"], start_new_session=True)


def test_the_process_a_pid_file_names_is_stopped_and_the_file_removed(tmp_path: Path):
    process = _sleeper()
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(str(process.pid))
    assert stop_pid_file(pid_file, group=True) is True
    assert process.wait(timeout=30) is not None and not pid_file.exists()


def test_a_process_that_started_after_the_pid_file_was_written_is_left_alone(tmp_path: Path):
    """The pid was reused since (a reboot, pids wrapping): the file is stale and is removed, the stranger lives."""
    stranger = _sleeper()
    try:
        pid_file = tmp_path / "replica-1.pid"
        pid_file.write_text(str(stranger.pid))
        an_hour_ago = time.time() - 3600
        os.utime(pid_file, (an_hour_ago, an_hour_ago))
        assert stop_pid_file(pid_file, group=True) is False
        assert not pid_file.exists()
        assert psutil.Process(stranger.pid).status() != psutil.STATUS_ZOMBIE and stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait(timeout=30)


def test_a_pid_file_of_a_dead_process_is_removed_quietly(tmp_path: Path):
    process = _sleeper()
    process.kill()
    process.wait(timeout=30)
    pid_file = tmp_path / "worker.pid"
    pid_file.write_text(str(process.pid))
    assert stop_pid_file(pid_file) is False and not pid_file.exists()
