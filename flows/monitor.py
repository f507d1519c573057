"""The monitor flow: one pass over the champion's logged traffic; a fired trigger drains the inbox into retrains."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.retrain import drain_inbox, project_params
from retrainer.monitoring import run_monitor_pass


def retrain_from_inbox(root: Path) -> list[dict]:
    """What a fired trigger starts: the drain-inbox flow, on the batches gathered since the last training."""
    return drain_inbox(root=str(root))


def format_markdown(result: dict) -> str:
    """The pass as a Prefect markdown artifact: signals, top drifting features, the trigger decision."""
    if result["status"] != "ok":
        return f"# Monitor: {result['status']}\n\n{result['reason']}\n"
    signals = result["details"]["assessment"]["signals"]
    rows = "".join(
        f"| {name} | {s['value']} | {s['threshold']} | {s['level']} | {'ALARM' if s['alarm'] else 'ok'} |\n"
        for name, s in signals.items()
    )
    retrain = "".join(
        f"- retrain: `{r.get('batch')}` {r['status']} ({r['reason']})\n" for r in result.get("retrain", [])
    )
    return (
        f"# Monitor v{result['model_version']}: {'ALARM' if result['alarm'] else 'ok'}\n\n"
        f"{result['rows']} predictions, {result['labelled']} labelled. "
        f"Drifting: {', '.join(result['drifted_features']) or 'none'}.\n\n"
        f"| signal | value | threshold | level | |\n|---|---|---|---|---|\n{rows}\n"
        f"**Retrain {'FIRED' if result['fired'] else 'suppressed'}**: {result['reason']}\n\n{retrain}"
        f"Report: `{result['report']['html']}`\n"
    )


@flow(name="monitor", log_prints=True)
def monitor(root: str = ".", now: datetime | None = None) -> dict:
    """One monitoring pass; publishes the summary (and an alert on an alarm) as Prefect artifacts.

    `now` (default: the clock) places the pass in time for the window, the cooldown and the records: a replay can
    pass its simulated clock.
    """
    workspace = Path(root).resolve()
    params = project_params(workspace)
    result = run_monitor_pass(params, workspace, retrain_from_inbox, now=now, logger=get_run_logger())
    markdown = format_markdown(result)
    create_markdown_artifact(markdown, key="monitor-report", description="drift and performance of the champion")
    if result.get("alarm"):
        create_markdown_artifact(markdown, key="monitor-alert", description="monitoring alarm")
    if result["status"] == "ok":
        create_link_artifact(
            Path(result["report"]["html"]).as_uri(), link_text="drift report (HTML)", key="monitor-report-link"
        )
    return result
