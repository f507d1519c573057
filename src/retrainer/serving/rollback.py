"""Roll the champion back to the version the last promotion replaced, and prove the restored model is the same.

The previous champion is read from the champion's version tag `promoted_from` (set by
retrainer.io.registry.promote_if_current). The alias moves back compare-and-set under the registry lock, the rollout
state file is rewritten (a restarted service, or one that reloads its state, serves the restored version), and then
the golden set is replayed through the restored model in-process, with the same feature building as the service, and
compared with the golden predictions recorded for that version (RETRAINER_HOME/golden/<model>/golden_<version>.json,
written by record_golden_predictions after each promotion).

The golden set is made once, from data the workspace already holds: `serve.golden_rows` raw rows drawn with the seed
`train.seed` from what training reads (the bootstrap slice and the accepted batches), outcome columns removed, as the
service receives them (RETRAINER_HOME/golden/<model>/golden_set.json). So rollback verifies on any dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from retrainer.config import Params
from retrainer.io import registry
from retrainer.io.project import Workspace, home_dir
from retrainer.io.tables import write_json
from retrainer.serving.routing import RolloutState
from retrainer.serving.state import save_state, state_path

GOLDEN_DIR = "golden"
GOLDEN_SET = "golden_set.json"
TOLERANCE = 1e-9
MAX_NAMED_MISMATCHES = 20


class NoPreviousChampion(LookupError):
    """There is no champion, or the champion was not promoted over an earlier one."""


class RollbackConflict(RuntimeError):
    """The champion moved since the caller looked at it."""


class GoldenSetMismatch(ValueError):
    """The stored golden set is not made of records of these params' request schema (another dataset's, say)."""


@dataclass(frozen=True)
class GoldenCheck:
    """The golden set replayed through one model version against the predictions recorded for it."""

    version: str
    verified: bool
    max_abs_diff: float | None
    rows: int
    mismatches: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass(frozen=True)
class RollbackReport:
    """What a rollback did."""

    model_name: str
    from_version: str
    to_version: str
    verified: bool
    max_abs_diff: float | None
    rows: int
    mismatches: list[str]
    reason: str
    state_file: str
    service: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def golden_record_path(home: Path, model: str, version: str) -> Path:
    """Where the golden predictions of a registered model's version are stored (one folder per model: versions
    are numbered per model, and each model's golden set holds its own dataset's records)."""
    return home / GOLDEN_DIR / model / f"golden_{version}.json"


def golden_set_path(home: Path, model: str) -> Path:
    """Where a registered model's golden set (the records every version's golden predictions are made on) is kept."""
    return home / GOLDEN_DIR / model / GOLDEN_SET


def sample_golden_set(params: Params, root: Path) -> list[dict]:
    """`serve.golden_rows` records drawn (seed `train.seed`) from the raw rows training reads, as a client sends
    them: outcome columns removed, checked by the request schema (rows it refuses are not drawn)."""
    from retrainer.serving.schema import InvalidRecords, client_rows, record_schema
    from retrainer.stages import load_raw

    raw = load_raw(params, root)
    order = np.random.default_rng(params.train.seed).permutation(len(raw))
    schema, chosen, wanted = record_schema(params), [], params.serve.golden_rows
    for first in range(0, len(order), 2 * wanted):  # draw in chunks: dumping every row to JSON would cost seconds
        for row in client_rows(raw.iloc[order[first : first + 2 * wanted]], params):
            try:
                chosen.extend(schema.json_records([row]))
            except InvalidRecords:
                continue
            if len(chosen) == wanted:
                return chosen
    if not chosen:
        raise ValueError("no row of the training data is a valid request record: there is no golden set to draw")
    return chosen


def golden_records(params: Params, root: Path, golden_path: Path | None = None) -> tuple[str, list[dict]]:
    """(where they come from, the golden records as the service receives them): the records in `golden_path` (a raw
    batch file; InvalidRecords when one does not match the request schema), else the workspace's golden set, drawn
    and stored the first time it is needed."""
    from retrainer.serving.schema import client_rows, record_schema

    if golden_path is not None:
        from retrainer.io.tables import read_table

        rows = client_rows(read_table(golden_path), params)
        return str(golden_path), record_schema(params).json_records(rows)
    stored = golden_set_path(home_dir(root), params.tracking.registered_model)
    if not stored.is_file():
        write_json({"records": sample_golden_set(params, root)}, stored)
    records = json.loads(stored.read_text(encoding="utf-8"))["records"]
    return str(stored), check_golden_fits(records, params, stored)


def check_golden_fits(records: list[dict], params: Params, stored: Path) -> list[dict]:
    """The stored golden records, when the request schema of `params` takes them; else GoldenSetMismatch naming the
    file (a workspace switched to another dataset's params keeps the golden set the first one drew)."""
    from retrainer.serving.schema import InvalidRecords, record_schema

    try:
        record_schema(params).validate(records)
    except InvalidRecords as exc:
        raise GoldenSetMismatch(
            f"the golden set {stored} does not fit the request schema of these params ({exc}): it was drawn for "
            "another dataset or schema; move it away to draw a new one (earlier versions then cannot be verified)"
        ) from None
    return records


def _digest(records: list[dict]) -> str:
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _row_name(index: int, record: dict, params: Params) -> str:
    """`row 3 (UA 1545 2013-01-01T10:00:00Z)`: the row and its routing key's values (key columns by default)."""
    fields = params.serve.routing_key or params.data.key_columns or (params.data.time_column,)
    return f"row {index} ({' '.join(str(record.get(name)) for name in fields)})"


def score_golden(pipeline, params: Params, root: Path, records: list[dict]) -> np.ndarray:
    """Probabilities of the golden records, built exactly as the service builds features (single-threaded too)."""
    from threadpoolctl import threadpool_limits

    from retrainer.serving.features import FeatureBuilder, load_references

    frame = FeatureBuilder(params, load_references(params, root)).transform(records)
    with threadpool_limits(limits=1):
        return np.asarray(pipeline.predict_proba(frame)[:, 1], dtype=float)


def record_golden_predictions(
    version: str,
    params: Params,
    root: Path,
    golden_path: Path | None = None,
    *,
    pipeline=None,
    overwrite: bool = False,
) -> Path:
    """Score the golden set with a registered version and store the probabilities (exact floats) under the home.

    Call it when a version is promoted. An existing record is kept unless overwrite=True: it is the reference later
    rollbacks verify against. `pipeline` skips loading the version from the registry (it must be that version).
    """
    from retrainer.io.tracking import connect

    connect(root)
    target = golden_record_path(home_dir(root), params.tracking.registered_model, version)
    if target.is_file() and not overwrite:
        return target
    golden, records = golden_records(params, root, golden_path)
    name = params.tracking.registered_model
    model = pipeline if pipeline is not None else registry.load_version(name, version)
    proba = score_golden(model, params, root, records)
    payload = {
        "model_name": name,
        "version": str(version),
        "golden_file": str(golden),
        "golden_sha256": _digest(records),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": [
            {"row": i, "name": _row_name(i, r, params), "probability": float(p)}
            for i, (r, p) in enumerate(zip(records, proba, strict=True))
        ],
    }
    write_json(payload, target)
    return target


