"""The registry and packaging moves of a retrain cycle: mark, reject, package, promote, tell the service, tag."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field

from retrainer.app.results import CycleResult
from retrainer.config import Params
from retrainer.io import registry
from retrainer.io.project import Workspace
from retrainer.outcomes import CycleStatus

_log = logging.getLogger(__name__)


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
    caller. Raises RuntimeError with the packager's error output when the build fails.
    """
    command = [sys.executable, "-m", "retrainer.cli", "package", *versions]
    done = subprocess.run(command, cwd=workspace.root, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"packaging versions {versions} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def promote_challenger(
    params: Params, workspace: Workspace, gate: dict, expected_champion: str | None, log: logging.Logger = _log
) -> Verdict:
    """Compare-and-set promotion of a challenger that passed the gate (and no canary is needed or possible)."""
    name, version = params.tracking.registered_model, gate["challenger_version"]
    promotion = registry.promote_if_current(name, version, expected_champion, workspace.registry_lock)
    if not promotion.promoted:
        return Verdict(CycleStatus.REJECTED, [promotion.reason])
    record_golden(params, workspace, version, expected_champion, log)
    why = "no champion yet: nothing to canary against" if params.canary.enabled else "canary disabled"
    return Verdict(CycleStatus.PROMOTED, [*gate["reasons"], promotion.reason, why, tell_service(params, log)])


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


def record_lineage(params: Params, result: CycleResult) -> None:
    """Tag the model version with its verdict and lineage, and attach the gate report to its MLflow run."""
    import mlflow

    warnings = result.validation["warnings"]
    registry.tag_version(
        params.tracking.registered_model,
        result.challenger_version,
        {
            "gate_verdict": "pass" if result.gate["passed"] else "fail",
            "gate_status": str(result.status),
            "gate_reasons": " | ".join(result.reasons)[:4000],
            "parent_champion": result.compared_champion or "none",
            "batch_id": result.batch_id,
            "validation": f"passed, {len(warnings)} warnings ({', '.join(warnings)[:300]})",
            **({"replaces_batch": result.replaces} if result.replaces else {}),
        },
    )
    mlflow.MlflowClient().log_dict(result.registration["run_id"], result.gate, "gate/gate_report.json")
