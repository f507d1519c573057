"""The service over real HTTP on loopback: prediction, validation, admin, routing, feedback, metrics, restart."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import statistics
import subprocess
import time

import httpx
import pandas as pd
import pytest
from conftest import BIN, TOKEN, Registry, Server, raw_records

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(server: Server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _weights(client: httpx.Client, weight: float) -> dict:
    response = client.post("/admin/weights", json={"challenger_weight": weight}, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_readiness(client: httpx.Client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_predict_one_record_from_the_champion(client: httpx.Client, seed_flights: pd.DataFrame):
    _weights(client, 0.0)
    response = client.post("/predict", json={"records": raw_records(seed_flights, 1)})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["arm"] == "champion"
    assert prediction["model_version"] == "1"
    assert 0.0 <= prediction["probability"] <= 1.0
    assert prediction["label"] == int(prediction["probability"] >= 0.5)
    assert re.fullmatch(r"[0-9a-f-]{36}", prediction["prediction_id"])


def test_predict_many_records_keeps_order_and_unique_ids(client: httpx.Client, seed_flights: pd.DataFrame):
    records = raw_records(seed_flights, 300, outcomes=True)
    first = client.post("/predict", json={"records": records}).json()["predictions"]
    reversed_ = client.post("/predict", json={"records": records[::-1]}).json()["predictions"]
    assert len(first) == 300
    assert len({p["prediction_id"] for p in first + reversed_}) == 600
    assert [p["probability"] for p in first] == [p["probability"] for p in reversed_[::-1]]
    assert len({round(p["probability"], 6) for p in first}) > 10, "the model should not answer a constant"


def test_malformed_json_is_a_client_error(client: httpx.Client):
    response = client.post("/predict", content=b'{"records": [', headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(
    ("change", "field"),
    [({"month": 13}, "month"), ({"hour": 24}, "hour"), ({"carrier": None}, "carrier"), ({"distance": -5}, "distance")],
)
def test_bad_field_is_a_client_error_naming_it(client: httpx.Client, seed_flights: pd.DataFrame, change, field):
    record = {**raw_records(seed_flights, 1)[0], **change}
    response = client.post("/predict", json={"records": [record]})
    assert 400 <= response.status_code < 500
    assert field in json.dumps(response.json())


def test_missing_field_and_too_many_records_are_client_errors(client: httpx.Client, seed_flights: pd.DataFrame):
    record = raw_records(seed_flights, 1)[0]
    del record["carrier"]
    response = client.post("/predict", json={"records": [record]})
    assert response.status_code == 400 and "carrier" in response.text
    too_many = client.post("/predict", json={"records": [raw_records(seed_flights, 1)[0]] * 10_001})
    assert too_many.status_code == 400 and "records" in too_many.text
    assert too_many.json()["error"].endswith("between 1 and 10,000 records are scored per request, not 10,001")
    empty = client.post("/predict", json={"records": []})
    assert empty.status_code == 400 and empty.json()["detail"][0]["loc"] == ["records"], empty.text
    assert "IODescriptor" not in empty.text and "pydantic.dev" not in empty.text


def test_admin_needs_the_bearer_token(client: httpx.Client):
    assert client.post("/admin/weights", json={"challenger_weight": 0.3}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/admin/weights", json={"challenger_weight": 0.3}, headers=wrong).status_code == 401
    for route in ("/admin/promote", "/admin/rollback", "/admin/reload"):
        assert client.post(route, json={}, headers=wrong).status_code == 401, route
        assert client.post(route, json={}).status_code == 401, route
    assert client.get("/rollout").json()["challenger_weight"] == 0.0
    state = _weights(client, 0.3)
    assert state["challenger_weight"] == 0.3 and state["challenger_version"] == "2"
    assert client.get("/rollout").json()["challenger_weight"] == 0.3
    bad = client.post("/admin/weights", json={"challenger_weight": 1.5}, headers=ADMIN)
    assert bad.status_code == 400 and "challenger_weight" in bad.text


def test_routing_is_sticky_and_follows_the_weight(client: httpx.Client, seed_flights: pd.DataFrame):
    _weights(client, 0.5)
    records = raw_records(seed_flights, 200, start=1000)
    first = client.post("/predict", json={"records": records}).json()["predictions"]
    again = client.post("/predict", json={"records": records}).json()["predictions"]
    arms = [p["arm"] for p in first]
    assert arms == [p["arm"] for p in again]
    assert 60 <= arms.count("challenger") <= 140
    by_arm = {p["arm"]: p["model_version"] for p in first}
    assert by_arm == {"champion": "1", "challenger": "2"}
    challenger = [p for p in first if p["arm"] == "challenger"]
    assert all(p["label"] == int(p["probability"] >= 0.3) for p in challenger)
    _weights(client, 0.0)
    assert {p["arm"] for p in client.post("/predict", json={"records": records}).json()["predictions"]} == {"champion"}


def test_feedback_for_known_and_unknown_predictions(
    client: httpx.Client, seed_flights: pd.DataFrame, registry_home: Registry
):
    (prediction,) = client.post("/predict", json={"records": raw_records(seed_flights, 1)}).json()["predictions"]
    accepted = client.post("/feedback", json={"prediction_id": prediction["prediction_id"], "label": 1})
    assert accepted.status_code == 200, accepted.text
    unknown = client.post("/feedback", json={"prediction_id": "00000000-0000-4000-8000-000000000000", "label": 0})
    assert unknown.status_code == 404
    assert client.post("/feedback", json={"prediction_id": prediction["prediction_id"], "label": 2}).status_code == 400
    as_bool = client.post("/feedback", json={"prediction_id": prediction["prediction_id"], "label": True})
    assert as_bool.status_code == 400 and "label" in as_bool.text, "true is not a label, as at /predict"
    with sqlite3.connect(registry_home.home / "predictions.db") as db:
        logged = db.execute(
            "SELECT arm, model_version, length(features_digest), label FROM predictions WHERE id = ?",
            (prediction["prediction_id"],),
        ).fetchone()
        observed = db.execute(
            "SELECT feedback_label FROM predictions WHERE id = ?", (prediction["prediction_id"],)
        ).fetchone()
    assert logged == ("champion", "1", 64, prediction["label"])
    assert observed == (1,)


def test_a_second_label_for_a_prediction_is_a_conflict_and_the_first_one_stands(
    client: httpx.Client, seed_flights: pd.DataFrame, registry_home: Registry
):
    (prediction,) = client.post("/predict", json={"records": raw_records(seed_flights, 1, start=77)}).json()[
        "predictions"
    ]
    identifier = prediction["prediction_id"]
    first = client.post("/feedback", json={"prediction_id": identifier, "label": 0})
    assert first.status_code == 200 and first.json()["already_recorded"] is False, first.text
    retry = client.post("/feedback", json={"prediction_id": identifier, "label": 0})
    assert retry.status_code == 200 and retry.json()["already_recorded"] is True, retry.text
    conflict = client.post("/feedback", json={"prediction_id": identifier, "label": 1})
    assert conflict.status_code == 409, conflict.text
    assert identifier in conflict.text and "first label stands" in conflict.text
    with sqlite3.connect(registry_home.home / "predictions.db") as db:
        (stored,) = db.execute("SELECT feedback_label FROM predictions WHERE id = ?", (identifier,)).fetchone()
    assert stored == 0


def _counter(text: str, name: str, arm: str) -> float:
    match = re.search(rf'^{name}\{{[^}}]*arm="{arm}"[^}}]*\}} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests_per_arm(client: httpx.Client, seed_flights: pd.DataFrame):
    before = client.get("/metrics").text
    _weights(client, 0.5)
    records = raw_records(seed_flights, 50, start=2000)
    client.post("/predict", json={"records": records})
    _weights(client, 0.0)
    after = client.get("/metrics").text
    for arm in ("champion", "challenger"):
        assert _counter(after, "retrainer_requests_total", arm) == _counter(before, "retrainer_requests_total", arm) + 1
        assert _counter(after, "retrainer_model_latency_seconds_count", arm) >= 1
    scored = sum(
        _counter(after, "retrainer_records_total", arm) - _counter(before, "retrainer_records_total", arm)
        for arm in ("champion", "challenger")
    )
    assert scored == 50
    assert "retrainer_challenger_weight{" in after


def test_single_record_latency_over_loopback(client: httpx.Client, seed_flights: pd.DataFrame, capsys):
    records = raw_records(seed_flights, 60, start=3000)
    timings = []
    for record in records:
        tick = time.perf_counter()
        assert client.post("/predict", json={"records": [record]}).status_code == 200
        timings.append((time.perf_counter() - tick) * 1000)
    p50 = statistics.median(timings)
    with capsys.disabled():
        print(f"\nsingle-record /predict over loopback: p50 {p50:.1f} ms, max {max(timings):.1f} ms (n=60)")
    assert p50 > 0


def test_weights_survive_a_restart(server: Server, seed_flights: pd.DataFrame):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert _weights(http, 0.25)["challenger_weight"] == 0.25
    server.stop()
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        state = http.get("/rollout").json()
        assert (state["challenger_version"], state["challenger_weight"]) == ("2", 0.25)
        arms = {
            p["arm"]
            for p in http.post("/predict", json={"records": raw_records(seed_flights, 200)}).json()["predictions"]
        }
        assert arms == {"champion", "challenger"}
        _weights(http, 0.0)


def test_a_stopped_service_has_logged_every_prediction_it_answered(
    server: Server, seed_flights: pd.DataFrame, registry_home: Registry
):
    """The log is written by a thread after each answer: a SIGTERM right after answering must not lose any row."""
    answered = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for start in range(0, 4_000, 1_000):
            response = http.post("/predict", json={"records": raw_records(seed_flights, 1_000, start=start)})
            answered += [p["prediction_id"] for p in response.json()["predictions"]]
    server.stop()  # SIGTERM at once: the writes still queued are flushed on shutdown
    try:
        with sqlite3.connect(registry_home.home / "predictions.db") as db:
            db.execute("CREATE TEMP TABLE answered (id TEXT PRIMARY KEY)")
            db.executemany("INSERT INTO answered VALUES (?)", [(i,) for i in answered])
            logged = db.execute("SELECT COUNT(*) FROM answered JOIN predictions USING (id)").fetchone()[0]
            with_features = db.execute(  # each answered id's request holds one row of features per prediction
                "SELECT COUNT(*) FROM answered a JOIN requests r ON r.key = substr(a.id, 1, 30) "
                "WHERE json_array_length(r.features, '$.month') = r.rows"
            ).fetchone()[0]
    finally:
        server.start()
    assert len(answered) == 4_000
    assert logged == with_features == 4_000


POST_ROUTES = ("/predict", "/feedback", "/admin/weights", "/admin/promote", "/admin/rollback", "/admin/reload")
MULTIPART_WITHOUT_BOUNDARY = {"Content-Type": "multipart/form-data"}


@pytest.mark.parametrize("route", POST_ROUTES)
def test_a_body_that_is_not_json_is_refused_on_every_post_route(client: httpx.Client, route: str):
    """multipart/form-data without a boundary was a 500 on every route; only application/json is accepted."""
    headers = {**MULTIPART_WITHOUT_BOUNDARY, **(ADMIN if route.startswith("/admin/") else {})}
    response = client.post(route, content=b"--x\r\n", headers=headers)
    assert response.status_code == 415, response.text
    assert response.json() == {"error": "only application/json is accepted, not multipart/form-data"}
    form = client.post(route, data={"records": "[]"}, headers=ADMIN if route.startswith("/admin/") else {})
    assert form.status_code == 415, form.text


@pytest.mark.parametrize("route", [r for r in POST_ROUTES if r.startswith("/admin/")])
def test_admin_checks_the_token_before_it_looks_at_the_body(client: httpx.Client, route: str):
    for headers in (MULTIPART_WITHOUT_BOUNDARY, {"Content-Type": "application/json"}):
        response = client.post(route, content=b"{not json", headers=headers)
        assert response.status_code == 401, response.text
        assert response.json() == {"error": "a valid bearer token is needed"}


def test_a_body_over_the_limit_is_refused_at_once_and_health_does_not_stall(client: httpx.Client, server: Server):
    """52 MB announced: refused from its Content-Length (413) before it is read; /healthz answers meanwhile."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52000000\r\n\r\n" + b'{"records": [' + b" " * 65_536
        )
        tick = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        status_line = raw.recv(65_536).split(b"\r\n", 1)[0]
        assert status_line.split(b" ")[1] == b"413", status_line
        assert time.perf_counter() - tick < 2.0

    def chunks():  # no Content-Length: read up to the limit, and no further
        for _ in range(200):
            yield b" " * 65_536

    chunked = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert chunked.json() == {"error": "the body is over 8388608 bytes"}


