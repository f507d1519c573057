"""Use cases: the project's status (champion, challenger, last runs) and a model version's lineage."""

from __future__ import annotations

import contextlib
from pathlib import Path

from retrainer.app.results import metric_line
from retrainer.config import Params
from retrainer.io import registry
from retrainer.io.batch_record_pg import open_batch_record
from retrainer.io.project import Workspace
from retrainer.io.tracking import connect


def _version_summary(name: str, version: str | None) -> dict | None:
    if version is None:
        return None
    import mlflow

    client = mlflow.MlflowClient()
    model_version = client.get_model_version(name, version)
    metrics = client.get_run(model_version.run_id).data.metrics
    return {
        "version": version,
        "run_id": model_version.run_id,
        "data_md5": model_version.tags.get("data_md5"),
        "batch_id": model_version.tags.get("batch_id"),
        "gate_verdict": model_version.tags.get("gate_verdict"),
        "metrics": {k.removeprefix("holdout_"): v for k, v in metrics.items() if k.startswith("holdout_")},
    }


def project_status(params: Params, root: Path) -> dict:
    """Champion, challenger, the last processed batches, and answered requests the prediction log could not take.

    First finishes (or undoes) what a dead run left half done (`recover_interrupted`); `repaired` says what.
    """
    from retrainer.app.promotion import recover_interrupted
    from retrainer.serving.prediction_log import kept_requests

    connect(root)
    name, workspace = params.tracking.registered_model, Workspace.at(root)
    repaired = recover_interrupted(params, workspace)
    runs = open_batch_record(workspace.batch_record).recent(10)
    return {
        "model": name,
        "repaired": repaired,
        "unlogged_requests": kept_requests(workspace.dead_letter),
        "champion": _version_summary(name, registry.alias_version(name, registry.CHAMPION)),
        "challenger": _version_summary(name, registry.alias_version(name, registry.CHALLENGER)),
        "last_runs": [
            {
                "batch_id": r["batch_id"],
                "source": Path(r["source"]).name,
                "status": r["status"],
                "finished_at": r["finished_at"],
                "challenger_version": (r["result"] or {}).get("challenger_version"),
            }
            for r in runs
        ],
    }


def format_status(report: dict) -> str:
    """A human view of project_status."""
    lines = [f"repaired: {line}" for line in report.get("repaired", [])] + [f"model {report['model']}"]
    for role in ("champion", "challenger"):
        entry = report[role]
        if entry is None:
            lines.append(f"  {role:<10}  none")
            continue
        lines.append(
            f"  {role:<10}  v{entry['version']}  data {str(entry['data_md5'])[:10]}  {metric_line(entry['metrics'])}"
        )
    lines.append("last runs:")
    lines += [
        f"  {r['finished_at'] or 'running':<32} {r['status']:<11} batch {r['batch_id']} ({r['source']}) "
        f"-> v{r['challenger_version'] or '-'}"
        for r in report["last_runs"]
    ] or ["  none"]
    if report.get("unlogged_requests"):
        lines.append(
            f"prediction log: {report['unlogged_requests']} answered requests are waiting in the dead-letter file "
            "(the log could not take them): run `retrainer recover-log`"
        )
    return "\n".join(lines)


def version_lineage(params: Params, root: Path, version: str) -> dict:
    """Everything that produced a model version: data, code, params, validation, gate, parent champion."""
    import mlflow
    from mlflow.exceptions import MlflowException

    connect(root)
    client = mlflow.MlflowClient()
    name = params.tracking.registered_model
    try:
        model_version = client.get_model_version(name, version)
    except MlflowException:
        raise LookupError(f"model {name} has no version {version}") from None
    run = client.get_run(model_version.run_id)
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reports"))
    gate = None
    with contextlib.suppress(MlflowException, OSError):
        gate = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/gate/gate_report.json")
    return {
        "model": name,
        "version": version,
        "run_id": run.info.run_id,
        "tags": dict(model_version.tags),
        "params": dict(run.data.params),
        "reports": sorted(p.name for p in artifacts.iterdir()),
        "datasets": [{"name": d.dataset.name, "digest": d.dataset.digest} for d in run.inputs.dataset_inputs],
        "gate": gate,
    }


def format_lineage(lineage: dict) -> str:
    """A human view of version_lineage."""
    tags = lineage["tags"]
    lines = [
        f"{lineage['model']} v{lineage['version']}  (MLflow run {lineage['run_id']})",
        f"  data        train md5 {tags.get('data_md5')}  holdout md5 {tags.get('holdout_md5')}  "
        f"batch {tags.get('batch_id', 'bootstrap')}",
        "  datasets    " + ", ".join(f"{d['name']} digest {d['digest']}" for d in lineage["datasets"]),
        f"  code        git {tags.get('git_commit')} (dirty: {tags.get('git_dirty')})",
        f"  params      hash {tags.get('params_hash')}  model {tags.get('model_family')}  "
        f"threshold {tags.get('threshold')}",
        f"  validation  {tags.get('validation', 'not recorded')}",
        f"  gate        {tags.get('gate_verdict', 'not gated')}  {tags.get('gate_reasons', '')}",
        f"  parent      {parent_line(tags.get('parent_champion'))}",
        f"  reports     {', '.join(lineage['reports'])}",
    ]
    return "\n".join(lines)


def parent_line(parent: str | None) -> str:
    """The lineage's parent: the champion the version was gated against, or why there was none."""
    if parent is None:
        return "not recorded (not gated)"
    return "no champion (the first one)" if parent == "none" else f"champion v{parent}"
