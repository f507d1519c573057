"""Model CI cost: `retrainer ci report` on a params-only change against `dvc repro` of the same change alone.

Setup (not timed): a git workspace trained on the full year 2013 with a 12-month window (`dvc repro evaluate`),
committed as main and pushed to its local DVC remote; a branch that changes one training param (train.seed); the
workspace copied twice, so each arm starts from main's trained state with a DVC cache of its own (neither arm can
restore the other's outputs from DVC's run cache).
Timed, once each, as subprocess wall time:
  repro   `dvc repro evaluate` on the branch (train and evaluate rerun): what the change costs anyway;
  report  `retrainer ci report --base main` on the branch: the same repro, plus reading main's model and holdout
          through DVC, scoring both, the gate (bootstrap, latency), the plots and the report files.

Run: .venv/bin/python bench/ci_bench.py [--report-first]   (the arms' order; prints figures, writes
bench/results/ci.json; asserts nothing about time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from train_bench import BIN, ROOT, code_state, machine, run_timed, say, warm_up, workspace_env, write_params

from retrainer.io.workspace import create_workspace

TARGET_OVERHEAD = 0.20


def git(ws: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)


def trained_main(tmp: Path) -> Path:
    """The full-year workspace trained and committed as main, its outputs pushed, and the branch's change."""
    ws = create_workspace(ROOT, tmp / "ws", write_params(tmp / "params.yaml", "2013-01-01", "2014-01-01", 12), git=True)
    git(ws, "branch", "-M", "main")
    env = workspace_env(ws)
    say("training main on the full year (not timed)")
    run_timed([sys.executable, "-m", "dvc", "repro", "evaluate"], ws, env, tmp / "main.log")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "main")
    run_timed([sys.executable, "-m", "dvc", "push", "-q"], ws, env, tmp / "push.log")
    git(ws, "checkout", "-q", "-b", "change")
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["train"]["seed"] = raw["train"]["seed"] + 1
    (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git(ws, "commit", "-q", "-am", "a params-only change")
    return ws


def main() -> None:
    """Set up, time both arms, write bench/results/ci.json."""
    from results_file import write_results

    tmp = Path(tempfile.mkdtemp(prefix="ci-bench-"))
    try:
        ws = trained_main(tmp)
        arms = {name: tmp / name for name in ("repro", "report")}
        for copy in arms.values():
            shutil.copytree(ws, copy, symlinks=True)
        warm_up(ROOT, workspace_env(ws), tmp / "warm.log")
        order = ["report", "repro"] if "--report-first" in sys.argv else ["repro", "report"]
        seconds = {}
        for arm in order:
            say(f"timing {arm}")
            seconds[arm] = time_report(arms[arm], tmp) if arm == "report" else time_repro(arms[arm], tmp)
        repro_s, report_s = seconds["repro"], seconds["report"]
        report = json.loads((tmp / "out" / "report.json").read_text())
        rows = json.loads((arms["report"] / "data" / "processed" / "split_report.json").read_text())["train"]["rows"]
        figures = {
            "rows_train": rows,
            "change": "train.seed + 1 (train and evaluate rerun)",
            "order": " then ".join(order),
            "repro_seconds": round(repro_s, 2),
            "report_seconds": round(report_s, 2),
            "report_inner_repro_seconds": report["repro"].get("seconds"),
            "report_over_repro_ratio": round(report_s / repro_s, 3),
            "overhead_pct": round((report_s / repro_s - 1) * 100, 1),
            # what the report adds around its own repro (the same work in both arms), against the repro alone
            "report_own_seconds": round(report_s - report["repro"]["seconds"], 2),
            "report_own_pct_of_repro": round((report_s - report["repro"]["seconds"]) / repro_s * 100, 1),
            "target_overhead": TARGET_OVERHEAD,
            "report_status": report["status"],
            "report_reasons": report["reasons"],
            "report_stages_ran": report["repro"].get("ran"),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            **code_state(),
            **machine(),
        }
        write_results("ci", figures)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def time_repro(ws: Path, tmp: Path) -> float:
    """`dvc repro evaluate` wall time."""
    seconds, _ = run_timed([sys.executable, "-m", "dvc", "repro", "evaluate"], ws, workspace_env(ws), tmp / "repro.log")
    return seconds


def time_report(ws: Path, tmp: Path) -> float:
    """`retrainer ci report` wall time; its exit code 0 or 1 are both verdicts, anything else fails the bench."""
    import time

    started = time.perf_counter()
    command = [str(BIN / "retrainer"), "ci", "report", "--base", "main", "--out", str(tmp / "out")]
    done = subprocess.run(command, cwd=ws, env=workspace_env(ws), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (tmp / "report.log").write_text(done.stdout + done.stderr)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"retrainer ci report exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


if __name__ == "__main__":
    main()
