"""The canary flow: step the challenger's traffic share up, judge each step, then promote or roll back.

Wiring only: traffic goes through `retrainer.serving.replay`, the judgement is `retrainer.steps.canary`, the registry
moves through `retrainer.io.registry`, and the service's own admin endpoints change the rollout.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
from prefect import flow

from retrainer.config import PARAMS_ENV, CanaryConfig, Params, load_params
from retrainer.io import registry
from retrainer.io.project import home_dir
from retrainer.io.tracking import connect
from retrainer.serving.prediction_log import LOG_FILE
from retrainer.serving.replay import ReplayStats, check_loopback, read_arm, replay, scrape_counters
from retrainer.steps.canary import ArmStats, CanaryDecision, StepProgress, analyse_canary

OUTCOME_PROMOTED, OUTCOME_ROLLED_BACK, OUTCOME_ABORTED = "promoted", "rolled_back", "aborted"
OUTCOME_COLUMNS = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")


def labelled_traffic(raw: pd.DataFrame, params: Params) -> tuple[list[dict], list[int | None]]:
    """Raw-schema rows as a client sends them (no outcome columns) and their delayed labels (None: cancelled)."""
    import json

    target = params.data.target
    outcome = raw[target.column]
    labels = [None if pd.isna(v) else int(v > target.threshold) for v in outcome]
    records = json.loads(
        raw.drop(columns=[c for c in OUTCOME_COLUMNS if c in raw.columns]).to_json(orient="records", date_format="iso")
    )
    return records, labels


def load_traffic(path: Path, params: Params) -> tuple[list[dict], list[int | None]]:
    """A raw batch file (CSV or Parquet, e.g. the month after the training data) as replayable labelled traffic."""
    from retrainer.io.batch_files import read_batch_file, read_options

    return labelled_traffic(read_batch_file(path, read_options(params)).frame, params)


def admin_token() -> str:
    """The service's admin token, from the environment only (never a flow parameter, which Prefect stores)."""
    from retrainer.serving.runtime import TOKEN_ENV

    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise ValueError(f"{TOKEN_ENV} is not set: the canary needs the admin token the service was started with")
    return token


