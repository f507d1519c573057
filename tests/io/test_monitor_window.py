"""The prediction log keeps each prediction's model inputs, and the monitor reads its window back from it."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from retrainer.io.monitoring import read_window
from retrainer.serving.prediction_log import FEATURES_TABLE, LoggedPrediction, PredictionLog

NUMERIC, CATEGORICAL = ("temp", "plane_year"), ("carrier",)


def _rows(start: int, n: int, version: str, time: str) -> list[LoggedPrediction]:
    return [
        LoggedPrediction(f"id-{i}", time, "champion", version, "digest", i / 100, int(i % 2), 1.0)
        for i in range(start, start + n)
    ]


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
    log.record(_rows(0, 6, "1", "2013-03-01T10:00:00.000+00:00"), features=_features(0, 6))
    log.record_feedback("id-4", 1, "2013-03-02T00:00:00+00:00")

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


def test_a_failing_feature_insert_rolls_back_the_predictions_too(log, tmp_path):
    with pytest.raises(ValueError):
        log.record(_rows(0, 3, "1", "2013-03-01T10:00:00.000+00:00"), features=_features(0, 2))
    with sqlite3.connect(tmp_path / "predictions.db") as db:
        assert db.execute("SELECT COUNT(*) FROM predictions").fetchone() == (0,)
        assert db.execute(f"SELECT COUNT(*) FROM {FEATURES_TABLE}").fetchone() == (0,)


def test_the_window_keeps_one_version_after_a_time_and_only_the_newest_rows(log, tmp_path):
    log.record(_rows(0, 4, "1", "2013-03-01T10:00:00.000+00:00"), features=_features(0, 4))
    log.record(_rows(4, 4, "1", "2013-03-02T10:00:00.000+00:00"), features=_features(4, 4))
    log.record(_rows(8, 4, "2", "2013-03-03T10:00:00.000+00:00"), features=_features(8, 4))
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
    old.record(_rows(0, 2, "1", "2013-03-01T10:00:00.000+00:00"))
    old.close()
    window = read_window(tmp_path / "predictions.db", "1", "", 100, NUMERIC, CATEGORICAL)
    assert len(window.proba) == 2 and window.features.empty


def test_a_feature_added_to_params_becomes_a_new_column(tmp_path):
    PredictionLog(tmp_path / "predictions.db", ("temp",), ()).close()
    log = PredictionLog(tmp_path / "predictions.db", NUMERIC, CATEGORICAL)
    log.record(_rows(0, 2, "1", "2013-03-01T10:00:00.000+00:00"), features=_features(0, 2))
    log.close()
    window = read_window(tmp_path / "predictions.db", "1", "", 100, NUMERIC, CATEGORICAL)
    assert list(window.features.columns) == [*NUMERIC, *CATEGORICAL]
