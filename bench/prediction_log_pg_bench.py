"""The prediction log on PostgreSQL (RETRAINER_DATABASE_URL) against the embedded SQLite log, in one run.

Set-up (not timed): a PostgreSQL started here the way the tests start it (io/servers.py: initdb + pg_ctl on a free
loopback port, default settings, so `synchronous_commit = on`: a commit returns once the WAL is flushed), and the
data of the two benchmarks this one extends.
Timed, on each backend:
  writer     `record` of 200 requests of 1,000 real February flights (what the service's writer thread does per
             request: input digests, JSON, one insert committed), after 50 such requests as a prefill: the median ms
             per request, and the writer's requests/s over the 200 (one after another, as the one writer thread does);
  monitor    one monitoring pass (`monitor_pass`, in a child process as bench/monitor_bench.py runs it) over 1,000,000
             logged predictions with features and 30 % feedback labels: wall seconds and the child's peak RSS.
The million predictions are written once, through the SQLite log (bench/monitor_bench.py's `build_home`), then
copied row for row (same requests, same JSON, same feedback) into the PostgreSQL tables, so both passes read the
same data; the MLflow store (the champion and its reference profile) stays in SQLite for both, so only the log differs.

Run: .venv/bin/python bench/prediction_log_pg_bench.py   (prints figures, writes bench/results/prediction_log_pg.json;
asserts nothing about time). Needs the PostgreSQL server binaries (apt-get install postgresql) and the `team` extra.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
BATCH, N_BATCHES, PREFILL = 1_000, 200, 50
COPY_ROWS = 20  # requests copied per round trip from SQLite into PostgreSQL (set-up only)


def writer_figures(log, prefill: list, batches: list) -> dict:
    """Median ms per 1,000-prediction request written, and requests/s of one writer over `batches`."""
    for request in prefill:
        log.record(request)
    times = []
    for request in batches:
        tick = time.perf_counter()
        log.record(request)
        times.append(time.perf_counter() - tick)
    return {
        "write_1000_ms_median": round(float(np.median(times)) * 1000, 3),
        "write_1000_ms_p95": round(float(np.percentile(times, 95)) * 1000, 3),
        "writer_requests_per_s": round(len(times) / sum(times), 1),
    }


def measure_writers(folder: Path, url: str) -> dict:
    """The writer figures of the SQLite log (a file in `folder`) and of the PostgreSQL log at `url`."""
    from prediction_log_bench import february_records, requests_of

    from retrainer.serving.prediction_log import PredictionLog, new_request_key
    from retrainer.serving.prediction_log_pg import PostgresPredictionLog

    params, builder, records = february_records()
    numeric, categorical = list(params.features.numeric), list(params.features.categorical)
    rng = np.random.default_rng(5)
    prefill = requests_of(builder, records, BATCH, PREFILL, rng)
    batches = requests_of(builder, records, BATCH, N_BATCHES, rng)
    figures = {}
    for name, log in (
        ("sqlite", PredictionLog(folder / "writer.db", numeric, categorical)),
        ("postgresql", PostgresPredictionLog(url, numeric, categorical)),
    ):
        print(f"writing {PREFILL} + {N_BATCHES} requests of {BATCH:,} predictions to {name} ...", flush=True)
        # Fresh keys per backend: both logs get the same rows, each written once.
        fresh = [[replace(r, key=new_request_key()) for r in part] for part in (prefill, batches)]
        figures[name] = writer_figures(log, *fresh)
        log.close()
    return figures


def copy_log(sqlite_path: Path, url: str) -> int:
    """Copy every request and feedback row of the SQLite log into the (empty) PostgreSQL log tables; returns the
    predictions copied. Set-up only: the JSON stored as BLOBs in SQLite is stored as text in PostgreSQL."""
    import sqlite3

    import sqlalchemy as sa

    from retrainer.io.backend import connect_database
    from retrainer.serving.prediction_log_pg import POSTGRES_STATEMENTS, create_log_tables

    columns = ("key", "time", "latency_ms", "rows", "champion_version", "challenger_version", "arm", "probability",
               "label", "features_digest", "features")  # fmt: skip
    source = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    copied = 0
    with connect_database(url) as connection:
        create_log_tables(connection)
        insert, rows = sa.text(POSTGRES_STATEMENTS.insert), source.execute(f"SELECT {', '.join(columns)} FROM requests")
        while part := rows.fetchmany(COPY_ROWS):
            values = [
                {c: v.decode() if isinstance(v, bytes) else v for c, v in zip(columns, row, strict=True)}
                for row in part
            ]
            connection.execute(insert, values)
            copied += sum(v["rows"] for v in values)
        labels = source.execute("SELECT request_key, position, time, label FROM feedback").fetchall()
        connection.execute(
            sa.text(POSTGRES_STATEMENTS.insert_feedback),
            [{"key": k, "position": p, "time": t, "label": y} for k, p, t, y in labels],
        )
    source.close()
    return copied


def monitor_pass_in_child(workspace: Path, env: dict) -> dict:
    """bench/monitor_bench.py's child: one timed monitoring pass, its wall seconds and peak RSS."""
    child = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "monitor_bench.py"), "--child", str(workspace)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def measure_monitor(folder: Path, url: str) -> dict:
    """A monitoring pass over 1,000,000 logged predictions read from SQLite, then from PostgreSQL."""
    from monitor_bench import ROWS, build_home

    from retrainer.config import load_params
    from retrainer.io.backend import DATABASE_ENV

    workspace = folder / "monitor"
    home = workspace / ".retrainer"
    home.mkdir(parents=True)
    env = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    os.environ.update(env)
    print(f"building a log of {ROWS:,} predictions (not timed) ...", flush=True)
    build_home(home, load_params(ROOT / "params.yaml"))
    copied = copy_log(home / "predictions.db", url)
    assert copied == ROWS, f"copied {copied} predictions, expected {ROWS}"
    base = {k: v for k, v in os.environ.items() if k != DATABASE_ENV}
    print("monitoring pass on sqlite ...", flush=True)
    sqlite = monitor_pass_in_child(workspace, {**base, **env})
    print("monitoring pass on postgresql ...", flush=True)
    postgres = monitor_pass_in_child(workspace, {**base, **env, DATABASE_ENV: url})
    for result in (sqlite, postgres):
        assert result["rows_in_window"] == ROWS, result
    return {"sqlite": sqlite, "postgresql": postgres}


