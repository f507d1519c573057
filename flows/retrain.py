"""The retrain flow: accept a batch, run the DVC stages, gate the challenger against the champion, promote or reject."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from retrainer.config import PARAMS_ENV, Params, load_params
from retrainer.cycle import data_counts, finite, gather_and_decide, write_gate_report
from retrainer.io import registry
from retrainer.io.batches import (
    RETRYABLE,
    SUPERSEDED,
    BatchRecord,
    accept,
    batch_id,
    is_accepted,
    pending_batches,
    restore,
    set_aside,
    withdraw,
)
from retrainer.io.project import home_dir
from retrainer.io.tables import read_json, write_json
from retrainer.io.tracking import connect
from retrainer.io.workspace import commit_stage, stage_changed
from retrainer.runner import BatchQuarantined
from retrainer.stages import REGISTRATION, STAGES
from retrainer.stages import run_stage as run_stage_in_process

STATUS_PROMOTED, STATUS_REJECTED, STATUS_FAILED = "promoted", "rejected", "failed"
STATUS_QUARANTINED, STATUS_ROLLED_BACK, STATUS_INCLUDED = "quarantined", "rolled_back", "included"


def project_params(root: Path) -> Params:
    """$RETRAINER_PARAMS if set, else the workspace's params.yaml."""
    return load_params(os.environ.get(PARAMS_ENV) or root / "params.yaml")


@task(task_run_name="validate batch")
def validate_batch(path: Path, params: Params, root: Path, identifier: str, replaces: str | None = None) -> dict:
    """Run the GX suite and drift checks; a blocking failure quarantines the batch byte-for-byte.

    Freshness is judged against the data already accepted, less the batch this one `replaces` (a re-delivery).
    """
    from retrainer.validation import format_outcome, freshness_floor, training_reference, validate_batch_file

    started = time.perf_counter()
    accepted = is_accepted(root / params.data.batches_dir, identifier)
    trained_until = None if accepted else freshness_floor(params, root, exclude=[replaces] if replaces else [])
    reference = training_reference(root)
    outcome = validate_batch_file(path, params, root, reference=reference, trained_until=trained_until)
    summary = {
        "seconds": round(time.perf_counter() - started, 2),
        "passed": outcome.passed,
        "text": format_outcome(outcome),
        "failures": outcome.failures,
        "warnings": outcome.warnings,
        "quarantine_dir": str(outcome.quarantine_dir) if outcome.quarantine_dir else None,
        "report": outcome.report,
    }
    create_markdown_artifact(
        f"# Validation: {'PASSED' if outcome.passed else 'QUARANTINED'}\n\n```\n{summary['text']}\n```\n",
        key="validation",
        description=f"validation of batch {identifier}",
    )
    if outcome.passed and not accepted:
        write_json(outcome.report, root / params.data.batches_dir / f"{identifier}.validation.json")
    return summary


@task(retries=2, retry_delay_seconds=2, task_run_name="accept batch")
def accept_batch(path: Path, params: Params, root: Path, identifier: str) -> str:
    """Copy the batch into the accepted batches the ingest stage reads."""
    return str(accept(path, root / params.data.batches_dir, identifier))


@task(task_run_name="stage {name}")
def run_stage(params: Params, root: Path, name: str) -> dict:
    """One dvc.yaml stage, run in-process and committed to dvc.lock; skipped when DVC sees no change."""
    started = time.perf_counter()
    ran = stage_changed(root, name)
    if ran:
        run_stage_in_process(name, params, root)
        commit_stage(root, name)
    return {"stage": name, "ran": ran, "seconds": round(time.perf_counter() - started, 2)}


@task(retries=2, retry_delay_seconds=2, task_run_name="mark challenger")
def mark_challenger(model_name: str, version: str) -> str | None:
    """Point the challenger alias at the new version; return the champion it will be compared against."""
    champion = registry.alias_version(model_name, registry.CHAMPION)
    if champion != version:
        registry.set_alias(model_name, registry.CHALLENGER, version)
    return champion


