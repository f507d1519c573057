"""The command line's process-wide set-up, as every command gets it."""

from __future__ import annotations

import subprocess
import sys

from retrainer.io.project import PREFECT_STARTUP_TIMEOUT_ENV

# the callback every command runs first, then what Prefect's settings read in that process
READ_TIMEOUT = (
    "from retrainer import cli\n"
    "cli.main(params=None)\n"
    "from prefect.settings import get_current_settings\n"
    "print(get_current_settings().server.ephemeral.startup_timeout_seconds)\n"
)


def _timeout_seen(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", READ_TIMEOUT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_every_command_gives_prefects_temporary_server_time_to_start_on_a_busy_machine():
    """Prefect's default (20 s) timed out a first `retrainer run` on a loaded 2-core machine."""
    import os

    env = {k: v for k, v in os.environ.items() if k != PREFECT_STARTUP_TIMEOUT_ENV}
    assert float(_timeout_seen(env)) == 180


def test_a_timeout_the_user_set_is_kept():
    import os

    env = {**os.environ, PREFECT_STARTUP_TIMEOUT_ENV: "45"}
    assert float(_timeout_seen(env)) == 45


def _retrainer(cwd, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "RETRAINER_PARAMS"}
    command = [sys.executable, "-m", "retrainer.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_commands_that_run_dvc_stages_refuse_a_params_file_dvc_would_not_read(project_root, tmp_path):
    """DVC reads params.yaml: `--params OTHER run` used to decide silently on params.yaml."""
    import shutil

    shutil.copy2(project_root / "params.yaml", tmp_path / "params.yaml")
    other = tmp_path / "other.yaml"
    other.write_text((project_root / "examples" / "car_loan" / "params.yaml").read_text())
    batch = tmp_path / "batch.csv"
    batch.write_text("id\n1\n")
    for args in (["stage", "ingest"], ["run", "--batch", str(batch)], ["monitor"]):
        done = _retrainer(tmp_path, "--params", str(other), *args)
        assert done.returncode == 2, (args, done.stderr)
        assert (
            f"--params {other}: this command runs DVC stages, and DVC reads {tmp_path / 'params.yaml'}" in done.stderr
        )
        assert f"cp {other} {tmp_path / 'params.yaml'}" in done.stderr
    assert not (tmp_path / ".retrainer").exists()


def test_a_params_file_with_the_same_content_as_params_yaml_is_honoured(project_root, tmp_path):
    import shutil

    shutil.copy2(project_root / "params.yaml", tmp_path / "params.yaml")
    shutil.copy2(project_root / "params.yaml", tmp_path / "same.yaml")
    done = _retrainer(tmp_path, "--params", str(tmp_path / "same.yaml"), "stage", "reference@nowhere")
    assert done.returncode == 2
    assert "no reference table 'nowhere' in data.references (weather, planes)" in done.stderr


def test_a_demo_with_replicas_and_no_haproxy_stops_before_the_bootstrap(project_root, tmp_path):
    """`--replicas 2` needs HAProxy: said at once, not after minutes of bootstrap; nothing is built."""
    import os

    env = {**os.environ, "RETRAINER_HAPROXY": str(tmp_path / "no-haproxy")}
    env.pop("RETRAINER_PARAMS", None)
    command = [sys.executable, "-m", "retrainer.cli", "demo", "--replicas", "2", "--workdir", str(tmp_path / "demo")]
    done = subprocess.run(command, cwd=project_root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no `haproxy` binary: install the system package (apt-get install haproxy)" in done.stderr
    assert not (tmp_path / "demo").exists()


def _stage_train_with_scheduler(project_root, tmp_path, address: str, **env: str) -> subprocess.CompletedProcess:
    """`retrainer stage train` in a folder with only params.yaml (no training rows: they are not read), with
    RETRAINER_DASK_SCHEDULER at `address` and the extra environment `env`."""
    import os
    import shutil

    from retrainer.io.compute import DASK_SCHEDULER_ENV

    shutil.copy2(project_root / "params.yaml", tmp_path / "params.yaml")
    environment = {k: v for k, v in os.environ.items() if k != "RETRAINER_PARAMS"}
    return subprocess.run(
        [sys.executable, "-m", "retrainer.cli", "stage", "train"],
        cwd=tmp_path,
        env=environment | {DASK_SCHEDULER_ENV: address, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_train_stage_whose_dask_scheduler_is_unreachable_says_so_in_one_line(project_root, tmp_path):
    """It printed a 29-frame traceback, the address in its last line, after reading the training rows."""
    from retrainer.io.compute import DASK_SCHEDULER_ENV
    from retrainer.io.processes import free_port

    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    done = _stage_train_with_scheduler(project_root, tmp_path, address, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: Dask scheduler {address} ({DASK_SCHEDULER_ENV}) unreachable after 2 s" in done.stderr


def test_a_scheduler_address_of_an_unknown_scheme_is_one_line(project_root, tmp_path):
    """It printed the line, then a traceback while a half-built Dask client closed at exit (after a 10 s wait)."""
    from retrainer.io.compute import DASK_SCHEDULER_ENV

    done = _stage_train_with_scheduler(project_root, tmp_path, "foo://127.0.0.1:1")
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        f"error: {DASK_SCHEDULER_ENV}=foo://127.0.0.1:1 is not a Dask scheduler address: unknown address scheme 'foo'"
    )


def test_help_reflows_each_command_s_summary_to_the_terminal_instead_of_keeping_the_docstring_s_line_breaks():
    """A docstring wrapped in the source must not break mid-phrase in `--help` ("... (crons in params.yaml) and the"
    alone on a line was `deploy`'s summary): at 400 columns every summary in the command list is one line."""
    import re

    from typer.testing import CliRunner

    from retrainer.cli import app

    listing = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}).output
    panel = listing[listing.index("─ Commands ─") :].splitlines()
    rows = [line.strip("│ ") for line in panel[1 : next(i for i, line in enumerate(panel) if line.startswith("╰"))]]
    continued = [row for row in rows if not re.match(r"[a-z-]+ {2,}\S", row)]
    assert rows and not continued, "\n".join(continued)