def verify_golden(version: str, pipeline, params: Params, root: Path, golden_path: Path | None = None) -> GoldenCheck:
    """Replay the golden set through `pipeline` and compare with the probabilities recorded for `version`."""
    score = partial(score_golden, pipeline, params, root)
    return check_golden(version, params, root, golden_path, score)


def check_golden(
    version: str, params: Params, root: Path, golden_path: Path | None, score: Callable[[list[dict]], np.ndarray]
) -> GoldenCheck:
    """Score the golden set with `score` (in-process or over HTTP) and compare with `version`'s recorded predictions."""
    record_file = golden_record_path(home_dir(root), params.tracking.registered_model, version)
    try:
        golden, records = golden_records(params, root, golden_path)
    except GoldenSetMismatch as exc:
        return GoldenCheck(version, False, None, 0, [], str(exc))
    if not record_file.is_file():
        return GoldenCheck(version, False, None, len(records), [], f"no golden predictions recorded for v{version}")
    recorded = json.loads(record_file.read_text(encoding="utf-8"))
    if recorded.get("golden_sha256") != _digest(records) or len(recorded.get("rows", [])) != len(records):
        reason = f"the golden set {golden} differs from the one recorded for v{version}"
        return GoldenCheck(version, False, None, len(records), [], reason)
    expected = np.array([float(row["probability"]) for row in recorded["rows"]])
    actual = np.asarray(score(records), dtype=float)
    diff = np.abs(actual - expected)
    bad = np.flatnonzero(~(diff <= TOLERANCE))  # NaN counts as a mismatch
    mismatches = [
        f"{_row_name(int(i), records[i], params)}: recorded {float(expected[i])!r}, now {float(actual[i])!r}, "
        f"|diff| {diff[i]:.3g}"
        for i in bad[:MAX_NAMED_MISMATCHES]
    ]
    max_diff = float(np.nanmax(diff)) if len(diff) else 0.0
    reason = (
        f"{len(records)} golden rows match v{version}'s recorded predictions (max |diff| {max_diff:.3g})"
        if not len(bad)
        else f"{len(bad)} of {len(records)} golden rows differ from v{version}'s recorded predictions "
        f"by more than {TOLERANCE:g}; first: {mismatches[0]}"
    )
    return GoldenCheck(version, not len(bad), max_diff, len(records), mismatches, reason)


