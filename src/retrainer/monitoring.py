"""One monitoring pass: the champion's served traffic against its reference profile, alerts, and the retrain trigger."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retrainer.config import Params
from retrainer.io import monitoring as store
from retrainer.io.project import home_dir
from retrainer.steps.monitor import assess_window
from retrainer.steps.trigger import decide_trigger

WEBHOOK_ENV = "RETRAINER_ALERT_WEBHOOK"
TOP_FEATURES = 5

Retrain = Callable[[Path], list[dict]]


def summarise_retrain(results: list[dict]) -> list[dict]:
    """The retrain outcomes a monitoring result keeps: batch, status, versions, first reason."""
    keep = ("batch", "batch_id", "status", "challenger_version", "champion_version")
    return [{**{k: r.get(k) for k in keep}, "reason": (r.get("reasons") or [""])[0]} for r in results]


def _headline(result: dict) -> str:
    decision = "FIRED" if result["fired"] else "suppressed"
    state = "ALARM" if result["alarm"] else "ok"
    return (
        f"monitor {result['model_name']} v{result['model_version']}: {state} "
        f"(drift share {result['drift_share']}, prediction PSI {result['prediction_psi']}, "
        f"rolling AUC {result['rolling_auc']} on {result['labelled']} labels vs {result['reference_auc']}); "
        f"retrain {decision}: {result['reason']}"
    )


def format_result(result: dict) -> str:
    """The pass as a few lines of text for the command line."""
    if result["status"] != "ok":
        return f"monitor: {result['status']}: {result['reason']}"
    lines = [_headline(result), f"  drifting features: {', '.join(result['drifted_features']) or 'none'}"]
    lines += [f"  retrain {r.get('batch') or ''}: {r['status']} ({r['reason']})" for r in result.get("retrain", [])]
    lines.append(f"  report: {result['report']['html']}")
    return "\n".join(lines)


def alert(result: dict, logger: logging.Logger | logging.LoggerAdapter) -> str | None:
    """A log line on every pass (a warning on an alarm); on an alarm, a POST to $RETRAINER_ALERT_WEBHOOK if set."""
    (logger.warning if result["alarm"] else logger.info)(_headline(result))
    url = os.environ.get(WEBHOOK_ENV)
    if not url or not result["alarm"]:
        return None
    payload = {k: v for k, v in result.items() if k != "details"}
    error = store.post_webhook(url, payload)
    if error:
        logger.error("alert webhook failed: %s", error)
        return f"failed: {error}"
    return "sent"


def run_monitor_pass(
    params: Params,
    root: Path,
    retrain: Retrain,
    now: datetime | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict:
    """Assess the champion's logged traffic, write the report and latest figures, decide and maybe start a retrain.

    `retrain(root)` is called only when the trigger fires (the flow passes the inbox drain). Returns the headline
    figures (status, alarm, drift_share, drifted_features, prediction_psi, rolling_auc, fired, reason, report,
    retrain) with every detail under "details".
    """
    from filelock import FileLock

    from retrainer.io import registry
    from retrainer.io.batches import BatchRecord
    from retrainer.io.drift_report import write_drift_report
    from retrainer.io.tracking import connect
    from retrainer.serving.prediction_log import LOG_FILE

    logger = logger or logging.getLogger(__name__)
    now = now or datetime.now(UTC)
    home, config, name = home_dir(root), params.monitor, params.tracking.registered_model
    connect(root)
    version = registry.alias_version(name, registry.CHAMPION)
    base = {"time": now.isoformat(timespec="seconds"), "model_name": name, "model_version": version}
    try:
        if version is None:
            raise LookupError("no champion to monitor")
        profile = store.load_profile(name, version)
    except LookupError as exc:
        logger.warning("monitor %s: nothing to monitor: %s", name, exc)
        status = "no champion" if version is None else "no profile"
        return {**base, "status": status, "alarm": False, "fired": False, "reason": str(exc)}
    since = (now - timedelta(hours=config.window.hours)).isoformat(timespec="milliseconds")
    window = store.read_window(
        home / LOG_FILE,
        version,
        since,
        config.window.max_predictions,
        params.features.numeric,
        params.features.categorical,
    )
    assessment = assess_window(profile, window.features, window.proba, window.labels, window.labelled_proba, config)
    store.monitor_dir(home).mkdir(parents=True, exist_ok=True)
    with FileLock(str(store.monitor_dir(home) / "trigger.lock"), timeout=60):
        pending = store.count_pending(
            root / params.retrain.inbox_dir, BatchRecord(home / "batches.db"), params.data.target.column
        )
        decision = decide_trigger(
            alarm=assessment["alarm"],
            level=assessment["level"],
            alarm_reasons=assessment["reasons"],
            state=store.load_trigger_state(home),
            now=now,
            champion_version=version,
            pending_batches=pending[0],
            pending_labelled_rows=pending[1],
            config=config.trigger,
        )
        store.save_trigger_state(home, decision.state)
        store.append_decision(
            home,
            {
                "time": base["time"],
                "model_version": version,
                "alarm": assessment["alarm"],
                "level": assessment["level"],
                "signals": {k: s["value"] for k, s in assessment["signals"].items()},
                "pending_batches": pending[0],
                "pending_labelled_rows": pending[1],
                **decision.to_dict(),
            },
        )
    performance, prediction = assessment["performance"], assessment["prediction"] or {}
    details = {
        **base,
        "window": {"since": since, "first": window.first_time, "last": window.last_time},
        "assessment": assessment,
        "thresholds": config.drift.model_dump() | {"performance": config.performance.model_dump()},
        "decision": decision.to_dict(),
        "pending": {"batches": pending[0], "labelled_rows": pending[1]},
    }
    folder = store.monitor_dir(home) / "reports" / now.strftime("%Y%m%dT%H%M%S%fZ")
    report = write_drift_report(details, profile, window.features, folder)
    result = {
        **base,
        "status": "ok",
        "rows": assessment["rows"],
        "labelled": assessment["labelled"],
        "alarm": assessment["alarm"],
        "level": assessment["level"],
        "drift_share": assessment["drift_share"],
        "drifted_features": assessment["drifted_features"][:TOP_FEATURES],
        "prediction_psi": prediction.get("psi"),
        "rolling_auc": performance["roc_auc"],
        "reference_auc": profile["metrics"].get("roc_auc"),
        "fired": decision.fired,
        "reason": decision.reason,
        "report": {k: str(v) for k, v in report.items()},
        "details": details,
    }
    result["alert"] = alert(result, logger)
    if decision.fired:
        try:
            result["retrain"] = summarise_retrain(retrain(root))
        except Exception as exc:  # the decision stands and is recorded; the failure is reported, not hidden
            logger.error("retrain started by the monitor failed: %s", exc)
            result["retrain"] = [{"status": "failed", "reason": str(exc)[:2000]}]
    store.write_latest(home, result)
    return result