def test_client_errors_have_the_documented_bodies_and_log_one_line(
    client: httpx.Client, server: Server, seed_flights: pd.DataFrame
):
    before = server.log_path.read_text()
    unknown = client.post("/feedback", json={"prediction_id": "00000000-0000-4000-8000-000000000000", "label": 0})
    assert unknown.status_code == 404 and unknown.json() == {
        "error": "prediction_id 00000000-0000-4000-8000-000000000000 is unknown"
    }
    invalid = client.post("/predict", json={"records": [{**raw_records(seed_flights, 1)[0], "month": 13}]})
    assert invalid.status_code == 400
    assert isinstance(invalid.json()["error"], str) and isinstance(invalid.json()["detail"], list)
    assert invalid.json()["detail"][0]["loc"] == ["records", 0, "month"], invalid.text
    bad_label = client.post("/feedback", json={"prediction_id": "00000000-0000-4000-8000-000000000000", "label": 2})
    assert bad_label.status_code == 400  # BentoML's own validation: its exception is logged as one line too
    conflict = client.post("/admin/promote", headers=ADMIN)  # no challenger weighted in: nothing to promote
    assert conflict.status_code == 409 and isinstance(conflict.json()["error"], str), conflict.text
    warnings = (  # ours for an invalid record; BentoML's exception for an invalid feedback body, made one line
        r"\[WARNING\].*POST /predict: 400 1 invalid field\(s\): records\[0\]\.month: ",
        r"\[WARNING\].*Exception on /feedback \[POST\]: 400 ",
    )
    deadline = time.monotonic() + 60  # the server writes its log asynchronously: wait for the lines, not a fixed time
    while time.monotonic() < deadline:
        added = server.log_path.read_text()[len(before) :]
        if all(re.search(w, added) for w in warnings):
            break
        time.sleep(0.1)
    assert "Traceback" not in added, added[-2000:]
    for warning in warnings:
        assert re.search(warning, added), added[-2000:]


def test_the_openapi_document_is_valid_and_the_service_keeps_to_it(server: Server, tmp_path):
    """schemathesis generates requests from /docs.json and checks every answer against it (bounded, on loopback)."""
    doc = httpx.get(f"{server.url}/docs.json").json()
    assert doc["openapi"] == "3.1.0"
    feedback_statuses = {"200", "400", "404", "409", "413", "415", "500", "503"}
    assert set(doc["paths"]["/feedback"]["post"]["responses"]) == feedback_statuses
    done = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{server.url}/docs.json",
            "--max-examples=25",
            "--checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--request-timeout=10",
            "--seed=14",
            "--generation-database=none",
            f"--report-dir={tmp_path}",
        ],
        cwd=tmp_path,  # schemathesis keeps a cache in its working folder
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:]