def ratio(figures: dict, section: str, name: str) -> float:
    return round(figures[section]["postgresql"][name] / figures[section]["sqlite"][name], 2)


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from retrainer.io.servers import create_database, start_postgres

    folder = Path(tempfile.mkdtemp(prefix="retrainer-log-pg-bench-"))
    pg_folder = Path(tempfile.mkdtemp(prefix="retrainer-log-pg-bench-server-"))  # its own: the server user owns it
    server = start_postgres(pg_folder)
    try:
        writer_url = create_database(server.url(), "writer")
        figures = {"writer": measure_writers(folder, writer_url)}
        figures["monitor"] = measure_monitor(folder, create_database(server.url(), "monitor"))
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(pg_folder, ignore_errors=True)
    figures["ratio_postgresql_over_sqlite"] = {
        "write_1000_ms_median": ratio(figures, "writer", "write_1000_ms_median"),
        "writer_requests_per_s": ratio(figures, "writer", "writer_requests_per_s"),
        "monitor_pass_seconds": ratio(figures, "monitor", "pass_seconds"),
        "monitor_peak_rss_mb": ratio(figures, "monitor", "peak_rss_mb"),
    }
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    figures["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    figures["git_commit"] = git.stdout.strip()
    write_results("prediction_log_pg", figures, postgresql=_postgres_version())


def _postgres_version() -> str:
    from retrainer.io.servers import postgres_bin

    done = subprocess.run([str(postgres_bin() / "postgres"), "--version"], capture_output=True, text=True, check=False)
    return done.stdout.split()[2]  # "postgres (PostgreSQL) 15.18 (Debian ...)"


if __name__ == "__main__":
    main()
