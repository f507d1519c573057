"""Shared fixtures: the real params and small slices of the real seed data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retrainer.config import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def seed_flights() -> pd.DataFrame:
    return pd.read_parquet(ROOT / "seeds" / "flights.parquet")


@pytest.fixture(scope="session")
def references(params: Params) -> dict[str, pd.DataFrame]:
    return {ref.name: pd.read_parquet(ROOT / ref.path) for ref in params.data.references}


@pytest.fixture(scope="session")
def january_sample(seed_flights: pd.DataFrame) -> pd.DataFrame:
    """Every 20th January flight: about 1,350 real rows, cancelled ones included."""
    return seed_flights.loc[seed_flights["month"] == 1].iloc[::20].reset_index(drop=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness for the whole session (it costs about 15 s); integration and end-to-end tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