def _now() -> str:
    """The prediction log's timestamp format (UTC, milliseconds), so windows compare as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _logger() -> logging.Logger:
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is not None:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    return logging.getLogger("retrainer.canary")


def _publish(key: str, markdown: str, description: str) -> None:
    """A Prefect markdown artifact when running as a flow run (calling `.fn` directly publishes nothing)."""
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is not None:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown, key=key, description=description)


def _threshold(model_name: str, version: str) -> float:
    try:
        return float(registry.version_tags(model_name, version).get("threshold", 0.5))
    except ValueError:
        return 0.5


def _counted(counters: dict, before: dict, arm: str) -> tuple[int, int]:
    """(attempted requests, errors) for an arm between two /metrics scrapes."""

    def delta(name: str) -> int:
        return int(counters.get((name, arm), 0.0) - before.get((name, arm), 0.0))

    errors = delta("retrainer_errors_total")
    return delta("retrainer_requests_total") + errors, errors


def gather_arms(
    base_url: str,
    log_path: Path,
    versions: dict[str, str],
    thresholds: dict[str, float],
    canary_start: tuple[str, dict],
    step_start: tuple[str, dict],
) -> tuple[ArmStats, ArmStats]:
    """Champion evidence since the canary began; challenger health and predictions since this step began.

    Feedback labels of both arms count from the start of the canary: labels arrive slowly.
    """
    counters = scrape_counters(base_url)
    arms = {}
    for arm, (since, before) in (("champion", canary_start), ("challenger", step_start)):
        rows = read_arm(log_path, arm, versions[arm], since)
        labelled = rows if since == canary_start[0] else read_arm(log_path, arm, versions[arm], canary_start[0])
        requests, errors = _counted(counters, before, arm)
        arms[arm] = ArmStats(
            requests=requests,
            errors=errors,
            latencies_ms=rows.latencies_ms,
            probabilities=rows.probabilities,
            feedback_labels=labelled.feedback_labels,
            feedback_probabilities=labelled.feedback_probabilities,
            threshold=thresholds[arm],
        )
    return arms["champion"], arms["challenger"]


def _step_markdown(challenger: str, weight: float, decision: CanaryDecision, traffic: ReplayStats) -> str:
    numbers = "\n".join(
        f"| {k} | {'n/a' if isinstance(v, float) and math.isnan(v) else f'{v:.4g}'} |"
        for k, v in decision.numbers.items()
    )
    reasons = "\n".join(f"- {r}" for r in decision.reasons)
    return (
        f"# Canary v{challenger} at {weight:g}%: {decision.action.upper()}\n\n{reasons}\n\n"
        f"replayed {traffic.sent} requests ({traffic.failed} failed client-side), "
        f"{traffic.feedback_sent} labels\n\n| number | value |\n|---|---|\n{numbers}\n"
    )


def _merge(total: ReplayStats, part: ReplayStats) -> None:
    for name in ("sent", "succeeded", "failed", "feedback_sent", "feedback_failed", "seconds"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for arm, n in part.by_arm.items():
        total.by_arm[arm] = total.by_arm.get(arm, 0) + n
    total.stopped = part.stopped


@flow(name="canary", validate_parameters=False)
def canary(
    base_url: str,
    model_name: str,
    challenger_version: str,
    expected_champion: str,
    traffic: str | None = None,
    steps: Sequence[float] | None = None,
    policy: CanaryConfig | None = None,
    root: Path | None = None,
    home: Path | None = None,
    poll_seconds: float = 0.25,
) -> dict:
    """Run the canary of `challenger_version` against `expected_champion` on a running service, with replayed traffic.

    `traffic` is a raw batch file replayed to the service in order across steps, its labels posted as delayed
    feedback (demo and tests); without it the canary judges the live traffic clients send. The admin token comes
    from RETRAINER_ADMIN_TOKEN. The policy defaults to the params `canary` section; `steps` (percent) overrides its
    steps, validated. Returns the outcome, the reasons, the service's rollout state and every step's decision.
    """
    check_loopback(base_url)
    root = Path(root or Path.cwd())
    params = load_params(os.environ.get(PARAMS_ENV) or root / "params.yaml")
    policy = policy or params.canary
    if steps is not None:
        policy = CanaryConfig.model_validate({**policy.model_dump(), "steps": tuple(steps)})
    home = Path(home) if home else home_dir(root)
    connect(root)
    log = _logger()
    admin = {"Authorization": f"Bearer {admin_token()}"}
    versions = {"champion": expected_champion, "challenger": challenger_version}
    thresholds = {arm: _threshold(model_name, v) for arm, v in versions.items()}
    result: dict = {"challenger_version": challenger_version, "expected_champion": expected_champion, "steps": []}
    source = _Traffic(*load_traffic(Path(traffic), params)) if traffic else _Traffic.live()

    with httpx.Client(base_url=base_url, timeout=60) as client:
        try:
            rollout = client.get("/rollout").json()
        except httpx.TransportError as exc:
            raise RuntimeError(
                f"no retrainer service answers at {base_url} ({exc}): start it with `retrainer serve`, "
                "point canary.service_url at it, or set canary.enabled: false"
            ) from None
        if rollout["champion_version"] != expected_champion:
            reason = f"service champion is v{rollout['champion_version']}, expected v{expected_champion}"
            return _finish(result, OUTCOME_ABORTED, [reason], rollout)
        canary_start = (_now(), scrape_counters(base_url))
        decision = CanaryDecision("wait", ["no step ran"])
        for index, percent in enumerate(policy.steps):
            response = client.post("/admin/weights", json={"challenger_weight": percent / 100.0}, headers=admin)
            state = response.json() if response.status_code == 200 else {}
            if (state.get("challenger_version"), state.get("champion_version")) != (
                challenger_version,
                expected_champion,
            ):
                client.post("/admin/weights", json={"challenger_weight": 0.0}, headers=admin)
                reason = f"weight {percent:g}% refused or served other versions: {response.status_code} {state}"
                return _finish(result, OUTCOME_ABORTED, [reason], client.get("/rollout").json())
            step = StepProgress(index, len(policy.steps), 0.0)
            decision, traffic = _run_step(
                base_url,
                home / LOG_FILE,
                versions,
                thresholds,
                canary_start,
                step,
                percent,
                policy,
                source,
                poll_seconds,
            )
            result["steps"].append({"weight": percent, "decision": decision.to_dict(), "replay": traffic.to_dict()})
            log.info("canary v%s at %g%%: %s %s", challenger_version, percent, decision.action, decision.reasons)
            _publish(
                f"canary-v{challenger_version}-step-{index + 1}",
                _step_markdown(challenger_version, percent, decision, traffic),
                f"canary step {index + 1} of v{challenger_version}",
            )
            if decision.action != "continue":
                break

        if decision.action == "promote":
            return _promote(client, admin, result, model_name, challenger_version, expected_champion, home, decision)
        return _roll_back(client, admin, result, model_name, challenger_version, decision)


class _Traffic:
    """Replayed records and labels, consumed in order across steps; or live traffic (nothing to replay)."""

    def __init__(self, records: Sequence[dict], labels: Sequence[int | None], live: bool = False):
        if len(records) != len(labels):
            raise ValueError(f"{len(records)} records but {len(labels)} labels")
        self.records, self.labels, self.cursor, self.is_live = records, labels, 0, live

    @classmethod
    def live(cls) -> _Traffic:
        return cls([], [], live=True)

    @property
    def left(self) -> int:
        return len(self.records) - self.cursor


def _run_step(
    base_url, log_path, versions, thresholds, canary_start, step, percent, policy, source, poll_seconds
) -> tuple[CanaryDecision, ReplayStats]:
    """Replay traffic until the analysis stops saying "wait" (bounded by the step's maximum time and the traffic)."""
    step_start = (_now(), scrape_counters(base_url))
    started = time.monotonic()
    traffic = ReplayStats()
    while True:
        champion, challenger = gather_arms(base_url, log_path, versions, thresholds, canary_start, step_start)
        progress = StepProgress(step.index, step.total, time.monotonic() - started)
        decision = analyse_canary(champion, challenger, progress, policy)
        if decision.action != "wait":
            return decision, traffic
        if progress.elapsed_seconds >= policy.max_seconds_per_step:
            why = f"step still short of evidence after {policy.max_seconds_per_step:g} s"
            return CanaryDecision("rollback", [why, *decision.reasons], decision.numbers), traffic
        missing = policy.min_requests_per_step - challenger.requests
        if missing <= 0 or source.is_live:
            time.sleep(poll_seconds)  # live clients bring the requests, or the step's minimum duration is not over
            continue
        if source.left <= 0:
            why = "traffic source exhausted before the step had enough requests"
            return CanaryDecision("rollback", [why, *decision.reasons], decision.numbers), traffic
        chunk = min(source.left, max(10, math.ceil(missing / (percent / 100.0) * 1.2)))
        window = slice(source.cursor, source.cursor + chunk)
        part = replay(
            base_url,
            source.records[window],
            source.labels[window],
            feedback_delay_s=policy.feedback_delay_seconds,
            max_requests=chunk,
            timeout_s=max(policy.max_seconds_per_step - progress.elapsed_seconds, policy.feedback_delay_seconds + 1),
        )
        source.cursor += max(part.sent, 1)
        _merge(traffic, part)


def _promote(client, admin, result, model_name, challenger, expected, home, decision) -> dict:
    """The service promotes compare-and-set (in the registry, when it serves from it); the registry is checked after."""
    response = client.post("/admin/promote", json={}, headers=admin)
    if response.status_code != 200:
        client.post("/admin/weights", json={"challenger_weight": 0.0}, headers=admin)
        reasons = [*decision.reasons, f"promotion refused: {response.status_code} {response.text[:300]}"]
        _record(model_name, challenger, "promotion_refused", reasons)
        return _finish(result, OUTCOME_ABORTED, reasons, client.get("/rollout").json())
    reasons = list(decision.reasons)
    if registry.alias_version(model_name, registry.CHAMPION) != challenger:
        # A Bento-packed service promotes locally only: move the registry alias, still compare-and-set.
        promotion = registry.promote_if_current(model_name, challenger, expected, home / "registry.lock")
        reasons.append(promotion.reason)
    state = client.get("/rollout").json()
    if state["champion_version"] != challenger or state["challenger_weight"] != 0.0:
        reasons.append(f"service state after promotion is unexpected: {state}")
    _record(model_name, challenger, OUTCOME_PROMOTED, reasons)
    return _finish(result, OUTCOME_PROMOTED, reasons, state)


def _roll_back(client, admin, result, model_name, challenger, decision) -> dict:
    """Drop the challenger from the service (weight 0), remove its alias, and record why on the version."""
    state = client.get("/rollout").json()
    if state.get("challenger_version") == challenger:
        client.post("/admin/rollback", json={}, headers=admin)
    else:  # never let /admin/rollback restore an older champion: only zero the weight
        client.post("/admin/weights", json={"challenger_weight": 0.0}, headers=admin)
    state = client.get("/rollout").json()
    reasons = list(decision.reasons)
    if state["challenger_weight"] != 0.0 or state.get("challenger_version") == challenger:
        reasons.append(f"rollback not verified: service state {state}")
    if registry.alias_version(model_name, registry.CHALLENGER) == challenger:
        registry.clear_alias(model_name, registry.CHALLENGER)
    _record(model_name, challenger, OUTCOME_ROLLED_BACK, reasons)
    return _finish(result, OUTCOME_ROLLED_BACK, reasons, state)


def _record(model_name: str, version: str, verdict: str, reasons: list[str]) -> None:
    registry.tag_version(model_name, version, {"canary_verdict": verdict, "canary_reasons": " | ".join(reasons)[:4000]})


def _finish(result: dict, outcome: str, reasons: list[str], state: dict) -> dict:
    result.update(outcome=outcome, reasons=reasons, rollout=state, champion_version=state.get("champion_version"))
    return result
