"""The monitor flow: one monitoring pass as a Prefect flow run; a fired trigger drains the inbox into a retrain."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.retrain import drain_inbox
from retrainer.app.monitor import MonitorResult, format_markdown, monitor_pass
from retrainer.io.project import Workspace
from retrainer.outcomes import MonitorStatus


def publish_artifacts(result: MonitorResult) -> None:
    """The pass as Prefect artifacts: the summary, an alert on an alarm, a link to the HTML drift report."""
    markdown = format_markdown(result)
    create_markdown_artifact(markdown, key="monitor-report", description="drift and performance of the champion")
    if result.alarm:
        create_markdown_artifact(markdown, key="monitor-alert", description="monitoring alarm")
    if result.status == MonitorStatus.OK:
        link = Path(result.report["html"]).as_uri()
        create_link_artifact(link, link_text="drift report (HTML)", key="monitor-report-link")


@flow(name="monitor", log_prints=True)
def monitor(root: str = ".", now: datetime | None = None, canary_traffic: str | None = None) -> dict:
    """One monitoring pass (see `retrainer.app.monitor.monitor_pass`); a fired trigger runs the drain-inbox flow.

    `now` (default: the clock) places the pass in time: a replay can pass its simulated clock. `canary_traffic` is
    handed to the retrain it may start (a raw batch file replayed during the canary; demo, tests).
    """
    workspace = Workspace.at(root)

    def retrain(folder: Path) -> list[dict]:
        return drain_inbox(root=str(folder), canary_traffic=canary_traffic)

    result = monitor_pass(workspace.load_params(), workspace, retrain, now=now, log=get_run_logger())
    publish_artifacts(result)
    return result.to_dict()
