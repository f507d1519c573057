"""The train stage's hyperparameter search on a 2-worker Dask cluster against in-process, on the full 2013 year.

Set-up (not timed): the seed flights integrated as the ingest stage does, split as the split stage does with no
training window (the whole year, as bench/train_bench.py trains on), written to a temporary workspace's
data/processed/train.parquet. Then the train stage (`stages.run_stage("train")`) in a child process:
first in-process (no RETRAINER_DASK_SCHEDULER), then twice with RETRAINER_DASK_SCHEDULER naming a standing
`dask scheduler` with two `dask worker --nthreads 1` processes on loopback (started by io/servers.start_dask, as
`retrainer team up` does). The first run on the fresh cluster is reported apart (its workers import the search's
modules and meet the rows for the first time); the speed-up is the second's, the state of a standing cluster from its
second retrain on. Timed: the search alone (`search_seconds` of the train report),
the whole fit (search, the two refits, threshold: `fit_seconds`), and the child's wall time.

The ceiling: the same pure-Python CPU loop run in 1 process, then in 2 processes at once; 2 x (1-process time) /
(2-process time) is the speed-up this machine gives two processes at the time of the run (2.0 on two idle cores),
measured before and after the two arms.

Run: .venv/bin/python bench/search_bench.py   (prints figures, writes bench/results/search.json; asserts nothing
about time).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import write_results

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 1.7
LOOP = 30_000_000
STAGE = """
import json, sys
from pathlib import Path
from retrainer.config import load_params
from retrainer.stages import run_stage
print(json.dumps(run_stage("train", load_params(Path(sys.argv[1])), Path(sys.argv[2]))))
"""


def say(message: str) -> None:
    """A progress line, flushed at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def spin(n: int) -> int:
    """A pure-Python CPU loop (no I/O, no memory traffic to speak of)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def measure_ceiling() -> dict:
    """1-process vs 2-process wall time of the same loop; the speed-up two processes get here now."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(spin, [1000, 1000])  # both processes started before timing
        started = time.perf_counter()
        pool.map(spin, [LOOP])
        one = time.perf_counter() - started
        started = time.perf_counter()
        pool.map(spin, [LOOP, LOOP], chunksize=1)
        two = time.perf_counter() - started
    return {
        "loop_1_process_seconds": round(one, 2),
        "loop_2_processes_seconds": round(two, 2),
        "ceiling_speedup": round(2 * one / two, 2),
    }


def fit_best_candidate(root: str, best_params: dict, barrier=None) -> float:
    """Seconds to fit the search's best candidate on the search's rows, one thread (as a search task does); with a
    barrier, the fit starts once every party has its data ready."""
    import pandas as pd

    from retrainer.config import load_params
    from retrainer.stages import TRAIN, one_thread
    from retrainer.steps.train import build_pipeline, select_features, split_by_time

    params = load_params(ROOT / "params.yaml")
    numeric, categorical = list(params.features.numeric), list(params.features.categorical)
    label, train = params.data.target.name, pd.read_parquet(Path(root) / TRAIN)
    fit_part, _ = split_by_time(train, params.data.time_column, params.split.validation_fraction)
    chosen = select_features(
        fit_part, numeric, categorical, fit_part[label], params.train.feature_selection, params.train.seed
    )
    pipeline = build_pipeline(
        [c for c in numeric if c in chosen], [c for c in categorical if c in chosen], params.train
    )
    pipeline.set_params(**{f"model__{k}": v for k, v in best_params.items()})
    with one_thread():
        if barrier is not None:
            barrier.wait()
        started = time.perf_counter()
        pipeline.fit(fit_part[chosen], fit_part[label])
        return time.perf_counter() - started


def measure_fit_ceiling(root: Path, best_params: dict) -> dict:
    """The same ceiling with the real work: one fit of the best candidate alone, then two at once in two processes
    (started together at a barrier once both have their data), 2 x alone / mean of the two.

    Two scikit-learn fits share the machine's memory bandwidth and caches, which a pure-Python loop does not; this is
    the speed-up 2 workers can give the search's fits here, before any scheduling loss."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(2) as pool:
        one = pool.starmap(fit_best_candidate, [(str(root), best_params)])[0]
        barrier = manager.Barrier(2)
        two = pool.starmap(fit_best_candidate, [(str(root), best_params, barrier)] * 2, chunksize=1)
    return {
        "fit_1_process_seconds": round(one, 2),
        "fits_2_processes_seconds": [round(t, 2) for t in two],
        "fit_ceiling_speedup": round(2 * one / max(two), 2),
    }


def write_training_rows(params, root: Path) -> int:
    """The whole year's training rows (ingest + split with no window) in root/data/processed/train.parquet."""
    import pandas as pd

    from retrainer.io.project import pseudonymisation_key
    from retrainer.stages import TRAIN
    from retrainer.steps.ingest import integrate
    from retrainer.steps.split import make_train_holdout

    flights = pd.read_parquet(ROOT / params.data.batch_source)
    references = {ref.name: pd.read_parquet(ROOT / ref.path) for ref in params.data.references}
    dataset = integrate(flights, references, params.data, pseudonymisation_key())[0]
    split = params.split.model_copy(update={"window_months": 0})
    train, _ = make_train_holdout(dataset, params.data.time_column, split)
    (root / TRAIN).parent.mkdir(parents=True, exist_ok=True)
    train.to_parquet(root / TRAIN)
    return len(train)


