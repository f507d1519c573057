"""The scale curve: validate, train and one monitoring pass at 330k, 3.3M and 10M rows, wall time and peak RSS each.

Data: the 2013 flights (seeds/), upsampled with jitter. Each step runs once per size in a child process of its own
that reads its input from a parquet file; the parent times the child (wall seconds, imports included) and the child
times its step alone. Peak memory is the child's peak resident set size (VmHWM from /proc/PID/status, polled by the
parent, so a step stopped at its time limit still has a figure), set against the in-memory size of the step's input
frame (pandas `memory_usage(deep=True)`).

- validate: the GX batch suite (`validation.run_suite`) on N raw flights (the seed table repeated with the year
  shifted, as bench/validation_bench.py does, so the flight key stays unique and no jitter breaks a range rule).
- train: the train stage (`stages.run_stage("train")`: halving search, threshold, final fit, one thread) on N
  labelled rows (the integrated dataset sampled with replacement, numeric features jittered by 5 % of their
  standard deviation, times by up to +-30 min).
- monitor: the pass's assessment (`steps.monitor.assess_window`: drift of every feature and of the predictions,
  rolling performance on the 30 % labelled) over an N-prediction window against the reference profile of the model
  trained at 330k. Reading the window out of the prediction log is left out: writing 10M predictions into a log
  costs more than the whole curve (bench/monitor_bench.py times a full pass over 1M logged predictions).

A step that has not finished after --step-timeout seconds (STEP_TIMEOUT_S by default), or at --stop-at (a UTC
time), is stopped and recorded as such. From the second size on, train runs last, after the monitoring pass (which
needs only the first size's model), so a stopped train leaves the other steps measured. Every step records the
1-minute load average at its start and end (the machine may be shared; a step's time is only as good as its load).
The results file is rewritten after each size, so a run that is stopped keeps the sizes it finished.

Run: .venv/bin/python bench/scale_bench.py [--step-timeout S] [--stop-at HH:MM] [ROWS ...]   (prints figures, writes
bench/results/scale.json; asserts nothing about time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
SIZES = (330_000, 3_300_000, 10_000_000)
STEP_TIMEOUT_S = 900
JITTER_SD = 0.05  # numeric jitter, as a share of the column's standard deviation
LABELLED_SHARE = 0.3
SEED = 7


def say(message: str) -> None:
    """A progress line, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def frame_mb(frame: pd.DataFrame) -> float:
    """A frame's in-memory size in MiB (pandas, deep: strings counted)."""
    return round(frame.memory_usage(deep=True).sum() / 2**20, 1)


def jitter_rows(dataset: pd.DataFrame, rows: int, numeric: list[str], time_column: str, seed: int) -> pd.DataFrame:
    """`rows` rows drawn with replacement, numeric features + N(0, (JITTER_SD * sd)^2), times +- up to 30 min."""
    rng = np.random.default_rng(seed)
    picked = dataset.iloc[rng.integers(0, len(dataset), rows)].reset_index(drop=True)
    for column in numeric:
        values = picked[column].to_numpy(dtype=float, na_value=np.nan)
        scale = JITTER_SD * float(np.nanstd(dataset[column].to_numpy(dtype=float, na_value=np.nan)))
        picked[column] = values + rng.normal(0.0, scale or 0.0, rows)
    picked[time_column] = picked[time_column] + pd.to_timedelta(rng.integers(-1800, 1800, rows), unit="s")
    return picked.sort_values(time_column, kind="stable").reset_index(drop=True)


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """A process's peak resident set size (Linux VmHWM) in MiB; None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((round(int(line.split()[1]) / 1024, 1) for line in lines if line.startswith("VmHWM:")), None)


def load_1m() -> float:
    """The machine's 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def run_child(step: str, data: Path, work: Path, log: Path, limit: float) -> dict:
    """Run one step in a child, polling its peak RSS; stop it after `limit` seconds. Its figures, or why not, with
    the load average at its start and end."""
    load = {"load_1m_start": load_1m()}
    figures = run_child_for(step, data, work, log, limit)
    return {**figures, **load, "load_1m_end": load_1m()}


def run_child_for(step: str, data: Path, work: Path, log: Path, limit: float) -> dict:
    """The child's figures, or why it did not finish within `limit` seconds."""
    started = time.perf_counter()
    with log.open("w") as sink:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", step, str(data), str(work)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
        peak = 0.0
        while child.poll() is None and time.perf_counter() - started < limit:
            peak = max(peak, peak_rss_mb(child.pid) or 0.0)
            time.sleep(0.5)
        if child.poll() is None:
            child.kill()
            child.wait()
            return {
                "finished": False,
                "wall_seconds": round(time.perf_counter() - started, 1),
                "peak_rss_mb": peak,
                "why": f"stopped after {round(limit)} s",
            }
        out = child.stdout.read().decode()
    wall = round(time.perf_counter() - started, 1)
    if child.returncode != 0:
        return {
            "finished": False,
            "wall_seconds": wall,
            "peak_rss_mb": peak,
            "why": f"exit {child.returncode}: {log.read_text()[-600:]}",
        }
    figures = json.loads(out.strip().splitlines()[-1])
    return {"finished": True, "wall_seconds": wall, **figures, "peak_rss_mb": max(peak, figures["peak_rss_mb"])}