def sync_service(
    version: str, params: Params, root: Path, url: str, token: str | None, golden_path: Path | None = None
) -> dict:
    """Make a running service serve `version` (POST /admin/reload), then replay the golden set through it over HTTP.

    Never raises for an absent or refusing service: what happened is returned for the report.
    """
    from retrainer.serving.client import adopt_champion, score_records

    adoption = adopt_champion(url, token)
    state = adoption.state
    if state is None and adoption.reached:  # not told; it still adopts the saved state within its refresh bound
        state = adopted_state(url, version, params.serve.state_refresh_seconds)
    if state is None:
        return {"url": url, "reached": adoption.reached, "verified": False, "reason": adoption.message}
    if state.get("champion_version") != version:
        reason = f"the service serves v{state.get('champion_version')} after reloading, not v{version}"
        return {"url": url, "reached": True, "verified": False, "reason": reason}

    def over_http(records: list[dict]) -> np.ndarray:
        predictions = score_records(url, records)
        served = {p["model_version"] for p in predictions}
        if served != {version}:
            raise RuntimeError(f"golden replay was served by versions {sorted(served)}, not v{version} alone")
        return np.array([p["probability"] for p in predictions])

    try:
        check = check_golden(version, params, root, golden_path, over_http)
    except RuntimeError as exc:
        return {"url": url, "reached": True, "verified": False, "reason": str(exc)}
    return {"url": url, "reached": True, "verified": check.verified, "reason": check.reason}


ADOPTION_SLACK_S = 5.0  # scheduling on a loaded machine, on top of the service's refresh bound


def adopted_state(url: str, version: str, refresh_s: float) -> dict | None:
    """The service's rollout state once it serves `version` by itself (every replica re-reads the saved rollout state
    within `serve.state_refresh_seconds`), polled over GET /rollout for that bound plus ADOPTION_SLACK_S; None when it
    did not."""
    import httpx

    from retrainer.serving.client import service_state
    from retrainer.serving.replicas import wait_until

    seen: list[dict | None] = [None]
    with httpx.Client() as client:

        def serves_version() -> bool:
            seen[0] = service_state(url, client=client)
            return seen[0] is not None and seen[0].get("champion_version") == version

        adopted = wait_until(serves_version, refresh_s + ADOPTION_SLACK_S, every_s=0.2)
    return seen[0] if adopted else None


