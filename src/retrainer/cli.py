"""The `retrainer` command line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from retrainer.cli_ci import ci_app
from retrainer.config import PARAMS_ENV, ConfigError, load_params
from retrainer.io.project import allow_slow_prefect_start

app = typer.Typer(
    help="Keep a tabular model fresh: validate, version, train, gate, package and roll out each new batch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # reflows docstrings to the terminal ("rich" keeps their line breaks)
)
app.add_typer(ci_app, name="ci")

ParamsOption = Annotated[
    Path | None,
    typer.Option(
        "--params",
        help=f"Params file (default: ${PARAMS_ENV} or ./params.yaml). Commands that run DVC stages (run, stage, "
        "monitor, deploy) refuse one unlike ./params.yaml, which DVC reads; demo builds a workspace from it.",
        show_default=False,
    ),
]


@app.callback()
def main(params: ParamsOption = None) -> None:
    """Keep a tabular model fresh. Every choice lives in params.yaml."""
    if params is not None:
        os.environ[PARAMS_ENV] = str(params.resolve())
    allow_slow_prefect_start()


def _params(runs_dvc: bool = False):
    """The params (with `runs_dvc`: only when DVC's stages read the same file); a bad one exits 2 naming the key."""
    from retrainer.config import require_dvc_params

    try:
        if runs_dvc:
            require_dvc_params(Path.cwd())
        return load_params()
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def stage(
    name: Annotated[
        str, typer.Argument(help="validate | reference@NAME | ingest | split | train | evaluate | register")
    ],
) -> None:
    """Run one pipeline stage in the current folder (this is what `dvc repro` calls)."""
    from retrainer.io.compute import ComputeUnreachable
    from retrainer.stages import run_stage

    params = _params(runs_dvc=True)
    try:
        result = run_stage(name, params, Path.cwd())
    except KeyError as exc:
        typer.secho(f"error: {exc.args[0]}", fg="red", err=True)
        raise typer.Exit(2) from None
    except ComputeUnreachable as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name}: done " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, dict | list)))


EXIT_QUARANTINED, EXIT_FAILED = 3, 1


def _print_json(payload: object) -> None:
    import json

    typer.echo(json.dumps(payload, indent=2, default=str, allow_nan=False))


