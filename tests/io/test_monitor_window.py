"""The prediction log keeps each prediction's model inputs, and the monitor reads its window back from it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrainer.io.monitoring import read_window
from retrainer.serving.prediction_log import PredictionLog, RequestLog, new_request_key
from retrainer.serving.replay import read_arm

NUMERIC, CATEGORICAL = ("temp", "plane_year"), ("carrier",)


def _request(start: int, n: int, version: str, time: str, features: pd.DataFrame | None = None) -> RequestLog:
    """Predictions start..start+n-1 of one request by `version` (as champion), with probability i / 100."""
    return RequestLog(
        key=new_request_key(),
        time=time,
        latency_ms=1.0,
        versions={"champion": version},
        arms=["champion"] * n,
        probabilities=[i / 100 for i in range(start, start + n)],
        labels=[i % 2 for i in range(start, start + n)],
        records=[{"i": i} for i in range(start, start + n)],
        features=features,
    )


def _features(start: int, n: int) -> pd.DataFrame:
    index = np.arange(start, start + n)
    return pd.DataFrame(
        {
            "temp": index.astype("float64"),
            "plane_year": pd.array([2000 + i if i % 3 else None for i in index], dtype="Int64"),
            "carrier": pd.Series(["UA" if i % 2 else None for i in index], dtype="str"),
        }
    )


@pytest.fixture
def log(tmp_path):
    opened = PredictionLog(tmp_path / "predictions.db", NUMERIC, CATEGORICAL)
    yield opened
    opened.close()


def test_features_are_written_with_their_predictions_and_read_back_typed(log, tmp_path):
    request = _request(0, 6, "1", "2013-03-01T10:00:00.000+00:00", _features(0, 6))
    log.record(request)
    log.record_feedback(request.ids[4], 1, "2013-03-02T00:00:00+00:00")

    window = read_window(tmp_path / "predictions.db", "1", "2013-03-01", 100, NUMERIC, CATEGORICAL)
    frame = window.features.sort_values("temp").reset_index(drop=True)
    assert frame["temp"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert frame["plane_year"].isna().tolist() == [True, False, False, True, False, False]
    assert frame["carrier"].astype(object).where(frame["carrier"].notna(), None).tolist() == [
        None,
        "UA",
        None,
        "UA",
        None,
        "UA",
    ]
    assert window.labels.tolist() == [1] and window.labelled_proba.tolist() == [0.04]


def test_the_window_keeps_one_version_after_a_time_and_only_the_newest_rows(log, tmp_path):
    log.record(_request(0, 4, "1", "2013-03-01T10:00:00.000+00:00", _features(0, 4)))
    log.record(_request(4, 4, "1", "2013-03-02T10:00:00.000+00:00", _features(4, 4)))
    log.record(_request(8, 4, "2", "2013-03-03T10:00:00.000+00:00", _features(8, 4)))
    path = tmp_path / "predictions.db"

    newest = read_window(path, "1", "2013-03-01", 4, NUMERIC, CATEGORICAL)
    assert sorted(newest.features["temp"]) == [4.0, 5.0, 6.0, 7.0]
    assert newest.first_time == newest.last_time == "2013-03-02T10:00:00.000+00:00"
    recent = read_window(path, "1", "2013-03-02", 100, NUMERIC, CATEGORICAL)
    assert sorted(recent.features["temp"]) == [4.0, 5.0, 6.0, 7.0]
    assert len(read_window(path, "1", "2013-03-01", 100, NUMERIC, CATEGORICAL).proba) == 8
    assert len(read_window(path, "2", "", 100, NUMERIC, CATEGORICAL).proba) == 4
    assert len(read_window(path, "3", "", 100, NUMERIC, CATEGORICAL).proba) == 0


def test_a_log_from_before_feature_logging_reads_as_no_features(tmp_path):
    old = PredictionLog(tmp_path / "predictions.db")
    old.record(_request(0, 2, "1", "2013-03-01T10:00:00.000+00:00"))
    old.close()
    window = read_window(tmp_path / "predictions.db", "1", "", 100, NUMERIC, CATEGORICAL)
    assert len(window.proba) == 2 and window.features.empty


def test_a_feature_added_to_params_becomes_a_new_column(tmp_path):
    PredictionLog(tmp_path / "predictions.db", ("temp",), ()).close()
    log = PredictionLog(tmp_path / "predictions.db", NUMERIC, CATEGORICAL)
    log.record(_request(0, 2, "1", "2013-03-01T10:00:00.000+00:00", _features(0, 2)))
    log.close()
    window = read_window(tmp_path / "predictions.db", "1", "", 100, NUMERIC, CATEGORICAL)
    assert list(window.features.columns) == [*NUMERIC, *CATEGORICAL]


def test_a_split_request_is_read_row_by_row_by_the_version_and_arm_that_served_each(log, tmp_path):
    arms = ["champion", "challenger", "challenger", "champion", "challenger"]
    split = RequestLog(
        key=new_request_key(),
        time="2013-03-05T10:00:00.000+00:00",
        latency_ms=2.0,
        versions={"champion": "1", "challenger": "2"},
        arms=arms,
        probabilities=[0.0, 0.1, 0.2, 0.3, 0.4],
        labels=[0, 0, 0, 1, 1],
        records=[{"i": i} for i in range(5)],
        features=_features(0, 5),
    )
    log.record(split)
    for position, label in [(0, 1), (2, 0), (4, 1)]:
        log.record_feedback(split.ids[position], label, "2013-03-06T00:00:00+00:00")
    path = tmp_path / "predictions.db"

    challenger = read_window(path, "2", "", 100, NUMERIC, CATEGORICAL)
    assert challenger.proba.tolist() == [0.1, 0.2, 0.4]
    assert challenger.features["temp"].tolist() == [1.0, 2.0, 4.0]
    assert challenger.labelled_proba.tolist() == [0.2, 0.4] and challenger.labels.tolist() == [0, 1]
    newest_two = read_window(path, "2", "", 2, NUMERIC, CATEGORICAL)
    assert newest_two.proba.tolist() == [0.1, 0.2] and newest_two.labels.tolist() == [0]

    champion = read_arm(path, "champion", "1", "2013-03-05")
    assert champion.probabilities == [0.0, 0.3] and champion.latencies_ms == [2.0, 2.0]
    assert champion.feedback_labels == [1] and champion.feedback_probabilities == [0.0]
    assert read_arm(path, "champion", "2", "").probabilities == [], "v2 never served as champion"
    assert read_arm(path, "challenger", "2", "", until="2013-03-05").probabilities == []


def test_reading_a_log_that_does_not_exist_yet_gives_no_rows(tmp_path):
    assert len(read_window(tmp_path / "none.db", "1", "", 100, NUMERIC, CATEGORICAL).proba) == 0
    assert read_arm(tmp_path / "none.db", "champion", "1", "").probabilities == []
