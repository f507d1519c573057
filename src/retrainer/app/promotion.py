"""The registry and packaging moves of a retrain cycle: mark, reject, package, promote, tell the service, tag."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from retrainer.app.results import CycleResult
from retrainer.config import Params
from retrainer.io import registry
from retrainer.io.batch_record_pg import open_batch_record
from retrainer.io.locks import WorkspaceBusy, workspace_lock
from retrainer.io.processes import run_tied
from retrainer.io.project import Workspace
from retrainer.io.promotion_journal import Phase, PromotionEntry, PromotionJournal, crash_point
from retrainer.outcomes import RETRYABLE, CycleStatus

_log = logging.getLogger(__name__)
# the tags a cycle must not write on a version that is already the champion it would be compared against
SELF_VERDICT_TAGS = ("gate_verdict", "gate_status", "gate_reasons", "parent_champion")


@dataclass(frozen=True)
class Verdict:
    """Where a gated challenger ended up, and why; with the Bento it was packed in and the canary's result."""

    status: CycleStatus
    reasons: list[str]
    bento_tag: str | None = None
    canary: dict | None = field(default=None)


def mark_challenger(model_name: str, version: str) -> str | None:
    """Point the challenger alias at the new version; return the champion it will be compared against."""
    champion = registry.alias_version(model_name, registry.CHAMPION)
    if champion != version:
        registry.set_alias(model_name, registry.CHALLENGER, version)
    return champion


def reject_challenger(params: Params, gate: dict) -> Verdict:
    """A failed gate: the challenger alias is removed, the champion stays."""
    name, version = params.tracking.registered_model, gate["challenger_version"]
    if registry.alias_version(name, registry.CHALLENGER) == version:
        registry.clear_alias(name, registry.CHALLENGER)
    return Verdict(CycleStatus.REJECTED, gate["reasons"])


def package_bento(workspace: Workspace, versions: list[str]) -> str:
    """Build the Bento that serves these versions (offline), in a process of its own; return its tag.

    A separate interpreter keeps BentoML's store location (read once, at its import) and its memory out of the
    caller; the kernel kills it if the caller dies (kill -9 included), so no orphan packs and tags versions for a
    dead run. Raises RuntimeError with the packager's error output when the build fails.
    """
    done = run_tied(["retrainer.cli", "package", *versions], cwd=workspace.root, timeout_s=900)
    if done.returncode != 0:
        raise RuntimeError(f"packaging versions {versions} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def promote_challenger(
    params: Params,
    workspace: Workspace,
    gate: dict,
    expected_champion: str | None,
    log: logging.Logger = _log,
    batch_id: str | None = None,
) -> Verdict:
    """Compare-and-set promotion of a challenger that passed the gate (and no canary is needed or possible).

    Journalled (io/promotion_journal.py): the intent is written before the alias moves, then each phase as it is
    done; the cycle closes the journal once the batch's outcome is recorded. A version found already champion (a
    retried task, or a promotion a later run finished) counts as promoted: it is never rejected against itself.
    """
    name, version = params.tracking.registered_model, gate["challenger_version"]
    journal = PromotionJournal(workspace.promotion_journal)
    entry = journal.begin(PromotionEntry(name, expected_champion, version, batch_id, tuple(gate["reasons"])))
    promotion = registry.promote_if_current(name, version, expected_champion, workspace.registry_lock)
    if not promotion.promoted and promotion.champion_version != version:
        journal.close(version)
        return Verdict(CycleStatus.REJECTED, [promotion.reason])
    crash_point(Phase.ALIAS)
    messages = complete_promotion(params, workspace, journal.advance(entry, Phase.ALIAS), log)
    why = "no champion yet: nothing to canary against" if params.canary.enabled else "canary disabled"
    return Verdict(CycleStatus.PROMOTED, [*gate["reasons"], promotion.reason, why, *messages])


def promotion_tags(entry: PromotionEntry) -> dict[str, str]:
    """The tags a promoted version carries: where it came from and the gate's verdict (its lineage)."""
    parent = entry.from_version or "none"
    tags = {"promoted_from": parent, "parent_champion": parent, "gate_verdict": "pass", "gate_status": "promoted"}
    if entry.reasons:
        tags["gate_reasons"] = " | ".join(entry.reasons)[:4000]
    return {**tags, **({"batch_id": entry.batch_id} if entry.batch_id else {})}