@app.command()
def run(
    batch: Annotated[Path, typer.Option("--batch", help="A batch file (CSV or Parquet) in the raw schema.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
    force: Annotated[bool, typer.Option(help="Run again even if this batch was already processed.")] = False,
    canary_traffic: Annotated[
        Path | None,
        typer.Option(help="A raw batch file replayed to the service during the canary (default: live traffic)."),
    ] = None,
    replaces: Annotated[
        str | None,
        typer.Option(
            help="The id of an accepted batch this file re-delivers (the same period, e.g. a month first delivered "
            "cut short): it leaves training (kept under data/superseded/), this batch trains in its place."
        ),
    ] = None,
) -> None:
    """One retrain cycle for one batch: validate, train, gate, package, then canary (or promote) or reject.

    With canary.enabled (the default) and a champion, a gate pass is canaried on the service at canary.service_url
    (`retrainer serve`, with RETRAINER_ADMIN_TOKEN set in both). A cycle that fails takes its batch back out of
    training, so the next batch is not blocked.

    Exit codes: 0 cycle completed (promoted, rejected or rolled back),
    3 batch quarantined, 1 failure.
    """
    from retrainer.app.results import format_cycle
    from retrainer.flow_runs import run_cycle
    from retrainer.outcomes import CycleStatus

    for name, path in (("batch", batch), ("canary traffic", canary_traffic)):
        if path is not None and not path.is_file():
            typer.secho(f"error: {name} file not found: {path}", fg="red", err=True)
            raise typer.Exit(2)
    _params(runs_dvc=True)
    result = run_cycle(batch, Path.cwd(), force=force, canary_traffic=canary_traffic, replaces=replaces)
    _print_json(result.to_dict()) if as_json else typer.echo(format_cycle(result))
    if result.status == CycleStatus.QUARANTINED:
        raise typer.Exit(EXIT_QUARANTINED)
    if result.status == CycleStatus.FAILED:
        raise typer.Exit(EXIT_FAILED)


EXIT_UNCHANGED = 5


@app.command()
def ship(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
    force: Annotated[bool, typer.Option(help="Ship again even if this change was already shipped.")] = False,
    canary_traffic: Annotated[
        Path | None,
        typer.Option(help="A raw batch file replayed to the service during the canary (default: live traffic)."),
    ] = None,
    commit: Annotated[
        str | None,
        typer.Option(help="Fast-forward this git checkout to COMMIT first (fetched if needed); CD passes the merge."),
    ] = None,
) -> None:
    """Ship the current code and params: a retrain cycle with no new batch, on the batches already accepted.

    The pipeline stages run (DVC skips what did not change), the model they register is gated against the champion
    with the same gate as a batch's cycle, then packaged and canaried at canary.service_url (or promoted: canary
    off, or no champion) or rejected. The change is recorded as `change-<short commit>-<digest of params and
    code>` (`change-<digest>` outside git): shipping it again prints its recorded outcome unless --force. CD starts
    the same cycle on a merge to main through the ship deployment (`retrainer deploy`).

    Exit codes: 0 shipped
    (promoted, rejected or rolled back), 5 no model change (nothing to ship, not an error), 1 failure.
    """
    from retrainer.app.results import format_cycle
    from retrainer.flow_runs import run_ship
    from retrainer.outcomes import CycleStatus

    if canary_traffic is not None and not canary_traffic.is_file():
        typer.secho(f"error: canary traffic file not found: {canary_traffic}", fg="red", err=True)
        raise typer.Exit(2)
    _params(runs_dvc=True)
    result = run_ship(Path.cwd(), force=force, canary_traffic=canary_traffic, commit=commit)
    _print_json(result.to_dict()) if as_json else typer.echo(format_cycle(result))
    if result.status == CycleStatus.UNCHANGED:
        raise typer.Exit(EXIT_UNCHANGED)
    if result.status == CycleStatus.FAILED:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def validate(
    batch: Annotated[Path, typer.Option("--batch", help="A batch file (CSV or Parquet) in the raw schema.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the validation report as JSON.")] = False,
) -> None:
    """Validate one batch alone (GX suite, parse checks, drift vs the training data); quarantine it if blocked.

    Exit codes: 0 passed (warnings allowed), 2 no such batch file, 3 quarantined.
    """
    from retrainer.app.validate import validate_batch
    from retrainer.io.project import Workspace

    if not batch.is_file():
        typer.secho(f"error: batch file not found: {batch}", fg="red", err=True)
        raise typer.Exit(2)
    outcome = validate_batch(batch, _params(), Workspace.at())
    _print_json(outcome.report) if as_json else typer.echo(outcome.text)
    if not outcome.passed:
        raise typer.Exit(EXIT_QUARANTINED)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Champion and challenger versions with their metrics and data versions, and the last runs."""
    from retrainer.app.status import format_status, project_status
    from retrainer.io.promotion_journal import CorruptJournal

    try:
        report = project_status(_params(), Path.cwd())
    except CorruptJournal as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    _print_json(report) if as_json else typer.echo(format_status(report))


@app.command()
def lineage(version: Annotated[str, typer.Argument(help="A registered model version number.")]) -> None:
    """Data version, git commit, params, validation result, gate report and parent champion of a model version."""
    from retrainer.app.status import format_lineage, version_lineage

    try:
        typer.echo(format_lineage(version_lineage(_params(), Path.cwd(), version)))
    except LookupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def deploy(
    pool: Annotated[
        str | None, typer.Option(help="Register the deployments on this Prefect work pool (its workers run them).")
    ] = None,
) -> None:
    """Serve the scheduled deployments that drain the inbox and monitor the champion (crons in params.yaml) and the
    unscheduled one CD starts on a merge (`ship/<retrain.ship_deployment>`), or with --pool register them on a work
    pool (e.g. the pool named `retrainer` that `retrainer team up` makes) and return.

    Start a server first (`prefect server start`) and point at it with PREFECT_API_URL.
    """
    from prefect import serve as serve_deployments

    from retrainer.flow_runs import DRAIN_INBOX, MONITOR, SHIP, deploy_to_pool, load_flow

    params = _params(runs_dvc=True)
    if pool is not None:
        schedules = {
            DRAIN_INBOX: (params.retrain.deployment, params.retrain.schedule_cron),
            MONITOR: (params.monitor.deployment, params.monitor.schedule_cron),
            SHIP: (params.retrain.ship_deployment, None),
        }
        names = deploy_to_pool(Path.cwd(), pool, schedules)
        typer.echo(f"registered on work pool '{pool}': {', '.join(names)}")
        return
    drain_inbox, monitor_flow = load_flow(DRAIN_INBOX), load_flow(MONITOR)
    typer.echo(
        f"serving deployment '{params.retrain.deployment}' (cron '{params.retrain.schedule_cron}'), "
        f"draining {params.retrain.inbox_dir}/, and '{params.monitor.deployment}' "
        f"(cron '{params.monitor.schedule_cron}'), and 'ship/{params.retrain.ship_deployment}' (no schedule: CD "
        "starts it) — Ctrl-C to stop"
    )
    root = {"root": str(Path.cwd())}
    serve_deployments(
        drain_inbox.to_deployment(name=params.retrain.deployment, cron=params.retrain.schedule_cron, parameters=root),
        monitor_flow.to_deployment(name=params.monitor.deployment, cron=params.monitor.schedule_cron, parameters=root),
        load_flow(SHIP).to_deployment(name=params.retrain.ship_deployment, parameters=root),
    )


EXIT_ALARM = 4


@app.command()
def monitor(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """One monitoring pass: drift and performance of the champion's logged traffic; may start a retrain.

    Exit codes: 0 no alarm, 4 an alarm was raised (whether the retrain fired or was suppressed), 2 nothing to monitor
    (no champion, or no reference profile).
    """
    from retrainer.app.monitor import MonitorResult, format_result
    from retrainer.flow_runs import MONITOR, load_flow
    from retrainer.outcomes import MonitorStatus

    _params(runs_dvc=True)  # a pass may start a retrain
    result = MonitorResult.from_dict(load_flow(MONITOR)(root=str(Path.cwd())))
    _print_json(result.to_dict()) if as_json else typer.echo(format_result(result))
    if result.status != MonitorStatus.OK:
        raise typer.Exit(2)
    if result.alarm:
        raise typer.Exit(EXIT_ALARM)


@app.command()
def serve(
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1 (default: the port of canary.service_url).")
    ] = None,
) -> None:
    """Serve the champion (and a weighted challenger) over HTTP with BentoML on 127.0.0.1.

    Admin routes need RETRAINER_ADMIN_TOKEN set (closed without it); the retrain flow's canary uses them.
    """
    from urllib.parse import urlparse

    from retrainer.io.processes import PARENT_PID_ENV, port_holders, port_in_use
    from retrainer.serving.package import use_project_bentoml_home

    params = _params()
    port = port or urlparse(params.canary.service_url).port or 3000
    if port_in_use(port):
        holders = ", ".join(port_holders(port)) or "another process"
        typer.secho(f"port {port} on 127.0.0.1 is already in use by {holders}", fg="red", err=True)
        raise typer.Exit(EXIT_FAILED)
    use_project_bentoml_home(Path.cwd())
    os.environ.setdefault("RETRAINER_ROOT", str(Path.cwd()))
    os.environ[PARENT_PID_ENV] = str(os.getpid())  # BentoML runs in this process (exec): its workers' parent
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    args = [bentoml, "serve", "retrainer.serving.service:RetrainerService", "--host", "127.0.0.1", "--port", str(port)]
    os.execv(bentoml, args)


@app.command("recover-log")
def recover_log() -> None:
    """Write the predictions the service answered but could not log into the log: the dead-letter file
    (.retrainer/predictions.failed.jsonl) and the journal a killed service left (.retrainer/predictions.journal/).

    Safe while the service runs: the file is claimed by renaming it, a running service's journal is skipped, and
    requests already in the log are skipped. Lines that still cannot be written stay where they were, unchanged.

    Exit codes: 0 all written (or nothing to do), 1 some answered requests are still not in the log.
    """
    from retrainer.io.project import Workspace
    from retrainer.serving.features import FeatureBuilder, load_references
    from retrainer.serving.log_store import open_prediction_log
    from retrainer.serving.prediction_log import recover_dead_letter, replay_journal

    params, workspace = _params(), Workspace.at()
    dead_letter, journal_dir = workspace.dead_letter, workspace.prediction_journal
    log = open_prediction_log(workspace.prediction_log, params.features.numeric, params.features.categorical)
    try:
        builder = FeatureBuilder(params, load_references(params, workspace.root))
        journal = replay_journal(log, journal_dir, dead_letter, builder.columns)
        done = recover_dead_letter(log, dead_letter)
    finally:
        log.close()
    typer.echo(
        f"{journal.written + done.written} requests ({journal.predictions + done.predictions} predictions) written "
        f"to {log.location}; {journal.already_logged + done.already_logged} already there"
    )
    if done.kept or journal.kept:
        typer.secho(f"{done.kept} lines kept in {dead_letter}, {journal.kept} in {journal_dir}:", fg="red", err=True)
        for error in (*journal.errors, *done.errors):
            typer.secho(f"  {error}", fg="red", err=True)
        raise typer.Exit(EXIT_FAILED)


GOLDEN_HELP = (
    "A golden set of your own (raw records, CSV or Parquet). Default: the workspace's, drawn once "
    "(serve.golden_rows rows, seed train.seed) from the training data at the first promotion."
)


@app.command()
def rollback(
    golden: Annotated[Path | None, typer.Option("--golden", help=GOLDEN_HELP)] = None,
    expected: Annotated[
        str | None, typer.Option("--expected", help="Refuse unless the champion is still this version.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Restore the champion the last promotion replaced, update the rollout state, replay the golden set.

    A service running at canary.service_url is told to serve the restored champion (needs RETRAINER_ADMIN_TOKEN)
    and the golden set is replayed through it over HTTP as well.

    Exit codes: 0 rolled back and verified (in-process,
    and the service when one runs), 1 rolled back but a golden replay does not match (or a conflict), 2 no previous
    champion.
    """
    from retrainer.serving.rollback import NoPreviousChampion, RollbackConflict, format_report
    from retrainer.serving.rollback import rollback as do_rollback

    params = _params()
    try:
        report = do_rollback(
            params,
            Path.cwd(),
            golden,
            expected_champion=expected,
            service_url=params.canary.service_url,
            admin_token=os.environ.get("RETRAINER_ADMIN_TOKEN"),
        )
    except NoPreviousChampion as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    except RollbackConflict as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    _print_json(report.to_dict()) if as_json else typer.echo(format_report(report))
    service_failed = report.service is not None and report.service["reached"] and not report.service["verified"]
    if not report.verified or service_failed:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def package(versions: Annotated[list[str], typer.Argument(help="Registered model versions to pack.")]) -> None:
    """Build a Bento holding the given model versions; prints its tag (also set as MLflow tag `bento_tag`)."""
    from retrainer.serving.package import build_bento

    typer.echo(build_bento(_params().tracking.registered_model, versions, Path.cwd()))


MonthsOption = Annotated[
    str | None,
    typer.Option(
        help="Months fed one by one after the bootstrap (default: every calendar month data.batch_source holds "
        "after data.bootstrap.end): YYYY-MM..YYYY-MM, or FIRST-LAST month numbers within the year of the first "
        "month after the bootstrap (for the flights params, 3-12 is 2013-03..2013-12).",
        show_default=False,
    ),
]


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo builds its own workspace; wiped at the start of every run.")
    ] = Path(".retrainer-demo"),
    months: MonthsOption = None,
    canary: Annotated[
        bool, typer.Option(help="Canary each gate pass on a live service (replaying the next month); or promote.")
    ] = True,
    trigger: Annotated[
        str,
        typer.Option(help="drift: serve each month and let the monitor decide when to retrain; monthly: every batch."),
    ] = "drift",
    replicas: Annotated[
        int,
        typer.Option(
            min=1, help="Serve from this many `retrainer serve` replicas behind HAProxy (system package); 1: no proxy."
        ),
    ] = 1,
) -> None:
    """The main job on embedded defaults: bootstrap a model with `dvc repro`, then retrain month by month on the
    dataset the params name (params.yaml: real 2013 flights; `--params examples/car_loan/params.yaml`: car loans)."""
    from retrainer.demo import check_fresh_team_state, plan_months, run_demo
    from retrainer.io.backend import DatabaseUnreachable
    from retrainer.io.proxy import haproxy_binary
    from retrainer.io.servers import ServerError

    try:
        span = plan_months(Path.cwd(), os.environ.get(PARAMS_ENV), months)
        check_fresh_team_state()
        if replicas > 1:
            haproxy_binary()  # before the bootstrap, not minutes later
    except (ConfigError, ValueError, DatabaseUnreachable, ServerError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    if trigger not in ("drift", "monthly"):
        typer.secho(f"error: --trigger must be drift or monthly, got '{trigger}'", fg="red", err=True)
        raise typer.Exit(2)
    import signal

    # A plain `kill` ends the demo like Ctrl-C does: through its cleanup, which stops the service it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_demo(
        Path.cwd(),
        workdir.resolve(),
        span,
        params_file=os.environ.get(PARAMS_ENV),
        canary=canary,
        trigger=trigger,
        replicas=replicas,
    )