@task(task_run_name="gate")
def run_gate(params: Params, root: Path) -> dict:
    """Evaluate challenger and champion on the same holdout and decide."""
    return write_gate_report(gather_and_decide(params, root), root)


@task(task_run_name="reject")
def reject(params: Params, gate: dict) -> tuple[str, list[str]]:
    """A failed gate: the challenger alias is removed, the champion stays."""
    name, version = params.tracking.registered_model, gate["challenger_version"]
    if registry.alias_version(name, registry.CHALLENGER) == version:
        registry.clear_alias(name, registry.CHALLENGER)
    return STATUS_REJECTED, gate["reasons"]


@task(retries=1, retry_delay_seconds=2, task_run_name="package bento")
def package_bento(root: Path, versions: list[str]) -> str:
    """Build the Bento that serves these versions (offline), in a process of its own; return its tag.

    A separate interpreter keeps BentoML's store location (read once, at its import) and its memory out of the flow.
    """
    command = [sys.executable, "-m", "retrainer.cli", "package", *versions]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"packaging versions {versions} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


@task(retries=2, retry_delay_seconds=2, task_run_name="promote")
def promote(params: Params, root: Path, gate: dict, expected_champion: str | None) -> tuple[str, list[str]]:
    """Compare-and-set promotion of a challenger that passed the gate (and no canary is needed or possible)."""
    name, version = params.tracking.registered_model, gate["challenger_version"]
    promotion = registry.promote_if_current(name, version, expected_champion, home_dir(root) / "registry.lock")
    if not promotion.promoted:
        return STATUS_REJECTED, [promotion.reason]
    record_golden(params, root, version, expected_champion)
    why = "no champion yet: nothing to canary against" if params.canary.enabled else "canary disabled"
    return STATUS_PROMOTED, [*gate["reasons"], promotion.reason, why, tell_service(params)]


def tell_service(params: Params) -> str:
    """Have a service running at canary.service_url adopt the registry's new champion (POST /admin/reload)."""
    from retrainer.serving.client import adopt_champion
    from retrainer.serving.runtime import TOKEN_ENV

    adoption = adopt_champion(params.canary.service_url, os.environ.get(TOKEN_ENV))
    if adoption.reached and adoption.state is None:
        get_run_logger().warning("the running service did not adopt the new champion: %s", adoption.message)
    return adoption.message


def record_golden(params: Params, root: Path, version: str, replaced: str | None) -> None:
    """The golden-set predictions `retrainer rollback` verifies against: the new champion, and the replaced one."""
    try:
        from retrainer.serving.rollback import record_golden_predictions

        for recorded in filter(None, (version, replaced)):
            record_golden_predictions(recorded, params, root)
    except Exception as exc:  # the promotion stands (a retry would find it done); a rollback reports "not verified"
        get_run_logger().warning("golden predictions not recorded after promoting v%s: %s", version, exc)


def run_canary(params: Params, root: Path, gate: dict, expected_champion: str, traffic: str | None) -> dict:
    """The canary subflow against the running service; its outcome becomes the cycle's status."""
    from flows.canary import OUTCOME_PROMOTED, OUTCOME_ROLLED_BACK, canary

    version = gate["challenger_version"]
    outcome = canary(
        base_url=params.canary.service_url,
        model_name=params.tracking.registered_model,
        challenger_version=version,
        expected_champion=expected_champion,
        traffic=traffic,
        root=root,
        home=home_dir(root),
    )
    if outcome["outcome"] == OUTCOME_PROMOTED:
        record_golden(params, root, version, expected_champion)
        status = STATUS_PROMOTED
    else:
        status = STATUS_ROLLED_BACK if outcome["outcome"] == OUTCOME_ROLLED_BACK else STATUS_REJECTED
    return {"status": status, "reasons": [f"canary {outcome['outcome']}", *outcome["reasons"]], "canary": outcome}


