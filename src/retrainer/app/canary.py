"""Use case: canary a challenger on a running service, step its traffic share up, judge each step, then promote it
or roll it back.

Traffic goes through `retrainer.serving.replay`, the judgement is `retrainer.steps.canary`, the registry moves
through `retrainer.io.registry`, and the service's admin endpoints through `retrainer.serving.client.AdminClient`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd

from retrainer.app.results import field_names
from retrainer.config import CanaryConfig, Params
from retrainer.io import registry
from retrainer.io.project import Workspace
from retrainer.io.tracking import connect
from retrainer.outcomes import CanaryOutcome
from retrainer.serving.client import AdminClient
from retrainer.serving.replay import ReplayStats, check_loopback, read_arm, replay, scrape_counters
from retrainer.steps.canary import ArmStats, CanaryDecision, StepProgress, analyse_canary

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanaryResult:
    """How a canary ended (outcome and reasons), every step's decision and replay, and the service's final state."""

    outcome: CanaryOutcome
    reasons: list[str]
    challenger_version: str
    expected_champion: str
    steps: list[dict] = field(default_factory=list)
    rollout: dict = field(default_factory=dict)
    champion_version: str | None = None

    def to_dict(self) -> dict:
        """The JSON-ready form (the canary flow's return value, kept in the cycle's result)."""
        return {**self.__dict__, "outcome": str(self.outcome)}

    @classmethod
    def from_dict(cls, payload: dict) -> CanaryResult:
        """The result back from its dict form (e.g. a canary flow run's return value)."""
        known = {k: v for k, v in payload.items() if k in field_names(cls)}
        return cls(**{**known, "outcome": CanaryOutcome(payload["outcome"])})


@dataclass(frozen=True)
class StepReport:
    """One finished canary step, for whoever reports it (the flow publishes it as an artifact)."""

    index: int
    challenger_version: str
    weight: float
    decision: CanaryDecision
    traffic: ReplayStats

    def to_markdown(self) -> str:
        """The step as markdown: decision, reasons, traffic replayed, and its numbers."""
        numbers = "\n".join(
            f"| {k} | {'n/a' if isinstance(v, float) and math.isnan(v) else f'{v:.4g}'} |"
            for k, v in self.decision.numbers.items()
        )
        reasons = "\n".join(f"- {r}" for r in self.decision.reasons)
        return (
            f"# Canary v{self.challenger_version} at {self.weight:g}%: {self.decision.action.upper()}\n\n"
            f"{reasons}\n\nreplayed {self.traffic.sent} requests ({self.traffic.failed} failed client-side), "
            f"{self.traffic.feedback_sent} labels\n\n| number | value |\n|---|---|\n{numbers}\n"
        )


def labelled_traffic(raw: pd.DataFrame, params: Params) -> tuple[list[dict], list[int | None]]:
    """Raw-schema rows as a client sends them (without params' outcome columns: the target and the leaking columns)
    and their delayed labels (None where the target is missing)."""
    from retrainer.serving.schema import client_rows

    target = params.data.target
    labels = [None if pd.isna(v) else int(v > target.threshold) for v in raw[target.column]]
    return client_rows(raw, params), labels


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


def log_time() -> str:
    """The prediction log's timestamp format (UTC, milliseconds), so windows compare as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def version_threshold(model_name: str, version: str) -> float:
    """The decision threshold a version was registered with (0.5 when it has none)."""
    try:
        return float(registry.version_tags(model_name, version).get("threshold", 0.5))
    except ValueError:
        return 0.5


class TrafficSource:
    """Replayed records and labels, consumed in order across steps; or live traffic (nothing to replay)."""

    def __init__(self, records: Sequence[dict], labels: Sequence[int | None], live: bool = False):
        if len(records) != len(labels):
            raise ValueError(f"{len(records)} records but {len(labels)} labels")
        self.records, self.labels, self.cursor, self.is_live = records, labels, 0, live

    @classmethod
    def live(cls) -> TrafficSource:
        """Live client traffic: the canary only watches."""
        return cls([], [], live=True)

    @property
    def left(self) -> int:
        """Records not replayed yet."""
        return len(self.records) - self.cursor


@dataclass(frozen=True)
class CanaryRun:
    """What every step of one canary works with; `steps` collects each step's decision and replay."""

    plan: CanaryPlan
    versions: dict[str, str]
    thresholds: dict[str, float]
    policy: CanaryConfig
    source: TrafficSource
    workspace: Workspace
    canary_start: tuple[str, dict]
    http: httpx.Client  # for the polls of /metrics and /rollout, without the admin token
    steps: list[dict] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The service's URL."""
        return self.plan.base_url

    @property
    def model_name(self) -> str:
        """The registered model."""
        return self.plan.model_name

    @property
    def challenger(self) -> str:
        """The challenger's version."""
        return self.versions["challenger"]

    @property
    def expected(self) -> str:
        """The champion the challenger is judged against (and must replace, compare-and-set)."""
        return self.versions["champion"]

    def ended(self, outcome: CanaryOutcome, reasons: list[str], state: dict) -> CanaryResult:
        """The canary's result, with the service's final rollout state."""
        return CanaryResult(
            outcome,
            reasons,
            self.challenger,
            self.expected,
            self.steps,
            state,
            state.get("champion_version"),
        )


def canary_policy(policy: CanaryConfig, steps: Sequence[float] | None) -> CanaryConfig:
    """The policy with its steps (percent) replaced by `steps` when given, validated (ValueError otherwise)."""
    if steps is None:
        return policy
    return CanaryConfig.model_validate({**policy.model_dump(), "steps": tuple(steps)})


@dataclass(frozen=True)
class CanaryPlan:
    """Which challenger to canary against which champion, on which service, with what traffic and policy.

    `traffic` is a raw batch file replayed in order across steps, its labels posted as delayed feedback (demo,
    tests); without it the canary judges live traffic. The policy defaults to the params `canary` section; `steps`
    (percent) overrides its steps. `root` (default: the working folder) and `home` locate the workspace.
    """

    base_url: str
    model_name: str
    challenger_version: str
    expected_champion: str
    traffic: str | None = None
    steps: Sequence[float] | None = None
    policy: CanaryConfig | None = None
    root: Path | None = None
    home: Path | None = None
    poll_seconds: float = 0.25


def metrics_urls(base_url: str, policy: CanaryConfig) -> tuple[str, ...]:
    """Where the canary reads request and error counters: every replica of `canary.replica_urls` when the service
    is several replicas behind a proxy (a scrape through the proxy reaches one of them), else the service itself."""
    return policy.replica_urls or (base_url,)


def run_canary(
    plan: CanaryPlan,
    on_step: Callable[[StepReport], None] | None = None,
    log: logging.Logger | logging.LoggerAdapter = _log,
) -> CanaryResult:
    """Run the canary of the plan's challenger against its expected champion on the service (loopback only).

    The admin token comes from RETRAINER_ADMIN_TOKEN (ValueError without it); a `steps` override is validated
    (ValueError); RuntimeError when no service answers. `on_step` is called with each finished step.
    """
    check_loopback(plan.base_url)
    workspace = Workspace.at(plan.root, plan.home)
    params = workspace.load_params()
    policy = canary_policy(plan.policy or params.canary, plan.steps)
    connect(workspace.root)
    token = admin_token()
    versions = {"champion": plan.expected_champion, "challenger": plan.challenger_version}
    thresholds = {arm: version_threshold(plan.model_name, v) for arm, v in versions.items()}
    source = TrafficSource(*load_traffic(Path(plan.traffic), params)) if plan.traffic else TrafficSource.live()
    with AdminClient(plan.base_url, token) as admin, httpx.Client() as http:
        rollout = admin.rollout()
        if rollout["champion_version"] != plan.expected_champion:
            reason = f"service champion is v{rollout['champion_version']}, expected v{plan.expected_champion}"
            aborted = CanaryResult(CanaryOutcome.ABORTED, [reason], plan.challenger_version, plan.expected_champion)
            return dataclasses.replace(aborted, rollout=rollout, champion_version=rollout.get("champion_version"))
        start = (log_time(), scrape_counters(metrics_urls(plan.base_url, policy), client=http))
        run = CanaryRun(plan, versions, thresholds, policy, source, workspace, start, http)
        return step_up(run, admin, on_step or (lambda _report: None), log)


def step_up(
    run: CanaryRun, admin: AdminClient, on_step: Callable[[StepReport], None], log: logging.Logger
) -> CanaryResult:
    """Raise the challenger's weight step by step while the analysis says continue; then promote or roll back."""
    decision = CanaryDecision("wait", ["no step ran"])
    for index, percent in enumerate(run.policy.steps):
        status, state = admin.set_weight(percent / 100.0)
        if (state.get("challenger_version"), state.get("champion_version")) != (run.challenger, run.expected):
            admin.set_weight(0.0)
            reason = f"weight {percent:g}% refused or served other versions: {status} {state}"
            return run.ended(CanaryOutcome.ABORTED, [reason], admin.rollout())
        decision, traffic = run_step(run, StepProgress(index, len(run.policy.steps), 0.0), percent)
        run.steps.append({"weight": percent, "decision": decision.to_dict(), "replay": traffic.to_dict()})
        log.info("canary v%s at %g%%: %s %s", run.challenger, percent, decision.action, decision.reasons)
        on_step(StepReport(index, run.challenger, percent, decision, traffic))
        if decision.action != "continue":
            break
    if decision.action == "promote":
        return promote(run, admin, decision)
    return roll_back(run, admin, decision)


def run_step(run: CanaryRun, step: StepProgress, percent: float) -> tuple[CanaryDecision, ReplayStats]:
    """Replay traffic until the analysis stops saying "wait" (bounded by the step's maximum time and the traffic)."""
    step_start = (log_time(), scrape_counters(metrics_urls(run.base_url, run.policy), client=run.http))
    started, policy, source = time.monotonic(), run.policy, run.source
    traffic = ReplayStats()
    while True:
        champion, challenger = gather_arms(run, step_start)
        progress = StepProgress(step.index, step.total, time.monotonic() - started)
        decision = analyse_canary(champion, challenger, progress, policy)
        if decision.action != "wait":
            return decision, traffic
        if progress.elapsed_seconds >= policy.max_seconds_per_step:
            why = f"step still short of evidence after {policy.max_seconds_per_step:g} s"
            return CanaryDecision("rollback", [why, *decision.reasons], decision.numbers), traffic
        missing = policy.min_requests_per_step - challenger.requests
        if missing <= 0 or source.is_live:
            time.sleep(run.plan.poll_seconds)  # live clients bring the requests, or the step's minimum time is not over
            continue
        if source.left <= 0:
            why = "traffic source exhausted before the step had enough requests"
            return CanaryDecision("rollback", [why, *decision.reasons], decision.numbers), traffic
        chunk = min(source.left, max(10, math.ceil(missing / (percent / 100.0) * 1.2)))
        merge(traffic, replay_chunk(run, chunk, policy.max_seconds_per_step - progress.elapsed_seconds))
        if traffic.sent and not traffic.succeeded:
            why = f"all {traffic.sent} replayed requests failed ({traffic.failure_summary()})"
            return CanaryDecision("rollback", [why, *decision.reasons], decision.numbers), traffic


def replay_chunk(run: CanaryRun, chunk: int, seconds_left: float) -> ReplayStats:
    """Replay the next `chunk` records of the traffic source (labels as delayed feedback); advance its cursor."""
    source, policy = run.source, run.policy
    window = slice(source.cursor, source.cursor + chunk)
    part = replay(
        run.base_url,
        source.records[window],
        source.labels[window],
        feedback_delay_s=policy.feedback_delay_seconds,
        max_requests=chunk,
        timeout_s=max(seconds_left, policy.feedback_delay_seconds + 1),
    )
    source.cursor += max(part.sent, 1)
    return part


def counted(counters: dict, before: dict, arm: str) -> tuple[int, int]:
    """(attempted requests, errors) for an arm between two /metrics scrapes."""

    def delta(name: str) -> int:
        return int(counters.get((name, arm), 0.0) - before.get((name, arm), 0.0))

    errors = delta("retrainer_errors_total")
    return delta("retrainer_requests_total") + errors, errors


def gather_arms(run: CanaryRun, step_start: tuple[str, dict]) -> tuple[ArmStats, ArmStats]:
    """Champion evidence since the canary began; challenger health and predictions since this step began.

    Feedback labels of both arms count from the start of the canary: labels arrive slowly.
    """
    counters = scrape_counters(metrics_urls(run.base_url, run.policy), client=run.http)
    log_path, canary_since = run.workspace.prediction_log, run.canary_start[0]
    arms = {}
    for arm, (since, before) in (("champion", run.canary_start), ("challenger", step_start)):
        rows = read_arm(log_path, arm, run.versions[arm], since)
        labelled = rows if since == canary_since else read_arm(log_path, arm, run.versions[arm], canary_since)
        requests, errors = counted(counters, before, arm)
        arms[arm] = ArmStats(
            requests=requests,
            errors=errors,
            latencies_ms=rows.latencies_ms,
            probabilities=rows.probabilities,
            feedback_labels=labelled.feedback_labels,
            feedback_probabilities=labelled.feedback_probabilities,
            threshold=run.thresholds[arm],
        )
    return arms["champion"], arms["challenger"]


def merge(total: ReplayStats, part: ReplayStats) -> None:
    """Add one replay's counts to a step's running total."""
    for name in ("sent", "succeeded", "failed", "feedback_sent", "feedback_failed", "unlabelled", "seconds"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for arm, n in part.by_arm.items():
        total.by_arm[arm] = total.by_arm.get(arm, 0) + n
    for kind, n in part.failures.items():
        total.failures[kind] = total.failures.get(kind, 0) + n
    total.first_failure = total.first_failure or part.first_failure
    total.stopped = part.stopped


def promote(run: CanaryRun, admin: AdminClient, decision: CanaryDecision) -> CanaryResult:
    """The service promotes compare-and-set (in the registry, when it serves from it); the registry is checked after."""
    status, body = admin.promote()
    if status != 200:
        admin.set_weight(0.0)
        reasons = [*decision.reasons, f"promotion refused: {status} {body[:300]}"]
        record_verdict(run, "promotion_refused", reasons)
        return run.ended(CanaryOutcome.ABORTED, reasons, admin.rollout())
    reasons = list(decision.reasons)
    if registry.alias_version(run.model_name, registry.CHAMPION) != run.challenger:
        # A Bento-packed service promotes locally only: move the registry alias, still compare-and-set.
        lock = run.workspace.registry_lock
        reasons.append(registry.promote_if_current(run.model_name, run.challenger, run.expected, lock).reason)
    states = served_states(run, admin)
    for url, state in states.items():
        if not serves_promoted(state, run.challenger):
            where = f" at {url}" if run.policy.replica_urls else ""
            reasons.append(f"service state after promotion is unexpected{where}: {state}")
    record_verdict(run, CanaryOutcome.PROMOTED, reasons)
    return run.ended(CanaryOutcome.PROMOTED, reasons, next(iter(states.values())))


def serves_promoted(state: dict, version: str) -> bool:
    """Whether a rollout state serves `version` as the champion with no challenger traffic."""
    return state.get("champion_version") == version and state.get("challenger_weight") == 0.0


REPLICA_ADOPTION_S = 60.0  # a replica adopts a saved change within serve.state_refresh_seconds, plus a model load


def served_states(run: CanaryRun, admin: AdminClient) -> dict[str, dict]:
    """The rollout state the service serves after a promotion: its own (read once), or with canary.replica_urls each
    replica's, waited for (up to REPLICA_ADOPTION_S) until it adopts the promotion that reached one of them."""
    if not run.policy.replica_urls:
        return {run.base_url: admin.rollout()}
    from retrainer.serving.client import service_state
    from retrainer.serving.replicas import wait_until

    states: dict[str, dict] = {}

    def adopted(url: str) -> bool:
        states[url] = service_state(url, timeout_s=10, client=run.http) or {}
        return serves_promoted(states[url], run.challenger)

    for url in run.policy.replica_urls:
        check_loopback(url)
        wait_until(lambda url=url: adopted(url), REPLICA_ADOPTION_S, every_s=0.2)
    return states


def roll_back(run: CanaryRun, admin: AdminClient, decision: CanaryDecision) -> CanaryResult:
    """Drop the challenger from the service (weight 0), remove its alias, and record why on the version."""
    if admin.rollout().get("challenger_version") == run.challenger:
        admin.rollback()
    else:  # never let /admin/rollback restore an older champion: only zero the weight
        admin.set_weight(0.0)
    state = admin.rollout()
    reasons = list(decision.reasons)
    if state["challenger_weight"] != 0.0 or state.get("challenger_version") == run.challenger:
        reasons.append(f"rollback not verified: service state {state}")
    if registry.alias_version(run.model_name, registry.CHALLENGER) == run.challenger:
        registry.clear_alias(run.model_name, registry.CHALLENGER)
    record_verdict(run, CanaryOutcome.ROLLED_BACK, reasons)
    return run.ended(CanaryOutcome.ROLLED_BACK, reasons, state)


def record_verdict(run: CanaryRun, verdict: str, reasons: list[str]) -> None:
    """Tag the challenger's model version with the canary's verdict and reasons."""
    tags = {"canary_verdict": str(verdict), "canary_reasons": " | ".join(reasons)[:4000]}
    registry.tag_version(run.model_name, run.challenger, tags)
