"""The rollout state's change stamp in a real PostgreSQL: what each replica polls every serve.state_refresh_seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrainer.io.backend import DATABASE_ENV
from retrainer.serving.routing import RolloutState
from retrainer.serving.state import load_state, save_state, saved_stamp, state_path

pytestmark = pytest.mark.team


def test_the_stamp_changes_with_every_save_in_the_database_and_only_then(
    fresh_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(DATABASE_ENV, fresh_database)
    path = state_path(tmp_path)
    assert saved_stamp(path) is None, "nothing saved yet"
    save_state(RolloutState("1", "2", 0.1), path)
    first = saved_stamp(path)
    assert first is not None and saved_stamp(path) == first, "reading does not change it"
    save_state(RolloutState("1", "2", 0.5), path)
    assert saved_stamp(path) != first
    assert load_state(path).challenger_weight == 0.5
    assert not path.exists(), "the state is in the database, not in a file"


def test_the_stamp_of_a_state_file_changes_with_every_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    path = state_path(tmp_path)
    assert saved_stamp(path) is None
    save_state(RolloutState("1", "2", 0.1), path)
    first = saved_stamp(path)
    save_state(RolloutState("1", "2", 0.1), path)  # the same content saved again is still a save
    assert saved_stamp(path) != first
