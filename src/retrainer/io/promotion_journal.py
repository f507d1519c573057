"""The promotion journal: one file under the home that says which promotion is under way and how far it got.

A promotion moves the champion alias, then tags the new champion, records its golden predictions, tells the service
and records the batch's outcome. A run killed between two of these leaves the journal behind, so the next run (or
`retrainer status`) can finish the promotion, or undo it when the alias never moved. Every write replaces the file
atomically and durably (temp file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import MISSING, asdict, dataclass, fields, replace
from enum import StrEnum
from pathlib import Path

from filelock import FileLock

from retrainer.io.processes import owner_alive, this_process
from retrainer.io.tables import write_json

# Fault injection for tests: a process with this variable set to a phase kills itself (SIGKILL) right after doing
# that phase and before journalling it: the one way to stop a real promotion at an exact point.
CRASH_AFTER_ENV = "RETRAINER_CRASH_AFTER_PHASE"


class Phase(StrEnum):
    """How far a promotion got, in order: each phase names the last step known done."""

    INTENT = "intent"  # written before anything moves
    ALIAS = "alias"  # the champion alias points at the new version
    TAGS = "tags"  # the new champion carries its promotion tags
    GOLDEN = "golden"  # golden predictions recorded (or their failure logged)
    SERVICE = "service"  # the running service was told (or none was reachable)


PHASES = tuple(Phase)


@dataclass(frozen=True)
class PromotionEntry:
    """One promotion under way: which model, from which champion (None: there was none) to which version, for which
    batch, with the gate's reasons; the phase last done; and the process that writes it (pid + start time)."""

    model: str
    from_version: str | None
    to_version: str
    batch_id: str | None
    reasons: tuple[str, ...]
    phase: Phase = Phase.INTENT
    owner_pid: int = 0
    owner_started: float = 0.0

    def done(self, phase: Phase) -> bool:
        """Whether `phase` is already done."""
        return PHASES.index(self.phase) >= PHASES.index(phase)

    @property
    def owner_alive(self) -> bool:
        """Whether the process that writes this promotion still runs."""
        return owner_alive(self.owner_pid, self.owner_started)

    def describe(self) -> str:
        """`v4 over v1 (batch ab12, last done: alias, pid 123)`."""
        over = f"v{self.from_version}" if self.from_version else "no champion"
        return f"v{self.to_version} over {over} (batch {self.batch_id}, last done: {self.phase}, pid {self.owner_pid})"


class CorruptJournal(ValueError):
    """A journal file that is not a promotion entry: named, with what is wrong and what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"promotion journal {path} cannot be read: {problem}. Nothing is recovered while it is there: check "
            "the registry's champion alias (`retrainer status` after moving the file away), then remove it"
        )


def parse_entry(payload: object, path: Path) -> PromotionEntry:
    """The entry a journal file holds; CorruptJournal naming `path` and the key when its content is not one."""
    if not isinstance(payload, dict):
        raise CorruptJournal(path, f"expected a JSON object, found {type(payload).__name__}")
    known = {f.name for f in fields(PromotionEntry)}
    required = {f.name for f in fields(PromotionEntry) if f.default is MISSING}
    if missing := sorted(required - set(payload)):
        raise CorruptJournal(path, f"keys {missing} are missing")
    if unknown := sorted(set(payload) - known):
        raise CorruptJournal(path, f"keys {unknown} are unknown")
    reasons, phase = payload["reasons"], payload.get("phase", str(Phase.INTENT))
    if not isinstance(reasons, list) or phase not in PHASES:
        raise CorruptJournal(path, f"reasons must be a list and phase one of {[str(p) for p in PHASES]}")
    return PromotionEntry(**{**payload, "reasons": tuple(reasons), "phase": Phase(phase)})


class PromotionJournal:
    """The journal file; `begin` writes the intent, `advance` each phase done, `close` removes it when all is done."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lock(self, timeout_s: float = 600) -> FileLock:
        """The OS file lock whoever finishes an interrupted promotion holds (freed by the kernel on death)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path.with_name(self.path.name + ".lock")), timeout=timeout_s)

    def read(self) -> PromotionEntry | None:
        """The promotion under way, or None; a file that cannot be read is an error naming it."""
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CorruptJournal(self.path, str(exc)) from exc
        return parse_entry(payload, self.path)

    def begin(self, entry: PromotionEntry) -> PromotionEntry:
        """Write the intent, owned by this process; returns it."""
        pid, started = this_process()
        written = replace(entry, phase=Phase.INTENT, owner_pid=pid, owner_started=started)
        self._write(written)
        return written

    def advance(self, entry: PromotionEntry, phase: Phase) -> PromotionEntry:
        """Record `phase` as done for this promotion; returns the entry as written."""
        moved = replace(entry, phase=phase)
        self._write(moved)
        return moved

    def close(self, to_version: str | None = None) -> None:
        """Remove the journal (only when it is about `to_version`, if given): the promotion is over."""
        current = self.read()
        if current is not None and to_version in (None, current.to_version):
            self.path.unlink(missing_ok=True)
            _fsync_dir(self.path.parent)

    def _write(self, entry: PromotionEntry) -> None:
        """Replace the file atomically and durably (io/tables.write_json: temp file, fsync, rename), and make the
        rename itself durable."""
        write_json({**asdict(entry), "phase": str(entry.phase)}, self.path)
        _fsync_dir(self.path.parent)


def crash_point(phase: Phase) -> None:
    """SIGKILL this process when $RETRAINER_CRASH_AFTER_PHASE names `phase` (tests only; nothing happens otherwise)."""
    if os.environ.get(CRASH_AFTER_ENV) == str(phase):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
