"""What lets several service processes (BentoML workers, replicas on other ports or hosts) act as one service: a
thread that adopts the rollout state another process saved, and the age of a prediction id any of them issued."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

LOGGER = logging.getLogger("bentoml.retrainer")


def issued_at(prediction_id: str) -> float | None:
    """When a prediction id was issued, in Unix seconds: its leading 48 bits are the time in milliseconds (a version
    7 UUID, RFC 9562, see `prediction_log.new_request_key`). None for text that is not such an id."""
    try:
        parsed = uuid.UUID(prediction_id)
    except ValueError:
        return None
    if parsed.version != 7:
        return None
    return (parsed.int >> 80) / 1000.0


class StateWatcher:
    """A daemon thread that calls `check()` every `interval_s` seconds until stopped.

    `check` compares the saved state's stamp with the one it last adopted and adopts a changed state (loading a
    model it does not hold yet), so the slow part happens here, off the request path. An exception in `check` (the
    database briefly unreachable, a model that fails to load) is logged and retried at the next tick.
    """

    def __init__(self, check: Callable[[], None], interval_s: float, name: str = "rollout-state") -> None:
        self.check, self.interval_s = check, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> StateWatcher:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
                failing = False
            except Exception as exc:  # the next tick retries; log once per failing stretch, not every second
                if not failing:
                    LOGGER.warning("rollout state not refreshed: %s: %s (retrying)", type(exc).__name__, exc)
                failing = True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and wait for its current check (at most `timeout_s` seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def wait_until(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    """Poll `predicate` until it holds (True) or `timeout_s` seconds pass (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)
