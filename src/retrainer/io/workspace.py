"""DVC workspaces: run `dvc repro` and lay out a fresh, self-contained workspace for the demo."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from retrainer.io.project import HOME_DIR, Workspace

PIPELINE_FILES = ("dvc.yaml", "params.yaml")
LINKED = ("seeds", "src")
EMPTY_FOLDERS = ("data/batches", "data/references")  # in git with a .gitkeep; data/references is a dvc.yaml dep


@dataclass(frozen=True)
class ReproResult:
    """Which stages ran and which DVC skipped."""

    ran: list[str]
    skipped: list[str]
    seconds: float
    output: str


class PipelineError(RuntimeError):
    """`dvc repro` failed; the message holds DVC's output."""


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for DVC and stage commands: this interpreter's bin folder first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def dvc(root: Path, *args: str, env: dict[str, str] | None = None, echo: Callable[[str], None] | None = None) -> str:
    """Run a DVC command in `root`, passing each output line to `echo`; raise PipelineError if it fails."""
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=tool_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if echo is not None:
                echo(line.rstrip())
    output = "".join(lines)
    if process.returncode != 0:
        raise PipelineError(f"`dvc {' '.join(args)}` failed in {root}:\n{output.strip()}")
    return output


REPRO_LOCK_TIMEOUT_SECONDS = 1800


def reproduce(
    root: Path,
    *targets: str,
    single: bool = False,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> ReproResult:
    """`dvc repro [targets]` under the workspace lock (a retrain cycle in progress is waited for, up to 30 minutes);
    report which stages ran and which were skipped as unchanged. Raises ConfigError when the chosen params file is
    not the workspace's params.yaml that DVC reads (see `require_dvc_params`)."""
    import time

    from retrainer.config import require_dvc_params
    from retrainer.io.locks import workspace_lock

    require_dvc_params(root)
    started = time.perf_counter()
    args = ["repro", *(["--single-item"] if single else []), *targets]
    with workspace_lock(Workspace.at(root).workspace_lock, "dvc repro", REPRO_LOCK_TIMEOUT_SECONDS, echo):
        output = dvc(root, *args, env=env, echo=echo)
    return ReproResult(
        ran=re.findall(r"Running stage '([^']+)'", output),
        skipped=re.findall(r"Stage '([^']+)' didn't change", output),
        seconds=time.perf_counter() - started,
        output=output,
    )


def data_paths(params_file: Path) -> list[str]:
    """The data files a params file names (data.batch_source, each data.references[*].path), relative to the root."""
    from retrainer.config import load_params

    data = load_params(params_file).data
    return [data.batch_source, *(ref.path for ref in data.references)]


def link_data_files(source: Path, dest: Path, paths: list[str]) -> None:
    """Symlink each named data file of `source` into `dest` at the same relative path (unless a linked folder
    already holds it). Raises FileNotFoundError naming a file that is not there."""
    for relative in paths:
        target = dest / relative
        if target.exists():
            continue
        if not (source / relative).is_file():
            raise FileNotFoundError(f"params name a data file that is not in {source}: {relative}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((source / relative).resolve())


def create_workspace(source: Path, dest: Path, params_file: Path | None = None, git: bool = False) -> Path:
    """A fresh DVC workspace at `dest` (wiped first) sharing the source's seeds, code and the data files its params
    name (batch source, reference tables), with its own state.

    With `git`, the workspace is also a git repository with one commit, as a user's clone would be.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PIPELINE_FILES:
        shutil.copy2(source / name, dest / name)
    if params_file is not None:
        shutil.copy2(params_file, dest / "params.yaml")
    for name in LINKED:
        (dest / name).symlink_to((source / name).resolve(), target_is_directory=True)
    link_data_files(source, dest, data_paths(dest / "params.yaml"))
    for folder in EMPTY_FOLDERS:
        (dest / folder).mkdir(parents=True, exist_ok=True)
        (dest / folder / ".gitkeep").touch()
    if git:
        for args in (
            ["init", "-q"],
            ["config", "user.email", "retrainer@localhost"],
            ["config", "user.name", "retrainer"],
        ):
            subprocess.run(["git", *args], cwd=dest, check=True)
        (dest / ".gitignore").write_text(f"/{HOME_DIR}/\n")
    dvc(dest, "init", "-q", *([] if git else ["--no-scm"]))
    use_remote(dest)
    if git:
        subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
        subprocess.run(["git", "commit", "-q", "-m", "workspace"], cwd=dest, check=True)
    return dest


def use_remote(root: Path) -> None:
    """Make the workspace's default DVC remote the team's ($RETRAINER_DVC_REMOTE, e.g. `s3://bucket/dvc`, with
    $RETRAINER_S3_ENDPOINT_URL) or, by default, a folder in its home. Keys stay in the environment."""
    from retrainer.io.backend import dvc_remote, dvc_remote_commands

    url = dvc_remote()
    if url is None:
        dvc(root, "remote", "add", "-d", "local", str((root / HOME_DIR / "dvc-remote").resolve()))
        return
    for args in dvc_remote_commands(url):
        dvc(root, *args)


DVC_PUSH_TIMEOUT_S = 900  # a store that accepts connections and never answers must not hold the cycle for ever


def push_to_team_remote(root: Path, timeout_s: float = DVC_PUSH_TIMEOUT_S) -> str | None:
    """`dvc push` of the workspace's tracked data and outputs when the team's remote is configured
    ($RETRAINER_DVC_REMOTE), so another machine or a CI job can `dvc pull` what this one trained; None then, or
    without the setting. The push runs in a child the kernel kills with this process (no orphan push after a kill -9)
    and is stopped after `timeout_s` seconds. A failed push is returned as its reason (DVC's own error lines), not
    raised: the cycle's outcome stands and the next cycle's push sends what this one could not."""
    from retrainer.io.backend import dvc_remote
    from retrainer.io.processes import run_tied

    if dvc_remote() is None:
        return None
    try:
        done = run_tied(["dvc", "push"], root, timeout_s)
    except subprocess.TimeoutExpired:
        return f"outputs not pushed to the DVC remote: `dvc push` gave no answer in {timeout_s:.0f} s"
    if done.returncode == 0:
        return None
    errors = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip().startswith("ERROR")]
    return f"outputs not pushed to the DVC remote: {'; '.join(errors) or (done.stdout + done.stderr).strip()[-300:]}"


def stage_changed(root: Path, name: str) -> bool:
    """Whether DVC would rerun a stage: its deps, params or outs differ from dvc.lock.

    DVC's Python API resolves some paths against the working directory, hence the chdir.
    """
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo, repo.lock:
        return bool(repo.stage.collect(name)[0].changed())


def commit_stage(root: Path, name: str) -> None:
    """Record a stage that ran in-process in dvc.lock and the DVC cache, exactly as `dvc repro` would."""
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.WARNING)
    with contextlib.chdir(root), Repo(str(root)) as repo, contextlib.redirect_stdout(io.StringIO()):
        repo.commit(name, force=True)
