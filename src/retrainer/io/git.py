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


class CheckoutError(RuntimeError):
    """The workspace could not be brought to the commit asked for; the message says why (dirty, diverged, unknown)."""


def fast_forward_to(root: Path, commit: str) -> bool:
    """Bring the git checkout `root` to `commit` (a sha, or a ref): fetch it from the default remote when it is not
    here, then `git merge --ff-only` (the branch moves forward, nothing is rewritten). True when HEAD moved, False
    when it was there already.

    Raises CheckoutError when tracked files have uncommitted edits (naming them), when the commit cannot be found
    after a fetch, or when HEAD is not an ancestor of it (a diverged checkout).
    """

    def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=300, check=check)

    def known() -> bool:
        return git("cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0

    if not known():
        fetched = git("fetch", "--quiet", check=False)
        if not known():
            raise CheckoutError(f"commit {commit} is not in {root} (git fetch: {fetched.stderr.strip() or 'ok'})")
    target = git("rev-parse", f"{commit}^{{commit}}").stdout.strip()
    if git("rev-parse", "HEAD").stdout.strip() == target:
        return False
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.split("\n")
    if any(line.strip() for line in dirty):
        names = ", ".join(line[3:] for line in dirty if line.strip())
        raise CheckoutError(f"{root} has uncommitted edits ({names}): commit or discard them before shipping {commit}")
    merged = git("merge", "--ff-only", "--quiet", target, check=False)
    if merged.returncode != 0:
        raise CheckoutError(f"{root} cannot fast-forward to {commit[:12]}: {merged.stderr.strip()}")
    return True
