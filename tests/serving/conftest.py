"""A tiny real registry (two versions of a real pipeline on January flights) and a real server over loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from retrainer.config import Params
from retrainer.io.processes import free_port, stop_process_group, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "test-admin-token"
THRESHOLDS = {"1": 0.5, "2": 0.3}
# A server is waited for until it answers; the bound only catches a server that never starts (BentoML took over
# 90 s to answer on a 2-core machine at load 10+).
SERVER_START_TIMEOUT_S = 300.0


@dataclass
class Registry:
    """Where the test models live and which env points at them."""

    home: Path
    env: dict[str, str]
    model_name: str


def register_fitted(
    params: Params,
    flights: pd.DataFrame,
    references: dict[str, pd.DataFrame],
    *,
    every: int = 13,
    threshold: float = 0.5,
    run_params: dict | None = None,
    extra_feature: str | None = None,
    **pipeline_params: object,
) -> str:
    """Fit the real pipeline on every `every`-th January flight and register it; returns its version.

    `pipeline_params` go to the pipeline's set_params (e.g. model__max_iter, or a whole `model`); `extra_feature`
    trains on one more column than the service builds, so every predict of that version raises.
    """
    from retrainer.io.project import pseudonymisation_key
    from retrainer.io.tracking import log_training_run
    from retrainer.steps.ingest import integrate
    from retrainer.steps.train import build_pipeline

    raw = flights.loc[flights["month"] == 1].iloc[::every].reset_index(drop=True)
    frame, _ = integrate(raw, references, params.data, pseudonymisation_key())
    numeric, categorical = list(params.features.numeric), list(params.features.categorical)
    if extra_feature:
        frame[extra_feature] = 1.0
        numeric.append(extra_feature)
    model = build_pipeline(numeric, categorical, params.train).set_params(**pipeline_params)
    features = [*numeric, *categorical]
    model.fit(frame[features], frame[params.data.target.name])
    registration = log_training_run(
        experiment=params.tracking.experiment,
        model_name=params.tracking.registered_model,
        model=model,
        features=features,
        train_frame=frame,
        params=run_params,
        tags={"threshold": str(threshold)},
    )
    return registration.version


def _register_versions(params: Params, flights: pd.DataFrame, references: dict[str, pd.DataFrame]) -> None:
    from retrainer.io import registry

    for version, max_iter in (("1", 30), ("2", 60)):
        registered = register_fitted(
            params,
            flights,
            references,
            threshold=THRESHOLDS[version],
            run_params={"max_iter": max_iter},
            model__max_iter=max_iter,
        )
        assert registered == version
    registry.set_alias(params.tracking.registered_model, registry.CHAMPION, "1")
    registry.set_alias(params.tracking.registered_model, registry.CHALLENGER, "2")


@pytest.fixture(scope="session")
def registry_home(
    tmp_path_factory: pytest.TempPathFactory,
    params: Params,
    seed_flights: pd.DataFrame,
    references: dict[str, pd.DataFrame],
) -> Registry:
    """RETRAINER_HOME with an MLflow store holding v1 (champion) and v2 (challenger alias)."""
    home = tmp_path_factory.mktemp("serving-home")
    env = {"RETRAINER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        _register_versions(params, seed_flights, references)
    return Registry(home=home, env=env, model_name=params.tracking.registered_model)


class Server:
    """`bentoml serve` in a subprocess on a loopback port, stopped by its own process group id."""

    def __init__(self, target: str, env: dict[str, str], log: Path, cwd: Path = ROOT):
        self.target, self.env, self.log_path, self.cwd = target, env, log, cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> Server:
        env = {**os.environ, **self.env, "BENTOML_DO_NOT_TRACK": "true", "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("RETRAINER_PARAMS", None)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_ready(self.proc, f"{self.url}/readyz", self.log_path, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None
        self._log.close()


def service_for(registry: Registry, log_path: Path) -> Server:
    """A started service from source, against `registry`, with the test admin token."""
    env = {
        **registry.env,
        "RETRAINER_ROOT": str(ROOT),
        "RETRAINER_ADMIN_TOKEN": TOKEN,
        "BENTOML_HOME": str(registry.home / "bentoml"),
    }
    running = Server("retrainer.serving.service:RetrainerService", env, log_path)
    running.start()
    return running


@pytest.fixture(scope="module")
def server(registry_home: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service from source, against the test registry, with an admin token."""
    running = service_for(registry_home, tmp_path_factory.mktemp("logs") / "serve.log")
    yield running
    running.stop()


def raw_records(seed_flights: pd.DataFrame, n: int, start: int = 0, outcomes: bool = False) -> list[dict]:
    """Real February flights as a client would send them (JSON types, time_hour as ISO text)."""
    rows = seed_flights.loc[seed_flights["month"] == 2].iloc[start : start + n]
    if not outcomes:
        rows = rows.drop(columns=["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"])
    return json.loads(rows.to_json(orient="records", date_format="iso"))
