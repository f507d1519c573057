"""Use case: one monitoring pass, the champion's served traffic against its reference profile, with alerts and the
retrain trigger."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retrainer.app.results import field_names
from retrainer.config import Params
from retrainer.io import monitoring as store
from retrainer.io.project import Workspace
from retrainer.outcomes import CycleStatus, MonitorStatus
from retrainer.steps.monitor import assess_window
from retrainer.steps.trigger import TriggerDecision, decide_trigger

WEBHOOK_ENV = "RETRAINER_ALERT_WEBHOOK"
TOP_FEATURES = 5

Retrain = Callable[[Path], list[dict]]
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorResult:
    """A monitoring pass: status, alarm, whether the retrain fired and why, the headline figures, the report files.

    Every detail (assessment per feature and signal, thresholds, trigger decision, pending data) is under `details`.
    A pass with nothing to monitor (`status` not ok) carries only the first seven fields.
    """

    status: MonitorStatus
    time: str
    model_name: str
    model_version: str | None
    alarm: bool = False
    fired: bool = False
    reason: str = ""
    rows: int = 0
    labelled: int = 0
    level: str | None = None
    drift_share: float | None = None
    drifted_features: list[str] = field(default_factory=list)
    prediction_psi: float | None = None
    rolling_auc: float | None = None
    reference_auc: float | None = None
    report: dict[str, str] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    alert: str | None = None
    retrain: list[dict] | None = None

    HEADLINE = ("time", "model_name", "model_version", "status", "alarm", "fired", "reason")

    def to_dict(self) -> dict:
        """The JSON-ready form (`retrainer monitor --json`, the flow's return value, `monitor/latest.json`)."""
        data = {**self.__dict__, "status": str(self.status)}
        if self.status != MonitorStatus.OK:
            return {k: data[k] for k in self.HEADLINE}
        return {k: v for k, v in data.items() if k != "retrain" or v is not None}

    @classmethod
    def from_dict(cls, payload: dict) -> MonitorResult:
        """A result back from its dict form (e.g. a monitor flow run's return value)."""
        known = {k: v for k, v in payload.items() if k in field_names(cls)}
        return cls(**{**known, "status": MonitorStatus(payload["status"])})


def summarise_retrain(results: list[dict]) -> list[dict]:
    """The retrain outcomes a monitoring result keeps: batch, status, versions, first reason."""
    keep = ("batch", "batch_id", "status", "challenger_version", "champion_version")
    return [{**{k: r.get(k) for k in keep}, "reason": (r.get("reasons") or [""])[0]} for r in results]


def _headline(result: dict) -> str:
    decision = "FIRED" if result["fired"] else "suppressed"
    state = "ALARM" if result["alarm"] else "ok"
    return (
        f"monitor {result['model_name']} v{result['model_version']}: {state} "
        f"(drift share {_figure(result['drift_share'])}, prediction PSI {_figure(result['prediction_psi'])}, "
        f"rolling AUC {_figure(result['rolling_auc'])} on {result['labelled']} labels vs "
        f"{_figure(result['reference_auc'])}); retrain {decision}: {result['reason']}"
    )


def _figure(value: float | None) -> str:
    """A monitoring figure to three decimals ("n/a" when it was not measured)."""
    return "n/a" if value is None else f"{value:.3f}"


def format_result(result: MonitorResult) -> str:
    """The pass as a few lines of text for the command line."""
    if result.status != MonitorStatus.OK:
        return f"monitor: {result.status}: {result.reason}"
    lines = [_headline(result.to_dict()), f"  drifting features: {', '.join(result.drifted_features) or 'none'}"]
    lines += [f"  retrain {r.get('batch') or ''}: {r['status']} ({r['reason']})" for r in result.retrain or []]
    lines.append(f"  report: {result.report['html']}")
    return "\n".join(lines)


def format_markdown(result: MonitorResult) -> str:
    """The pass as markdown (the flow's artifact): signals, top drifting features, the trigger decision."""
    if result.status != MonitorStatus.OK:
        return f"# Monitor: {result.status}\n\n{result.reason}\n"
    rows = "".join(
        f"| {name} | {s['value']} | {s['threshold']} | {s['level']} | {'ALARM' if s['alarm'] else 'ok'} |\n"
        for name, s in result.details["assessment"]["signals"].items()
    )
    retrain = "".join(f"- retrain: `{r.get('batch')}` {r['status']} ({r['reason']})\n" for r in result.retrain or [])
    return (
        f"# Monitor v{result.model_version}: {'ALARM' if result.alarm else 'ok'}\n\n"
        f"{result.rows} predictions, {result.labelled} labelled. "
        f"Drifting: {', '.join(result.drifted_features) or 'none'}.\n\n"
        f"| signal | value | threshold | level | |\n|---|---|---|---|---|\n{rows}\n"
        f"**Retrain {'FIRED' if result.fired else 'suppressed'}**: {result.reason}\n\n{retrain}"
        f"Report: `{result.report['html']}`\n"
    )


def alert(result: dict, logger: logging.Logger | logging.LoggerAdapter) -> str | None:
    """A log line on every pass (a warning on an alarm); on an alarm, a POST to $RETRAINER_ALERT_WEBHOOK if set."""
    (logger.warning if result["alarm"] else logger.info)(_headline(result))
    url = os.environ.get(WEBHOOK_ENV)
    if not url or not result["alarm"]:
        return None
    error = store.post_webhook(url, {k: v for k, v in result.items() if k not in ("details", "alert")})
    if error:
        logger.error("alert webhook failed: %s", error)
        return f"failed: {error}"
    return "sent"


def monitor_pass(
    params: Params,
    workspace: Workspace,
    retrain: Retrain,
    now: datetime | None = None,
    log: logging.Logger | logging.LoggerAdapter = _log,
) -> MonitorResult:
    """Assess the champion's logged traffic, write the report and latest figures, decide and maybe start a retrain.

    `retrain(root)` is called only when the trigger fires (the flow passes the inbox drain); its failure is reported
    in the result, not raised. `now` (default: the clock) places the pass in time for the window and the cooldown.
    """
    from retrainer.io import registry
    from retrainer.io.tracking import connect

    now = now or datetime.now(UTC)
    connect(workspace.root)
    name = params.tracking.registered_model
    version = registry.alias_version(name, registry.CHAMPION)
    base = MonitorResult(MonitorStatus.OK, now.isoformat(timespec="seconds"), name, version)
    try:
        if version is None:
            raise LookupError("no champion to monitor")
        profile = store.load_profile(name, version)
    except LookupError as exc:
        log.warning("monitor %s: nothing to monitor: %s", name, exc)
        status = MonitorStatus.NO_CHAMPION if version is None else MonitorStatus.NO_PROFILE
        return dataclasses.replace(base, status=status, reason=str(exc))
    result = assess_and_decide(params, workspace, profile, base, now)
    result = dataclasses.replace(result, alert=alert(result.to_dict(), log))
    if result.fired:
        result = dataclasses.replace(result, retrain=start_retrain(retrain, workspace.root, log))
    store.write_latest(workspace.home, result.to_dict())
    return result


def assess_and_decide(
    params: Params, workspace: Workspace, profile: dict, base: MonitorResult, now: datetime
) -> MonitorResult:
    """Assess the window of served traffic, decide the trigger, write the drift report; the pass's figures."""
    from retrainer.io.drift_report import write_drift_report

    config = params.monitor
    since = (now - timedelta(hours=config.window.hours)).isoformat(timespec="milliseconds")
    numeric, categorical = params.features.numeric, params.features.categorical
    window = store.read_window(
        workspace.prediction_log, base.model_version, since, config.window.max_predictions, numeric, categorical
    )
    assessment = assess_window(profile, window.features, window.proba, window.labels, window.labelled_proba, config)
    decision, pending = decide(params, workspace, assessment, base, now)
    details = {
        **{k: getattr(base, k) for k in ("time", "model_name", "model_version")},
        "window": {"since": since, "first": window.first_time, "last": window.last_time},
        "assessment": assessment,
        "thresholds": config.drift.model_dump() | {"performance": config.performance.model_dump()},
        "decision": decision.to_dict(),
        "pending": {"batches": pending[0], "labelled_rows": pending[1]},
    }
    folder = store.monitor_dir(workspace.home) / "reports" / now.strftime("%Y%m%dT%H%M%S%fZ")
    report = write_drift_report(details, profile, window.features, folder)
    return dataclasses.replace(
        base,
        rows=assessment["rows"],
        labelled=assessment["labelled"],
        alarm=assessment["alarm"],
        level=assessment["level"],
        drift_share=assessment["drift_share"],
        drifted_features=assessment["drifted_features"][:TOP_FEATURES],
        prediction_psi=(assessment["prediction"] or {}).get("psi"),
        rolling_auc=assessment["performance"]["roc_auc"],
        reference_auc=profile["metrics"].get("roc_auc"),
        fired=decision.fired,
        reason=decision.reason,
        report={k: str(v) for k, v in report.items()},
        details=details,
    )


def decide(
    params: Params, workspace: Workspace, assessment: dict, base: MonitorResult, now: datetime
) -> tuple[TriggerDecision, tuple[int, int]]:
    """Decide the retrain trigger under the trigger lock; save its state and append the decision to the record.

    Returns the decision and the (batches, labelled rows) waiting in the inbox.
    """
    from filelock import FileLock

    from retrainer.io.batch_record_pg import open_batch_record

    home = workspace.home
    store.monitor_dir(home).mkdir(parents=True, exist_ok=True)
    with FileLock(str(store.monitor_dir(home) / "trigger.lock"), timeout=60):
        inbox, record = workspace.path(params.retrain.inbox_dir), open_batch_record(workspace.batch_record)
        pending = store.count_pending(inbox, record, params.data.target.column)
        decision = decide_trigger(
            alarm=assessment["alarm"],
            level=assessment["level"],
            alarm_reasons=assessment["reasons"],
            state=store.load_trigger_state(home),
            now=now,
            champion_version=base.model_version,
            pending_batches=pending[0],
            pending_labelled_rows=pending[1],
            config=params.monitor.trigger,
        )
        store.save_trigger_state(home, decision.state)
        store.append_decision(home, decision_entry(base, assessment, pending, decision))
    return decision, pending


def decision_entry(base: MonitorResult, assessment: dict, pending: tuple[int, int], decision: TriggerDecision) -> dict:
    """One line of the decision record: the signals, what was waiting, and the trigger's decision."""
    return {
        "time": base.time,
        "model_version": base.model_version,
        "alarm": assessment["alarm"],
        "level": assessment["level"],
        "signals": {k: s["value"] for k, s in assessment["signals"].items()},
        "pending_batches": pending[0],
        "pending_labelled_rows": pending[1],
        **decision.to_dict(),
    }


def start_retrain(retrain: Retrain, root: Path, log: logging.Logger | logging.LoggerAdapter) -> list[dict]:
    """Start the retrain a fired trigger asks for; a failure is reported in the summary, not raised."""
    try:
        return summarise_retrain(retrain(root))
    except Exception as exc:  # the decision stands and is recorded; the failure is reported, not hidden
        log.error("retrain started by the monitor failed: %s", exc)
        return [{"status": str(CycleStatus.FAILED), "reason": str(exc)[:2000]}]
