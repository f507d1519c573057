"""The status vocabulary shared by the batch record, the monitor's files, the use cases and the entry points."""

from __future__ import annotations

from enum import StrEnum


class CycleStatus(StrEnum):
    """What became of a batch in a retrain cycle (the batch record and the CLI exit code use these)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    QUARANTINED = "quarantined"
    INCLUDED = "included"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # claimed by a run that died before recording an outcome; retried like FAILED
    SUPERSEDED = "superseded"  # an accepted batch replaced by a re-delivery of its period (`--replaces`)
    UNCHANGED = "unchanged"  # a shipped change that trained no new model: nothing to ship (`retrainer ship`)


# outcomes after which the next run or inbox drain takes the batch again
RETRYABLE = (CycleStatus.FAILED, CycleStatus.INTERRUPTED)


class CanaryOutcome(StrEnum):
    """How a canary ended."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


class MonitorStatus(StrEnum):
    """Whether a monitoring pass had something to judge."""

    OK = "ok"
    NO_CHAMPION = "no champion"
    NO_PROFILE = "no profile"
