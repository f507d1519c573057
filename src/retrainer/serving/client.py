"""A thin client of a running service, for commands and flows: is it up, adopt a registry change, score records."""

from __future__ import annotations

from collections.abc import Sequence

import httpx


def service_state(url: str, timeout_s: float = 3.0) -> dict | None:
    """The service's rollout state (GET /rollout), or None when nothing answers at `url`."""
    try:
        response = httpx.get(f"{url}/rollout", timeout=timeout_s)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def reload_service(url: str, token: str, timeout_s: float = 120.0) -> dict:
    """Tell the service to serve the registry's champion and the saved rollout state; returns its new state."""
    response = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"{url}/admin/reload answered {response.status_code}: {response.text[:300]}")
    return response.json()


def score_records(url: str, records: Sequence[dict], timeout_s: float = 120.0) -> list[dict]:
    """POST the records to /predict in one request; the service's predictions, in order."""
    response = httpx.post(f"{url}/predict", json={"records": list(records)}, timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"{url}/predict answered {response.status_code}: {response.text[:300]}")
    return response.json()["predictions"]
