"""Fixtures the integration modules share: one Prefect test harness for the whole session (it costs about 15 s)."""

from __future__ import annotations

import pytest

# The test server migrates a fresh SQLite database at start: about 15 s on a quiet machine, minutes at load 10-20.
# The bound only catches a server that never starts.
HARNESS_STARTUP_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_TIMEOUT_S):
        yield
