"""The prediction log's cost: the writer thread's time per request, and reading a monitoring window back.

Set-up (not timed): real February 2013 flights, their features built by the service's FeatureBuilder, scored with
made-up probabilities (the log does not care), in a temporary folder.
Timed, in one run:
  log          `PredictionLog.record` (what the service's writer thread does per request: input digests, JSON, one
               insert), for 200 requests of 1,000 predictions and 2,000 single-prediction requests;
  baseline     the layout it replaced, measured here with the same data: one row per prediction in a predictions
               table (id, time and arm indexes as the service had them) and one in a typed features table, both
               inserted with executemany in one transaction, digests computed the same way;
  read-back    `read_predictions` (what the monitor and the canary read) of the newest 200,000 predictions with their
               21 features, and of the newest 2,000 single-prediction requests.
The log file is pre-filled with 50,000 predictions in each layout first, so that inserts land in grown indexes.

Run: .venv/bin/python bench/prediction_log_bench.py   (prints figures, writes bench/results/prediction_log.json;
asserts nothing about time).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
BATCH, N_BATCHES, N_SINGLES, PREFILL = 1_000, 200, 2_000, 50
STAMP = "2013-02-01T05:00:00.000+00:00"


class RowPerPrediction:
    """The replaced layout, for comparison only: a predictions row and a features row per prediction."""

    def __init__(self, path: Path, numeric: list[str], categorical: list[str]):
        self.names = [*numeric, *categorical]
        self.conn = sqlite3.connect(str(path), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(
            "CREATE TABLE predictions (id TEXT PRIMARY KEY, time TEXT, arm TEXT, model_version TEXT, "
            "features_digest TEXT, probability REAL, label INTEGER, latency_ms REAL);"
            "CREATE INDEX predictions_time ON predictions(time);"
            "CREATE TABLE features (prediction_id TEXT PRIMARY KEY, "
            + ", ".join(f'"{n}" {"REAL" if n in numeric else "TEXT"}' for n in self.names)
            + ") WITHOUT ROWID;"
        )
        self.insert_features = f"INSERT INTO features VALUES ({', '.join('?' * (len(self.names) + 1))})"

    def record(self, request) -> None:
        from retrainer.serving.prediction_log import features_digest

        ids, n = request.ids, request.size
        digests = [features_digest(r) for r in request.records]
        rows = zip(
            ids, [request.time] * n, request.arms, ["1"] * n, digests, request.probabilities, request.labels,
            [request.latency_ms] * n, strict=True,
        )  # fmt: skip
        cells = [np.asarray(request.features[name]).tolist() for name in self.names]
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", list(rows))
        self.conn.executemany(self.insert_features, list(zip(ids, *cells, strict=True)))
        self.conn.execute("COMMIT")


def requests_of(builder, records: list[dict], size: int, count: int, rng: np.random.Generator) -> list:
    """`count` requests of `size` real flights each (cycling through `records`), as the runtime hands them over."""
    from retrainer.serving.prediction_log import RequestLog, new_request_key

    out = []
    for i in range(count):
        start = (i * size) % (len(records) - size)
        part = records[start : start + size]
        proba = rng.random(size).tolist()
        out.append(
            RequestLog(
                key=new_request_key(),
                time=STAMP,
                latency_ms=3.0,
                versions={"champion": "1"},
                arms=["champion"] * size,
                probabilities=proba,
                labels=[int(p >= 0.5) for p in proba],
                records=part,
                features=builder.columns(part),
            )
        )
    return out


def median_ms(call, requests: list) -> float:
    times = []
    for request in requests:
        tick = time.perf_counter()
        call(request)
        times.append(time.perf_counter() - tick)
    return round(float(np.median(times)) * 1000, 4)


def february_records() -> tuple:
    """(params, the service's FeatureBuilder, 20,000 real February flights as validated request records): what both
    log benches build their requests from."""
    import pandas as pd

    from retrainer.config import load_params
    from retrainer.serving.features import FeatureBuilder, load_references
    from retrainer.serving.schema import record_schema

    params = load_params(ROOT / "params.yaml")
    builder = FeatureBuilder(params, load_references(params, ROOT))
    flights = pd.read_parquet(ROOT / "seeds" / "flights.parquet")
    outcomes = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]
    february = flights.loc[flights["month"] == 2].drop(columns=outcomes).head(20_000)
    records = record_schema(params).json_records(json.loads(february.to_json(orient="records", date_format="iso")))
    return params, builder, records


def main() -> None:

    from retrainer.serving.log_store import read_predictions
    from retrainer.serving.prediction_log import PredictionLog

    params, builder, records = february_records()
    numeric, categorical = list(params.features.numeric), list(params.features.categorical)
    rng = np.random.default_rng(5)
    folder = Path(tempfile.mkdtemp(prefix="retrainer-log-bench-"))
    try:
        log = PredictionLog(folder / "requests.db", numeric, categorical)
        baseline = RowPerPrediction(folder / "rows.db", numeric, categorical)
        for request in requests_of(builder, records, BATCH, PREFILL, rng):
            log.record(request)
            baseline.record(request)
        batches = requests_of(builder, records, BATCH, N_BATCHES, rng)
        singles = requests_of(builder, records, 1, N_SINGLES, rng)
        print(f"writing {N_BATCHES} x {BATCH:,}-prediction and {N_SINGLES:,} single requests, each layout ...")
        figures = {
            "write_1000_ms_median": median_ms(log.record, batches),
            "write_1000_ms_median_row_per_prediction": median_ms(baseline.record, batches[::-1]),
            "write_single_ms_median": median_ms(log.record, singles),
            "write_single_ms_median_row_per_prediction": median_ms(baseline.record, singles[::-1]),
        }
        figures["write_1000_speedup"] = round(
            figures["write_1000_ms_median_row_per_prediction"] / figures["write_1000_ms_median"], 2
        )
        figures["write_single_speedup"] = round(
            figures["write_single_ms_median_row_per_prediction"] / figures["write_single_ms_median"], 2
        )
        log.close()
        baseline.conn.close()
        predictions = (PREFILL + N_BATCHES) * BATCH + N_SINGLES
        for name, path in (("", "requests.db"), ("_row_per_prediction", "rows.db")):
            size = sum(f.stat().st_size for f in folder.glob(path + "*"))
            figures[f"log_bytes_per_prediction{name}"] = round(size / predictions)
        tick = time.perf_counter()
        window = read_predictions(
            folder / "requests.db", "1", "", max_rows=200_000, numeric=numeric, categorical=categorical
        )
        figures["read_newest_200k_with_features_seconds"] = round(time.perf_counter() - tick, 3)
        tick = time.perf_counter()
        newest = read_predictions(
            folder / "requests.db", "1", "", max_rows=N_SINGLES, numeric=numeric, categorical=categorical
        )
        figures["read_newest_2000_single_requests_seconds"] = round(time.perf_counter() - tick, 4)
        assert len(window.probability) == 200_000 and len(newest.probability) == N_SINGLES
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_results("prediction_log", figures, sqlite=sqlite3.sqlite_version)


if __name__ == "__main__":
    main()
