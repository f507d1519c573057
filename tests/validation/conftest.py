"""Validation fixtures: a real March sample, a February reference, and one warm GX suite runner."""

from __future__ import annotations

import pandas as pd
import pytest

from retrainer.config import Params
from retrainer.validation import get_suite_runner


@pytest.fixture(scope="session")
def march(seed_flights: pd.DataFrame) -> pd.DataFrame:
    """Every 9th March flight (about 3,200 rows over the whole month), cancelled ones included."""
    return seed_flights.loc[seed_flights["month"] == 3].iloc[::9].reset_index(drop=True)


@pytest.fixture(scope="session")
def february(seed_flights: pd.DataFrame) -> pd.DataFrame:
    """Every 5th February flight: the training rows drift is measured against."""
    return seed_flights.loc[seed_flights["month"] == 2].iloc[::5].reset_index(drop=True)


@pytest.fixture(scope="session")
def suite_runner(params: Params):
    """Build the GX context and suite once for the whole session (the GX import alone takes seconds)."""
    return get_suite_runner(params)
