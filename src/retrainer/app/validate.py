"""Use case: validate one batch file against the suite and the training data, quarantining it if blocked."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from retrainer.config import Params
from retrainer.io.project import Workspace
from retrainer.io.tables import write_json
from retrainer.stages import TRAIN


@dataclass(frozen=True)
class BatchValidation:
    """A batch's validation: passed or not, the blocking failures and warnings, where it was quarantined.

    `report` is the full validation report (what `retrainer validate --json` prints), `text` its human form.
    """

    passed: bool
    text: str
    failures: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    quarantine_dir: str | None = None
    report: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self, batch_id: str) -> dict:
        """What a cycle result keeps of it: the batch, the time taken, the names of the warning checks."""
        return {"batch_id": batch_id, "seconds": self.seconds, "warnings": [w.get("check") for w in self.warnings]}

    def failure_reasons(self) -> list[str]:
        """One line per blocking failure: check, expectation, column and what was found (rows, counts, reason)."""
        from retrainer.validation import format_entry

        return [format_entry(f).strip().removeprefix("- ") for f in self.failures]


def training_reference(workspace: Workspace) -> pd.DataFrame | None:
    """The training rows new batches are compared with (drift, row share), or None before the first training."""
    train = workspace.path(TRAIN)
    return pd.read_parquet(train) if train.exists() else None


def concurrent_batches(workspace: Workspace, identifier: str | None) -> list[str]:
    """Batches that arrived together with batch `identifier` or after it (see `BatchRecord.concurrent_with`).

    The rule, kept simple: an accepted batch counts for a batch's freshness only if its outcome was recorded before
    that batch was first claimed. The cost: two different files of one period that arrive together are not stale
    against each other, so both can be accepted (a re-delivery is caught when it comes after the first is done).
    """
    from retrainer.io.batch_record_pg import open_batch_record

    return open_batch_record(workspace.batch_record).concurrent_with(identifier) if identifier else []


def validate_batch(
    path: Path, params: Params, workspace: Workspace, identifier: str | None = None, replaces: str | None = None
) -> BatchValidation:
    """Run the GX suite and the drift checks on a batch file; a blocking failure quarantines it byte-for-byte.

    Freshness is judged against the data already accepted for training, less the batch this one `replaces` (a
    re-delivery of its period), and less the batches concurrent with this one (`concurrent_batches`): a batch is
    stale only against data whose batch was done before it arrived, so when two months arrive together and the later
    one wins the workspace lock, the earlier one is not stale for it. With `identifier` (a cycle's batch), a batch
    accepted before is not checked for time overlap with the training data it is already part of, and a passing
    report is kept next to the accepted batch.
    """
    from retrainer.io.batches import is_accepted
    from retrainer.validation import format_outcome, freshness_floor, validate_batch_file

    started = time.perf_counter()
    batches = workspace.path(params.data.batches_dir)
    accepted = bool(identifier) and is_accepted(batches, identifier)
    skipped = [*([replaces] if replaces else []), *concurrent_batches(workspace, identifier)]
    until = None if accepted else freshness_floor(params, workspace.root, exclude=skipped)
    reference = training_reference(workspace)
    outcome = validate_batch_file(path, params, workspace.root, reference=reference, trained_until=until)
    if identifier and outcome.passed and not accepted:
        write_json(outcome.report, batches / f"{identifier}.validation.json")
    return BatchValidation(
        passed=outcome.passed,
        text=format_outcome(outcome),
        failures=outcome.failures,
        warnings=outcome.warnings,
        quarantine_dir=str(outcome.quarantine_dir) if outcome.quarantine_dir else None,
        report=outcome.report,
        seconds=round(time.perf_counter() - started, 2),
    )
