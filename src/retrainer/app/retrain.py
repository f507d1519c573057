"""Use cases: retrain on a batch (validate, accept, run the stages, gate, then reject, promote or canary) and drain
the inbox into one retrain.

Each piece of a cycle is a plain function; `RetrainSteps` names them, so an entry point can run each piece its own
way (the Prefect flow passes them wrapped as tasks) while the cycle's decisions stay here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from retrainer.app.canary import CanaryPlan, CanaryResult, run_canary
from retrainer.app.promotion import (
    Verdict,
    close_promotion,
    complete_promotion,
    mark_challenger,
    package_bento,
    promote_challenger,
    record_lineage,
    recover_interrupted,
    reject_challenger,
)
from retrainer.app.results import CycleResult
from retrainer.app.validate import BatchValidation, validate_batch
from retrainer.config import Params, require_dvc_params
from retrainer.cycle import GATE_JSON, finite, gather_and_decide, write_gate_report
from retrainer.io import registry
from retrainer.io.batch_record_pg import open_batch_record
from retrainer.io.batches import (
    BatchRecord,
    accept,
    batch_id,
    is_accepted,
    pending_batches,
    restore,
    set_aside,
    withdraw,
)
from retrainer.io.locks import workspace_lock
from retrainer.io.project import Workspace
from retrainer.io.promotion_journal import Phase, PromotionEntry, PromotionJournal
from retrainer.io.tables import read_json
from retrainer.io.tracking import connect
from retrainer.io.workspace import commit_stage, push_to_team_remote, stage_changed
from retrainer.outcomes import RETRYABLE, CanaryOutcome, CycleStatus
from retrainer.stages import REGISTRATION, pipeline_stages, run_stage

_log = logging.getLogger(__name__)


class BatchQuarantined(Exception):
    """A batch failed a blocking expectation; `result` holds the cycle's outcome."""

    def __init__(self, result: CycleResult) -> None:
        super().__init__("; ".join(result.reasons) or "batch quarantined")
        self.result = result


def accept_batch(path: Path, params: Params, workspace: Workspace, identifier: str) -> str:
    """Copy the batch into the accepted batches the ingest stage reads; return the accepted file."""
    return str(accept(path, workspace.path(params.data.batches_dir), identifier))


def run_pipeline_stage(params: Params, workspace: Workspace, name: str) -> dict:
    """One dvc.yaml stage, run in-process and committed to dvc.lock; skipped when DVC sees no change."""
    started = time.perf_counter()
    ran = stage_changed(workspace.root, name)
    if ran:
        run_stage(name, params, workspace.root)
        commit_stage(workspace.root, name)
    return {"stage": name, "ran": ran, "seconds": round(time.perf_counter() - started, 2)}


def gate_challenger(params: Params, workspace: Workspace) -> dict:
    """Evaluate challenger and champion on the same holdout, decide, and store the gate report."""
    return write_gate_report(gather_and_decide(params, workspace.root), workspace.root)


def publish_nothing(workspace: Workspace, result: CycleResult) -> None:
    """The default for `RetrainSteps.publish`: a plain run has nowhere to publish to."""


@dataclass(frozen=True)
class RetrainSteps:
    """The pieces of a cycle, with the signatures of the plain functions that are their defaults."""

    validate: Callable[..., BatchValidation] = validate_batch  # (path, params, workspace, identifier, replaces)
    accept: Callable[[Path, Params, Workspace, str], str] = accept_batch
    run_stage: Callable[[Params, Workspace, str], dict] = run_pipeline_stage
    mark_challenger: Callable[[str, str], str | None] = mark_challenger
    gate: Callable[[Params, Workspace], dict] = gate_challenger
    reject: Callable[[Params, dict], Verdict] = reject_challenger
    package: Callable[[Workspace, list[str]], str] = package_bento
    promote: Callable[..., Verdict] = promote_challenger  # (params, workspace, gate, expected, batch_id=)
    canary: Callable[[CanaryPlan], CanaryResult] = run_canary
    record_lineage: Callable[[Params, CycleResult], None] = record_lineage
    publish: Callable[[Workspace, CycleResult], None] = publish_nothing
    push: Callable[[Path], str | None] = push_to_team_remote  # (root) -> the reason it failed, or None