team_app = typer.Typer(
    help="A local team stack on loopback: PostgreSQL, SeaweedFS (S3), Dask, Prefect server, a worker."
)
app.add_typer(team_app, name="team")


@contextlib.contextmanager
def _team_errors() -> Iterator[None]:
    """A server that would not start or stop, or a bad setting, as one red line and exit 2, not a traceback."""
    from retrainer.io.backend import BackendConfigError, DatabaseUnreachable
    from retrainer.io.servers import ServerError

    try:
        yield
    except (ServerError, BackendConfigError, DatabaseUnreachable) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


@team_app.command("up")
def team_up() -> None:
    """Start the stack under .retrainer/team/ and write team.env; `source .retrainer/team/team.env` to use it.

    Starts, on loopback: PostgreSQL, SeaweedFS (S3) with a bucket, a Dask scheduler and 2 workers, a Prefect server
    on PostgreSQL and a worker of the process work pool 'retrainer'. `retrainer team serve` adds the service replicas
    behind HAProxy; `retrainer team down` stops everything."""
    from retrainer.io.project import home_dir
    from retrainer.team import team_up as start

    with _team_errors():
        stack = start(home_dir())
    for name, value in stack.settings.items():
        typer.echo(f"{name}={'(in team.env)' if 'SECRET' in name or 'TOKEN' in name else value}")
    typer.echo(f"team stack up; settings in {stack.env_file}: source it to run against the stack")


