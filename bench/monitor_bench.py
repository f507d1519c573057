"""Time one monitoring pass over 1,000,000 logged predictions (with their features and 30 % feedback labels).

Run: .venv/bin/python bench/monitor_bench.py   (prints figures, writes bench/results/monitor.json;
asserts nothing about time).

Set-up (not timed): a real pipeline fitted on January-February flights (the newest fifth held out) is registered
in a temporary MLflow store with its reference profile; 1,000,000 predictions are written through the prediction
log (the serving write path, as 10,000-prediction requests) from real 2013 flights drawn with replacement, scored by
that model.
The pass runs in a child process: its wall seconds are timed inside the child around `monitor_pass` alone, and
its peak memory is the child's peak resident set size (VmHWM in /proc/self/status, which a new program image
starts afresh; getrusage's ru_maxrss would carry over the large parent's peak through fork and exec), reported with
the peak it had reached after its imports, before the pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
ROWS = 1_000_000
WRITE_CHUNK = 10_000
LABELLED_SHARE = 0.3
SEED = 11


def build_home(home: Path, params) -> None:
    """Register a model with its reference profile, then log ROWS predictions with features and some labels."""
    from threadpoolctl import threadpool_limits

    from retrainer.io import registry
    from retrainer.io.monitoring import register_with_profile
    from retrainer.io.project import LOG_FILE, pseudonymisation_key
    from retrainer.serving.prediction_log import PredictionLog, RequestLog, new_request_key
    from retrainer.steps.ingest import integrate
    from retrainer.steps.split import split_by_time
    from retrainer.steps.train import build_pipeline

    flights = pd.read_parquet(ROOT / params.data.batch_source)
    references = {ref.name: pd.read_parquet(ROOT / ref.path) for ref in params.data.references}
    dataset, _ = integrate(flights, references, params.data, pseudonymisation_key())
    numeric, categorical = list(params.features.numeric), list(params.features.categorical)
    features, label = [*numeric, *categorical], params.data.target.name
    months = dataset[params.data.time_column].dt.month
    train, holdout = split_by_time(dataset.loc[months <= 2], params.data.time_column, params.split.holdout_fraction)
    with threadpool_limits(limits=1):
        model = build_pipeline(numeric, categorical, params.train).set_params(model__max_iter=50)
        model.fit(train[features], train[label])
        proba = model.predict_proba(holdout[features])[:, 1]
        register_with_profile(params, model, train, holdout[label].to_numpy(), proba, 0.5)
        registry.set_alias(params.tracking.registered_model, registry.CHAMPION, "1")
        rng = np.random.default_rng(SEED)
        served = dataset.iloc[rng.integers(0, len(dataset), ROWS)].reset_index(drop=True)
        served_proba = model.predict_proba(served[features])[:, 1]
    log = PredictionLog(home / LOG_FILE, numeric, categorical)
    now = pd.Timestamp.now(tz="UTC")
    labelled = rng.random(ROWS) < LABELLED_SHARE
    for first in range(0, ROWS, WRITE_CHUNK):
        part = slice(first, first + WRITE_CHUNK)
        stamp = (now - pd.Timedelta(seconds=ROWS - first)).isoformat(timespec="milliseconds")
        rows, chunk_proba = served.iloc[part], served_proba[part].tolist()
        request = RequestLog(
            key=new_request_key(),
            time=stamp,
            latency_ms=5.0,
            versions={"champion": "1"},
            arms=["champion"] * len(chunk_proba),
            probabilities=chunk_proba,
            labels=[int(p >= 0.5) for p in chunk_proba],
            records=rows.to_dict("records"),
            features=rows[features],
        )
        log.record(request)
        for i, y, keep in zip(request.ids, rows[label], labelled[part], strict=True):
            if keep:
                log.record_feedback(i, int(y), stamp)
    log.close()


def peak_rss_mb() -> float:
    """This process image's peak resident set size (Linux VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_pass_in_child(workspace: Path) -> dict:
    """The child: imports, then one timed pass with the window covering every logged prediction."""
    import matplotlib.pyplot  # noqa: F401  (the pass's lazy imports, loaded before the baseline is read)
    import mlflow  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401

    from retrainer.app.monitor import monitor_pass
    from retrainer.config import load_params
    from retrainer.io.project import Workspace

    params = load_params(ROOT / "params.yaml")
    window = params.monitor.window.model_copy(update={"max_predictions": ROWS, "hours": 24 * 365})
    params = params.model_copy(update={"monitor": params.monitor.model_copy(update={"window": window})})
    baseline_mb = peak_rss_mb()
    started = time.perf_counter()
    result = monitor_pass(params, Workspace.at(workspace), retrain=lambda root: []).to_dict()
    seconds = time.perf_counter() - started
    return {
        "pass_seconds": round(seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": baseline_mb,
        "rows_in_window": result["rows"],
        "labelled_in_window": result["labelled"],
        "drift_share": result["drift_share"],
        "alarm": result["alarm"],
        "decision": result["reason"],
    }


def main() -> None:
    """Build the log, run the pass in a child process, print and write the figures."""
    sys.path.insert(0, str(ROOT / "src"))
    from retrainer.config import load_params

    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        home = Path(tmp) / ".retrainer"
        home.mkdir()
        env = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
        os.environ.update(env)
        started = time.perf_counter()
        build_home(home, params)
        setup_s = time.perf_counter() - started
        log_mb = (home / "predictions.db").stat().st_size / 2**20
        child = subprocess.run(
            [sys.executable, __file__, "--child", tmp],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(child.stdout.strip().splitlines()[-1])
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    figures = {
        "rows_logged": ROWS,
        "labelled_share": LABELLED_SHARE,
        **measured,
        "setup_seconds_not_timed": round(setup_s, 1),
        "log_file_mb": round(log_mb, 1),
        "memory_measure": "child process peak RSS (VmHWM), includes the interpreter and imports",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "git_commit": git.stdout.strip(),
    }
    out = write_results("monitor", figures)
    print(
        f"\none monitoring pass over {ROWS:,} logged predictions: {figures['pass_seconds']} s, "
        f"peak RSS {figures['peak_rss_mb']} MB ({figures['rss_after_imports_mb']} MB after imports) -> {out}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(ROOT / "src"))
        print(json.dumps(run_pass_in_child(Path(sys.argv[2]))))
    else:
        main()
