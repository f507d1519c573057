"""`fast_forward_to` on real git repositories: an origin with a merged commit, and a workspace clone of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from retrainer.io.git import CheckoutError, fast_forward_to


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit_file(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def origin_and_clone(tmp_path: Path) -> tuple[Path, Path]:
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    commit_file(origin, "params.yaml", "seed: 1\n")
    git(tmp_path, "clone", "-q", str(origin), "workspace")
    return origin, tmp_path / "workspace"


def test_a_merged_commit_is_fetched_and_fast_forwarded(origin_and_clone):
    origin, workspace = origin_and_clone
    merged = commit_file(origin, "params.yaml", "seed: 2\n")
    assert fast_forward_to(workspace, merged) is True
    assert git(workspace, "rev-parse", "HEAD") == merged
    assert (workspace / "params.yaml").read_text() == "seed: 2\n"
    assert fast_forward_to(workspace, merged) is False, "already there: nothing moves"


def test_uncommitted_edits_are_named_and_left_alone(origin_and_clone):
    origin, workspace = origin_and_clone
    merged = commit_file(origin, "params.yaml", "seed: 2\n")
    (workspace / "params.yaml").write_text("seed: 99\n")
    with pytest.raises(CheckoutError, match=r"uncommitted edits \(params.yaml\)"):
        fast_forward_to(workspace, merged)
    assert (workspace / "params.yaml").read_text() == "seed: 99\n"


def test_a_diverged_checkout_and_an_unknown_commit_are_refused(origin_and_clone):
    origin, workspace = origin_and_clone
    merged = commit_file(origin, "params.yaml", "seed: 2\n")
    local = commit_file(workspace, "notes.txt", "a local commit\n")
    with pytest.raises(CheckoutError, match="cannot fast-forward"):
        fast_forward_to(workspace, merged)
    assert git(workspace, "rev-parse", "HEAD") == local
    with pytest.raises(CheckoutError, match="is not in"):
        fast_forward_to(workspace, "0" * 40)
