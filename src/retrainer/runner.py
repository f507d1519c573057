"""Entry-point helpers behind `retrainer run`, `status` and `lineage`: call the flow, read the registry, format."""

from __future__ import annotations

import contextlib
from pathlib import Path

from retrainer.config import Params
from retrainer.io import registry
from retrainer.io.batches import BatchRecord, batch_id
from retrainer.io.project import home_dir
from retrainer.io.tracking import connect

SHOWN_METRICS = ("roc_auc", "pr_auc", "f1", "brier")


class BatchQuarantined(Exception):
    """A batch failed a blocking expectation; `result` holds the cycle's outcome."""

    def __init__(self, result: dict) -> None:
        super().__init__("; ".join(result.get("reasons", [])) or "batch quarantined")
        self.result = result


def run_cycle(
    batch: Path,
    root: Path,
    force: bool = False,
    canary_traffic: Path | None = None,
    earlier: list[Path] | None = None,
    replaces: str | None = None,
) -> dict:
    """Run the retrain flow on one batch (with `earlier` batches included) and return its outcome; failures become
    status 'failed', naming the batch and the champion that is still serving."""
    from flows.retrain import retrain

    traffic = str(canary_traffic) if canary_traffic else None
    before = [str(path) for path in earlier or []]
    state = retrain(
        str(batch), str(root), force, canary_traffic=traffic, earlier=before, replaces=replaces, return_state=True
    )
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    if isinstance(error, BatchQuarantined):
        return error.result
    return {
        "status": "failed",
        "batch_id": batch_id(batch) if batch.is_file() else None,
        "batch": batch.name,
        "reasons": [f"batch {batch.name}: {type(error).__name__}: {error}"],
        "champion_version": current_champion(root),
        "challenger_version": None,
        "metrics": {},
    }


def current_champion(root: Path) -> str | None:
    """The registry's champion version (None when there is none or the registry cannot be read)."""
    from mlflow.exceptions import MlflowException

    from retrainer.config import ConfigError, load_params

    try:
        connect(root)
        return registry.alias_version(load_params().tracking.registered_model, registry.CHAMPION)
    except (ConfigError, MlflowException, OSError):
        return None


def _metric_line(metrics: dict | None) -> str:
    if not metrics:
        return "-"
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in SHOWN_METRICS if metrics.get(k) is not None)


def format_result(result: dict) -> str:
    """A human summary of one cycle."""
    lines = [f"{result['status'].upper()}  batch {result.get('batch_id', '?')} ({result.get('batch', '')})"]
    if result.get("already_processed"):
        lines.append("  (already processed earlier; use --force to run it again)")
    if result["status"] in ("quarantined", "failed"):
        lines.append(f"  champion v{result.get('champion_version') or '-'} unchanged")
    if result.get("challenger_version"):
        lines.append(
            f"  challenger v{result['challenger_version']}   champion now "
            f"v{result.get('champion_version') or '-'}   compared against v{result.get('compared_champion') or '-'}"
        )
    metrics = result.get("metrics") or {}
    if metrics.get("challenger"):
        lines.append(f"  challenger  {_metric_line(metrics['challenger'])}")
    if metrics.get("champion"):
        lines.append(f"  champion    {_metric_line(metrics['champion'])}")
    lines += [f"  - {reason}" for reason in result.get("reasons", [])]
    if result.get("bento_tag"):
        lines.append(f"  bento {result['bento_tag']}")
    lines += [f"  {line}" for line in canary_lines(result)]
    return "\n".join(lines)


def canary_lines(result: dict) -> list[str]:
    """One line per canary step (weight, decision, key numbers) and the outcome, for the demo table."""
    canary = result.get("canary")
    if not canary:
        return []
    lines = []
    for step in canary["steps"]:
        n = step["decision"]["numbers"]
        shown = [f"{n.get('challenger_requests', 0):.0f} req"]
        for key, label in (("psi", "PSI"), ("agreement", "agree"), ("challenger_accuracy", "acc")):
            if key in n:
                shown.append(f"{label} {n[key]:.3f}")
        if "champion_accuracy" in n:
            shown[-1] += f" vs {n['champion_accuracy']:.3f}"
        lines.append(f"canary {step['weight']:>3g}%: {step['decision']['action']:<8} {', '.join(shown)}")
    lines.append(f"canary {canary['outcome'].upper()}: {'; '.join(canary['reasons'])[:140]}")
    return lines


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
    """Champion, challenger, the last processed batches, and answered requests the prediction log could not take."""
    from retrainer.serving.prediction_log import DEAD_LETTER_FILE, kept_requests

    connect(root)
    name = params.tracking.registered_model
    home = home_dir(root)
    runs = BatchRecord(home / "batches.db").recent(10)
    return {
        "model": name,
        "unlogged_requests": kept_requests(home / DEAD_LETTER_FILE),
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
    lines = [f"model {report['model']}"]
    for role in ("champion", "challenger"):
        entry = report[role]
        if entry is None:
            lines.append(f"  {role:<10}  none")
            continue
        lines.append(
            f"  {role:<10}  v{entry['version']}  data {str(entry['data_md5'])[:10]}  {_metric_line(entry['metrics'])}"
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
        f"  parent      champion v{tags.get('parent_champion', '-')}",
        f"  reports     {', '.join(lineage['reports'])}",
    ]
    return "\n".join(lines)
