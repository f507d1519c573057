"""Time-aware window and holdout: the holdout is the newest slice and never overlaps training."""

import numpy as np
import pandas as pd
import pytest

from retrainer.config import SplitConfig
from retrainer.steps.split import make_train_holdout, select_window, split_by_time


def _frame(days: int) -> pd.DataFrame:
    times = pd.date_range("2013-01-01", periods=days, freq="D", tz="UTC")
    return pd.DataFrame({"t": times, "x": range(days)}).sample(frac=1, random_state=0)


def test_split_by_time_puts_newest_rows_in_holdout():
    older, newest = split_by_time(_frame(100), "t", 0.2)
    assert len(newest) == 20 and len(older) == 80
    assert older["t"].max() < newest["t"].min()


def test_window_keeps_newest_calendar_months():
    frame = _frame(120)  # Jan..Apr 2013
    kept = select_window(frame, "t", 2)
    assert sorted(kept["t"].dt.month.unique()) == [3, 4]
    assert len(select_window(frame, "t", 0)) == 120


def test_make_train_holdout_applies_window_then_holdout():
    train, holdout = make_train_holdout(
        _frame(120), "t", SplitConfig(window_months=1, holdout_fraction=0.25, validation_fraction=0.1)
    )
    assert set(train["t"].dt.month) | set(holdout["t"].dt.month) == {4}
    assert train["t"].max() < holdout["t"].min()


def test_single_timestamp_cannot_be_split():
    frame = pd.DataFrame({"t": pd.to_datetime(["2013-01-01T00:00Z"] * 10), "x": range(10)})
    with pytest.raises(ValueError, match="share one timestamp"):
        split_by_time(frame, "t", 0.2)


def test_split_of_a_time_ordered_frame_is_views_with_the_same_rows_as_of_a_shuffled_one():
    shuffled = _frame(100)
    ordered = shuffled.sort_values("t")
    older, newest = split_by_time(ordered, "t", 0.2)
    assert np.shares_memory(older["x"].to_numpy(), ordered["x"].to_numpy())
    assert np.shares_memory(newest["x"].to_numpy(), ordered["x"].to_numpy())
    for part, expected in zip((older, newest), split_by_time(shuffled, "t", 0.2), strict=True):
        pd.testing.assert_frame_equal(part, expected)
