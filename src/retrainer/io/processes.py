"""Processes: server subprocesses on loopback (a free port, waiting for readiness, stopping the whole process group,
children that die with their parent) and the identity of a process that owns a claim or a lock."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

PARENT_PID_ENV = "RETRAINER_SERVE_PID"  # the parent pid a child tied to it must see (`retrainer serve`, `run_tied`)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float, name: str = "server") -> None:
    """Poll `url` until it answers 200; raise with the log's tail if the process exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:  # one for all the polls: a new one costs about 25 ms of CPU
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
    raise TimeoutError(f"{name} not ready in {timeout}s:\n{log_path.read_text()[-4000:]}")


def stop_process_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process's group (started with start_new_session), SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


PID_FILE_SLACK_S = 2.0  # a pid file is written just after its process starts; allow for clock granularity


def stop_pid_file(
    pid_file: Path, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30, group: bool = False
) -> bool:
    """Stop the process a pid file names (first word of its first line) with `stop_pid`, and remove the file.

    A pid file outlives its process (a crash, a reboot), and the pid may since belong to another program: a process
    that started after the file was written is not the one it names, and is left alone. Returns True when a live
    process was signalled, False for a stale or missing file."""
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text().split()[0])
    written = pid_file.stat().st_mtime
    pid_file.unlink()
    try:
        if psutil.Process(pid).create_time() > written + PID_FILE_SLACK_S:
            return False
    except psutil.NoSuchProcess:
        return False
    stop_pid(pid, sig, timeout_s, group)
    return True


def stop_pid(pid: int, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30, group: bool = False) -> None:
    """Send `sig` to a process (its whole process group with `group`), wait up to `timeout_s` seconds for it to end,
    then SIGKILL it (or its group). No-op when it is gone already.

    psutil's wait reaps the process when this one started it (a zombie would otherwise look alive until the timeout)
    and polls it otherwise (a server started from another shell)."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, sig)
        psutil.Process(pid).wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        kill(pid, signal.SIGKILL)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux; elsewhere nothing is done).

    BentoML's process manager starts each worker in a session of its own, so a killed `retrainer serve` would leave
    its worker answering and holding the port. SIGTERM lets the worker finish what it answered before it stops.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    # prctl(2) through libc: the one library that wraps it (python-prctl) builds against libcap headers and has not
    # been released since 2020; this is a single call.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        os.kill(os.getpid(), sig)  # `retrainer serve` died before the request was made


# Runs a module as `python -m` would, after asking the kernel to kill this process when its parent dies.
_TIED_BOOT = (
    "import runpy, signal, sys\n"
    "from retrainer.io.processes import die_with_parent\n"
    "die_with_parent(signal.SIGKILL)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def run_tied(module_args: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS...` (`module_args`), capturing its output as text, in a child the kernel kills
    (SIGKILL) if this process dies, kill -9 included: no orphan keeps working for a dead run. Raises
    subprocess.TimeoutExpired after `timeout_s` seconds."""
    env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
    command = [sys.executable, "-c", _TIED_BOOT, *module_args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def port_holders(port: int, host: str = "127.0.0.1") -> list[str]:
    """The processes listening on `port` (on `host` or every address), as "pid N (command line)"; empty when free."""
    import psutil

    holders = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.laddr.ip in (host, "0.0.0.0", "::"):
            try:
                command = " ".join(psutil.Process(conn.pid).cmdline()) if conn.pid else "unknown"
            except psutil.Error:
                command = "unknown"
            holders.append(f"pid {conn.pid} ({command})")
    return holders


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when `port` on `host` cannot be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def this_process() -> tuple[int, float]:
    """The current process's id and start time: together they name it (a pid alone is reused)."""
    return os.getpid(), psutil.Process().create_time()


def owner_alive(pid: int | None, started: float | None) -> bool:
    """Whether the process that made a claim still runs (same pid and the same start time, not a zombie)."""
    if pid is None or started is None:
        return True  # a claim from before owners were recorded: only its age can retire it
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
