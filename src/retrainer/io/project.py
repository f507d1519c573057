"""Where the project's state lives: the workspace (params, pipeline, data) and its local home (`.retrainer/`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from retrainer.config import Params, load_params, resolve_params_path

HOME_ENV = "RETRAINER_HOME"
KEY_ENV = "RETRAINER_PSEUDO_KEY"
# A documented, non-secret default so a fresh clone runs; set RETRAINER_PSEUDO_KEY for real data.
DEFAULT_PSEUDO_KEY = "retrainer-local-development-key"

# The home folder and the files under it, named once.
HOME_DIR = ".retrainer"
BATCH_RECORD_FILE = "batches.db"
REGISTRY_LOCK_FILE = "registry.lock"
WORKSPACE_LOCK_FILE = "workspace.lock"
LOG_FILE = "predictions.db"
DEAD_LETTER_FILE = "predictions.failed.jsonl"
PROMOTION_JOURNAL_FILE = "promotion.json"  # the promotion under way, if any (io/promotion_journal.py)
JOURNAL_DIR = "predictions.journal"  # answered requests written ahead of the answer, one segment file per process
MLFLOW_DB_FILE = "mlflow.db"
MONITOR_DIR = "monitor"


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
    home = Path(explicit) if explicit else (root or Path.cwd()) / HOME_DIR
    home.mkdir(parents=True, exist_ok=True)
    return home.resolve()


@dataclass(frozen=True)
class Workspace:
    """A project workspace: its root (params, `dvc.yaml`, `data/`, `models/`) and its home (`.retrainer/`).

    The one place that knows where each file of the project's state is; build it with `Workspace.at(root)`.
    """

    root: Path
    home: Path

    @classmethod
    def at(cls, root: str | Path | None = None, home: str | Path | None = None) -> Workspace:
        """The workspace at `root` (default: the working folder), its home from $RETRAINER_HOME or `root/.retrainer`."""
        folder = Path(root or Path.cwd()).resolve()
        return cls(folder, Path(home) if home else home_dir(folder))

    @property
    def params_file(self) -> Path:
        """$RETRAINER_PARAMS if set, else the workspace's params.yaml."""
        return resolve_params_path(root=self.root)

    def load_params(self) -> Params:
        """The workspace's params (see `params_file`); a bad file raises ConfigError."""
        return load_params(self.params_file)

    @property
    def batch_record(self) -> Path:
        """The SQLite record of every batch's claim and outcome."""
        return self.home / BATCH_RECORD_FILE

    @property
    def registry_lock(self) -> Path:
        """The file lock around compare-and-set moves of the champion alias."""
        return self.home / REGISTRY_LOCK_FILE

    @property
    def workspace_lock(self) -> Path:
        """The file lock one retrain cycle (or `dvc repro` started by retrainer) holds while it writes the workspace."""
        return self.home / WORKSPACE_LOCK_FILE

    @property
    def promotion_journal(self) -> Path:
        """The journal of the promotion under way: what moves from which version to which, and how far it got."""
        return self.home / PROMOTION_JOURNAL_FILE

    @property
    def prediction_log(self) -> Path:
        """The service's prediction log (SQLite)."""
        return self.home / LOG_FILE

    @property
    def dead_letter(self) -> Path:
        """Answered requests the prediction log could not take, waiting for `retrainer recover-log`."""
        return self.home / DEAD_LETTER_FILE

    @property
    def prediction_journal(self) -> Path:
        """The folder of the service's write-ahead journal segments."""
        return self.home / JOURNAL_DIR

    def path(self, relative: str | Path) -> Path:
        """A path of the workspace, given relative to its root (a params folder such as `retrain.inbox_dir`)."""
        return self.root / relative


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else the team database ($RETRAINER_DATABASE_URL), else SQLite under the home."""
    from retrainer.io.backend import database_url

    explicit = os.environ.get("MLFLOW_TRACKING_URI") or database_url()
    return explicit or f"sqlite:///{home_dir(root) / MLFLOW_DB_FILE}"


def artifact_location(root: Path | None = None) -> str:
    """Artifact root for new experiments: $RETRAINER_ARTIFACT_ROOT (e.g. `s3://bucket/mlflow`), else under the home."""
    from retrainer.io.backend import artifact_root

    return artifact_root() or (home_dir(root) / "mlartifacts").as_uri()


def pseudonymisation_key() -> bytes:
    """The keyed-hash secret for identifier columns."""
    return os.environ.get(KEY_ENV, DEFAULT_PSEUDO_KEY).encode()
