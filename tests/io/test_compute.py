"""Where the search runs: in this process unless a Dask scheduler is configured; an unreachable one is named."""

from __future__ import annotations

import re

import pytest

from retrainer.io.compute import DASK_SCHEDULER_ENV, ComputeUnreachable, search_backend
from retrainer.io.processes import free_port


def test_without_a_scheduler_the_search_stays_in_process(monkeypatch):
    import joblib

    monkeypatch.delenv(DASK_SCHEDULER_ENV, raising=False)
    with search_backend() as address:
        assert address is None
        assert type(joblib.parallel.get_active_backend()[0]).__name__ != "DaskDistributedBackend"


def test_an_unreachable_scheduler_is_an_error_naming_its_address(monkeypatch):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv(DASK_SCHEDULER_ENV, address)
    with pytest.raises(ComputeUnreachable, match=f"{address}.*{DASK_SCHEDULER_ENV}"), search_backend(timeout_s=1):
        pass


def test_an_address_of_an_unknown_scheme_is_an_error_naming_it(monkeypatch):
    monkeypatch.setenv(DASK_SCHEDULER_ENV, "notascheme://127.0.0.1:1")
    wrong = re.escape("notascheme://127.0.0.1:1 is not a Dask scheduler address")
    with pytest.raises(ComputeUnreachable, match=wrong), search_backend(timeout_s=1):
        pass
