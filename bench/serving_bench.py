"""Serving latency and throughput: in-process vs this BentoML service vs `mlflow models serve`, same model version.

Setup (not timed): a temporary RETRAINER_HOME with an MLflow SQLite store; a real HGB pipeline
(retrainer.steps.train.build_pipeline, default hyper-parameters) fitted on 20,000 ingested January-February 2013
flights and registered as v1 (champion alias), and a second fit with the same settings as v2 (challenger alias), so
the canary figures measure routing rather than a heavier challenger.
Timed, in one run, on v1:
  in-process   pipeline.predict_proba on ready features: one record (p50/p99 over N calls), 1,000-record batches;
               also raw records -> FeatureBuilder.transform -> predict_proba (what the service does per request);
  service      `bentoml serve retrainer.serving.service:RetrainerService` on a loopback port, raw records in:
               champion only, then with the challenger at weight 0.5 (POST /admin/weights); then again, as a
               diagnostic, with OMP_NUM_THREADS=1 in the server's environment (and, with --candidate-src DIR,
               once more importing `retrainer` from DIR, e.g. a patched copy of src/);
  mlflow       `mlflow models serve -m models:/<name>/1 --env-manager local -w 1`: ready *feature* records in
               (`{"dataframe_records": [...]}`), since the MLflow model is the bare pipeline.
Single-record figures: N sequential keep-alive requests (httpx.Client), each a different real February flight, after
a warm-up. 1,000-record figures: rows/s over ~10 requests of different records. The service also builds the features
(reference joins as key lookups, pseudonyms) and logs every prediction to SQLite; mlflow serve does neither: both the
raw difference and that caveat are reported.

Run: .venv/bin/python bench/serving_bench.py   (prints figures, writes bench/results/serving.json;
asserts nothing about time). Loopback only; every server is stopped at the end, also on error.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retrainer.io.processes import free_port, stop_process_group, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results" / "serving.json"
N_SINGLE = 300
WARMUP = 20
BATCH = 1_000
N_BATCHES = 10
TRAIN_ROWS = 20_000
TOKEN = "bench-admin-token"
SERVICE = "retrainer.serving.service:RetrainerService"
TARGETS = {
    "service_p50_over_in_process_ms_max": 3.0,
    "service_over_mlflow_throughput_min": 2.0,
    "canary_p50_overhead_ms_max": 0.5,
}


def say(message: str) -> None:
    print(f"[serving-bench] {message}", flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Server:
    """A server subprocess in its own session on loopback, stopped by its process group id."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, ready_path: str):
        self.name, self.args, self.env, self.log_path, self.ready_path = name, args, env, log, ready_path
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, port: int, timeout: float = 120.0) -> float:
        self.url = f"http://127.0.0.1:{port}"
        self._log = self.log_path.open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_until_ready(self.proc, self.url + self.ready_path, self.log_path, timeout, self.name)
        return time.perf_counter() - started

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "n": len(ms),
    }


def time_calls(call, payloads: list, warmup: int = WARMUP) -> dict[str, float]:
    for payload in payloads[:warmup]:
        call(payload)
    times = []
    for payload in payloads:
        tick = time.perf_counter()
        call(payload)
        times.append(time.perf_counter() - tick)
    out = percentiles(times)
    out["load_average"] = load_average()
    return out


def time_batches(call, batches: list, rows: int) -> dict[str, float]:
    call(batches[0])  # warm-up
    tick = time.perf_counter()
    for batch in batches:
        call(batch)
    seconds = time.perf_counter() - tick
    return {
        "rows_per_second": round(rows * len(batches) / seconds),
        "requests": len(batches),
        "rows_per_request": rows,
        "seconds": round(seconds, 3),
        "load_average": load_average(),
    }


