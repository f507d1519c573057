"""Rollout state adapter: a JSON file under the home, written atomically, so weights survive a restart; with
RETRAINER_DATABASE_URL, a document in that database instead, shared by every replica and host."""

from __future__ import annotations

from pathlib import Path

from retrainer.io.backend import read_state, state_stamp, write_state
from retrainer.serving.routing import RolloutState

STATE_FILE = "rollout.json"


def state_path(home: Path) -> Path:
    """Where the rollout state of a home lives (its file name is the document's name in the team database)."""
    return home / STATE_FILE


def load_state(path: Path) -> RolloutState | None:
    """The saved rollout state, or None when none was saved yet; ValueError when the saved state is not an object."""
    payload = read_state(path)
    return None if payload is None else RolloutState.from_dict(payload)


def save_state(state: RolloutState, path: Path) -> None:
    """Save the state atomically: a fsynced temporary file renamed over the old one, or one database upsert."""
    write_state(path, state.to_dict())


def saved_stamp(path: Path) -> object | None:
    """A token that changes whenever the state at `path` is saved (by any process or replica); None when none was
    saved yet. Cheap: one stat(2), or one indexed read in the team database."""
    return state_stamp(path)
