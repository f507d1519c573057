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
