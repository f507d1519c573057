"""The workspace lock: one retrain cycle (or `dvc repro` started by retrainer) writes a workspace at a time.

An OS file lock (the `filelock` package: `fcntl.flock` on POSIX), so the kernel releases it when the holder dies,
kill -9 included: a crashed run never leaves the workspace locked. Who holds it is written next to it, so a waiting
run can say whom it waits for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from retrainer.io.processes import owner_alive, this_process


class WorkspaceBusy(RuntimeError):
    """Another live run held the workspace lock for longer than the timeout; `holder` describes it."""

    def __init__(self, message: str, holder: dict | None) -> None:
        super().__init__(message)
        self.holder = holder


def lock_holder(lock_path: Path) -> dict | None:
    """Who holds (or last held) the lock: pid, process start time, what it runs, since when; None if unknown or dead."""
    try:
        holder = json.loads(lock_path.with_name(lock_path.name + ".owner").read_text())
    except (OSError, ValueError):
        return None
    return holder if owner_alive(holder.get("pid"), holder.get("started")) else None


def describe_holder(holder: dict | None) -> str:
    """`pid 123 (retrain of batch ab12, since 2026-11-30T14:00:00Z)` or `another process`."""
    if holder is None:
        return "another process"
    return f"pid {holder['pid']} ({holder.get('purpose', '?')}, since {holder.get('since', '?')})"


@contextmanager
def workspace_lock(
    lock_path: Path, purpose: str, timeout_s: float, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the workspace's exclusive lock for the block; wait up to `timeout_s` seconds if another run holds it.

    `on_wait` is told once, with a line naming the holder, when the lock is not free at once. Raises WorkspaceBusy
    when the wait times out (0: do not wait). The lock is re-entrant within one process.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = lock_holder(lock_path)
        if on_wait is not None:
            on_wait(f"workspace busy: held by {describe_holder(holder)}; waiting up to {timeout_s:g} s")
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise WorkspaceBusy(
                f"workspace busy: held by {describe_holder(holder)} for more than {timeout_s:g} s "
                "(retrain.lock_timeout_seconds)",
                holder,
            ) from None
    try:
        pid, started = this_process()
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        owner = {"pid": pid, "started": started, "purpose": purpose, "since": since}
        lock_path.with_name(lock_path.name + ".owner").write_text(json.dumps(owner))
        yield
    finally:
        lock.release()
