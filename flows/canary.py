"""The canary flow: `retrainer.app.canary.run_canary` as a Prefect flow run, each step published as an artifact."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from retrainer.app.canary import CanaryPlan, StepReport, run_canary
from retrainer.config import CanaryConfig


def publish_step(report: StepReport) -> None:
    """A markdown artifact per step when running as a flow run (calling `canary.fn` directly publishes nothing)."""
    if FlowRunContext.get() is not None:
        step = f"step-{report.index + 1}"
        description = f"canary step {report.index + 1} of v{report.challenger_version}"
        create_markdown_artifact(
            report.to_markdown(), key=f"canary-v{report.challenger_version}-{step}", description=description
        )


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
    """Run the canary of `challenger_version` against `expected_champion` on a running service (see `CanaryPlan`
    and `run_canary`).

    Returns the outcome, the reasons, the service's rollout state and every step's decision, as a dict.
    """
    log = get_run_logger() if FlowRunContext.get() is not None else logging.getLogger("retrainer.canary")
    arguments = (base_url, model_name, challenger_version, expected_champion, traffic, steps, policy, root, home)
    return run_canary(CanaryPlan(*arguments, poll_seconds), on_step=publish_step, log=log).to_dict()
