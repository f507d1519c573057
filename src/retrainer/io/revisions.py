"""Read a project as it is at another git revision: files through git, pipeline outputs through the DVC cache or
remote, and what changed since (git, `dvc params diff`, `dvc diff`)."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import yaml


class RevisionError(RuntimeError):
    """A revision, or a file or output of it, cannot be read; the message says which and why."""


def git(root: Path, *args: str) -> str:
    """Run git in `root` and return its stdout; RevisionError with git's message when it fails."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RevisionError(f"`git {' '.join(args)}` failed in {root}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def resolve_commit(root: Path, ref: str) -> str:
    """The full commit sha `ref` names; RevisionError when git does not know it (e.g. not fetched)."""
    return git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()


def read_text_at(root: Path, ref: str, path: str | Path) -> str | None:
    """A git-tracked file's text at `ref`, or None when the file does not exist there."""
    done = subprocess.run(["git", "show", f"{ref}:{Path(path).as_posix()}"], cwd=root, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def read_lock_at(root: Path, ref: str) -> dict:
    """`dvc.lock` at `ref` parsed ({} when that revision has none)."""
    text = read_text_at(root, ref, "dvc.lock")
    return (yaml.safe_load(text) or {}) if text else {}


def read_lock(root: Path) -> dict:
    """The working tree's `dvc.lock` parsed ({} when there is none)."""
    path = root / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def open_output(root: Path, ref: str, path: str | Path) -> bytes:
    """The bytes of a DVC output (or git-tracked file) as it is at `ref`, from the DVC cache or else the remote.

    RevisionError naming the path and revision when neither holds it (outputs never pushed, no remote configured).
    """
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return dvc.api.read(Path(path).as_posix(), repo=str(root), rev=ref, mode="rb")
    except (DvcException, FileNotFoundError, OSError) as exc:
        raise RevisionError(
            f"{Path(path).as_posix()} of {ref} is in neither the DVC cache nor the remote "
            f"({type(exc).__name__}: {str(exc).strip() or 'missing'}); run `dvc push` on {ref} or `dvc pull`"
        ) from exc


def changed_files(root: Path, ref: str) -> list[str]:
    """Files git sees changed between `ref` and the working tree (committed or not), plus untracked ones."""
    tracked = git(root, "diff", "--name-only", ref, "--").splitlines()
    untracked = git(root, "ls-files", "--others", "--exclude-standard").splitlines()
    return sorted({*tracked, *untracked} - {""})


def params_diff(root: Path, ref: str) -> dict[str, dict]:
    """`dvc params diff REF`: {"file:key": {"old": value, "new": value}} for every param that differs."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        diff = repo.params.diff(a_rev=ref).get("diff", {})
    return {f"{file}:{key}": change for file, keys in diff.items() for key, change in keys.items()}


def data_diff(root: Path, ref: str) -> dict[str, list[str]]:
    """`dvc diff REF`: DVC-tracked paths added, deleted, modified and renamed between `ref` and the workspace."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        diff = repo.diff(a_rev=ref)
    return {
        kind: sorted(_entry_path(entry) for entry in diff.get(kind, []))
        for kind in ("added", "deleted", "modified", "renamed")
    }


def _entry_path(entry: dict) -> str:
    path = entry.get("path")
    return path if isinstance(path, str) else f"{path['old']} -> {path['new']}"
