"""Where the search runs: in this process unless a Dask scheduler is configured; an unreachable one is named."""

from __future__ import annotations

import re
import socket
import threading

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


def _outcome(address: str, seconds: float) -> dict:
    outcome: dict = {}

    def connect() -> None:
        try:
            with search_backend(address, timeout_s=1):
                outcome["connected"] = True
        except BaseException as exc:  # the test reports whatever it raised
            outcome["error"] = exc

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(seconds)
    outcome["hung"] = thread.is_alive()
    return outcome


def test_a_port_that_accepts_but_never_answers_is_unreachable_not_a_hang():
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])  # kept open, never written to
            except TimeoutError:
                continue
            except OSError:  # closed by the test
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        outcome = _outcome(f"tcp://127.0.0.1:{server.getsockname()[1]}", seconds=30)
    finally:
        stop.set()
        for conn in accepted:
            conn.close()
        server.close()
    assert not outcome["hung"], "search_backend(timeout_s=1) still connecting after 30 s"
    assert isinstance(outcome.get("error"), ComputeUnreachable), outcome


def test_a_tls_address_without_tls_settings_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv(DASK_SCHEDULER_ENV, raising=False)
    outcome = _outcome("tls://127.0.0.1:1", seconds=30)
    assert not outcome["hung"]
    assert isinstance(outcome.get("error"), ComputeUnreachable), repr(outcome.get("error"))