def register_models(params, flights, references) -> tuple[object, list[str], int]:
    """v1 (champion) and v2 (challenger), real HGB pipelines on 20k ingested Jan-Feb flights; returns v1's pipeline."""
    from threadpoolctl import threadpool_limits

    from retrainer.io import registry
    from retrainer.io.project import pseudonymisation_key
    from retrainer.io.tracking import log_training_run
    from retrainer.steps.ingest import integrate
    from retrainer.steps.train import build_pipeline

    window = flights.loc[flights["month"].isin([1, 2])]
    raw = window.iloc[:: max(1, len(window) // TRAIN_ROWS)].head(TRAIN_ROWS).reset_index(drop=True)
    frame, report = integrate(raw, references, params.data, pseudonymisation_key())
    numeric, categorical = list(params.features.numeric), list(params.features.categorical)
    features = [*numeric, *categorical]
    pipelines = {}
    # Same configuration for both: the canary figures then measure routing, not a heavier challenger.
    for version, max_iter in (("1", 100), ("2", 100)):
        model = build_pipeline(numeric, categorical, params.train).set_params(model__max_iter=max_iter)
        tick = time.perf_counter()
        with threadpool_limits(limits=1):  # setup only: OpenMP spin-waits badly on a busy 2-core machine
            model.fit(frame[features], frame[params.data.target.name])
        say(f"v{version}: fitted on {len(frame):,} rows in {time.perf_counter() - tick:.1f} s")
        registration = log_training_run(
            experiment=params.tracking.experiment,
            model_name=params.tracking.registered_model,
            model=model,
            features=features,
            train_frame=frame,
            params={"max_iter": max_iter, "bench": "serving"},
            tags={"threshold": "0.5"},
        )
        pipelines[registration.version] = model
        say(f"v{registration.version}: {model.named_steps['model'].n_iter_} boosting iterations")
    name = params.tracking.registered_model
    registry.set_alias(name, registry.CHAMPION, "1")
    registry.set_alias(name, registry.CHALLENGER, "2")
    return pipelines["1"], features, report.rows_out


def raw_records(flights, start: int, n: int) -> list[dict]:
    """Real February flights as a client sends them (JSON types, time_hour ISO text, no outcome columns)."""
    rows = flights.loc[flights["month"] == 2].iloc[start : start + n]
    rows = rows.drop(columns=["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"])
    return json.loads(rows.to_json(orient="records", date_format="iso"))


def measure_in_process(pipeline, builder, singles: list[dict], batches: list[list[dict]]) -> dict:
    from threadpoolctl import threadpool_limits

    single_frames = [builder.transform([r]) for r in singles]
    batch_frames = [builder.transform(b) for b in batches]
    out = {}
    for label, threads in (("threads_1", 1), ("threads_default", None)):
        with threadpool_limits(limits=threads):
            out[label] = {
                "single_ready_features": time_calls(pipeline.predict_proba, single_frames),
                "batch_ready_features": time_batches(pipeline.predict_proba, batch_frames, BATCH),
            }
    with threadpool_limits(limits=1):

        def raw_call(records):
            return pipeline.predict_proba(builder.transform(records))

        out["threads_1"]["single_raw_records"] = time_calls(raw_call, [[r] for r in singles])
        out["threads_1"]["batch_raw_records"] = time_batches(raw_call, batches, BATCH)
    return out


def measure_http(url_path: str, client, singles: list, batches: list, wrap) -> dict:
    def post(payload):
        response = client.post(url_path, json=wrap(payload))
        response.raise_for_status()
        return response

    return {
        "single": time_calls(post, [[r] for r in singles]),
        "batch": time_batches(post, batches, BATCH),
    }


def measure_service(home: Path, base_env: dict, servers: list, singles: list, batches: list, extra_env: dict) -> dict:
    """Start the service, measure champion only (weight 0), then the canary split (weight 0.5), stop it."""
    import httpx

    port = free_port()
    service = Server(
        "bentoml serve",
        [str(BIN / "bentoml"), "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)],
        {
            **base_env,
            **extra_env,
            "RETRAINER_ROOT": str(ROOT),
            "RETRAINER_ADMIN_TOKEN": TOKEN,
            "BENTOML_HOME": str(home / "bentoml"),
        },
        home / "bentoml-serve.log",
        "/readyz",
    )
    servers.append(service)
    ready = service.start(port)
    say(f"service ready in {ready:.1f} s {extra_env or ''}")
    out: dict = {"startup_seconds": round(ready, 2), "extra_env": extra_env}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=service.url, timeout=60) as client:
        client.post("/admin/weights", json={"challenger_weight": 0.0}, headers=auth).raise_for_status()
        rollout = client.get("/rollout").json()
        assert rollout["champion_version"] == "1" and not rollout["challenger_weight"], rollout
        say("service, champion only ...")
        out["champion_only"] = measure_http("/predict", client, singles, batches, lambda rs: {"records": rs})
        weights = client.post("/admin/weights", json={"challenger_weight": 0.5}, headers=auth)
        weights.raise_for_status()
        say(f"service, canary split {weights.json()} ...")
        out["canary_split"] = measure_http("/predict", client, singles, batches, lambda rs: {"records": rs})
        arms = [p["arm"] for p in client.post("/predict", json={"records": singles}).json()["predictions"]]
        out["canary_split"]["challenger_share_of_singles"] = round(arms.count("challenger") / len(arms), 3)
    service.stop()
    return out


def main(candidate_src: Path | None = None) -> None:
    import httpx
    import pandas as pd

    home = Path(tempfile.mkdtemp(prefix="retrainer-serving-bench-"))
    env_vars = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    os.environ.update(env_vars)
    os.environ.pop("RETRAINER_PARAMS", None)
    results: dict = {"load_average_start": load_average(), "targets": TARGETS}  # no temp paths in the results
    say(f"home {home}; load average {results['load_average_start']}")

    from retrainer.config import load_params
    from retrainer.serving.features import FeatureBuilder, load_references

    params = load_params(ROOT / "params.yaml")
    flights = pd.read_parquet(ROOT / "seeds" / "flights.parquet")
    references = load_references(params, ROOT)
    pipeline, features, rows_trained = register_models(params, flights, references)
    name = params.tracking.registered_model
    results["model"] = {"name": name, "version": "1", "rows_trained": rows_trained, "features": len(features)}
    builder = FeatureBuilder(params, references)

    singles = raw_records(flights, 0, N_SINGLE)
    batches = [raw_records(flights, 1_000 + i * BATCH, BATCH) for i in range(N_BATCHES)]
    say("in-process ...")
    results["in_process"] = measure_in_process(pipeline, builder, singles, batches)

    def feature_records(records: list[dict]) -> list[dict]:
        return json.loads(builder.transform(records).to_json(orient="records"))

    feature_singles = [feature_records([r])[0] for r in singles]
    feature_batches = [feature_records(b) for b in batches]

    base_env = {**os.environ, **env_vars, "PATH": f"{BIN}:{os.environ['PATH']}", "BENTOML_DO_NOT_TRACK": "true"}
    servers: list[Server] = []
    try:
        results["service"] = measure_service(home, base_env, servers, singles, batches, {})
        # Diagnostic: the same service with OpenMP also capped by the environment. ServingRuntime caps OpenMP in
        # each worker thread that runs predict() (limit_this_thread), so both runs should agree within noise; a
        # clear gap means the per-thread cap no longer reaches the threads that score.
        say("diagnostic: service with OMP_NUM_THREADS=1 ...")
        results["service_omp_num_threads_1"] = measure_service(
            home, base_env, servers, singles, batches, {"OMP_NUM_THREADS": "1"}
        )
        if candidate_src is not None:
            say(f"candidate: service importing retrainer from {candidate_src} ...")
            results["service_candidate"] = measure_service(
                home, base_env, servers, singles, batches, {"PYTHONPATH": str(candidate_src)}
            )

        port = free_port()
        mlflow_server = Server(
            "mlflow models serve",
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{name}/1",
                "--env-manager",
                "local",
                "-w",
                "1",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            base_env,
            home / "mlflow-serve.log",
            "/ping",
        )
        servers.append(mlflow_server)
        ready = mlflow_server.start(port)
        say(f"mlflow models serve ready in {ready:.1f} s")
        with httpx.Client(base_url=mlflow_server.url, timeout=60) as client:
            say("mlflow models serve ...")
            results["mlflow_serve"] = {"startup_seconds": round(ready, 2)}
            results["mlflow_serve"].update(
                measure_http(
                    "/invocations", client, feature_singles, feature_batches, lambda rs: {"dataframe_records": rs}
                )
            )
        mlflow_server.stop()
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)

    results["comparison"] = compare(results)
    results["load_average_end"] = load_average()
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2), encoding="utf-8")
    report(results)
    say(f"wrote {RESULTS.relative_to(ROOT)}")


