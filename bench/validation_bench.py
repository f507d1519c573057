"""Time the GX batch suite on 1,000,000 upsampled seed flights against plain pandas doing the same checks, and the
batch reader (missing cells, trimming, ISO 8601 times, bare-record and missing-text scans) against a plain
`pandas.read_csv` of the same CSV file.

Run: .venv/bin/python bench/validation_bench.py   (prints figures, writes bench/results/validation.json;
asserts nothing about time).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
ROWS = 1_000_000
REPEATS = 3


def upsample_flights(flights: pd.DataFrame, rows: int) -> pd.DataFrame:
    """Seed flights repeated with the year (and timestamps) shifted, so the flight key stays unique."""
    copies = []
    for shift in range(-(-rows // len(flights))):
        copy = flights.copy()
        copy["year"] = copy["year"] + shift
        copy["time_hour"] = copy["time_hour"] + pd.DateOffset(years=shift)
        copies.append(copy)
    return pd.concat(copies, ignore_index=True).iloc[:rows].reset_index(drop=True)


def check_with_pandas(frame: pd.DataFrame, params, trained_until: pd.Timestamp) -> dict[str, bool]:
    """The suite's checks written directly in pandas: the baseline GX is compared with."""
    from retrainer.steps.validate import match_dtype_kind

    config, data = params.validate, params.data
    out = {"columns": set(config.columns) <= set(frame.columns)}
    for name, rule in config.columns.items():
        out[f"types.{name}"] = match_dtype_kind(frame[name].dtype, rule.kind)
        if not rule.nullable:
            out[f"not_null.{name}"] = not frame[name].isna().any()
        if rule.kind in ("integer", "number"):
            out[f"finite.{name}"] = not np.isinf(frame[name].to_numpy(dtype="float64", na_value=np.nan)).any()
    for name, rng in config.ranges.items():
        values = frame[name].dropna()
        ok = pd.Series(True, index=values.index)
        if rng.min is not None:
            ok &= values > rng.min if rng.strict_min else values >= rng.min
        if rng.max is not None:
            ok &= values < rng.max if rng.strict_max else values <= rng.max
        out[f"ranges.{name}"] = bool(ok.all())
    for name, cat in config.categories.items():
        out[f"categories.{name}"] = bool(frame[name].dropna().isin(cat.values).all())
    out["unique_key"] = not frame.duplicated(list(data.key_columns)).any()
    out["row_count"] = config.row_count.min <= len(frame) <= config.row_count.max
    out["freshness"] = bool(frame[data.time_column].min() > trained_until)
    target = frame[data.target.column]
    out["labelled_share"] = float(target.notna().mean()) >= config.label.min_labelled_share
    rate = float((target.dropna() > data.target.threshold).mean())
    out["positive_rate"] = config.label.positive_rate.min <= rate <= config.label.positive_rate.max
    return out


def time_reading(frame: pd.DataFrame, params) -> tuple[list[float], list[float]]:
    """Seconds to read the frame back from a CSV file: the batch reader, and plain pandas.read_csv."""
    from retrainer.io.batch_files import read_batch_file, read_options

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "batch.csv"
        frame.assign(time_hour=frame["time_hour"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
        unlimited = params.validate.model_copy(update={"max_file_mb": 1e4})
        options = read_options(params.model_copy(update={"validate": unlimited}))
        reader_times, _ = time_call(lambda: read_batch_file(path, options))
        pandas_times, _ = time_call(lambda: pd.read_csv(path))
    return reader_times, pandas_times


def time_call(fn, repeats: int = REPEATS) -> tuple[list[float], object]:
    """Wall seconds of each call, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> None:
    """Measure, print and write the figures."""
    sys.path.insert(0, str(ROOT / "src"))
    from retrainer.config import load_params
    from retrainer.steps import validate as steps

    params = load_params(ROOT / "params.yaml")
    flights = pd.read_parquet(ROOT / "seeds" / "flights.parquet")
    frame = upsample_flights(flights, ROWS)
    trained_until = pd.Timestamp("2012-12-31", tz="UTC")

    start = time.perf_counter()
    runner = steps.create_suite_runner(params.validate, params.data)
    setup_s = time.perf_counter() - start

    gx_times, result = time_call(lambda: runner.run(frame, trained_until))
    summary = steps.summarise_checks(steps.extract_check_results(result), frame.columns)
    pandas_times, pandas_result = time_call(lambda: check_with_pandas(frame, params, trained_until))

    import scipy.stats  # noqa: F401  (imported before timing: the first import costs seconds)

    reference = flights.loc[flights["month"] <= 10]
    kinds = {name: rule.kind for name, rule in params.validate.columns.items()}
    drift_times, _ = time_call(lambda: steps.measure_drift(reference, frame, params.validate.drift, kinds), 1)

    reader_times, read_csv_times = time_reading(frame, params)
    gx_s, pandas_s = statistics.median(gx_times), statistics.median(pandas_times)
    reader_s, read_csv_s = statistics.median(reader_times), statistics.median(read_csv_times)
    figures = {
        "rows": len(frame),
        "expectations": len(result.results),
        "gx_setup_seconds_incl_import": round(setup_s, 3),
        "gx_suite_seconds_median": round(gx_s, 3),
        "gx_suite_seconds_all": [round(t, 3) for t in gx_times],
        "pandas_seconds_median": round(pandas_s, 3),
        "pandas_seconds_all": [round(t, 3) for t in pandas_times],
        "gx_over_pandas_ratio": round(gx_s / pandas_s, 2),
        "drift_seconds_vs_jan_oct_reference": round(drift_times[0], 3),
        "csv_batch_reader_seconds_median": round(reader_s, 3),
        "csv_pandas_read_csv_seconds_median": round(read_csv_s, 3),
        "csv_reader_over_read_csv_ratio": round(reader_s / read_csv_s, 2),
        "gx_failures": [f["check"] for f in summary.failures],
        "pandas_failures": sorted(k for k, ok in pandas_result.items() if not ok),
        "target_seconds": 2.0,
    }
    out = write_results("validation", figures, great_expectations=__import__("great_expectations").__version__)
    print(
        f"\nGX suite ({figures['expectations']} expectations) on {ROWS:,} rows: {gx_s:.3f} s "
        f"(target 2 s); pandas: {pandas_s:.3f} s; ratio {gx_s / pandas_s:.1f}x\n"
        f"reading it as CSV: batch reader {reader_s:.3f} s, pandas.read_csv {read_csv_s:.3f} s "
        f"({reader_s / read_csv_s:.2f}x) -> {out}"
    )


if __name__ == "__main__":
    main()
