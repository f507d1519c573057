"""Alerts: a log line on every pass; on an alarm, a JSON POST to the webhook from the environment, never fatal."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from retrainer.app.monitor import WEBHOOK_ENV, alert
from retrainer.io.processes import free_port

RESULT = {
    "time": "2013-09-15T12:00:00+00:00",
    "model_name": "flights-delay",
    "model_version": "3",
    "alarm": True,
    "drift_share": 0.524,
    "prediction_psi": 0.018,
    "rolling_auc": 0.61,
    "reference_auc": 0.668,
    "labelled": 5000,
    "fired": False,
    "reason": "consecutive: alarm 1/2 passes",
    "details": {"assessment": "left out of the webhook"},
}


@pytest.fixture
def receiver():
    """A real HTTP server on loopback that keeps every JSON body POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_an_alarm_is_logged_and_posted_to_the_webhook(receiver, monkeypatch, caplog):
    url, received = receiver
    monkeypatch.setenv(WEBHOOK_ENV, url)
    with caplog.at_level(logging.INFO):
        assert alert(RESULT, logging.getLogger("test")) == "sent"
    assert received == [{k: v for k, v in RESULT.items() if k != "details"}]
    (record,) = [r for r in caplog.records if r.name == "test"]
    assert (
        record.levelno == logging.WARNING and "ALARM" in record.message and "consecutive: alarm 1/2" in record.message
    )


def test_a_quiet_pass_is_logged_but_not_posted(receiver, monkeypatch, caplog):
    url, received = receiver
    monkeypatch.setenv(WEBHOOK_ENV, url)
    with caplog.at_level(logging.INFO):
        assert alert({**RESULT, "alarm": False, "reason": "no alarm"}, logging.getLogger("test")) is None
    assert received == []
    assert [r.levelno for r in caplog.records if r.name == "test"] == [logging.INFO]


def test_an_unreachable_webhook_is_logged_not_raised(monkeypatch, caplog):
    monkeypatch.setenv(WEBHOOK_ENV, f"http://127.0.0.1:{free_port()}/hook")
    with caplog.at_level(logging.INFO):
        outcome = alert(RESULT, logging.getLogger("test"))
    assert outcome.startswith("failed: ConnectError")
    assert any(r.levelno == logging.ERROR and "webhook failed" in r.message for r in caplog.records)