def compare(r: dict) -> dict:
    out = {}
    for prefix, key in (("", "service"), ("omp1_", "service_omp_num_threads_1"), ("candidate_", "service_candidate")):
        if key not in r:
            continue
        for name, value in compare_one(r, r[key]).items():
            out[prefix + name] = value
    return out


def compare_one(r: dict, service: dict) -> dict:
    ip = r["in_process"]["threads_1"]
    champ, split, ml = service["champion_only"], service["canary_split"], r["mlflow_serve"]
    c = {
        "service_p50_minus_in_process_ready_features_p50_ms": round(
            champ["single"]["p50_ms"] - ip["single_ready_features"]["p50_ms"], 3
        ),
        # like-for-like latency: in-process also starting from raw records (feature building included)
        "service_p50_minus_in_process_raw_records_p50_ms": round(
            champ["single"]["p50_ms"] - ip["single_raw_records"]["p50_ms"], 3
        ),
        "service_over_mlflow_throughput": round(champ["batch"]["rows_per_second"] / ml["batch"]["rows_per_second"], 2),
        "service_over_mlflow_single_request_rate": round(ml["single"]["p50_ms"] / champ["single"]["p50_ms"], 2),
        "canary_minus_champion_p50_ms": round(split["single"]["p50_ms"] - champ["single"]["p50_ms"], 3),
        "canary_over_champion_throughput": round(
            split["batch"]["rows_per_second"] / champ["batch"]["rows_per_second"], 3
        ),
        # what feature building costs in-process: the share of the raw-records batch time spent building features
        "feature_build_share_of_in_process_raw_batch": round(
            1 - ip["batch_raw_records"]["rows_per_second"] / ip["batch_ready_features"]["rows_per_second"], 3
        ),
    }
    c["meets_latency_target"] = (
        c["service_p50_minus_in_process_ready_features_p50_ms"] <= TARGETS["service_p50_over_in_process_ms_max"]
    )
    c["meets_throughput_target"] = c["service_over_mlflow_throughput"] >= TARGETS["service_over_mlflow_throughput_min"]
    c["meets_canary_target"] = c["canary_minus_champion_p50_ms"] <= TARGETS["canary_p50_overhead_ms_max"]
    return c