def complete_promotion(
    params: Params, workspace: Workspace, entry: PromotionEntry, log: logging.Logger | logging.LoggerAdapter = _log
) -> list[str]:
    """The phases after the alias moved that `entry` has not done yet: tags, golden predictions, the service switch;
    each recorded in the journal once done. Returns what the service said, if it was told."""
    journal, said = PromotionJournal(workspace.promotion_journal), []
    actions = (
        (Phase.TAGS, lambda: registry.tag_version(entry.model, entry.to_version, promotion_tags(entry))),
        (Phase.GOLDEN, lambda: record_golden(params, workspace, entry.to_version, entry.from_version, log)),
        (Phase.SERVICE, lambda: said.append(tell_service(params, log))),
    )
    for phase, act in actions:
        if not entry.done(phase):
            act()
            crash_point(phase)
            entry = journal.advance(entry, phase)
    return said


def close_promotion(workspace: Workspace, version: str | None) -> None:
    """The promotion of `version` is over (its batch's outcome is recorded): remove its journal entry."""
    PromotionJournal(workspace.promotion_journal).close(version)


def recover_promotion(
    params: Params, workspace: Workspace, log: logging.Logger | logging.LoggerAdapter = _log
) -> str | None:
    """Finish, or undo, a promotion whose run died; a line saying what was done, or None (nothing to recover).

    Finished when the champion alias points at the new version (tags, golden predictions, the service told, the
    batch recorded `promoted`); undone when it does not (the alias never moved: the challenger alias is cleared and
    the batch, recorded `interrupted`, is taken again by the next run). A live owner's promotion is left alone.
    """
    journal = PromotionJournal(workspace.promotion_journal)
    if (entry := journal.read()) is None or entry.owner_alive:
        return None
    with journal.lock():
        if (entry := journal.read()) is None or entry.owner_alive:
            return None
        champion = registry.alias_version(entry.model, registry.CHAMPION)
        if champion != entry.to_version:
            withdrawn = withdraw_from_service(params, entry.to_version)
            if registry.alias_version(entry.model, registry.CHALLENGER) == entry.to_version:
                registry.clear_alias(entry.model, registry.CHALLENGER)
            journal.close(entry.to_version)
            undone = f"interrupted promotion of {entry.describe()} undone: the champion alias is on v{champion}"
            return f"{undone}; {withdrawn}" if withdrawn else undone
        moved = entry if entry.done(Phase.ALIAS) else journal.advance(entry, Phase.ALIAS)
        said = complete_promotion(params, workspace, moved, log)
        record_recovered(workspace, entry)
        journal.close(entry.to_version)
    service = f"; service: {said[0]}" if said else ""
    return f"interrupted promotion of {entry.describe()} finished: tags, golden predictions, batch record{service}"


def withdraw_from_service(params: Params, version: str) -> str | None:
    """Give `version` no more traffic at canary.service_url when it is that service's weighted challenger (the
    canary of a run that died); a line saying so, or None (no service, no admin token, or not its challenger)."""
    from retrainer.serving.client import AdminClient
    from retrainer.serving.runtime import TOKEN_ENV

    if not (token := os.environ.get(TOKEN_ENV)):
        return None
    try:
        with AdminClient(params.canary.service_url, token) as admin:
            state = admin.rollout()
            if state.get("challenger_version") != version or not state.get("challenger_weight"):
                return None
            status, after = admin.set_weight(0.0)
    except RuntimeError:
        return None  # no service answers: a service started later serves the champion alone
    return f"the service's traffic share for v{version} set to 0 ({status} {after})"


def record_recovered(workspace: Workspace, entry: PromotionEntry) -> None:
    """Record the batch of a promotion finished by a later run as `promoted` (unless its own run recorded it)."""
    record = open_batch_record(workspace.batch_record)
    existing = record.get(entry.batch_id) if entry.batch_id else None
    if existing is None or existing["status"] not in RETRYABLE:
        return
    reasons = [*entry.reasons, f"promotion finished by a later run: the run that began it (pid {entry.owner_pid}) died"]
    result = CycleResult(
        CycleStatus.PROMOTED,
        reasons,
        batch_id=entry.batch_id,
        batch=Path(existing["source"]).name,
        challenger_version=entry.to_version,
        compared_champion=entry.from_version,
        champion_version=entry.to_version,
    )
    record.finish(entry.batch_id, CycleStatus.PROMOTED, result.to_dict())


