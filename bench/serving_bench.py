"""Serving latency and throughput: in-process vs this BentoML service vs `mlflow models serve`, same model version.

Setup (not timed): a temporary RETRAINER_HOME with an MLflow SQLite store; a real HGB pipeline
(retrainer.steps.train.build_pipeline, default hyper-parameters) fitted on 20,000 ingested January-February 2013
flights and registered as v1 (champion alias), and a second fit with the same settings as v2 (challenger alias), so
the canary figures measure routing rather than a heavier challenger.
Timed, in one run, on v1, all single-threaded as the service scores:
  in-process   the sklearn pipeline's predict_proba on ready feature frames (the issue's baseline); the compiled
               scorer the service uses (retrainer.serving.scorer) on ready feature columns; and raw records ->
               FeatureBuilder.columns -> compiled scorer, i.e. the service's work minus HTTP, validation and logging;
  service      `bentoml serve retrainer.serving.service:RetrainerService` on a loopback port, raw records in:
               champion only (weight 0) and canary split (weight 0.5), in BLOCKS blocks of rotating order with
               mlflow's, so that load drift hits every arm alike (with --candidate-src DIR, once more importing
               `retrainer` from DIR, e.g. a patched copy of src/);
  mlflow       `mlflow models serve -m models:/<name>/1 --env-manager local -w 1`: ready *feature* records in
               (`{"dataframe_records": [...]}`), since the MLflow model is the bare pipeline; it runs throughout
               and is measured in the same rotating blocks as the service's two arms.
Single-record figures: sequential keep-alive requests (httpx.Client), each a different real February flight, after
a warm-up. 1,000-record figures: rows/s over 12 requests of different records. The service also builds the features
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrainer.io.processes import free_port, stop_process_group, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results" / "serving.json"
N_SINGLE = 300
WARMUP = 20
BATCH = 1_000
N_BATCHES = 12
BLOCKS = 6  # blocks of every HTTP arm, in rotating order
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
    """One thread, as the service scores: the sklearn pipeline on ready frames, the compiled scorer on ready columns,
    and raw records -> columns -> compiled scorer (the service's path without HTTP, validation and logging)."""
    from threadpoolctl import threadpool_limits

    from retrainer.serving.scorer import compile_pipeline

    compiled = compile_pipeline(pipeline)
    assert compiled is not None, "the bench pipeline should compile"
    single_frames = [builder.transform([r]) for r in singles]
    batch_frames = [builder.transform(b) for b in batches]
    single_columns = [builder.columns([r]) for r in singles]
    batch_columns = [builder.columns(b) for b in batches]

    def raw_call(records):
        return compiled.predict_proba(builder.columns(records))

    out = {}
    with threadpool_limits(limits=1):
        out["pipeline_ready_features"] = {
            "single": time_calls(pipeline.predict_proba, single_frames),
            "batch": time_batches(pipeline.predict_proba, batch_frames, BATCH),
        }
        out["compiled_ready_columns"] = {
            "single": time_calls(compiled.predict_proba, single_columns),
            "batch": time_batches(compiled.predict_proba, batch_columns, BATCH),
        }
        out["compiled_raw_records"] = {
            "single": time_calls(raw_call, [[r] for r in singles]),
            "batch": time_batches(raw_call, batches, BATCH),
        }
    return out


@dataclass
class Arm:
    """One way of serving, measured in blocks: what to set before a block, and how to send one payload."""

    prepare: Callable[[], None]
    post: Callable[[list], None]
    singles: list  # one record each
    batches: list  # BATCH records each


def measure_interleaved(arms: dict[str, Arm], blocks: int = BLOCKS) -> dict:
    """Every arm in each of `blocks` blocks, in a rotating order, so that load drift hits all arms alike."""
    names = list(arms)
    single_times: dict[str, list[float]] = {name: [] for name in names}
    batch_seconds: dict[str, float] = dict.fromkeys(names, 0.0)
    batch_requests: dict[str, int] = dict.fromkeys(names, 0)
    for block in range(blocks):
        for name in names[block % len(names) :] + names[: block % len(names)]:
            arm = arms[name]
            arm.prepare()
            for record in arm.singles[:WARMUP]:
                arm.post([record])
            for record in arm.singles[block::blocks]:
                tick = time.perf_counter()
                arm.post([record])
                single_times[name].append(time.perf_counter() - tick)
            arm.post(arm.batches[0])  # warm-up
            tick = time.perf_counter()
            for batch in arm.batches[block::blocks]:
                arm.post(batch)
                batch_requests[name] += 1
            batch_seconds[name] += time.perf_counter() - tick
    return {
        name: {
            "single": {**percentiles(single_times[name]), "load_average": load_average()},
            "batch": {
                "rows_per_second": round(BATCH * batch_requests[name] / batch_seconds[name]),
                "requests": batch_requests[name],
                "rows_per_request": BATCH,
                "seconds": round(batch_seconds[name], 3),
                "load_average": load_average(),
            },
        }
        for name in names
    }


def http_post(client, path: str, wrap: Callable[[list], dict]) -> Callable[[list], None]:
    def post(payload: list) -> None:
        client.post(path, json=wrap(payload)).raise_for_status()

    return post


def measure_service(
    home: Path, base_env: dict, servers: list, singles: list, batches: list, extra_env: dict, mlflow: Arm
) -> dict:
    """Start the service; champion only, canary split and `mlflow models serve`, interleaved in blocks; stop it."""
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
        rollout = client.get("/rollout").json()
        assert rollout["champion_version"] == "1", rollout

        def weight(value: float) -> Callable[[], None]:
            return lambda: client.post(
                "/admin/weights", json={"challenger_weight": value}, headers=auth
            ).raise_for_status()

        post = http_post(client, "/predict", lambda records: {"records": records})
        arms = {
            "champion_only": Arm(weight(0.0), post, singles, batches),
            "canary_split": Arm(weight(0.5), post, singles, batches),
            "mlflow_serve": mlflow,
        }
        say(f"champion only, canary split 0.5 and mlflow models serve, {BLOCKS} interleaved blocks ...")
        out.update(measure_interleaved(arms))
        weight(0.5)()
        arms_of = [p["arm"] for p in client.post("/predict", json={"records": singles}).json()["predictions"]]
        out["canary_split"]["challenger_share_of_singles"] = round(arms_of.count("challenger") / len(arms_of), 3)
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
        port = free_port()
        mlflow_server = Server(
            "mlflow models serve",
            [
                *(str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}/1", "--env-manager", "local"),
                *("-w", "1", "-h", "127.0.0.1", "-p", str(port)),
            ],
            base_env,
            home / "mlflow-serve.log",
            "/ping",
        )
        servers.append(mlflow_server)
        ready = mlflow_server.start(port)
        say(f"mlflow models serve ready in {ready:.1f} s")
        with httpx.Client(base_url=mlflow_server.url, timeout=60) as mlflow_client:
            mlflow = Arm(
                lambda: None,
                http_post(mlflow_client, "/invocations", lambda records: {"dataframe_records": records}),
                feature_singles,
                feature_batches,
            )
            results["service"] = measure_service(home, base_env, servers, singles, batches, {}, mlflow)
            if candidate_src is not None:
                say(f"candidate: service importing retrainer from {candidate_src} ...")
                results["service_candidate"] = measure_service(
                    home, base_env, servers, singles, batches, {"PYTHONPATH": str(candidate_src)}, mlflow
                )
        results["mlflow_serve"] = {"startup_seconds": round(ready, 2), **results["service"].pop("mlflow_serve")}
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
    for prefix, key in (("", "service"), ("candidate_", "service_candidate")):
        if key in r:
            out.update({prefix + name: value for name, value in compare_one(r, r[key]).items()})
    return out


def compare_one(r: dict, service: dict) -> dict:
    ip = r["in_process"]
    champ, split = service["champion_only"], service["canary_split"]
    ml = service.get("mlflow_serve", r["mlflow_serve"])  # the mlflow figures measured alongside this service
    p50 = champ["single"]["p50_ms"]
    c = {
        # the baseline: in-process predict of the same (sklearn) pipeline, features ready
        "service_p50_minus_in_process_pipeline_p50_ms": round(
            p50 - ip["pipeline_ready_features"]["single"]["p50_ms"], 3
        ),
        # what HTTP, validation and logging add: in-process doing exactly the service's scoring from raw records
        "service_p50_minus_in_process_same_path_p50_ms": round(p50 - ip["compiled_raw_records"]["single"]["p50_ms"], 3),
        "service_over_mlflow_throughput": round(champ["batch"]["rows_per_second"] / ml["batch"]["rows_per_second"], 2),
        "service_over_mlflow_single_request_rate": round(ml["single"]["p50_ms"] / p50, 2),
        "canary_minus_champion_p50_ms": round(split["single"]["p50_ms"] - p50, 3),
        "canary_over_champion_throughput": round(
            split["batch"]["rows_per_second"] / champ["batch"]["rows_per_second"], 3
        ),
        "compiled_over_pipeline_single_speedup": round(
            ip["pipeline_ready_features"]["single"]["p50_ms"] / ip["compiled_ready_columns"]["single"]["p50_ms"], 2
        ),
        "compiled_over_pipeline_batch_speedup": round(
            ip["compiled_ready_columns"]["batch"]["rows_per_second"]
            / ip["pipeline_ready_features"]["batch"]["rows_per_second"],
            2,
        ),
    }
    c["meets_latency_target"] = (
        c["service_p50_minus_in_process_pipeline_p50_ms"] <= TARGETS["service_p50_over_in_process_ms_max"]
    )
    c["meets_latency_target_against_same_path"] = (
        c["service_p50_minus_in_process_same_path_p50_ms"] <= TARGETS["service_p50_over_in_process_ms_max"]
    )
    c["meets_throughput_target"] = c["service_over_mlflow_throughput"] >= TARGETS["service_over_mlflow_throughput_min"]
    c["meets_canary_target"] = c["canary_minus_champion_p50_ms"] <= TARGETS["canary_p50_overhead_ms_max"]
    return c


def report(r: dict) -> None:
    ip = r["in_process"]
    rows = [
        ("in-process, sklearn pipeline, features ready", ip["pipeline_ready_features"]),
        ("in-process, compiled scorer, columns ready", ip["compiled_ready_columns"]),
        ("in-process, raw records -> columns -> compiled", ip["compiled_raw_records"]),
        ("service, champion only (raw records)", r["service"]["champion_only"]),
        ("service, canary split 0.5 (raw records)", r["service"]["canary_split"]),
        *(
            (f"service, {arm.replace('_', ' ')}, candidate src", r["service_candidate"][arm])
            for arm in ("champion_only", "canary_split")
            if "service_candidate" in r
        ),
        ("mlflow models serve (feature records)", r["mlflow_serve"]),
    ]
    lines = ["", "figure | p50 ms | p99 ms | rows/s (1,000-record) | load avg (1/5/15 min)"]
    for label, figures in rows:
        single, batch = figures["single"], figures["batch"]
        lines.append(
            f"{label} | {single['p50_ms']} | {single['p99_ms']} | {batch['rows_per_second']:,} | "
            f"{single['load_average']} / {batch['load_average']}"
        )
    lines.append("")
    lines.extend(f"{key}: {value}" for key, value in r["comparison"].items())
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