@task(retries=2, retry_delay_seconds=2, task_run_name="record lineage")
def record_lineage(params: Params, root: Path, result: dict) -> None:
    """Tag the model version with its verdict and lineage, and attach the gate report to its MLflow run."""
    import mlflow

    name, version = params.tracking.registered_model, result["challenger_version"]
    registry.tag_version(
        name,
        version,
        {
            "gate_verdict": "pass" if result["gate"]["passed"] else "fail",
            "gate_status": result["status"],
            "gate_reasons": " | ".join(result["reasons"])[:4000],
            "parent_champion": result["compared_champion"] or "none",
            "batch_id": result["batch_id"],
            "validation": f"passed, {len(result['validation']['warnings'])} warnings "
            f"({', '.join(result['validation']['warnings'])[:300]})",
            **({"replaces_batch": result["replaces"]} if result.get("replaces") else {}),
        },
    )
    mlflow.MlflowClient().log_dict(result["registration"]["run_id"], result["gate"], "gate/gate_report.json")


def publish_artifacts(root: Path, result: dict) -> None:
    """Prefect artifacts that tell the run's story in the UI: gate report, data counts, MLflow links."""
    key = f"batch-{result['batch_id']}"
    markdown = (root / "models" / "gate_report.md").read_text()
    create_markdown_artifact(
        f"# Retrain {result['status'].upper()}\n\nbatch `{result['batch_id']}`\n\n{markdown}",
        key="gate-report",
        description=f"gate decision for {key}",
    )
    create_table_artifact(data_counts(root), key="data-counts", description=f"rows per step for {key}")
    registration = result["registration"]
    create_markdown_artifact(
        "| what | value |\n|---|---|\n"
        f"| MLflow run | `{registration['run_id']}` |\n"
        f"| model version | {registration['model_name']} v{registration['version']} |\n"
        f"| tracking store | `{registration['tracking_uri']}` |\n"
        f"| champion now | v{result['champion_version']} |\n",
        key="mlflow-lineage",
        description="MLflow ids for this run",
    )
    if registration["tracking_uri"].startswith("http"):
        create_link_artifact(
            f"{registration['tracking_uri']}/#/experiments/{registration['experiment_id']}/runs/{registration['run_id']}",
            link_text="MLflow run",
            key="mlflow-run",
        )


def quarantine_result(identifier: str, path: Path, validation: dict, params: Params) -> dict:
    """The outcome recorded for a batch that failed a blocking check."""
    from retrainer.validation import format_entry

    reasons = [format_entry(f).strip().removeprefix("- ") for f in validation["failures"]]
    return {
        "status": STATUS_QUARANTINED,
        "batch_id": identifier,
        "batch": path.name,
        "reasons": reasons,
        "quarantine_dir": validation["quarantine_dir"],
        "champion_version": registry.alias_version(params.tracking.registered_model, registry.CHAMPION),
        "challenger_version": None,
        "metrics": {},
        "validation": validation["text"],
    }


def include_earlier(paths: list[str], params: Params, root: Path, record: BatchRecord, into: str) -> list[dict]:
    """Validate and accept batches gathered before this cycle's batch, so its one training covers them all.

    Each keeps a record of its own: `included` (trained in the cycle of batch `into`) or `quarantined`. Batches
    already processed, or claimed by another run, are skipped.
    """
    outcomes = []
    for name in paths:
        path = Path(name).resolve()
        identifier = batch_id(path)
        existing = record.get(identifier)
        if (existing and existing["status"] not in RETRYABLE) or not record.claim(identifier, str(path)):
            continue
        try:
            validation = validate_batch(path, params, root, identifier)
            if validation["passed"]:
                accept_batch(path, params, root, identifier)
                outcome = {
                    "status": STATUS_INCLUDED,
                    "batch_id": identifier,
                    "batch": path.name,
                    "trained_with": into,
                    "reasons": [f"accepted; trained in the cycle of batch {into}"],
                }
            else:
                outcome = quarantine_result(identifier, path, validation, params)
        except Exception as exc:  # this batch fails alone (retryable); the cycle goes on with the others
            outcome = {
                "status": STATUS_FAILED,
                "batch_id": identifier,
                "batch": path.name,
                "reasons": [str(exc)[:2000]],
            }
        record.finish(identifier, outcome["status"], outcome)
        outcomes.append(outcome)
    return outcomes