def clear_orphan_challenger(params: Params, workspace: Workspace) -> str | None:
    """Remove a `challenger` alias no live run owns; a line saying so, or None.

    Only a retrain cycle sets the alias, while it holds the workspace lock; so an alias found while the lock is free
    (it is taken here with no wait) was left by a run that died (e.g. kill -9 after the gate).
    """
    name = params.tracking.registered_model
    version = registry.alias_version(name, registry.CHALLENGER)
    if version is None or PromotionJournal(workspace.promotion_journal).read() is not None:
        return None
    try:
        with workspace_lock(workspace.workspace_lock, "clearing a challenger alias left by a dead run", 0):
            if registry.alias_version(name, registry.CHALLENGER) != version:
                return None
            registry.clear_alias(name, registry.CHALLENGER)
    except WorkspaceBusy:
        return None  # a live run holds the workspace: the alias may be its own
    return f"challenger alias on v{version} cleared: no live run owns it (the run that set it died)"


def recover_interrupted(
    params: Params, workspace: Workspace, log: logging.Logger | logging.LoggerAdapter = _log
) -> list[str]:
    """What a dead run left half done, finished or undone (an interrupted promotion, an orphan challenger alias):
    one line per repair, each also logged as a warning. Called at the start of every run and by `retrainer status`."""
    repairs = [recover_promotion(params, workspace, log), clear_orphan_challenger(params, workspace)]
    done = [line for line in repairs if line]
    for line in done:
        log.warning(line)
    return done


def tell_service(params: Params, log: logging.Logger = _log) -> str:
    """Have a service running at canary.service_url adopt the registry's new champion (POST /admin/reload)."""
    from retrainer.serving.client import adopt_champion
    from retrainer.serving.runtime import TOKEN_ENV

    adoption = adopt_champion(params.canary.service_url, os.environ.get(TOKEN_ENV))
    if adoption.reached and adoption.state is None:
        log.warning("the running service did not adopt the new champion: %s", adoption.message)
    return adoption.message


def record_golden(
    params: Params, workspace: Workspace, version: str, replaced: str | None, log: logging.Logger = _log
) -> None:
    """The golden-set predictions `retrainer rollback` verifies against: the new champion, and the replaced one."""
    try:
        from retrainer.serving.rollback import record_golden_predictions

        for recorded in filter(None, (version, replaced)):
            record_golden_predictions(recorded, params, workspace.root)
    except Exception as exc:  # the promotion stands (a retry would find it done); a rollback reports "not verified"
        log.warning("golden predictions not recorded after promoting v%s: %s", version, exc)


def validation_tag(summary: dict | None) -> str:
    """The `validation` tag of a version: its batch's validation summary, or that a shipped change brought none."""
    if summary is None:
        return "no new batch (a shipped code or params change, trained on the batches already accepted)"
    warnings = summary["warnings"]
    return f"passed, {len(warnings)} warnings ({', '.join(warnings)[:300]})"


def record_lineage(params: Params, result: CycleResult) -> None:
    """Tag the model version with its verdict and lineage, and attach the gate report to its MLflow run.

    Never a verdict against itself: when the challenger is the current champion and this cycle did not promote it
    (it was promoted before, e.g. by a run that died), its verdict and parent champion tags are kept as they are.
    """
    import mlflow

    name, version = params.tracking.registered_model, result.challenger_version
    tags = {
        "gate_verdict": "pass" if result.gate["passed"] else "fail",
        "gate_status": str(result.status),
        "gate_reasons": " | ".join(result.reasons)[:4000],
        "parent_champion": result.compared_champion or "none",
        "batch_id": result.batch_id,
        "validation": validation_tag(result.validation),
        **({"replaces_batch": result.replaces} if result.replaces else {}),
    }
    champion = registry.alias_version(name, registry.CHAMPION)
    if result.compared_champion == version or (champion == version and result.status != CycleStatus.PROMOTED):
        _log.warning("v%s is the champion: its verdict and parent stay, it is not judged against itself", version)
        tags = {k: v for k, v in tags.items() if k not in SELF_VERDICT_TAGS}
    registry.tag_version(name, version, tags)
    mlflow.MlflowClient().log_dict(result.registration["run_id"], result.gate, "gate/gate_report.json")
