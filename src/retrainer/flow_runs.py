"""Entry points start the Prefect flows by entrypoint name, as a deployment does: `retrainer` never imports the
`flows` package (which imports `retrainer`), so the library stays free of its wiring and of import cycles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrainer.app.results import CycleResult
from retrainer.io.batches import batch_id
from retrainer.outcomes import CycleStatus

RETRAIN = "flows.retrain:retrain"
DRAIN_INBOX = "flows.retrain:drain_inbox"
MONITOR = "flows.monitor:monitor"
SHIP = "flows.retrain:ship"


def load_flow(entrypoint: str) -> Any:
    """The Prefect flow at `entrypoint` ("module:function"); raises when it cannot be imported."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


def run_cycle(
    batch: Path,
    root: Path,
    force: bool = False,
    canary_traffic: Path | None = None,
    earlier: list[Path] | None = None,
    replaces: str | None = None,
) -> CycleResult:
    """Run the retrain flow on one batch (with `earlier` batches included) and return its outcome; a quarantined
    batch returns its quarantine result, any other failure the status `failed`, naming the batch, the error and the
    champion still serving."""
    from retrainer.app.retrain import BatchQuarantined

    traffic = str(canary_traffic) if canary_traffic else None
    before = [str(path) for path in earlier or []]
    retrain = load_flow(RETRAIN)
    state = retrain(
        str(batch), str(root), force, canary_traffic=traffic, earlier=before, replaces=replaces, return_state=True
    )
    if state.is_completed():
        return CycleResult.from_dict(state.result())
    error = state.result(raise_on_failure=False)
    if isinstance(error, BatchQuarantined):
        return error.result
    return CycleResult(
        CycleStatus.FAILED,
        [f"batch {batch.name}: {type(error).__name__}: {error}"],
        batch_id=batch_id(batch) if batch.is_file() else None,
        batch=batch.name,
        champion_version=current_champion(root),
    )


def run_ship(
    root: Path, force: bool = False, canary_traffic: Path | None = None, commit: str | None = None
) -> CycleResult:
    """Run the ship flow on the workspace `root` (fast-forwarded to `commit` first, if given) and return its
    outcome; a failure returns the status `failed`, naming the error and the champion still serving."""
    traffic = str(canary_traffic) if canary_traffic else None
    state = load_flow(SHIP)(str(root), force, canary_traffic=traffic, commit=commit, return_state=True)
    if state.is_completed():
        return CycleResult.from_dict(state.result())
    error = state.result(raise_on_failure=False)
    reasons = [f"ship of the current code and params: {type(error).__name__}: {error}"]
    return CycleResult(CycleStatus.FAILED, reasons, champion_version=current_champion(root))


def current_champion(root: Path) -> str | None:
    """The registry's champion version (None when there is none or the registry cannot be read)."""
    from mlflow.exceptions import MlflowException

    from retrainer.config import ConfigError
    from retrainer.io import registry
    from retrainer.io.project import Workspace
    from retrainer.io.tracking import connect

    try:
        connect(root)
        return registry.alias_version(Workspace.at(root).load_params().tracking.registered_model, registry.CHAMPION)
    except (ConfigError, MlflowException, OSError):
        return None


def flows_source() -> Path:
    """The folder that holds the `flows` package (found without importing it): a work-pool deployment's source."""
    import importlib.util

    spec = importlib.util.find_spec("flows")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the `flows` package is not installed (pip install -e .)")
    return Path(spec.origin).parent.parent


def deploy_to_pool(root: Path, pool: str, schedules: dict[str, tuple[str, str | None]]) -> list[str]:
    """Register deployments on work pool `pool`, run by its workers on the workspace `root`.

    `schedules` maps a flow entrypoint ("module:function", e.g. DRAIN_INBOX) to (deployment name, cron); a cron of
    None registers a deployment without a schedule, run when started (`prefect deployment run`). Returns the
    deployments' names as `prefect deployment run` takes them ('flow-name/deployment-name'). Needs PREFECT_API_URL
    pointing at a server whose workers can read `root` and the project.
    """
    from prefect import Flow

    names = []
    for entrypoint, (name, cron) in schedules.items():
        module, function = entrypoint.split(":")
        source = Flow.from_source(source=str(flows_source()), entrypoint=f"{module.replace('.', '/')}.py:{function}")
        source.deploy(name=name, work_pool_name=pool, cron=cron, parameters={"root": str(root)})
        names.append(f"{source.name}/{name}")
    return names