def child_validate(params, data: Path, work: Path) -> dict:
    """The GX batch suite on the frame."""
    from retrainer import validation

    runner = validation.get_suite_runner(params)
    before = peak_rss_mb()
    frame = pd.read_parquet(data)
    started = time.perf_counter()
    _, summary = validation.run_suite(runner, frame, pd.Timestamp("2012-12-31", tz="UTC"))
    return {
        "step_seconds": round(time.perf_counter() - started, 2),
        "rss_before_data_mb": before,
        "checks": len(summary.checks),
    }


def child_train(params, data: Path, work: Path) -> dict:
    """The train stage on work/data/processed/train.parquet (a link to `data`)."""
    from retrainer.stages import TRAIN, load_model, run_stage

    (work / TRAIN).parent.mkdir(parents=True, exist_ok=True)
    (work / TRAIN).unlink(missing_ok=True)
    (work / TRAIN).symlink_to(data)
    import sklearn.ensemble  # noqa: F401  (the stage's heavy import, before the baseline is read)

    before = peak_rss_mb()
    started = time.perf_counter()
    report = run_stage("train", params, work)
    seconds = round(time.perf_counter() - started, 2)
    final = load_model(work)["model"].steps[-1][1]
    return {
        "step_seconds": seconds,
        "search_seconds": report["search_seconds"],
        "rss_before_data_mb": before,
        "cv_best_score": report["cv_best_score"],
        "best_params": report["best_params"],
        "final_fit_boosting_iterations": getattr(final, "n_iter_", None),
    }


def child_monitor(params, data: Path, work: Path) -> dict:
    """The monitoring assessment of the window in `data` against work/profile.json."""
    from retrainer.steps.monitor import assess_window

    profile = json.loads((work / "profile.json").read_text())
    before = peak_rss_mb()
    window = pd.read_parquet(data)
    labelled = window["labelled"].to_numpy()
    started = time.perf_counter()
    features = window[params.features.all]
    proba = window["proba"].to_numpy()
    labels = window.loc[labelled, "label"].to_numpy()
    result = assess_window(profile, features, proba, labels, proba[labelled], params.monitor)
    return {
        "step_seconds": round(time.perf_counter() - started, 2),
        "rss_before_data_mb": before,
        "drift_share": result["drift_share"],
        "rows_assessed": result["rows"],
    }


def run_in_child(step: str, data: Path, work: Path) -> dict:
    """The child's side: load params, run the step, add the peak RSS."""
    from retrainer.config import load_params

    params = load_params(ROOT / "params.yaml")
    steps = {"validate": child_validate, "train": child_train, "monitor": child_monitor}
    figures = steps[step](params, data, work)
    return {**figures, "peak_rss_mb": peak_rss_mb()}


def integrated_dataset(params) -> pd.DataFrame:
    """The labelled, joined 2013 flights, as the ingest stage builds them."""
    from retrainer.io.project import pseudonymisation_key
    from retrainer.steps.ingest import integrate

    flights = pd.read_parquet(ROOT / params.data.batch_source)
    references = {ref.name: pd.read_parquet(ROOT / ref.path) for ref in params.data.references}
    return integrate(flights, references, params.data, pseudonymisation_key())[0]


def write_profile(params, dataset: pd.DataFrame, work: Path) -> np.ndarray:
    """The 330k model's reference profile (work/profile.json) and its probabilities for every dataset row."""
    import joblib

    from retrainer.steps.evaluate import classification_metrics
    from retrainer.steps.profile import profile_from_params

    bundle = joblib.load(work / "models" / "model.pkl")
    proba = bundle["model"].predict_proba(dataset[bundle["features"]])[:, 1]
    labels = dataset[params.data.target.name].to_numpy()
    metrics = classification_metrics(labels, proba, bundle["threshold"])
    profile = profile_from_params(params, dataset, labels, proba, bundle["threshold"], metrics)
    (work / "profile.json").write_text(json.dumps(profile))
    return proba


@dataclass(frozen=True)
class Limits:
    """How long a step may run: `step_seconds`, and never past `stop_at` (epoch seconds, None: no end)."""

    step_seconds: float
    stop_at: float | None

    def now(self) -> float:
        """The seconds the next step may run."""
        left = self.step_seconds if self.stop_at is None else self.stop_at - time.time()
        return max(1.0, min(self.step_seconds, left))