@flow(name="retrain", log_prints=True)
def retrain(
    batch: str,
    root: str = ".",
    force: bool = False,
    canary_traffic: str | None = None,
    earlier: list[str] | None = None,
    replaces: str | None = None,
) -> dict:
    """One retrain cycle for one batch file (and the `earlier` batches gathered before it: one training for all).

    A challenger that passes the gate is packaged as a Bento, then promoted directly (`canary.enabled: false`, or
    no champion yet) or through a canary on the running service at `canary.service_url`. `canary_traffic` is a raw
    batch file replayed to the service during the canary (demo, tests); without it the canary judges live traffic.
    `replaces` is the id of an accepted batch this file re-delivers (the same period, e.g. a month first delivered
    cut short): it is set aside (kept under data/superseded/) and this batch trains in its place.
    A cycle that fails takes every batch it accepted back out of training (and puts a replaced one back).
    """
    logger = get_run_logger()
    workspace, path = Path(root).resolve(), Path(batch).resolve()
    params = project_params(workspace)
    connect(workspace)
    record = BatchRecord(home_dir(workspace) / "batches.db")
    identifier = batch_id(path)
    previous = record.get(identifier)
    rejudged = replaces is not None and previous is not None and previous["status"] == STATUS_QUARANTINED
    if previous and previous["status"] not in RETRYABLE and not (force or rejudged):
        logger.info("batch %s (%s) was already processed: %s", identifier, path.name, previous["status"])
        return {**(previous["result"] or {}), "already_processed": True}
    replaced = check_replacement(record, replaces, identifier, params, workspace)
    if not record.claim(identifier, str(path), force=force or rejudged):
        raise RuntimeError(f"batch {identifier} is being processed by another run (pid {record.owner(identifier)})")
    batches_dir = workspace / params.data.batches_dir
    taken: list[str] = []
    set_aside_ids: list[str] = []
    included: list[dict] = []
    try:
        included = include_earlier(earlier or [], params, workspace, record, identifier)
        validation = validate_batch(path, params, workspace, identifier, replaces)
        if not validation["passed"]:
            result = quarantine_result(identifier, path, validation, params)
            record.finish(identifier, STATUS_QUARANTINED, result)
            logger.error("batch %s quarantined:\n%s", identifier, validation["text"])
            raise BatchQuarantined(result)
        if not is_accepted(batches_dir, identifier):
            taken.append(identifier)  # its validation report is written already
        if replaced is not None:
            check_same_period(validation["report"], replaces, batches_dir)
            set_aside(batches_dir, replaces, superseded_dir(params, workspace))
            set_aside_ids.append(replaces)
        accept_batch(path, params, workspace, identifier)
        stages = [run_stage(params, workspace, name) for name in STAGES]
        registration = read_json(workspace / REGISTRATION)
        name, version = params.tracking.registered_model, registration["version"]
        cached = read_json(workspace / "models" / "gate_report.json") if not any(s["ran"] for s in stages) else None
        reusable = previous and previous["status"] not in RETRYABLE and previous["result"]
        if cached is not None and cached.get("challenger_version") == version and reusable:
            logger.info("nothing changed since the last run: reusing its decision")
            record.finish(identifier, previous["status"], previous["result"])
            return {**previous["result"], "reused": True, "stages": stages}
        expected = mark_challenger(name, version)
        gate = run_gate(params, workspace)
        rollout: dict = {}
        if not gate["passed"]:
            status, reasons = reject(params, gate)
        else:
            rollout["bento_tag"] = package_bento(workspace, [v for v in (expected, version) if v])
            if params.canary.enabled and expected:
                rollout.update(run_canary(params, workspace, gate, expected, canary_traffic))
                status, reasons = rollout.pop("status"), rollout.pop("reasons")
            else:
                status, reasons = promote(params, workspace, gate, expected)
        result = {
            "status": status,
            "reasons": reasons,
            "batch_id": identifier,
            "batch": path.name,
            "challenger_version": version,
            "compared_champion": expected,
            "champion_version": registry.alias_version(name, registry.CHAMPION),
            "metrics": {
                "challenger": finite(gate["challenger_metrics"]),
                "champion": finite(gate["champion_metrics"]),
            },
            "gate": gate,
            "registration": registration,
            "stages": stages,
            "included": included,
            "replaces": replaces,
            **rollout,
        }
        result["validation"] = {
            "batch_id": identifier,
            "seconds": validation["seconds"],
            "warnings": [w.get("check") for w in validation["warnings"]],
        }
        record_lineage(params, workspace, result)
        publish_artifacts(workspace, result)
        if replaced is not None:
            record.finish(replaces, SUPERSEDED, {**replaced, "status": SUPERSEDED, "superseded_by": identifier})
        record.finish(identifier, status, result)
        logger.info("batch %s: %s (%s)", identifier, status.upper(), "; ".join(reasons))
        return result
    except BatchQuarantined:
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        undo_acceptance(params, workspace, record, taken, included, set_aside_ids, reason)
        record.finish(identifier, STATUS_FAILED, {"status": STATUS_FAILED, "batch_id": identifier, "reasons": [reason]})
        raise