@team_app.command("serve")
def team_serve(
    replicas: Annotated[int, typer.Option(min=1, help="How many `retrainer serve` replicas.")] = 2,
    port: Annotated[
        int | None, typer.Option(help="The proxy's port on 127.0.0.1 (default: the port of canary.service_url).")
    ] = None,
) -> None:
    """Serve the champion from several replicas (free loopback ports) behind HAProxy (the system package); `team down`
    stops them. Run it with the settings the replicas should share (e.g. after `source .retrainer/team/team.env`)."""
    from urllib.parse import urlparse

    from retrainer.io.project import home_dir
    from retrainer.team import serve_replicas

    params = _params()
    port = port or urlparse(params.canary.service_url).port or 3000
    _require_champion(params)
    with _team_errors():
        stack = serve_replicas(home_dir(), Path.cwd(), port, replicas)
    typer.echo(f"{len(stack.replicas)} replicas ({', '.join(stack.replicas)}) behind {stack.url}")
    typer.echo(f"for the canary's counters, in params.yaml: canary.replica_urls: [{', '.join(stack.replicas)}]")


def _require_champion(params) -> None:
    """Exit 2 naming the model when the registry has no champion: a replica would wait for one until it times out."""
    from retrainer.io import registry
    from retrainer.io.tracking import connect

    connect(Path.cwd())
    if registry.alias_version(params.tracking.registered_model, registry.CHAMPION) is None:
        name = params.tracking.registered_model
        typer.secho(
            f"error: model '{name}' has no champion to serve: train one first (retrainer run)", fg="red", err=True
        )
        raise typer.Exit(2)


@team_app.command("down")
def team_down() -> None:
    """Stop the stack `team up` started and the replicas `team serve` started (data stays under .retrainer/team/)."""
    from retrainer.io.project import home_dir
    from retrainer.team import team_down as stop

    with _team_errors():
        stopped = stop(home_dir())
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


if __name__ == "__main__":
    app()