def measure_size(
    params, rows: int, dataset: pd.DataFrame, tmp: Path, proba: np.ndarray | None, limits: Limits
) -> tuple[dict, np.ndarray]:
    """Write the three inputs at `rows` rows and run the steps (train last once a profile exists); figures per step."""
    from validation_bench import upsample_flights

    numeric = list(params.features.numeric)
    work, out = tmp / "work", {}
    raw = upsample_flights(pd.read_parquet(ROOT / params.data.batch_source), rows)
    out["validate"] = {"input_mb": frame_mb(raw)}
    raw.to_parquet(tmp / "raw.parquet")
    del raw
    train = jitter_rows(dataset, rows, numeric, params.data.time_column, SEED)
    out["train"] = {"input_mb": frame_mb(train)}
    train.to_parquet(tmp / f"train-{rows}.parquet")
    del train
    inputs = {"validate": tmp / "raw.parquet", "train": tmp / f"train-{rows}.parquet"}
    if proba is not None:
        out["monitor"] = measure_monitor(params, rows, dataset, proba, tmp, limits)
    for step in ("validate", "train"):
        say(f"  {rows:,} rows: {step} ...")
        out[step].update(run_child(step, inputs[step], work, tmp / f"{step}-{rows}.log", limits.now()))
        say(f"    {out[step]}")
    if proba is None:
        proba = write_profile(params, dataset, work)
        out["monitor"] = measure_monitor(params, rows, dataset, proba, tmp, limits)
    return out, proba


def measure_monitor(params, rows: int, dataset: pd.DataFrame, proba: np.ndarray, tmp: Path, limits: Limits) -> dict:
    """An N-prediction window (features jittered, the first size's model's probabilities, 30 % labelled), its pass."""
    rng = np.random.default_rng(SEED + 1)
    marked = dataset.assign(proba=proba, label=dataset[params.data.target.name].astype(int))
    window = jitter_rows(marked, rows, list(params.features.numeric), params.data.time_column, SEED + 2)
    window = window[[*params.features.all, "proba", "label"]].assign(labelled=rng.random(rows) < LABELLED_SHARE)
    figures = {"input_mb": frame_mb(window)}
    window.to_parquet(tmp / f"window-{rows}.parquet")
    del window
    say(f"  {rows:,} rows: monitor ...")
    path = tmp / f"window-{rows}.parquet"
    figures.update(run_child("monitor", path, tmp / "work", tmp / f"monitor-{rows}.log", limits.now()))
    say(f"    {figures}")
    return figures


def main(sizes: tuple[int, ...], limits: Limits) -> None:
    """Measure each size in turn; print the figures and write them after each size."""
    sys.path.insert(0, str(ROOT / "src"))
    from retrainer.config import load_params

    params = load_params(ROOT / "params.yaml")
    dataset = integrated_dataset(params)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    curve, load = {}, [load_1m()]
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        proba = None
        for rows in sizes:
            curve[str(rows)], proba = measure_size(params, rows, dataset, Path(tmp), proba, limits)
            load.append(load_1m())
            figures = {
                "sizes": list(sizes),
                "curve": curve,
                "summary": summarise(curve),
                "step_timeout_seconds": limits.step_seconds,
                "memory_measure": "child process peak RSS (VmHWM), interpreter and imports included",
                "load_average_1m_before_and_after_each_size": load,
                "cpus": os.cpu_count(),
                "git_commit": git.stdout.strip(),
            }
            out = write_results("scale", figures)
    print(f"\nscale curve -> {out}")
    for step in ("validate", "train", "monitor"):
        print(step, json.dumps(figures["summary"][step]))


def summarise(curve: dict) -> dict:
    """Per step: seconds per million rows and peak RSS over input size, at each size (linear time = flat s/M)."""
    summary = {}
    for step in ("validate", "train", "monitor"):
        summary[step] = {
            rows: {
                "step_seconds": figures[step].get("step_seconds"),
                "seconds_per_million_rows": round(figures[step]["step_seconds"] / (int(rows) / 1e6), 2)
                if figures[step].get("finished")
                else None,
                "peak_rss_over_input": round(figures[step]["peak_rss_mb"] / figures[step]["input_mb"], 2),
                "finished": figures[step].get("finished"),
            }
            for rows, figures in curve.items()
        }
    return summary


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(ROOT / "src"))
        print(json.dumps(run_in_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
    else:
        parser = argparse.ArgumentParser(description="The scale curve: validate, train, monitor at each size.")
        parser.add_argument("rows", nargs="*", type=int, default=list(SIZES), help="sizes, in rows")
        parser.add_argument("--step-timeout", type=float, default=STEP_TIMEOUT_S, help="seconds a step may run")
        parser.add_argument("--stop-at", help="UTC HH:MM after which no step runs on (today, or tomorrow if past)")
        args = parser.parse_args()
        stop_at = None
        if args.stop_at:
            now = pd.Timestamp.now(tz="UTC")
            at = now.normalize() + pd.Timedelta(f"{args.stop_at}:00")
            stop_at = (at if at > now else at + pd.Timedelta(days=1)).timestamp()
        main(tuple(args.rows), Limits(args.step_timeout, stop_at))