def check_replacement(
    record: BatchRecord, replaces: str | None, identifier: str, params: Params, root: Path
) -> dict | None:
    """The recorded result of the accepted batch that `replaces` names; ValueError naming what is wrong otherwise."""
    if replaces is None:
        return None
    if replaces == identifier:
        raise ValueError(f"batch {identifier} cannot replace itself")
    existing = record.get(replaces)
    if existing is None or not is_accepted(root / params.data.batches_dir, replaces):
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


def superseded_dir(params: Params, root: Path) -> Path:
    """Where replaced batches are kept, byte for byte, next to the accepted batches."""
    return (root / params.data.batches_dir).parent / SUPERSEDED


def undo_acceptance(
    params: Params,
    root: Path,
    record: BatchRecord,
    taken: list[str],
    included: list[dict],
    set_aside_ids: list[str],
    reason: str,
) -> None:
    """After a failed cycle: every batch it accepted leaves training (its source is untouched, its record says
    failed, so the next drain or run takes it again), and a batch it replaced is put back."""
    batches_dir = root / params.data.batches_dir
    for identifier in taken:
        withdraw(batches_dir, identifier)
    for outcome in included:
        if outcome["status"] == STATUS_INCLUDED:
            withdraw(batches_dir, outcome["batch_id"])
            failed = {**outcome, "status": STATUS_FAILED, "reasons": [f"the cycle it was included in failed: {reason}"]}
            record.finish(outcome["batch_id"], STATUS_FAILED, failed)
    for identifier in set_aside_ids:
        restore(superseded_dir(params, root), identifier, batches_dir)


@flow(name="drain-inbox", log_prints=True)
def drain_inbox(root: str = ".", canary_traffic: str | None = None) -> list[dict]:
    """Retrain once on every batch waiting in the inbox: the newest is the cycle's batch, the others are included
    (validated and accepted first); each batch is processed exactly once."""
    workspace = Path(root).resolve()
    params = project_params(workspace)
    record = BatchRecord(home_dir(workspace) / "batches.db")
    waiting = [str(path) for path in pending_batches(workspace / params.retrain.inbox_dir, record)]
    if not waiting:
        return []
    return [retrain(waiting[-1], str(workspace), canary_traffic=canary_traffic, earlier=waiting[:-1])]
