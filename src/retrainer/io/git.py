"""Read the code version (git commit and dirty flag) of a project folder."""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_version(root: Path) -> dict[str, str]:
    """{'git_commit': sha or 'none', 'git_dirty': 'true'|'false'|'unknown'}."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "none", "git_dirty": "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": "unknown" if status is None else str(bool(status)).lower()}
