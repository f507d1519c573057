"""Run every bench/*_bench.py in turn, then print one summary from bench/results/*.json (`make bench`).

Run: .venv/bin/python bench/run.py [NAME ...] [--summary-only]
  NAME           run only these benches (e.g. `train flow`); default: all of them
  --summary-only print the summary of the results already written, run nothing
Benchmarks measure; nothing here asserts anything about time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"

# (figure key, label) per results file; figures missing from a file are skipped
SUMMARY = {
    "ci": [
        ("rows_train", "training rows"),
        ("repro_seconds", "dvc repro of the change s"),
        ("report_seconds", "retrainer ci report s"),
        ("overhead_pct", "report overhead over the repro %"),
        ("report_own_pct_of_repro", "report's own work, % of the repro"),
        ("target_overhead", "target overhead"),
    ],
    "validation": [
        ("rows", "rows"),
        ("gx_suite_seconds_median", "GX suite s (median)"),
        ("pandas_seconds_median", "pandas checks s (median)"),
        ("gx_over_pandas_ratio", "GX / pandas"),
        ("target_seconds", "target GX s"),
        ("csv_batch_reader_seconds_median", "batch reader s (CSV)"),
        ("csv_reader_over_read_csv_ratio", "reader / read_csv"),
    ],
    "train": [
        ("rows_train", "training rows"),
        ("train_stage_seconds", "train stage s"),
        ("train_plus_evaluate_stage_seconds", "train + evaluate stages s"),
        ("bare_seconds", "bare script s"),
        ("train_stage_over_bare_ratio", "train stage / bare"),
        ("train_plus_evaluate_over_bare_ratio", "train + evaluate / bare"),
        ("target_ratio", "target train stage / bare"),
        ("stage_holdout_roc_auc", "holdout ROC AUC (stage)"),
        ("bare_holdout_roc_auc", "holdout ROC AUC (bare)"),
    ],
    "monitor": [
        ("rows_logged", "logged predictions"),
        ("pass_seconds", "one monitoring pass s"),
        ("peak_rss_mb", "peak RSS MB (child process)"),
        ("rss_after_imports_mb", "RSS after imports MB"),
        ("load_average_1m_at_end", "load average (1 min) at end"),
    ],
    "search": [
        ("rows_train", "training rows"),
        ("in_process_search_seconds", "search in-process s"),
        ("dask_search_seconds", "search on 2 Dask workers s"),
        ("speedup_search", "search speed-up"),
        ("speedup_fit", "whole fit speed-up"),
        ("ceiling_speedup", "ceiling: CPU loop 2 vs 1 process"),
        ("target_speedup_search", "target search speed-up"),
        ("same_cv_results", "same CV results"),
    ],
    "flow": [
        ("rows_train", "training rows"),
        ("plain_seconds", "plain script s"),
        ("flow_seconds", "flow s"),
        ("flow_seconds_excluding_server_startup", "flow s excl. server start-up"),
        ("overhead_pct", "overhead %"),
        ("overhead_pct_excluding_server_startup", "overhead % excl. server start-up"),
        ("rerun_seconds", "no-change rerun s"),
        ("rerun_over_first_ratio", "rerun / first"),
        ("target_overhead", "target overhead"),
        ("target_rerun_ratio", "target rerun / first"),
    ],
}


def discover() -> list[Path]:
    """The benchmark scripts, validation first (the cheapest), then by name."""
    return sorted(BENCH.glob("*_bench.py"), key=lambda p: (p.stem != "validation_bench", p.name))


def run_bench(script: Path) -> tuple[int, float]:
    """Run one benchmark, its output streamed through; its exit code and wall seconds."""
    print(f"\n=== {script.name} ===", flush=True)
    started = time.perf_counter()
    code = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent).returncode
    seconds = time.perf_counter() - started
    print(f"=== {script.name}: exit {code} after {seconds:.0f} s ===", flush=True)
    return code, seconds


def print_summary() -> None:
    """One block per results file, the headline figures first."""
    print("\n=== summary (bench/results) ===")
    for path in sorted(RESULTS.glob("*.json")):
        figures = json.loads(path.read_text())
        print(f"\n{path.stem}  ({path.relative_to(BENCH.parent)}, git {figures.get('git_commit', '?')})")
        shown = SUMMARY.get(path.stem) or [(k, k) for k, v in figures.items() if isinstance(v, int | float)]
        for key, label in shown:
            if key in figures:
                print(f"  {label:<36} {figures[key]}")


def main(argv: list[str]) -> int:
    """Run the chosen benches, print the summary; exit 1 if any bench failed."""
    names = [a for a in argv if not a.startswith("--")]
    failed = []
    if "--summary-only" not in argv:
        for script in discover():
            if names and script.stem.removesuffix("_bench") not in names:
                continue
            code, _ = run_bench(script)
            if code != 0:
                failed.append(script.name)
    print_summary()
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
