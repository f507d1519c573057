"""Pure steps: functions over DataFrames, estimators and metric dicts. No paths, no tracking, no HTTP."""