def previous_champion(model_name: str) -> tuple[str, str]:
    """(current champion, the champion it was promoted over); NoPreviousChampion when either is missing."""
    current = registry.alias_version(model_name, registry.CHAMPION)
    if current is None:
        raise NoPreviousChampion(f"model '{model_name}' has no champion: nothing to roll back")
    previous = registry.version_tags(model_name, current).get("promoted_from")
    if previous in (None, "", "none"):
        raise NoPreviousChampion(
            f"champion v{current} of '{model_name}' was not promoted over an earlier champion "
            f"(version tag promoted_from={previous!r}): nothing to roll back to"
        )
    return current, previous


def restore_previous(name: str, workspace: Workspace, expected_champion: str | None) -> tuple[str, str]:
    """Move the champion alias back to the previous champion under the registry lock, tag both versions, and save
    the rollout state; returns (the replaced champion, the restored one)."""
    from retrainer.io.backend import registry_lock

    now = datetime.now(UTC).isoformat(timespec="seconds")
    with registry_lock(workspace.registry_lock, name):
        current, previous = previous_champion(name)
        if expected_champion is not None and current != expected_champion:
            raise RollbackConflict(f"champion is v{current}, not v{expected_champion}: rollback refused")
        registry.version_tags(name, previous)  # the previous version must still exist (raises otherwise)
        registry.set_alias(name, registry.CHAMPION, previous)
        if registry.alias_version(name, registry.CHALLENGER) == previous:
            registry.clear_alias(name, registry.CHALLENGER)
        registry.tag_version(name, current, {"rolled_back_at": now, "rolled_back_to": previous})
        registry.tag_version(name, previous, {"restored_at": now, "restored_from": current})
        # Like the service's own rollback: the restored champion serves alone; nothing further to roll back to.
        save_state(RolloutState(previous, None, 0.0, now, None), state_path(workspace.home))
    return current, previous


def rollback(
    params: Params,
    root: Path,
    golden_path: Path | None = None,
    *,
    expected_champion: str | None = None,
    service_url: str | None = None,
    admin_token: str | None = None,
) -> RollbackReport:
    """Restore the previous champion (compare-and-set under the registry lock), update the rollout state, verify.

    With `service_url`, a service running there is told to serve the restored champion and is verified too, by the
    same golden replay over HTTP. Raises NoPreviousChampion when there is nothing to roll back to,
    RollbackConflict when `expected_champion` is given and the champion is another version. Verification never
    raises: it is reported.
    """
    from retrainer.io.tracking import connect

    connect(root)
    name = params.tracking.registered_model
    workspace = Workspace.at(root)
    current, previous = restore_previous(name, workspace, expected_champion)
    state_file = state_path(workspace.home)
    pipeline = registry.load_version(name, previous)
    check = verify_golden(previous, pipeline, params, root, golden_path)
    return RollbackReport(
        model_name=name,
        from_version=current,
        to_version=previous,
        verified=check.verified,
        max_abs_diff=check.max_abs_diff,
        rows=check.rows,
        mismatches=check.mismatches,
        reason=check.reason,
        state_file=str(state_file),
        service=sync_service(previous, params, root, service_url, admin_token, golden_path) if service_url else None,
    )


def format_report(report: RollbackReport) -> str:
    """Text for the command line."""
    status = "VERIFIED" if report.verified else "NOT VERIFIED"
    lines = [
        f"rolled back {report.model_name}: champion v{report.from_version} -> v{report.to_version}",
        f"rollout state: {report.state_file} (challenger dropped)",
        f"golden replay: {status}, {report.rows} rows, max |diff| {report.max_abs_diff}",
        f"  {report.reason}",
    ]
    lines += [f"  {m}" for m in report.mismatches[1:]]
    if report.service is not None:
        status = "VERIFIED" if report.service["verified"] else "NOT VERIFIED"
        lines.append(f"service {report.service['url']}: {status}, {report.service['reason']}")
    return "\n".join(lines)