@dataclass(frozen=True)
class Cycle:
    """One claimed batch (or shipped change: `batch` None, `change` what identifies it) and what its cycle works with.

    `replaces` names an accepted batch this one re-delivers (`replaced` is its recorded result). The lists record
    what the cycle changed in the accepted batches, so a failed cycle can undo exactly that: batches it accepted
    (`taken`), batches it included, batches it set aside.
    """

    params: Params
    workspace: Workspace
    record: BatchRecord
    batch: Path | None
    identifier: str
    previous: dict | None
    steps: RetrainSteps
    log: logging.Logger | logging.LoggerAdapter
    replaces: str | None = None
    replaced: dict | None = None
    taken: list[str] = dataclasses.field(default_factory=list)
    included: list[CycleResult] = dataclasses.field(default_factory=list)
    set_aside: list[str] = dataclasses.field(default_factory=list)
    waited: list[str] = dataclasses.field(default_factory=list)
    change: dict | None = None

    @property
    def batches_dir(self) -> Path:
        """Where accepted batches live."""
        return self.workspace.path(self.params.data.batches_dir)

    @property
    def superseded_dir(self) -> Path:
        """Where replaced batches are kept, byte for byte, next to the accepted batches."""
        return self.batches_dir.parent / CycleStatus.SUPERSEDED


def recorded(entry: dict) -> CycleResult:
    """A batch record entry's outcome as a result."""
    return CycleResult.from_dict({"status": entry["status"], **(entry["result"] or {})})


def retrain_batch(
    batch: Path,
    workspace: Workspace,
    *,
    force: bool = False,
    canary_traffic: Path | None = None,
    earlier: Sequence[Path] = (),
    replaces: str | None = None,
    steps: RetrainSteps = RetrainSteps(),
    log: logging.Logger | logging.LoggerAdapter = _log,
) -> CycleResult:
    """One retrain cycle for one batch file (and the `earlier` batches gathered before it: one training for all).

    A batch processed before returns its recorded outcome unless `force`. A gate pass is packaged, then promoted
    directly (no canary or no champion) or canaried at `canary.service_url`, replaying `canary_traffic` if given.
    `replaces`: an accepted batch this file re-delivers, set aside under data/superseded/. Repairs first what a dead
    run left (`recover_interrupted`); holds the workspace lock (io/locks.py). Raises BatchQuarantined, RuntimeError
    (a live run holds the claim), ValueError (bad `replaces`), ConfigError (params DVC does not read); any other
    failure undoes the cycle's acceptances (`record_failure`) and re-raises."""
    params, record = open_cycle(workspace, log)
    batch = Path(batch).resolve()
    identifier = batch_id(batch)
    previous = record.get(identifier)
    rejudged = replaces is not None and previous is not None and previous["status"] == CycleStatus.QUARANTINED
    if has_outcome(previous) and not (force or rejudged):
        return already_processed(previous, batch.name, log)
    replaced = check_replacement(record, replaces, identifier, workspace.path(params.data.batches_dir))
    claim(record, identifier, str(batch), force or rejudged)
    cycle = Cycle(params, workspace, record, batch, identifier, previous, steps, log, replaces, replaced)
    return run_locked(cycle, f"retrain of batch {identifier}", lambda: train_and_decide(cycle, canary_traffic, earlier))


def open_cycle(workspace: Workspace, log: logging.Logger | logging.LoggerAdapter) -> tuple[Params, BatchRecord]:
    """What every cycle does first: check DVC reads the params, connect to MLflow, repair what a dead run left
    (`recover_interrupted`); returns the params and the batch record. Raises ConfigError (params DVC does not read)."""
    require_dvc_params(workspace.root)
    params = workspace.load_params()
    connect(workspace.root)
    recover_interrupted(params, workspace, log)
    return params, open_batch_record(workspace.batch_record)


def run_locked(cycle: Cycle, purpose: str, body: Callable[[], CycleResult]) -> CycleResult:
    """Run a claimed cycle's `body` holding the workspace lock (io/locks.py); a failure other than a quarantine
    undoes what the cycle changed and is recorded (`record_failure`), then re-raised."""
    timeout = cycle.params.retrain.lock_timeout_seconds
    try:
        with workspace_lock(cycle.workspace.workspace_lock, purpose, timeout, lambda line: waited(cycle, line)):
            return body()
    except BatchQuarantined:
        raise
    except BaseException as exc:
        record_failure(cycle, exc)
        raise


def waited(cycle: Cycle, line: str) -> None:
    """The workspace was busy when the cycle began: say so in the log and, later, in the batch's reasons."""
    cycle.log.warning(line)
    cycle.waited.append(line.replace("waiting up to", "waited (at most"))


def has_outcome(previous: dict | None) -> bool:
    """Whether a batch record entry holds a finished outcome: not a retryable failure, and not a claim still running
    (that one goes to `claim`, which names the live run or takes over a dead one's)."""
    return previous is not None and previous["status"] in set(CycleStatus) - set(RETRYABLE)


