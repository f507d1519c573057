"""Time-aware training window and holdout: the holdout is always the newest slice."""

from __future__ import annotations

import pandas as pd

from retrainer.config import SplitConfig


def select_window(frame: pd.DataFrame, time_column: str, window_months: int) -> pd.DataFrame:
    """Keep the newest `window_months` calendar months present in the data (0 keeps everything)."""
    if window_months == 0 or frame.empty:
        return frame
    months = frame[time_column].dt.tz_localize(None).dt.to_period("M")
    keep = sorted(months.unique())[-window_months:]
    return frame.loc[months.isin(keep)]


def split_by_time(frame: pd.DataFrame, time_column: str, newest_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (older, newest) at a timestamp so the newest part holds about `newest_fraction` of rows."""
    if len(frame) < 2:
        raise ValueError(f"need at least 2 rows to split by time, got {len(frame)}")
    ordered = frame.sort_values(time_column, kind="stable")
    cut_time = ordered[time_column].iloc[int(len(ordered) * (1 - newest_fraction))]
    older = ordered.loc[ordered[time_column] < cut_time]
    newest = ordered.loc[ordered[time_column] >= cut_time]
    if older.empty or newest.empty:
        raise ValueError(f"all rows share one timestamp near the cut at {cut_time}: cannot split by time")
    return older.reset_index(drop=True), newest.reset_index(drop=True)


def make_train_holdout(frame: pd.DataFrame, time_column: str, config: SplitConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the training window, then hold out the newest slice."""
    window = select_window(frame, time_column, config.window_months)
    return split_by_time(window, time_column, config.holdout_fraction)
