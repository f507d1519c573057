"""Serving scale-out: throughput of 2 service replicas behind HAProxy vs 1 replica (direct, and through the proxy),
1,000-record requests from a few concurrent clients.

Setup (not timed), as bench/serving_bench.py: a temporary RETRAINER_HOME with an MLflow SQLite store, a real HGB
pipeline fitted on 20,000 ingested January-February 2013 flights as v1 (champion; no challenger traffic). Two
replicas (`bentoml serve retrainer.serving.service:RetrainerService`, one worker each) share that home: the rollout
state, the prediction log (one SQLite file in WAL mode) and the journal. Two HAProxy instances (io/proxy.py): one in
front of replica 1 only, one in front of both.
Timed, in BLOCKS blocks of rotating order (load drift from the other jobs on the machine hits every arm alike):
CLIENTS threads each send REQUESTS_PER_CLIENT requests of BATCH different real February flights; rows/s is all the
rows answered over the wall time of the block; the load average is sampled every half second during the blocks.

Run: .venv/bin/python bench/replicas_bench.py   (prints figures, writes bench/results/replicas.json;
asserts nothing about time). Needs `haproxy` (apt-get install haproxy). Loopback only; everything is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from results_file import write_results
from serving_bench import BIN, ROOT, SERVICE, TOKEN, Server, load_average, raw_records, register_models, say

from retrainer.io.processes import free_port

CLIENTS = 4
REQUESTS_PER_CLIENT = 6
BATCH = 1_000
BLOCKS = 3


def timed_block(url: str, batches: list[list[dict]]) -> float:
    """Rows/s of CLIENTS threads each sending REQUESTS_PER_CLIENT of `batches` to `url`/predict."""
    import httpx

    failures: list[str] = []

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as session:
            for i in range(REQUESTS_PER_CLIENT):
                batch = batches[(offset + i * CLIENTS) % len(batches)]
                answer = session.post("/predict", json={"records": batch})
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code}: {answer.text[:200]}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    tick = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - tick
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed at {url}: {failures[:3]}")
    return CLIENTS * REQUESTS_PER_CLIENT * BATCH / seconds


def sample_load(stop: threading.Event, samples: list[float]) -> None:
    while not stop.wait(0.5):
        samples.append(os.getloadavg()[0])


def start_replicas(home: Path, base_env: dict, servers: list) -> list[str]:
    env = {**base_env, "RETRAINER_ROOT": str(ROOT), "RETRAINER_ADMIN_TOKEN": TOKEN, "BENTOML_HOME": str(home / "b")}
    urls = []
    for index in (1, 2):
        port = free_port()
        command = [str(BIN / "bentoml"), "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
        server = Server(f"replica {index}", command, env, home / f"replica-{index}.log", "/readyz")
        servers.append(server)
        say(f"replica {index} ready in {server.start(port, timeout=600):.1f} s")
        urls.append(server.url)
    return urls


def measure(arms: dict[str, str], batches: list[list[dict]]) -> dict:
    """Each arm's rows/s per block and their median, in rotating order; the load average during the blocks."""
    import statistics

    for url in arms.values():  # warm-up: every replica scores once through every route
        timed_block(url, batches[:1])
    figures: dict[str, list[float]] = {name: [] for name in arms}
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_load, args=(stop, samples), daemon=True)
    sampler.start()
    names = list(arms)
    for block in range(BLOCKS):
        for name in names[block % len(names) :] + names[: block % len(names)]:
            figures[name].append(round(timed_block(arms[name], batches)))
            say(f"block {block + 1}: {name} {figures[name][-1]:,} rows/s")
    stop.set()
    out = {name: {"rows_per_second": statistics.median(v), "blocks": v} for name, v in figures.items()}
    out["load_average_during"] = {
        "min": min(samples),
        "max": max(samples),
        "mean": round(sum(samples) / len(samples), 2),
    }
    return out


def main() -> None:
    import pandas as pd

    from retrainer.config import load_params
    from retrainer.io.proxy import start_proxy
    from retrainer.serving.features import load_references

    home = Path(tempfile.mkdtemp(prefix="retrainer-replicas-bench-"))
    env_vars = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    os.environ.update(env_vars)
    os.environ.pop("RETRAINER_PARAMS", None)
    results: dict = {"load_average_start": load_average(), "clients": CLIENTS, "rows_per_request": BATCH}
    params = load_params(ROOT / "params.yaml")
    flights = pd.read_parquet(ROOT / "seeds" / "flights.parquet")
    register_models(params, flights, load_references(params, ROOT))
    batches = [raw_records(flights, 1_000 + i * BATCH, BATCH) for i in range(CLIENTS * REQUESTS_PER_CLIENT)]
    base_env = {**os.environ, **env_vars, "PATH": f"{BIN}:{os.environ['PATH']}", "BENTOML_DO_NOT_TRACK": "true"}
    servers: list = []
    proxies: list = []
    try:
        first, second = start_replicas(home, base_env, servers)
        proxies.append(start_proxy(home / "proxy-1", free_port(), [first]))
        proxies.append(start_proxy(home / "proxy-2", free_port(), [first, second]))
        arms = {
            "one_replica_direct": first,
            "one_replica_via_proxy": proxies[0].url,
            "two_replicas_via_proxy": proxies[1].url,
        }
        results.update(measure(arms, batches))
    finally:
        for proxy in proxies:
            proxy.stop()
        for server in servers:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)
    two = results["two_replicas_via_proxy"]["rows_per_second"]
    results["ratio_two_over_one_via_proxy"] = round(two / results["one_replica_via_proxy"]["rows_per_second"], 3)
    results["ratio_two_over_one_direct"] = round(two / results["one_replica_direct"]["rows_per_second"], 3)
    results["load_average_end"] = load_average()
    results["cpus"] = os.cpu_count()
    write_results("replicas", results)


if __name__ == "__main__":
    sys.exit(main())