def run_train_stage(root: Path, env: dict[str, str]) -> dict:
    """The train stage in a child process; its report plus the child's wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", STAGE, str(ROOT / "params.yaml"), str(root)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"train stage failed ({done.returncode}): {done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_seconds": round(wall, 2)}


def measure_scoring(address: str, root: Path) -> dict:
    """Whether batch scoring would pay on the cluster: in-process scoring of the training rows (one thread) against
    the time to ship those rows to the two workers, before any scoring there."""
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from retrainer.io.compute import connect_dask
    from retrainer.stages import TRAIN, load_model

    bundle, frame = load_model(root), pd.read_parquet(root / TRAIN)
    rows = frame[bundle["features"]]
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        bundle["model"].predict_proba(rows)
        scoring = time.perf_counter() - started
    with connect_dask(address) as client:
        started = time.perf_counter()
        client.scatter(rows, broadcast=True)
        shipping = time.perf_counter() - started
    return {
        "scoring_rows": len(rows),
        "scoring_in_process_seconds": round(scoring, 2),
        "ship_rows_to_2_workers_seconds": round(shipping, 2),
    }


def main() -> None:
    """Measure, print and write the figures."""
    sys.path.insert(0, str(ROOT / "src"))
    from retrainer.config import load_params
    from retrainer.io.compute import DASK_SCHEDULER_ENV
    from retrainer.io.servers import start_dask
    from retrainer.stages import TRAIN

    params = load_params(ROOT / "params.yaml")
    load = [round(os.getloadavg()[0], 2)]
    say("ceiling: a CPU loop on 1 process, then on 2")
    ceiling = measure_ceiling()
    say(f"  {ceiling}")
    env = {k: v for k, v in os.environ.items() if k != DASK_SCHEDULER_ENV}
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        local, remote = Path(tmp) / "local", Path(tmp) / "remote"
        rows = write_training_rows(params, local)
        (remote / TRAIN).parent.mkdir(parents=True)
        shutil.copy(local / TRAIN, remote / TRAIN)
        say(f"train stage in-process on {rows:,} rows ...")
        in_process = run_train_stage(local, env)
        say(f"  search {in_process['search_seconds']} s, fit {in_process['fit_seconds']} s")
        load.append(round(os.getloadavg()[0], 2))
        cluster = start_dask(Path(tmp) / "dask", workers=2)
        try:
            say(f"train stage on Dask ({cluster.address}, 2 workers x 1 thread) ...")
            first = run_train_stage(remote, {**env, DASK_SCHEDULER_ENV: cluster.address})
            say(
                f"  first search on the fresh cluster {first['search_seconds']} s; again, as the next retrain would ..."
            )
            on_dask = run_train_stage(remote, {**env, DASK_SCHEDULER_ENV: cluster.address})
            load.append(round(os.getloadavg()[0], 2))
            scoring = measure_scoring(cluster.address, remote)
        finally:
            cluster.stop()
        say(f"  search {on_dask['search_seconds']} s, fit {on_dask['fit_seconds']} s; scoring {scoring}")
        say("fit ceiling: the best candidate's fit in 1 process, then in 2 at once")
        ceiling.update(measure_fit_ceiling(local, in_process["best_params"]))
        say(f"  {ceiling}")
    after = measure_ceiling()
    say(f"ceiling again, after both arms: {after}")
    ceiling["ceiling_speedup_after_arms"] = after["ceiling_speedup"]
    scoring["dask_first_search_seconds"] = first["search_seconds"]
    scoring["speedup_first_search"] = round(in_process["search_seconds"] / first["search_seconds"], 2)
    print_and_write(rows, ceiling, in_process, on_dask, load, scoring)


def print_and_write(
    rows: int, ceiling: dict, in_process: dict, on_dask: dict, load: list[float], scoring: dict
) -> None:
    """The figures: each arm's seconds and the ratios, and whether both arms chose the same model."""
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    keys = ("search_seconds", "fit_seconds", "wall_seconds")
    figures = {
        "rows_train": rows,
        "rows_fit": in_process["rows_fit"],
        **{f"in_process_{k}": in_process[k] for k in keys},
        **{f"dask_{k}": on_dask[k] for k in keys},
        **{f"speedup_{k.removesuffix('_seconds')}": round(in_process[k] / on_dask[k], 2) for k in keys},
        "target_speedup_search": TARGET_SPEEDUP,
        **ceiling,
        "same_best_params": in_process["best_params"] == on_dask["best_params"],
        "same_cv_results": in_process["cv_results"] == on_dask["cv_results"],
        "best_params": on_dask["best_params"],
        "cv_candidates_by_round": [
            sum(1 for r in on_dask["cv_results"] if r["iter"] == i)
            for i in sorted({r["iter"] for r in on_dask["cv_results"]})
        ],
        **scoring,
        "workers": "2 dask worker processes x 1 thread, scheduler on loopback, warmed up",
        "load_average_1m_start_after_in_process_after_dask": load,
        "cpus": os.cpu_count(),
        "git_commit": git.stdout.strip(),
    }
    out = write_results("search", figures)
    print(
        f"\nsearch on {rows:,} rows: in-process {figures['in_process_search_seconds']} s, 2 Dask workers "
        f"{figures['dask_search_seconds']} s -> {figures['speedup_search']}x (target {TARGET_SPEEDUP}x, ceiling "
        f"{ceiling['ceiling_speedup']}x with a CPU loop, {ceiling['fit_ceiling_speedup']}x with the fit itself); "
        f"whole fit {figures['speedup_fit']}x -> {out}"
    )


if __name__ == "__main__":
    main()