def already_processed(previous: dict, source: str, log: logging.Logger | logging.LoggerAdapter) -> CycleResult:
    """The recorded outcome of a batch (or shipped change) processed before, marked as such; `source` names it."""
    log.info("%s (%s) was already processed: %s", previous["batch_id"], source, previous["status"])
    return recorded(previous).but(already_processed=True)


def claim(record: BatchRecord, identifier: str, source: str, force: bool) -> None:
    """Claim the batch (or change) `identifier` for this process; RuntimeError naming the live run that holds it."""
    if not record.claim(identifier, source, force=force):
        raise RuntimeError(f"{identifier} is being processed by another run (pid {record.owner(identifier)})")


def check_replacement(record: BatchRecord, replaces: str | None, identifier: str, batches_dir: Path) -> dict | None:
    """The recorded result of the accepted batch `replaces` names (None without one); ValueError naming what is
    wrong otherwise."""
    if replaces is None:
        return None
    if replaces == identifier:
        raise ValueError(f"batch {identifier} cannot replace itself")
    existing = record.get(replaces)
    if existing is None or not is_accepted(batches_dir, replaces):
        raise ValueError(
            f"--replaces {replaces}: no accepted batch has that id (`retrainer status` lists the processed batches)"
        )
    return existing["result"] or {}


def check_same_period(report: dict, replaced: str, batches_dir: Path) -> None:
    """ValueError unless the new batch claims the same period as the batch it replaces (from their reports)."""
    stored = batches_dir / f"{replaced}.validation.json"
    old = (read_json(stored).get("completeness") or {}).get("claimed_start") if stored.is_file() else None
    new = (report.get("completeness") or {}).get("claimed_start")
    if old and new and old != new:
        raise ValueError(
            f"batch {report['batch_id']} claims the period from {new[:10]}, the batch it replaces ({replaced}) the "
            f"period from {old[:10]}: a replacement re-delivers the same period"
        )


def record_failure(cycle: Cycle, error: BaseException) -> None:
    """A cycle that raised: every batch it accepted leaves training (its source is untouched, its record says
    `failed`, so the next run or drain takes it again), a batch it set aside is put back, and its batch is recorded
    `failed` with the error."""
    reason = f"{type(error).__name__}: {error}"[:2000]
    for identifier in cycle.taken:
        withdraw(cycle.batches_dir, identifier)
    for outcome in cycle.included:
        if outcome.status == CycleStatus.INCLUDED:
            withdraw(cycle.batches_dir, outcome.batch_id)
            failed = outcome.but(status=CycleStatus.FAILED, reasons=[f"the cycle it was included in failed: {reason}"])
            cycle.record.finish(outcome.batch_id, CycleStatus.FAILED, failed.to_dict())
    for identifier in cycle.set_aside:
        restore(cycle.superseded_dir, identifier, cycle.batches_dir)
    failed = CycleStatus.FAILED
    cycle.record.finish(
        cycle.identifier, failed, {"status": str(failed), "batch_id": cycle.identifier, "reasons": [reason]}
    )


def train_and_decide(cycle: Cycle, canary_traffic: Path | None, earlier: Sequence[Path]) -> CycleResult:
    """Validate and accept the batch, run the stages, gate the challenger and roll it out or reject it."""
    params, workspace, steps = cycle.params, cycle.workspace, cycle.steps
    included = include_earlier(earlier, cycle.identifier, params, workspace, cycle.record, steps)
    cycle.included.extend(included)
    validation = steps.validate(cycle.batch, params, workspace, cycle.identifier, cycle.replaces)
    if not validation.passed:
        quarantine(cycle, validation)
    accept_in_cycle(cycle, validation)
    stages, registration = run_stages(cycle)
    return gate_and_roll_out(
        cycle, stages, registration, canary_traffic, validation.summary(cycle.identifier), included
    )


def run_stages(cycle: Cycle) -> tuple[list[dict], dict]:
    """Every pipeline stage (DVC skips what did not change); returns the stages and the registration they left."""
    stages = [cycle.steps.run_stage(cycle.params, cycle.workspace, name) for name in pipeline_stages(cycle.params)]
    return stages, read_json(cycle.workspace.path(REGISTRATION))


