"""The demo's printed pieces: a table row from a cycle result, a monitoring pass's lines, stderr kept off the table."""

from __future__ import annotations

import contextlib
import logging
import sys

import pandas as pd
import pytest

from retrainer.app.monitor import MonitorResult
from retrainer.app.results import CycleResult
from retrainer.demo import (
    AppendingFile,
    DemoData,
    batch_month,
    demo_tracking_uri,
    monitor_lines,
    month_row,
    select_months,
    serving_line,
)
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
    assert month_row(pd.Period("2013-08", "M"), result, 95.6) == [
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
    row = month_row(pd.Period("2013-05", "M"), CycleResult(CycleStatus.FAILED, []), 0.0)
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


FLIGHT_MONTHS = list(pd.period_range("2013-03", "2013-12", freq="M"))
LOAN_MONTHS = list(pd.period_range("2018-11", "2019-08", freq="M"))


@pytest.mark.parametrize(
    ("spec", "available", "expected"),
    [
        (None, FLIGHT_MONTHS, FLIGHT_MONTHS),
        ("3-12", FLIGHT_MONTHS, FLIGHT_MONTHS),
        ("5", FLIGHT_MONTHS, [pd.Period("2013-05", "M")]),
        ("2013-04..2013-06", FLIGHT_MONTHS, FLIGHT_MONTHS[1:4]),
        ("2018-12..2019-02", LOAN_MONTHS, LOAN_MONTHS[1:4]),
        ("2019-08", LOAN_MONTHS, [pd.Period("2019-08", "M")]),
        ("11-12", LOAN_MONTHS, LOAN_MONTHS[:2]),
    ],
)
def test_months_are_chosen_among_the_data_months_after_the_bootstrap(spec, available, expected):
    assert select_months(spec, available) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("march", "must look like 3-12 or 2013-03..2013-12, got 'march'"),
        ("1-3", "2013-01, 2013-02 not among the data's months 2013-03..2013-12"),
        ("2014-01..2014-02", "2014-01, 2014-02 not among"),
        ("2013-06..2013-05", r"names no month \(is the first after the last\?\)"),
    ],
)
def test_months_outside_the_data_are_refused_naming_them(spec, message):
    with pytest.raises(ValueError, match=message):
        select_months(spec, FLIGHT_MONTHS)


def test_a_months_batch_and_traffic_are_cut_on_the_time_column_and_named_after_the_dataset(tmp_path):
    times = pd.to_datetime(
        ["2019-06-30T23:59:59Z", "2019-07-01T00:00:00Z", "2019-07-31T23:00:00Z", "2019-08-02T00:00:00Z"]
    )
    seed = tmp_path / "loans.parquet"
    pd.DataFrame({"id": [1, 2, 3, 4], "ts": times}).to_parquet(seed)
    data = DemoData(seed, "ts", "car_loan", pd.Period("2019-08", "M"))
    batch = data.write_batch(pd.Period("2019-07", "M"), tmp_path / "inbox")
    assert batch.name == "car_loan-2019-07.csv"
    assert pd.read_csv(batch).to_dict("list") == {"id": [2, 3], "ts": ["2019-07-01T00:00:00Z", "2019-07-31T23:00:00Z"]}
    traffic = data.write_traffic(pd.Period("2019-08", "M"), tmp_path, "serve")
    assert traffic.name == "serve-2019-08.csv" and pd.read_csv(traffic)["id"].tolist() == [4]
    assert batch_month(batch.name, pd.Period("2000-01", "M")) == pd.Period("2019-07", "M")
    assert batch_month("other.csv", pd.Period("2000-01", "M")) == pd.Period("2000-01", "M")


def test_a_trailing_month_too_small_to_be_a_batch_is_left_to_the_month_before(tmp_path):
    from retrainer.demo import data_months

    july = pd.date_range("2019-07-01", "2019-07-31", periods=600, tz="UTC")
    times = july.append(pd.DatetimeIndex(["2019-08-01T01:00Z", "2019-08-01T02:00Z"]))
    seed = tmp_path / "seed.parquet"
    pd.DataFrame({"ts": times}).to_parquet(seed)
    assert data_months(seed, "ts", "2019-06-01") == [pd.Period("2019-07", "M"), pd.Period("2019-08", "M")]
    assert data_months(seed, "ts", "2019-06-01", min_rows=500) == [pd.Period("2019-07", "M")]
    data = DemoData(seed, "ts", "x", pd.Period("2019-07", "M"))
    assert len(data.month_rows(pd.Period("2019-07", "M"))) == 602


def test_the_demo_keeps_its_mlflow_store_in_the_team_database_when_one_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    monkeypatch.delenv("RETRAINER_DATABASE_URL", raising=False)
    assert demo_tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("RETRAINER_DATABASE_URL", "postgresql://db-host:5432/team")
    assert demo_tracking_uri(tmp_path) == "postgresql://db-host:5432/team"


def test_the_serving_line_names_the_proxy_and_what_each_replica_answered_by_arm():
    first, second = "http://127.0.0.1:4001", "http://127.0.0.1:4002"
    answered = {first: {"champion": 1200, "challenger": 310}, second: {"champion": 7}}
    assert serving_line("http://127.0.0.1:4000", answered) == (
        "serving: through HAProxy at http://127.0.0.1:4000 to 2 replicas; prediction requests each answered (its "
        "/metrics, by arm): http://127.0.0.1:4001 1,510 (challenger 310, champion 1,200); "
        "http://127.0.0.1:4002 7 (champion 7)"
    )
