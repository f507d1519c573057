"""Use case: ship the current code and params. A retrain cycle with no new batch: the pipeline stages run on the
batches already accepted, and the challenger they register goes through the same gate, packaging and canary (or
promotion) as a batch's cycle; CD starts it when a model change is merged.

A change is recorded in the batch record under `change-<short commit>-<digest>` (`change-<digest>` outside a git
checkout): the digest covers the params and the code under src/, so the same change shipped again returns its
recorded outcome, and an edit not yet committed is a change of its own.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from retrainer.app import retrain as retraining
from retrainer.app.results import CycleResult
from retrainer.config import Params, params_hash
from retrainer.io import registry
from retrainer.io.git import code_version, fast_forward_to
from retrainer.io.locks import workspace_lock
from retrainer.io.project import Workspace
from retrainer.outcomes import CycleStatus

_log = logging.getLogger(__name__)
CHANGE_PREFIX = "change-"
NOTHING_TO_SHIP = "no model change: nothing to ship"


def code_digest(root: Path) -> str:
    """sha256 (hex) over the Python files under `root`/src (relative path and bytes, in path order); of nothing
    when there is no src/ folder."""
    digest = hashlib.sha256()
    source = root / "src"
    for path in sorted(source.rglob("*.py")) if source.is_dir() else []:
        digest.update(path.relative_to(source).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def describe_change(params: Params, root: Path) -> dict:
    """What names the change in the workspace `root`: {"id", "commit" (full sha or None), "dirty" ('true' |
    'false' | 'unknown'), "params_hash", "code_digest"} (hashes in hex)."""
    version = code_version(root)
    commit = None if version["git_commit"] == "none" else version["git_commit"]
    params_digest, code = params_hash(params), code_digest(root)
    digest = hashlib.sha256(f"{params_digest}:{code}".encode()).hexdigest()
    identifier = f"{CHANGE_PREFIX}{commit[:8]}-{digest[:8]}" if commit else f"{CHANGE_PREFIX}{digest[:12]}"
    return {
        "id": identifier,
        "commit": commit,
        "dirty": version["git_dirty"],
        "params_hash": params_digest,
        "code_digest": code,
    }


def ship_change(
    workspace: Workspace,
    *,
    commit: str | None = None,
    force: bool = False,
    canary_traffic: Path | None = None,
    steps: retraining.RetrainSteps = retraining.RetrainSteps(),
    log: logging.Logger | logging.LoggerAdapter = _log,
) -> CycleResult:
    """Ship the workspace's current code and params: run the stages on the accepted batches, then gate the
    challenger and package and canary it (or promote it: canary off or no champion) or reject it.

    Returns the cycle's result: status promoted / rejected / rolled_back, or `unchanged` (DVC trained no new model:
    the registered version is the champion, nothing to ship). A change shipped before returns its recorded outcome
    (`already_processed`) unless `force`. Holds the workspace lock and repairs what a dead run left, like
    `retrain_batch`. `commit` (CD passes the merged one): the checkout is fast-forwarded to it first, under the
    workspace lock. Raises CheckoutError (dirty, diverged or unknown commit), RuntimeError (a live run holds the
    change's claim), ConfigError (params DVC does not read); any other failure is recorded `failed` under the
    change's id and re-raised.
    """
    if commit is not None:
        check_out(workspace, commit, log)
    params, record = retraining.open_cycle(workspace, log)
    change = describe_change(params, workspace.root)
    identifier = change["id"]
    previous = record.get(identifier)
    if retraining.has_outcome(previous) and not force:
        return retraining.already_processed(previous, f"commit {change['commit'] or 'none'}", log)
    retraining.claim(record, identifier, str(workspace.root), force)
    cycle = retraining.Cycle(params, workspace, record, None, identifier, previous, steps, log, change=change)
    return retraining.run_locked(cycle, f"ship of {identifier}", lambda: train_and_ship(cycle, canary_traffic))


def check_out(workspace: Workspace, commit: str, log: logging.Logger | logging.LoggerAdapter) -> None:
    """Fast-forward the workspace's checkout to `commit` while no cycle runs in it (see `fast_forward_to`)."""
    timeout = workspace.load_params().retrain.lock_timeout_seconds
    with workspace_lock(workspace.workspace_lock, f"checkout of {commit}", timeout, log.info):
        moved = fast_forward_to(workspace.root, commit)
    log.info("checkout %s %s", "moved to" if moved else "already at", commit)


def train_and_ship(cycle: retraining.Cycle, canary_traffic: Path | None) -> CycleResult:
    """Run the stages; a challenger that is not the champion is gated and rolled out, else nothing to ship."""
    stages, registration = retraining.run_stages(cycle)
    model_name = cycle.params.tracking.registered_model
    champion = registry.alias_version(model_name, registry.CHAMPION)
    if registration["version"] != champion:
        return retraining.gate_and_roll_out(cycle, stages, registration, canary_traffic, validation=None)
    result = CycleResult(
        CycleStatus.UNCHANGED,
        [f"{NOTHING_TO_SHIP}: the pipeline's model is the champion, v{champion}"],
        batch_id=cycle.identifier,
        challenger_version=None,
        champion_version=champion,
        registration=registration,
        stages=stages,
        change=cycle.change,
    )
    cycle.record.finish(cycle.identifier, result.status, result.to_dict())
    cycle.log.info("%s: %s", cycle.identifier, result.reasons[0])
    return result