def gate_and_roll_out(
    cycle: Cycle,
    stages: list[dict],
    registration: dict,
    canary_traffic: Path | None,
    validation: dict | None,
    included: Sequence[CycleResult] = (),
) -> CycleResult:
    """Gate the registered challenger against the champion, roll it out or reject it, and record the outcome.

    `validation` is the batch's validation summary (None for a shipped change, which brings no batch). Reuses the
    last decision on the same challenger when no stage ran (`reuse_decision`)."""
    params, steps = cycle.params, cycle.steps
    reused = reuse_decision(cycle, stages, registration["version"])
    if reused is not None:
        return reused
    expected = steps.mark_challenger(params.tracking.registered_model, registration["version"])
    gate = steps.gate(params, cycle.workspace)
    verdict = roll_out(cycle, gate, expected, canary_traffic)
    result = CycleResult(
        status=verdict.status,
        reasons=verdict.reasons,
        batch_id=cycle.identifier,
        batch=cycle.batch.name if cycle.batch else None,
        challenger_version=registration["version"],
        compared_champion=expected,
        champion_version=registry.alias_version(params.tracking.registered_model, registry.CHAMPION),
        metrics={"challenger": finite(gate["challenger_metrics"]), "champion": finite(gate["champion_metrics"])},
        gate=gate,
        registration=registration,
        stages=stages,
        included=[outcome.to_dict() for outcome in included],
        bento_tag=verdict.bento_tag,
        canary=verdict.canary,
        validation=validation,
        replaces=cycle.replaces,
        change=cycle.change,
    )
    return finish(cycle, result)


def accept_in_cycle(cycle: Cycle, validation: BatchValidation) -> None:
    """Put a validated batch into training, setting aside the batch it replaces, and note both for an undo."""
    if not is_accepted(cycle.batches_dir, cycle.identifier):
        cycle.taken.append(cycle.identifier)  # its validation report is written already
    if cycle.replaces is not None:
        check_same_period(validation.report, cycle.replaces, cycle.batches_dir)
        set_aside(cycle.batches_dir, cycle.replaces, cycle.superseded_dir)
        cycle.set_aside.append(cycle.replaces)
    cycle.steps.accept(cycle.batch, cycle.params, cycle.workspace, cycle.identifier)


def finish(cycle: Cycle, result: CycleResult) -> CycleResult:
    """Push the outputs to the team's DVC remote (if set), tag the challenger's lineage, publish the result, record
    it for the batch, close its promotion journal."""
    if cycle.waited:
        result = result.but(reasons=[*result.reasons, *(f"{line})" for line in cycle.waited)])
    unpushed = cycle.steps.push(cycle.workspace.root)
    if unpushed is not None:
        cycle.log.warning("%s", unpushed)
        result = result.but(reasons=[*result.reasons, unpushed])
    cycle.steps.record_lineage(cycle.params, result)
    cycle.steps.publish(cycle.workspace, result)
    if cycle.replaces is not None:
        superseded = {
            **(cycle.replaced or {}),
            "status": str(CycleStatus.SUPERSEDED),
            "superseded_by": cycle.identifier,
        }
        cycle.record.finish(cycle.replaces, CycleStatus.SUPERSEDED, superseded)
    cycle.record.finish(cycle.identifier, result.status, result.to_dict())
    close_promotion(cycle.workspace, result.challenger_version)
    cycle.log.info("batch %s: %s (%s)", cycle.identifier, result.status.upper(), "; ".join(result.reasons))
    return result


def quarantine(cycle: Cycle, validation: BatchValidation) -> None:
    """Record a batch that failed a blocking check as quarantined, and raise BatchQuarantined with its outcome."""
    result = quarantined(cycle.identifier, cycle.batch, validation, cycle.params)
    cycle.record.finish(cycle.identifier, result.status, result.to_dict())
    cycle.log.error("batch %s quarantined:\n%s", cycle.identifier, validation.text)
    raise BatchQuarantined(result)


def quarantined(identifier: str, path: Path, validation: BatchValidation, params: Params) -> CycleResult:
    """The outcome recorded for a batch that failed a blocking check."""
    return CycleResult(
        status=CycleStatus.QUARANTINED,
        reasons=validation.failure_reasons(),
        batch_id=identifier,
        batch=path.name,
        quarantine_dir=validation.quarantine_dir,
        champion_version=registry.alias_version(params.tracking.registered_model, registry.CHAMPION),
        validation=validation.text,
    )


def reuse_decision(cycle: Cycle, stages: list[dict], version: str) -> CycleResult | None:
    """The decision of the last run on this batch, when no stage ran and it judged this same challenger."""
    previous = cycle.previous
    if any(stage["ran"] for stage in stages) or not previous or previous["status"] in RETRYABLE:
        return None
    cached = read_json(cycle.workspace.path(GATE_JSON))
    if cached.get("challenger_version") != version or not previous["result"]:
        return None
    cycle.log.info("nothing changed since the last run: reusing its decision")
    cycle.record.finish(cycle.identifier, previous["status"], previous["result"])
    return recorded(previous).but(reused=True, stages=stages)


