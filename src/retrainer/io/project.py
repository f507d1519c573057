"""Where the project's state lives: the project root, the local home and the default tracking store."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "RETRAINER_HOME"
KEY_ENV = "RETRAINER_PSEUDO_KEY"
# A documented, non-secret default so a fresh clone runs; set RETRAINER_PSEUDO_KEY for real data.
DEFAULT_PSEUDO_KEY = "retrainer-local-development-key"


# Prefect's temporary (ephemeral) server migrates a fresh database at first start; its default 20 s start-up timeout
# fails on a busy 2-core machine ("Timed out while attempting to connect to ephemeral Prefect API server").
PREFECT_STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
PREFECT_STARTUP_TIMEOUT_SECONDS = "180"


def allow_slow_prefect_start() -> None:
    """Give Prefect's temporary server 180 s to start, unless the user set their own timeout.

    Every entry point that may start a flow calls this before Prefect reads its settings.
    """
    os.environ.setdefault(PREFECT_STARTUP_TIMEOUT_ENV, PREFECT_STARTUP_TIMEOUT_SECONDS)


def home_dir(root: Path | None = None) -> Path:
    """The project-local home for state DVC does not version (MLflow store, run records)."""
    explicit = os.environ.get(HOME_ENV)
    home = Path(explicit) if explicit else (root or Path.cwd()) / ".retrainer"
    home.mkdir(parents=True, exist_ok=True)
    return home.resolve()


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else SQLite under the home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home_dir(root) / 'mlflow.db'}"


def artifact_location(root: Path | None = None) -> str:
    """Artifact root for experiments created against the default store."""
    return (home_dir(root) / "mlartifacts").as_uri()


def pseudonymisation_key() -> bytes:
    """The keyed-hash secret for identifier columns."""
    return os.environ.get(KEY_ENV, DEFAULT_PSEUDO_KEY).encode()
