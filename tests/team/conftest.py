"""Team-test fixtures: one Prefect server on the session's PostgreSQL."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_api(postgres_server, tmp_path_factory) -> str:
    """One Prefect server on the session's PostgreSQL (database `prefect`, with pg_trgm), loopback; its API URL.
    Its first start migrates the database: about 76 s under load (STACK_NOTES)."""
    from retrainer.team import TEAM_DIR, prefect_database, start_prefect, team_down

    home = tmp_path_factory.mktemp("prefect-server")
    folder = home / TEAM_DIR
    folder.mkdir()
    try:
        yield start_prefect(folder, prefect_database(postgres_server))
    finally:
        assert team_down(home) == ["prefect-server"]