def roll_out(cycle: Cycle, gate: dict, expected: str | None, canary_traffic: Path | None) -> Verdict:
    """Reject a failed challenger; package a passed one, then canary it against the champion or promote it."""
    params, steps = cycle.params, cycle.steps
    if not gate["passed"]:
        return steps.reject(params, gate)
    bento_tag = steps.package(cycle.workspace, [v for v in (expected, gate["challenger_version"]) if v])
    if params.canary.enabled and expected:
        verdict = canary_challenger(cycle, gate["challenger_version"], expected, canary_traffic)
    else:
        verdict = steps.promote(params, cycle.workspace, gate, expected, batch_id=cycle.identifier)
    return dataclasses.replace(verdict, bento_tag=bento_tag)


def canary_challenger(cycle: Cycle, version: str, expected: str, traffic: Path | None) -> Verdict:
    """The canary on the running service; its outcome becomes the cycle's status."""
    params, workspace = cycle.params, cycle.workspace
    plan = CanaryPlan(
        base_url=params.canary.service_url,
        model_name=params.tracking.registered_model,
        challenger_version=version,
        expected_champion=expected,
        traffic=str(traffic) if traffic else None,
        root=workspace.root,
        home=workspace.home,
    )
    journal = PromotionJournal(workspace.promotion_journal)
    entry = journal.begin(PromotionEntry(plan.model_name, expected, version, cycle.identifier, ()))
    outcome = cycle.steps.canary(plan)
    statuses = {CanaryOutcome.PROMOTED: CycleStatus.PROMOTED, CanaryOutcome.ROLLED_BACK: CycleStatus.ROLLED_BACK}
    if outcome.outcome == CanaryOutcome.PROMOTED:
        complete_promotion(params, workspace, journal.advance(entry, Phase.ALIAS), cycle.log)
    else:
        journal.close(version)
    reasons = [f"canary {outcome.outcome}", *outcome.reasons]
    return Verdict(statuses.get(outcome.outcome, CycleStatus.REJECTED), reasons, canary=outcome.to_dict())


def include_earlier(
    paths: Sequence[Path],
    into: str,
    params: Params,
    workspace: Workspace,
    record: BatchRecord,
    steps: RetrainSteps = RetrainSteps(),
) -> list[CycleResult]:
    """Validate and accept batches gathered before the cycle of batch `into`, so its one training covers them all.

    Each keeps a record of its own: `included` (trained in the cycle of batch `into`), `quarantined`, or `failed`
    (this batch alone; the next drain takes it again). Batches already processed, or claimed by another run, are
    skipped.
    """
    outcomes = []
    for name in paths:
        path = Path(name).resolve()
        identifier = batch_id(path)
        existing = record.get(identifier)
        if (existing and existing["status"] not in RETRYABLE) or not record.claim(identifier, str(path)):
            continue
        outcome = include_one(path, identifier, into, params, workspace, steps)
        record.finish(identifier, outcome.status, outcome.to_dict())
        outcomes.append(outcome)
    return outcomes


def include_one(
    path: Path, identifier: str, into: str, params: Params, workspace: Workspace, steps: RetrainSteps
) -> CycleResult:
    """Validate and accept one earlier batch; a failure is this batch's alone (retryable), never the cycle's."""
    try:
        validation = steps.validate(path, params, workspace, identifier)
        if not validation.passed:
            return quarantined(identifier, path, validation, params)
        steps.accept(path, params, workspace, identifier)
    except Exception as exc:
        return CycleResult(CycleStatus.FAILED, [str(exc)[:2000]], batch_id=identifier, batch=path.name)
    reasons = [f"accepted; trained in the cycle of batch {into}"]
    return CycleResult(CycleStatus.INCLUDED, reasons, batch_id=identifier, batch=path.name, trained_with=into)


def waiting_batches(params: Params, workspace: Workspace) -> list[Path]:
    """The batch files waiting in the inbox (not yet processed), oldest first."""
    return pending_batches(workspace.path(params.retrain.inbox_dir), open_batch_record(workspace.batch_record))


Retrain = Callable[..., CycleResult]


def drain_inbox(workspace: Workspace, canary_traffic: Path | None = None, retrain: Retrain = retrain_batch) -> list:
    """Retrain once on every batch waiting in the inbox: the newest is the cycle's batch, the others are included
    (validated and accepted first); each batch is processed exactly once. Returns what `retrain` returned, or []."""
    waiting = waiting_batches(workspace.load_params(), workspace)
    if not waiting:
        return []
    return [retrain(waiting[-1], workspace, canary_traffic=canary_traffic, earlier=waiting[:-1])]
