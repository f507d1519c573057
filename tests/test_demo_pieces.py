"""The demo's printed pieces: a table row from a cycle result, a monitoring pass's lines, stderr kept off the table."""

from __future__ import annotations

import contextlib
import logging
import sys

from retrainer.app.monitor import MonitorResult
from retrainer.app.results import CycleResult
from retrainer.demo import AppendingFile, monitor_lines, month_row
from retrainer.outcomes import CycleStatus, MonitorStatus

GATE = {"checks": [{"name": "improvement:roc_auc", "values": {"ci_low": 0.055, "ci_high": 0.073}}]}


def test_a_row_shows_the_versions_the_figures_the_interval_and_the_first_reason():
    result = CycleResult(
        CycleStatus.PROMOTED,
        ["passed", "second reason"],
        batch="flights-2013-08.csv",
        challenger_version="3",
        champion_version="3",
        metrics={"challenger": {"roc_auc": 0.7061, "rows": 16878}, "champion": {"roc_auc": 0.642}},
        gate=GATE,
    )
    assert month_row(8, result, 95.6) == [
        "2013-08",
        "16,878",
        "v3",
        "0.706",
        "0.642",
        "[+0.055, +0.073]",
        "PROMOTED",
        "v3",
        "96s",
        "passed",
    ]


def test_a_failed_cycle_without_figures_still_makes_a_row():
    row = month_row(5, CycleResult(CycleStatus.FAILED, []), 0.0)
    assert row == ["2013-05", "-", "v-", "-", "-", "-", "FAILED", "v-", "0s", ""]


def test_a_pass_with_nothing_to_monitor_is_one_line():
    result = MonitorResult(MonitorStatus.NO_CHAMPION, "t", "m", None, reason="no champion to monitor")
    assert monitor_lines(result) == ["monitor: no champion: no champion to monitor"]


def test_what_libraries_print_during_a_flow_goes_to_the_log_file_and_a_handler_bound_then_keeps_working(tmp_path):
    path = tmp_path / "logs" / "flows.log"
    with contextlib.redirect_stderr(AppendingFile(path)):
        print("Registered model 'm' already exists", file=sys.stderr)
        handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("test-demo-pieces")
    logger.addHandler(handler)
    try:
        logger.error("after the flow")
    finally:
        logger.removeHandler(handler)
    assert path.read_text().splitlines() == ["Registered model 'm' already exists", "after the flow"]
