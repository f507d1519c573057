"""A thin client of a running service, for commands and flows: is it up, adopt a registry change, score records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx


def service_state(url: str, timeout_s: float = 3.0, client: httpx.Client | None = None) -> dict | None:
    """The service's rollout state (GET /rollout), or None when nothing answers at `url`.

    Pass `client` when polling: a new httpx client costs about 25 ms of CPU (it loads the CA bundle), more than the
    request over loopback."""
    try:
        response = (client or httpx).get(f"{url}/rollout", timeout=timeout_s)
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


@dataclass(frozen=True)
class Adoption:
    """What asking a service to adopt the registry's champion did: did it answer, its new state, in words."""

    reached: bool
    state: dict | None
    message: str


def adopt_champion(url: str, token: str | None) -> Adoption:
    """Have a service running at `url` serve the registry's champion and saved state (POST /admin/reload).

    Never raises: an absent service, a missing token or a refusal is reported in the result.
    """
    if service_state(url) is None:
        return Adoption(False, None, f"no service answers at {url}")
    if not token:
        return Adoption(True, None, f"the service at {url} was not switched: RETRAINER_ADMIN_TOKEN is not set")
    try:
        state = reload_service(url, token)
    except RuntimeError as exc:
        return Adoption(True, None, f"the service at {url} was not switched: {exc}")
    return Adoption(True, state, f"the service at {url} now serves v{state.get('champion_version')}")


class AdminClient:
    """The rollout and admin endpoints of a running service, over one connection, with the admin token.

    Use as a context manager. `rollout()` raises RuntimeError naming the URL when nothing answers there.
    """

    def __init__(self, base_url: str, token: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"}

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    def rollout(self) -> dict:
        """The service's rollout state (GET /rollout)."""
        try:
            return self._http.get("/rollout").json()
        except httpx.TransportError as exc:
            raise RuntimeError(
                f"no retrainer service answers at {self.base_url} ({exc}): start it with `retrainer serve`, "
                "point canary.service_url at it, or set canary.enabled: false"
            ) from None

    def set_weight(self, challenger_weight: float) -> tuple[int, dict]:
        """POST /admin/weights: the HTTP status and, when accepted, the new rollout state ({} otherwise)."""
        response = self._post("/admin/weights", {"challenger_weight": challenger_weight})
        return response.status_code, response.json() if response.status_code == 200 else {}

    def promote(self) -> tuple[int, str]:
        """POST /admin/promote (the service promotes its challenger compare-and-set): HTTP status and body."""
        response = self._post("/admin/promote", {})
        return response.status_code, response.text

    def rollback(self) -> int:
        """POST /admin/rollback (drop the challenger, restore the previous champion): the HTTP status."""
        return self._post("/admin/rollback", {}).status_code

    def _post(self, path: str, payload: dict) -> httpx.Response:
        return self._http.post(path, json=payload, headers=self._headers)
