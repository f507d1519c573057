"""The retrain, drain-inbox and ship flows: the retrain use case with each piece run as a Prefect task, and artifacts
that tell the run's story in the UI (validation, gate report, data counts, MLflow lineage)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.canary import canary
from retrainer.app import promotion
from retrainer.app import retrain as retraining
from retrainer.app.canary import CanaryPlan, CanaryResult
from retrainer.app.promotion import Verdict
from retrainer.app.results import CycleResult
from retrainer.app.ship import ship_change
from retrainer.app.validate import BatchValidation, validate_batch
from retrainer.config import Params
from retrainer.cycle import GATE_MD, data_counts
from retrainer.io.project import Workspace

RETRIED = {"retries": 2, "retry_delay_seconds": 2}


@task(task_run_name="validate batch")
def validate(
    path: Path, params: Params, workspace: Workspace, identifier: str, replaces: str | None = None
) -> BatchValidation:
    """Validate the batch (see `validate_batch`) and publish the outcome as a markdown artifact."""
    validation = validate_batch(path, params, workspace, identifier, replaces)
    verdict = "PASSED" if validation.passed else "QUARANTINED"
    create_markdown_artifact(
        f"# Validation: {verdict}\n\n```\n{validation.text}\n```\n",
        key="validation",
        description=f"validation of batch {identifier}",
    )
    return validation


@task(task_run_name="promote", **RETRIED)
def promote(
    params: Params, workspace: Workspace, gate: dict, expected_champion: str | None, batch_id: str | None = None
) -> Verdict:
    """Compare-and-set promotion of a gate pass, journalled and logged to the run (see `promote_challenger`)."""
    return promotion.promote_challenger(params, workspace, gate, expected_champion, get_run_logger(), batch_id)


def canary_subflow(plan: CanaryPlan) -> CanaryResult:
    """The canary as a subflow run of the retraining."""
    return CanaryResult.from_dict(canary(**vars(plan)))


def publish_artifacts(workspace: Workspace, result: CycleResult) -> None:
    """Prefect artifacts that tell the run's story in the UI: gate report, data counts, MLflow links."""
    key, registration = f"batch-{result.batch_id}", result.registration
    create_markdown_artifact(
        f"# Retrain {result.status.upper()}\n\nbatch `{result.batch_id}`\n\n{workspace.path(GATE_MD).read_text()}",
        key="gate-report",
        description=f"gate decision for {key}",
    )
    create_table_artifact(data_counts(workspace.root), key="data-counts", description=f"rows per step for {key}")
    create_markdown_artifact(
        "| what | value |\n|---|---|\n"
        f"| MLflow run | `{registration['run_id']}` |\n"
        f"| model version | {registration['model_name']} v{registration['version']} |\n"
        f"| tracking store | `{registration['tracking_uri']}` |\n"
        f"| champion now | v{result.champion_version} |\n",
        key="mlflow-lineage",
        description="MLflow ids for this run",
    )
    if registration["tracking_uri"].startswith("http"):
        create_link_artifact(
            f"{registration['tracking_uri']}/#/experiments/{registration['experiment_id']}/runs/{registration['run_id']}",
            link_text="MLflow run",
            key="mlflow-run",
        )


TASKS = retraining.RetrainSteps(
    validate=validate,
    accept=task(task_run_name="accept batch", **RETRIED)(retraining.accept_batch),
    run_stage=task(task_run_name="stage {name}")(retraining.run_pipeline_stage),
    mark_challenger=task(task_run_name="mark challenger", **RETRIED)(promotion.mark_challenger),
    gate=task(task_run_name="gate")(retraining.gate_challenger),
    reject=task(task_run_name="reject")(promotion.reject_challenger),
    package=task(task_run_name="package bento", retries=1, retry_delay_seconds=2)(promotion.package_bento),
    promote=promote,
    canary=canary_subflow,
    record_lineage=task(task_run_name="record lineage", **RETRIED)(promotion.record_lineage),
    publish=publish_artifacts,
)


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

    See `retrainer.app.retrain.retrain_batch`; `canary_traffic` is a raw batch file replayed to the service during
    the canary (demo, tests); `replaces` the id of an accepted batch this file re-delivers. Returns the cycle's
    result as a dict; a quarantined batch fails the run.
    """
    result = retraining.retrain_batch(
        Path(batch),
        Workspace.at(root),
        force=force,
        canary_traffic=Path(canary_traffic) if canary_traffic else None,
        earlier=[Path(name) for name in earlier or []],
        replaces=replaces,
        steps=TASKS,
        log=get_run_logger(),
    )
    return result.to_dict()


def retrain_subflow(batch: Path, workspace: Workspace, canary_traffic: Path | None, earlier: list[Path]) -> dict:
    """The retrain flow as a subflow run of the drain."""
    traffic = str(canary_traffic) if canary_traffic else None
    return retrain(str(batch), str(workspace.root), canary_traffic=traffic, earlier=[str(p) for p in earlier])


@flow(name="drain-inbox", log_prints=True)
def drain_inbox(root: str = ".", canary_traffic: str | None = None) -> list[dict]:
    """Retrain once on every batch waiting in the inbox (see `retrainer.app.retrain.drain_inbox`)."""
    traffic = Path(canary_traffic) if canary_traffic else None
    return retraining.drain_inbox(Workspace.at(root), traffic, retrain=retrain_subflow)


@flow(name="ship", log_prints=True)
def ship(root: str = ".", force: bool = False, canary_traffic: str | None = None, commit: str | None = None) -> dict:
    """Ship the workspace's current code and params (fast-forwarded to `commit` first, if given) through the gate
    and canary, with no new batch (see `retrainer.app.ship.ship_change`); CD starts its deployment on a merge with
    the merged commit. Returns the cycle's result as a dict."""
    traffic = Path(canary_traffic) if canary_traffic else None
    result = ship_change(
        Workspace.at(root), commit=commit, force=force, canary_traffic=traffic, steps=TASKS, log=get_run_logger()
    )
    return result.to_dict()
