"""`retrainer demo`: the main job, in a workspace of its own that starts from scratch every run."""

from __future__ import annotations

from pathlib import Path

import typer

from retrainer.io.tables import read_json
from retrainer.io.workspace import create_workspace, reproduce
from retrainer.stages import INGEST_REPORT, METRICS, REGISTRATION, SPLIT_REPORT, TRAIN_REPORT


def _stream(line: str) -> None:
    if line.startswith(("Running stage", "Stage '", "Updating lock", "Use `dvc push`")) or ": done" in line:
        typer.echo(f"  | {line}")


def run_demo(root: Path, workdir: Path, params_file: str | None = None) -> dict:
    """Build the training set from the seeds, train, evaluate and register the first model; print a summary."""
    typer.secho(f"retrainer demo: fresh workspace in {workdir}", bold=True)
    create_workspace(root, workdir, Path(params_file) if params_file else None)
    home = workdir / ".retrainer"
    env = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    typer.echo("running the pipeline (dvc repro): ingest -> split -> train -> evaluate -> register")
    result = reproduce(workdir, env=env, echo=_stream)
    ingest, split = read_json(workdir / INGEST_REPORT), read_json(workdir / SPLIT_REPORT)
    trained, metrics = read_json(workdir / TRAIN_REPORT), read_json(workdir / METRICS)
    registration = read_json(workdir / REGISTRATION)
    summary = {"ingest": ingest, "split": split, "train": trained, "metrics": metrics, "registration": registration}
    typer.echo("")
    typer.secho("summary", bold=True)
    typer.echo(f"  rows ingested       {ingest['rows_in']:,} (excluded, no outcome: {ingest['excluded_unlabelled']:,}; "
               f"unmatched joins: {ingest['unmatched']})")
    typer.echo(f"  train / holdout     {split['train']['rows']:,} / {split['holdout']['rows']:,} rows "
               f"(holdout {split['holdout']['start'][:10]} .. {split['holdout']['end'][:10]})")
    typer.echo(f"  features            {len(trained['features'])}: {', '.join(trained['features'])}")
    typer.echo(f"  CV {trained['cv_scoring']:<16} {trained['cv_best_score']:.4f} (best of {len(trained['cv_results'])} "
               f"candidate fits; {trained['best_params']})")
    typer.echo("  holdout             " + "  ".join(
        f"{k} {metrics[k]:.4f}" for k in ("roc_auc", "pr_auc", "f1", "precision", "recall", "brier", "log_loss")))
    typer.echo(f"  MLflow run          {registration['run_id']}")
    typer.echo(f"  model version       {registration['model_name']} v{registration['version']}")
    typer.echo(f"  pipeline time       {result.seconds:.1f} s ({len(result.ran)} stages ran)")
    typer.echo("")
    typer.echo("look closer:")
    typer.echo(f"  mlflow ui --backend-store-uri {registration['tracking_uri']} --workers 1")
    typer.echo(f"  plots: {workdir / 'models' / 'plots'}")
    return summary