def report(r: dict) -> None:
    ip = r["in_process"]
    lines = ["", "figure | p50 ms | p99 ms | rows/s (1,000-record) | load avg (1/5/15 min)"]
    for label, single, batch in (
        (
            "in-process, features ready, 1 thread",
            ip["threads_1"]["single_ready_features"],
            ip["threads_1"]["batch_ready_features"],
        ),
        (
            "in-process, features ready, default threads",
            ip["threads_default"]["single_ready_features"],
            ip["threads_default"]["batch_ready_features"],
        ),
        (
            "in-process, raw records -> features, 1 thread",
            ip["threads_1"]["single_raw_records"],
            ip["threads_1"]["batch_raw_records"],
        ),
        (
            "service, champion only (raw records)",
            r["service"]["champion_only"]["single"],
            r["service"]["champion_only"]["batch"],
        ),
        (
            "service, canary split 0.5 (raw records)",
            r["service"]["canary_split"]["single"],
            r["service"]["canary_split"]["batch"],
        ),
        (
            "service, champion only, OMP_NUM_THREADS=1 (diagnostic)",
            r["service_omp_num_threads_1"]["champion_only"]["single"],
            r["service_omp_num_threads_1"]["champion_only"]["batch"],
        ),
        (
            "service, canary split 0.5, OMP_NUM_THREADS=1 (diagnostic)",
            r["service_omp_num_threads_1"]["canary_split"]["single"],
            r["service_omp_num_threads_1"]["canary_split"]["batch"],
        ),
        *(
            (
                f"service, {arm.replace('_', ' ')}, candidate src",
                r["service_candidate"][arm]["single"],
                r["service_candidate"][arm]["batch"],
            )
            for arm in ("champion_only", "canary_split")
            if "service_candidate" in r
        ),
        ("mlflow models serve (feature records)", r["mlflow_serve"]["single"], r["mlflow_serve"]["batch"]),
    ):
        lines.append(
            f"{label} | {single['p50_ms']} | {single['p99_ms']} | {batch['rows_per_second']:,} | "
            f"{single['load_average']} / {batch['load_average']}"
        )
    lines.append("")
    for key, value in r["comparison"].items():
        lines.append(f"{key}: {value}")
    lines.append(
        "caveat: the service parses raw records, joins weather/planes, pseudonymises and logs each prediction;"
        " mlflow serve gets ready feature records and logs nothing."
    )
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--candidate-src",
        type=Path,
        help="also measure the service importing `retrainer` from this folder (e.g. a patched copy of src/)",
    )
    main(parser.parse_args().candidate_src)
