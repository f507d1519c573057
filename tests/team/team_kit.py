"""Helpers of the team tests (imported by name: pytest puts this folder on sys.path): small params any sane
challenger passes, month batches cut from the demo's data, the environment and workspace of a team machine."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from retrainer.io.backend import ARTIFACT_ROOT_ENV, DATABASE_ENV, DVC_REMOTE_ENV, S3_ENDPOINT_ENV

NEVER_CRON = "0 0 29 2 *"  # 29 February: a schedule that does not fire while a test runs


def write_team_params(project_root: Path, dest: Path) -> Path:
    """The real params, small: a one-month bootstrap, two search candidates, no canary (a gate pass promotes), a
    gate that any sane challenger passes (the gate is table-tested elsewhere), and schedules that never fire."""
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["data"]["bootstrap"] = {"start": "2013-01-01", "end": "2013-02-01"}
    raw["train"]["search"]["n_candidates"] = 2
    raw["evaluate"]["importance_rows"] = 200
    raw["gate"].update(floors={"roc_auc": 0.5, "pr_auc": 0.05}, max_regression={"roc_auc": 0.5, "pr_auc": 0.5})
    raw["gate"]["improvement"].update(policy="must_not_be_worse", margin=0.5, bootstrap_samples=100)
    raw["gate"]["slices"]["max_drop"] = 0.5
    raw["gate"]["budgets"]["latency_p95_ms"] = 5000
    raw["gate"]["latency_rows"] = 20
    raw["canary"]["enabled"] = False
    raw["retrain"]["schedule_cron"] = raw["monitor"]["schedule_cron"] = NEVER_CRON
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "team-params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cut_batch(project_root: Path, month: int, staging: Path, every: int) -> Path:
    """Every `every`-th flight of a 2013 month, cut from the CSV batch the demo writes."""
    from retrainer.config import load_params
    from retrainer.demo import DemoData

    seed = DemoData.from_params(load_params(project_root / "params.yaml"), project_root)
    full = seed.write_batch(pd.Period(year=2013, month=month, freq="M"), staging / f"full-{month:02d}")
    header, *rows = full.read_text().splitlines(keepends=True)
    path = staging / f"flights-2013-{month:02d}-sample.csv"
    path.write_text(header + "".join(rows[::every]))
    return path


def team_environment(database: str, s3_server, bucket: str) -> dict[str, str]:
    """The environment of a team machine: registry and state in `database`, artifacts and DVC remote in `bucket`
    (created here), no MLFLOW_* / RETRAINER_* of the caller's own, one BLAS/OpenMP thread."""
    from retrainer.io.servers import s3_client

    s3_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key).create_bucket(Bucket=bucket)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "RETRAINER_"))}
    env.update(
        {
            DATABASE_ENV: database,
            ARTIFACT_ROOT_ENV: f"s3://{bucket}/mlflow",
            DVC_REMOTE_ENV: f"s3://{bucket}/dvc",
            S3_ENDPOINT_ENV: s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    return env


def create_team_workspace(project_root: Path, folder: Path, params_file: Path, env: dict) -> Path:
    """A workspace created on a team machine: its default DVC remote is the team's bucket."""
    from retrainer.io.workspace import create_workspace

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DVC_REMOTE_ENV, env[DVC_REMOTE_ENV])
        patch.setenv(S3_ENDPOINT_ENV, env[S3_ENDPOINT_ENV])
        return create_workspace(project_root, folder, params_file)
