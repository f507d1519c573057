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
    """Split into (older, newest) at a timestamp so the newest part holds about `newest_fraction` of rows.

    Both parts are row slices of the frame in time order (stable): views that share its memory when the frame is
    already in time order, as the pipeline's frames are, so a split of N rows costs no copy of them.
    """
    if len(frame) < 2:
        raise ValueError(f"need at least 2 rows to split by time, got {len(frame)}")
    ordered = frame if frame[time_column].is_monotonic_increasing else frame.sort_values(time_column, kind="stable")
    times = ordered[time_column]
    cut_time = times.iloc[int(len(ordered) * (1 - newest_fraction))]
    cut = int(times.searchsorted(cut_time, side="left"))
    if cut == 0:
        raise ValueError(f"all rows share one timestamp near the cut at {cut_time}: cannot split by time")
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def make_train_holdout(frame: pd.DataFrame, time_column: str, config: SplitConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the training window, then hold out the newest slice."""
    window = select_window(frame, time_column, config.window_months)
    return split_by_time(window, time_column, config.holdout_fraction)
