"""Time the train (and evaluate) stage as users run it, `dvc repro --single-item`, against a bare script.

Setup (not timed): a fresh workspace whose bootstrap is the whole of 2013 with no training window, and
`dvc repro split`. Timed, once each, as subprocess wall time: the train stage, the evaluate stage, and
bench/bare_train.py doing the same fit and holdout metrics in pandas + sklearn only.

Run: .venv/bin/python bench/train_bench.py   (prints figures, writes bench/results/train.json;
asserts nothing about time).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_RATIO = 1.25
METRIC_KEYS = ("roc_auc", "pr_auc", "f1", "brier", "log_loss", "threshold")
WARM_IMPORTS = "import pandas, pyarrow, sklearn.ensemble, sklearn.model_selection, dvc.repo, prefect, mlflow"


def say(message: str) -> None:
    """A progress line, flushed at once (the benches run as subprocesses)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def workspace_env(ws: Path) -> dict[str, str]:
    """The environment a workspace's commands run in: its own home, MLflow store and Prefect home."""
    home = ws / ".retrainer"
    env = {k: v for k, v in os.environ.items() if k not in ("RETRAINER_PARAMS", "PREFECT_API_URL")}
    env.update(
        {
            "RETRAINER_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


def write_params(dest: Path, start: str, end: str, window_months: int = 0) -> Path:
    """The project's params.yaml with another bootstrap range and training window."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["bootstrap"] = {"start": start, "end": end}
    raw["split"]["window_months"] = window_months
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def run_timed(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, str]:
    """Run a command, output to `log`; its wall seconds and stdout. Raises with the log's tail if it fails."""
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log.write_text(f"$ {' '.join(args)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(args)[:200]} failed ({result.returncode}):\n{tail}")
    return seconds, result.stdout


def warm_up(cwd: Path, env: dict[str, str], log: Path) -> float:
    """Import the heavy libraries once in a throwaway process so no timed arm pays for a cold disk cache."""
    seconds, _ = run_timed([sys.executable, "-c", WARM_IMPORTS], cwd, env, log)
    return seconds


def code_state() -> dict:
    """The commit measured, and whether src/ or flows/ had uncommitted edits at the time."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "src_dirty": bool(git("status", "--porcelain", "--", "src", "flows", "params.yaml", "dvc.yaml")),
    }


def machine() -> dict:
    """Where the figures were measured."""
    import pandas as pd
    import sklearn

    return {
        "python": platform.python_version(),
        "pandas": pd.__version__,
        "sklearn": sklearn.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def bare_settings(params, ws: Path) -> dict:
    """What bench/bare_train.py needs, taken from the same validated params the stage reads."""
    train = params.train
    return {
        "train_path": str(ws / "data" / "processed" / "train.parquet"),
        "holdout_path": str(ws / "data" / "processed" / "holdout.parquet"),
        "numeric": list(params.features.numeric),
        "categorical": list(params.features.categorical),
        "label": params.data.target.name,
        "time_column": params.data.time_column,
        "validation_fraction": params.split.validation_fraction,
        "seed": train.seed,
        "class_weight": train.class_weight,
        "cv_splits": train.cv_splits,
        "scoring": train.scoring,
        "n_candidates": train.search.n_candidates,
        "factor": train.search.factor,
        "space": {k: list(v) for k, v in train.search.space[train.model].items()},
    }


def main() -> None:
    """Measure, print and write the figures."""
    sys.path.insert(0, str(ROOT / "src"))
    from retrainer.config import load_params
    from retrainer.io.workspace import create_workspace, reproduce

    with tempfile.TemporaryDirectory(prefix="retrainer-train-bench-") as tmp:
        tmpdir = Path(tmp)
        params_file = write_params(tmpdir / "params.yaml", "2013-01-01", "2014-01-01")
        params = load_params(params_file)
        if (
            params.train.model != "hgb"
            or params.train.search.method != "halving"
            or params.train.feature_selection.enabled
        ):
            raise SystemExit("bare_train.py mirrors model hgb, search halving, no feature selection only")
        ws = create_workspace(ROOT, tmpdir / "ws", params_file)
        env = workspace_env(ws)
        say(f"workspace {ws}: dvc repro split (whole of 2013, all months; not timed)")
        setup = reproduce(ws, "split", env=env)
        split = json.loads((ws / "data" / "processed" / "split_report.json").read_text())
        say(
            f"  ran {setup.ran} in {setup.seconds:.1f} s; train {split['train']['rows']:,} rows, "
            f"holdout {split['holdout']['rows']:,} rows"
        )
        warm_up(ws, env, tmpdir / "warm.log")

        say("timing the train stage: dvc repro --single-item train")
        train_run = reproduce(ws, "train", single=True, env=env)
        report = json.loads((ws / "models" / "train_report.json").read_text())
        say(f"  {train_run.seconds:.1f} s (ran {train_run.ran}; fit inside the stage {report['fit_seconds']:.1f} s)")

        say("timing the evaluate stage: dvc repro --single-item evaluate")
        evaluate_run = reproduce(ws, "evaluate", single=True, env=env)
        metrics = json.loads((ws / "models" / "metrics.json").read_text())
        say(f"  {evaluate_run.seconds:.1f} s (ran {evaluate_run.ran}); holdout ROC AUC {metrics['roc_auc']:.4f}")

        say("timing the bare script: bench/bare_train.py (pandas + sklearn only)")
        bare_s, out = run_timed(
            [sys.executable, str(ROOT / "bench" / "bare_train.py"), json.dumps(bare_settings(params, ws))],
            ws,
            env,
            tmpdir / "bare.log",
        )
        bare = json.loads(out.strip().splitlines()[-1])
        say(f"  {bare_s:.1f} s; holdout ROC AUC {bare['metrics']['roc_auc']:.4f}")

    stage_s, both_s = train_run.seconds, train_run.seconds + evaluate_run.seconds
    figures = {
        "train_window": "2013-01-01 .. 2013-12-31, window_months 0",
        "rows_train": split["train"]["rows"],
        "rows_holdout": split["holdout"]["rows"],
        "rows_fit": report["rows_fit"],
        "rows_validation": report["rows_validation"],
        "train_stage_seconds": round(stage_s, 3),
        "train_stage_fit_seconds_in_process": report["fit_seconds"],
        "evaluate_stage_seconds": round(evaluate_run.seconds, 3),
        "train_plus_evaluate_stage_seconds": round(both_s, 3),
        "bare_seconds": round(bare_s, 3),
        "bare_seconds_in_process": bare["seconds_in_process"],
        "bare_seconds_to_fitted_in_process": bare["seconds_to_fitted"],
        "train_stage_over_bare_ratio": round(stage_s / bare_s, 3),
        "train_plus_evaluate_over_bare_ratio": round(both_s / bare_s, 3),
        "target_ratio": TARGET_RATIO,
        "stage_holdout_roc_auc": round(metrics["roc_auc"], 6),
        "bare_holdout_roc_auc": round(bare["metrics"]["roc_auc"], 6),
        "stage_holdout_metrics": {k: round(metrics[k], 6) for k in METRIC_KEYS},
        "bare_holdout_metrics": {k: round(v, 6) for k, v in bare["metrics"].items()},
        "stage_best_params": report["best_params"],
        "bare_best_params": bare["best_params"],
        "stage_threshold": round(report["threshold"], 6),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        **code_state(),
        **machine(),
    }
    out_file = ROOT / "bench" / "results" / "train.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(figures, indent=2) + "\n")

    rows = [
        ("train stage (dvc repro --single-item train)", f"{stage_s:8.1f} s", f"{stage_s / bare_s:5.2f}x"),
        ("train + evaluate stages", f"{both_s:8.1f} s", f"{both_s / bare_s:5.2f}x"),
        ("bare script (pandas + sklearn)", f"{bare_s:8.1f} s", " 1.00x"),
    ]
    print(f"\ntrain bench: {figures['rows_train']:,} training rows, {figures['rows_holdout']:,} holdout rows")
    print(f"{'arm':<46}{'wall':>10}{'vs bare':>9}")
    for arm, seconds, ratio in rows:
        print(f"{arm:<46}{seconds:>10}{ratio:>9}")
    print(
        f"holdout ROC AUC: stage {metrics['roc_auc']:.4f}, bare {bare['metrics']['roc_auc']:.4f}; "
        f"target: train stage <= {TARGET_RATIO} x bare -> {out_file}"
    )


if __name__ == "__main__":
    main()
