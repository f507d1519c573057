"""Rollout state adapter: a JSON file under the home, written atomically, so weights survive a restart."""

from __future__ import annotations

import json
from pathlib import Path

from retrainer.io.tables import write_json
from retrainer.serving.routing import RolloutState

STATE_FILE = "rollout.json"


def state_path(home: Path) -> Path:
    """Where the rollout state of a home lives."""
    return home / STATE_FILE


def load_state(path: Path) -> RolloutState | None:
    """The saved rollout state, or None when none was saved yet."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return RolloutState.from_dict(payload)


def save_state(state: RolloutState, path: Path) -> None:
    """Write the state atomically: a temporary file in the same folder, fsynced, then renamed over the old one."""
    write_json(state.to_dict(), path)
