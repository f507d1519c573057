"""`retrainer demo`: the main job, in a workspace of its own that starts from scratch every run."""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import sys
import textwrap
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pandas as pd
import typer
import yaml

from retrainer.app.monitor import MonitorResult
from retrainer.app.results import CycleResult, canary_lines
from retrainer.app.retrain import recorded
from retrainer.config import PARAMS_ENV, Params, load_params
from retrainer.flow_runs import MONITOR, load_flow, run_cycle
from retrainer.io.backend import DATABASE_ENV, database_url, describe_url
from retrainer.io.batch_record_pg import PostgresBatchRecord, open_batch_record
from retrainer.io.monitoring import DECISIONS_FILE, monitor_dir
from retrainer.io.project import (
    HOME_DIR,
    MLFLOW_DB_FILE,
    PREFECT_STARTUP_TIMEOUT_ENV,
    PREFECT_STARTUP_TIMEOUT_SECONDS,
    Workspace,
)
from retrainer.io.tables import read_json
from retrainer.io.workspace import create_workspace, reproduce
from retrainer.outcomes import CycleStatus, MonitorStatus
from retrainer.serving.launch import start_service
from retrainer.serving.runtime import TOKEN_ENV
from retrainer.stages import METRICS, REGISTRATION, SPLIT_REPORT, TRAIN_REPORT

if TYPE_CHECKING:
    from rich.console import Console

    from retrainer.serving.launch import RunningService
    from retrainer.team import ServingStack


def _stream(line: str) -> None:
    """Echo `dvc repro`'s stage lines, wrapped (never cut: a cut figure reads as the real one)."""
    if line.startswith(("Running stage", "Stage '")) or ": done" in line:
        indents = {"initial_indent": "  | ", "subsequent_indent": "  |   "}
        typer.echo(textwrap.fill(line, 150, break_long_words=False, break_on_hyphens=False, **indents))  # paths whole


@cache
def read_seed(seed_path: Path, time_column: str) -> pd.DataFrame:
    """The seed table, read once per demo (every month and traffic sample is cut from it), its time column UTC."""
    from retrainer.steps.ingest import parse_time_column

    return parse_time_column(pd.read_parquet(seed_path), time_column)


def month_start(month: pd.Period) -> pd.Timestamp:
    """The first instant (UTC) of a calendar month."""
    return month.start_time.tz_localize("UTC")


def data_months(seed_path: Path, time_column: str, after: str, min_rows: int = 1) -> list[pd.Period]:
    """The calendar months (UTC) in which the seed holds rows at or after `after` (data.bootstrap.end), in order.

    Trailing months with fewer than `min_rows` rows (validate.row_count.min: too few to be a batch) are left to the
    month before, whose batch keeps every later row (the flights of 31 December evening are 2014 in UTC).
    """
    times = read_seed(seed_path, time_column)[time_column]
    later = times[times >= pd.Timestamp(after, tz="UTC")]
    counts = later.dt.tz_localize(None).dt.to_period("M").value_counts().sort_index()
    while len(counts) > 1 and counts.iloc[-1] < min_rows:
        counts = counts.iloc[:-1]
    return list(counts.index)


def select_months(spec: str | None, available: list[pd.Period]) -> list[pd.Period]:
    """The months `--months` asks for, among the data's months after the bootstrap (`available`, non-empty).

    None: all of them. `YYYY-MM..YYYY-MM` (or one `YYYY-MM`): that span. `FIRST-LAST` (or one number): month
    numbers within the year of the first available month. Raises ValueError naming what is wrong.
    """
    if not available:
        raise ValueError("the seed holds no rows after data.bootstrap.end: there are no months to feed")
    if spec is None:
        return list(available)
    try:
        if ".." in spec or re.fullmatch(r"\d{4}-\d{1,2}", spec):
            first, _, last = spec.partition("..")
            wanted = list(pd.period_range(pd.Period(first, "M"), pd.Period(last or first, "M"), freq="M"))
        else:
            first, _, last = spec.partition("-")
            numbers = range(int(first), int(last or first) + 1)
            wanted = [pd.Period(year=available[0].year, month=m, freq="M") for m in numbers]
    except ValueError:
        raise ValueError(f"--months must look like 3-12 or 2013-03..2013-12, got '{spec}'") from None
    if not wanted:
        raise ValueError(f"--months {spec}: names no month (is the first after the last?)")
    missing = [str(m) for m in wanted if m not in available]
    if missing:
        span = f"{available[0]}..{available[-1]}"
        raise ValueError(f"--months {spec}: {', '.join(missing)} not among the data's months {span}")
    return list(wanted)


@dataclass(frozen=True)
class DemoData:
    """Where the demo cuts its monthly batches and traffic from: the seed (data.batch_source), its time column, the
    dataset's name for file names, and the data's last month (which keeps every row after its start)."""

    seed: Path
    time_column: str
    name: str
    last: pd.Period

    @classmethod
    def from_params(cls, params: Params, root: Path) -> DemoData:
        """The demo's data as `params` name it (paths relative to `root`)."""
        seed, time_column = root / params.data.batch_source, params.data.time_column
        months = data_months(seed, time_column, params.data.bootstrap.end, params.validate.row_count.min)
        name = params.data.name or params.tracking.registered_model
        return cls(seed, time_column, name, months[-1] if months else pd.Period(params.data.bootstrap.end, "M"))

    def month_rows(self, month: pd.Period) -> pd.DataFrame:
        """One calendar month of the seed, cut on the UTC time column as the bootstrap window is, so no row falls
        between the two; the data's last month keeps everything after its start."""
        rows = read_seed(self.seed, self.time_column)
        in_month = rows[self.time_column] >= month_start(month)
        if month < self.last:
            in_month &= rows[self.time_column] < month_start(month + 1)
        return rows.loc[in_month]

    def write_csv(self, frame: pd.DataFrame, path: Path) -> Path:
        """Rows as a data provider delivers them: CSV in the raw schema, times as UTC ISO text."""
        path.parent.mkdir(parents=True, exist_ok=True)
        times = frame[self.time_column].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        frame.assign(**{self.time_column: times}).to_csv(path, index=False)
        return path

    def write_batch(self, month: pd.Period, inbox: Path) -> Path:
        """One month of the seed as a CSV batch named `<name>-YYYY-MM.csv`, as a data provider would deliver it."""
        return self.write_csv(self.month_rows(month), inbox / f"{self.name}-{month}.csv")

    def write_traffic(self, month: pd.Period, folder: Path, purpose: str, rows: int | None = None) -> Path:
        """A seeded random sample of a month's rows, with outcomes, as client traffic (`purpose`: serve or canary).

        Sampled rather than taken in order: the first few hundred rows of a month are its first hours (for flights,
        the early-morning departures, when delays are rare) and would not look like that month's traffic.
        """
        frame = self.month_rows(month)
        seed = month.month * 1000 + sum(map(ord, purpose))
        sample = frame.sample(n=min(rows or TRAFFIC_ROWS, len(frame)), random_state=seed)
        return self.write_csv(sample, folder / f"{purpose}-{month}.csv")


# The production canary (params.yaml) waits 60 s and 200 challenger requests per step, from 10 % up; the demo keeps
# every threshold but takes three steps of 150 requests each (so the first step already has the 100 labels the
# accuracy and AUC tests need), and a month's canary takes seconds, not minutes.
DEMO_CANARY = {
    "enabled": True,
    "steps": [25, 50, 100],
    "min_requests_per_step": 150,
    "min_seconds_per_step": 0,
    "max_seconds_per_step": 120,
    "feedback_delay_seconds": 0.2,
}


TRAFFIC_ROWS = 3000


# The monitor judges one month of served traffic at a time: the newest TRAFFIC_ROWS predictions of the champion.
DEMO_MONITOR = {"window": {"max_predictions": TRAFFIC_ROWS}}


def set_section(workdir: Path, section: str, settings: dict) -> None:
    """Merge settings into a section of the workspace's params (canary, monitor: no DVC stage depends on them)."""
    path = workdir / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    merged = dict(raw.get(section, {}))
    for key, value in settings.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    raw[section] = merged
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def month_end(month: pd.Period) -> datetime:
    """The simulated clock of a monitoring pass: the end of the month whose traffic was just served."""
    return month_start(month + 1).to_pydatetime()


def serve_month(url: str, traffic: Path, params: Params) -> dict:
    """Replay a month's traffic to the service as clients would, 100 records per request, labels as feedback."""
    from retrainer.app.canary import load_traffic
    from retrainer.serving.replay import replay

    records, labels = load_traffic(traffic, params)
    stats = replay(url, records, labels, max_requests=len(records), timeout_s=600, batch_size=100)
    return stats.to_dict()


def monitor_lines(result: MonitorResult) -> list[str]:
    """The monitoring pass of a month, for the demo table."""
    if result.status != MonitorStatus.OK:
        return [f"monitor: {result.status}: {result.reason}"]

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    drifted = ", ".join(result.drifted_features) or "none"
    return [
        f"monitor v{result.model_version}: {'ALARM' if result.alarm else 'ok'}, drift share "
        f"{number(result.drift_share)} ({drifted}), prediction PSI {number(result.prediction_psi)}, rolling AUC "
        f"{number(result.rolling_auc)} on {result.labelled:,} labels vs {number(result.reference_auc)} reference",
        f"retrain {'FIRED' if result.fired else 'suppressed'}: {result.reason[:150]}",
    ]


def _improvement(result: CycleResult) -> dict:
    for check in (result.gate or {}).get("checks", []):
        if check["name"].startswith("improvement:"):
            return check["values"]
    return {}


def month_row(month: pd.Period, result: CycleResult, seconds: float) -> list[str]:
    """One line of the demo table."""
    challenger = (result.metrics.get("challenger") or {}).get("roc_auc")
    champion = (result.metrics.get("champion") or {}).get("roc_auc")
    ci = _improvement(result)
    ci_text = f"[{ci['ci_low']:+.3f}, {ci['ci_high']:+.3f}]" if ci.get("ci_low") is not None else "-"
    return [
        str(month),
        f"{read_rows(result):,}" if read_rows(result) else "-",
        f"v{result.challenger_version or '-'}",
        f"{challenger:.3f}" if challenger is not None else "-",
        f"{champion:.3f}" if champion is not None else "-",
        ci_text,
        result.status.upper(),
        f"v{result.champion_version or '-'}",
        f"{seconds:.0f}s",
        result.reasons[0][:110] if result.reasons else "",
    ]


def read_rows(result: CycleResult) -> int:
    """Holdout rows the decision was made on."""
    return int((result.metrics.get("challenger") or {}).get("rows") or 0)


WIDTHS = (8, 8, 11, 6, 6, 17, 11, 9, 5)
HEADER = ("month", "holdout", "challenger", "AUC", "champ", "diff 95% CI", "decision", "champion", "time")


class AppendingFile(io.TextIOBase):
    """A text stream that appends each write to a file: it holds no open file, so a log handler bound to it while
    it stood in for stderr keeps working after."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.path.open("a") as sink:
            return sink.write(text)


@dataclass(frozen=True)
class ReplicatedService:
    """The `retrainer serve` replicas and the HAProxy in front of them that the demo started (`team.serve_replicas`,
    pid files in `folder`): clients and the canary go to `url`, the proxy."""

    stack: ServingStack
    folder: Path

    @property
    def url(self) -> str:
        """The proxy's URL."""
        return self.stack.url

    def stop(self) -> None:
        """Stop the proxy and every replica."""
        from retrainer.team import stop_replicas

        stop_replicas(self.folder)

    def requests_by_replica(self) -> dict[str, dict[str, int]]:
        """Each replica's URL -> the prediction requests it answered per arm, from its own /metrics."""
        from retrainer.serving.replay import scrape_counters

        answered = {}
        for url in self.stack.replicas:
            counters = scrape_counters([url])
            answered[url] = {arm: int(n) for (name, arm), n in counters.items() if name == "retrainer_requests_total"}
        return answered


@dataclass
class Demo:
    """One demo run: its workspace, its console, what it has decided so far, and the service it started (one
    `retrainer serve`, or `replicas` of them behind HAProxy)."""

    root: Path
    workdir: Path
    console: Console
    canary: bool = True
    drift: bool = True
    replicas: int = 1
    results: list[CycleResult] = field(default_factory=list)
    passes: list[MonitorResult] = field(default_factory=list)
    service: RunningService | ReplicatedService | None = None
    data: DemoData | None = None
    answered: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def workspace(self) -> Workspace:
        """The demo's own workspace (its home under `.retrainer/`)."""
        return Workspace(self.workdir, self.workdir / HOME_DIR)

    @property
    def source(self) -> DemoData:
        """The seed every batch and traffic sample is cut from, as the workspace's params name it."""
        if self.data is None:
            self.data = DemoData.from_params(load_params(self.workspace.params_file), self.workdir)
        return self.data

    def next_month(self, month: pd.Period) -> pd.Period:
        """The month whose traffic canaries a retrain on `month`: the next one, or itself when it is the last."""
        return min(month + 1, self.source.last)

    def note(self, text: str, style: str = "dim") -> None:
        """A line under the table's current row."""
        self.console.print(f"   {'':8} {text}", style=style, highlight=False)

    def library_output(self) -> contextlib.AbstractContextManager:
        """While a flow runs, what libraries print to stderr (MLflow's registration lines) goes to logs/flows.log."""
        return contextlib.redirect_stderr(AppendingFile(self.workspace.home / "logs" / "flows.log"))

    def traffic(self, month: pd.Period, purpose: str) -> Path:
        """A month's client traffic sample (`purpose`: serve or canary), written under data/traffic."""
        return self.source.write_traffic(month, self.workdir / "data" / "traffic", purpose)


def demo_tracking_uri(home: Path) -> str:
    """The demo's MLflow store: the team database when $RETRAINER_DATABASE_URL is set (no SQLite file then), else
    a fresh SQLite store under the demo's home (whatever MLFLOW_TRACKING_URI says: the demo starts from nothing)."""
    return database_url() or f"sqlite:///{home / MLFLOW_DB_FILE}"


def demo_environment(home: Path) -> dict[str, str]:
    """The environment the demo runs in: its own home, MLflow store (`demo_tracking_uri`) and Prefect home, and a
    quiet console. With PREFECT_API_URL set (a team's server) flows run there, else on Prefect's temporary server.

    Prefect's console handler (which also prints every library's warnings) is held to errors, so the table is not
    interleaved with log lines (the flow runs' logs still reach the Prefect API); see also `Demo.library_output`.
    """
    return {
        "RETRAINER_HOME": str(home),
        "MLFLOW_TRACKING_URI": demo_tracking_uri(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # a fresh Prefect database is migrated at first start: allow for that on a busy 2-core machine
        PREFECT_STARTUP_TIMEOUT_ENV: PREFECT_STARTUP_TIMEOUT_SECONDS,
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "ERROR",
    }


def set_up(demo: Demo, params_file: str | None) -> None:
    """A fresh workspace and environment, the bootstrap model (`dvc repro`), the demo's canary and monitor settings."""
    console, workdir = demo.console, demo.workdir
    console.print(f"[bold]retrainer demo[/bold]: fresh workspace in {workdir}")
    create_workspace(demo.root, workdir, Path(params_file) if params_file else None)
    os.environ.update(demo_environment(demo.workspace.home))
    os.environ.pop(PARAMS_ENV, None)
    console.print(
        "[bold]1. bootstrap[/bold]: dvc repro on the bootstrap months (ingest -> split -> train -> "
        "evaluate -> register)"
    )
    bootstrap = reproduce(workdir, echo=_stream)
    trained, metrics = read_json(workdir / TRAIN_REPORT), read_json(workdir / METRICS)
    split, registration = read_json(workdir / SPLIT_REPORT), read_json(workdir / REGISTRATION)
    console.print(
        f"   trained on {split['train']['rows']:,} rows, {len(trained['features'])} features; "
        f"CV {trained['cv_scoring']} {trained['cv_best_score']:.3f}; holdout ROC AUC "
        f"{metrics['roc_auc']:.3f}, PR AUC {metrics['pr_auc']:.3f}; registered v{registration['version']} "
        f"({bootstrap.seconds:.0f}s). No champion yet: the first batch makes one."
    )
    set_section(workdir, "canary", DEMO_CANARY if demo.canary else {"enabled": False})
    set_section(workdir, "monitor", DEMO_MONITOR)
    os.environ[TOKEN_ENV] = secrets.token_urlsafe(24)


def print_plan(demo: Demo, months: list[pd.Period]) -> None:
    """What the months will do, and the table's header."""
    demo.console.print(
        f"[bold]2. monthly batches[/bold]: {len(months)} months. "
        + (
            "Each month the service scores that month's records (labels follow as feedback), the batch lands in "
            "the inbox, and the monitor decides whether drift or decay calls for a retrain; "
            if demo.drift
            else "Each month's batch goes straight through the retrain flow; "
        )
        + "a retrain validates, trains, gates and packages, then "
        + ("canaries on the live service with the next month's records." if demo.canary else "promotes on the gate.")
    )
    demo.console.print("   " + " ".join(h.ljust(w) for h, w in zip(HEADER, WIDTHS, strict=True)), style="bold")


def batch_month(batch: str | None, default: pd.Period) -> pd.Period:
    """The month a demo batch file (`<name>-YYYY-MM.csv`) holds; `default` for any other name."""
    found = re.search(r"(\d{4}-\d{2})$", Path(batch or "").stem)
    return pd.Period(found.group(1), "M") if found else default


def print_cycle(demo: Demo, month: pd.Period, result: CycleResult, seconds: float) -> None:
    """A retrain's row in the table, its first reason, and its canary steps."""
    row = month_row(batch_month(result.batch, month), result, seconds)
    demo.console.print("   " + " ".join(c.ljust(w) for c, w in zip(row[:9], WIDTHS, strict=True)), highlight=False)
    demo.note(row[9])
    if month == demo.source.last and result.canary:
        demo.note(f"(no later month: the canary replayed {month}'s own records)")
    for line in canary_lines(result.canary):
        demo.note(line, style="cyan")
    demo.results.append(result)


def start_replicas(demo: Demo) -> ReplicatedService:
    """`demo.replicas` replicas of `retrainer serve` sharing the demo's home, and HAProxy in front of them on a free
    loopback port (`team.serve_replicas`); when one of them fails to start, those started are stopped again."""
    from retrainer.io.processes import free_port
    from retrainer.team import TEAM_DIR, serve_replicas, stop_replicas

    home = demo.workspace.home
    try:
        return ReplicatedService(serve_replicas(home, demo.workdir, free_port(), demo.replicas), home / TEAM_DIR)
    except BaseException:
        stop_replicas(home / TEAM_DIR)
        raise


def start_service_once(demo: Demo) -> None:
    """Start `retrainer serve` (or replicas behind HAProxy) with the champion once there is one, and point the canary
    at it (at the proxy, with every replica's /metrics for the canary's counters)."""
    champion = demo.results[-1].champion_version if demo.results else None
    if not champion or demo.service is not None:
        return
    if demo.replicas == 1:
        with demo.console.status("starting the service (`retrainer serve`) with the champion ..."):
            demo.service = start_service(demo.workdir, demo.workspace.home / "logs" / "serve.log")
        set_section(demo.workdir, "canary", {"service_url": demo.service.url})
        demo.console.print(f"   service up at {demo.service.url}, serving champion v{champion}")
        return
    with demo.console.status(f"starting {demo.replicas} `retrainer serve` replicas behind HAProxy ..."):
        demo.service = start_replicas(demo)
    replicas = demo.service.stack.replicas
    set_section(demo.workdir, "canary", {"service_url": demo.service.url, "replica_urls": replicas})
    demo.console.print(
        f"   service up at {demo.service.url}: HAProxy in front of {len(replicas)} replicas "
        f"({', '.join(replicas)}), serving champion v{champion}"
    )


def retrain_month(demo: Demo, batch: Path, month: pd.Period) -> None:
    """Retrain on the month's batch at once (the retrain flow), canaried on the next month's records if served."""
    traffic = demo.traffic(demo.next_month(month), "canary") if demo.service else None
    started = time.perf_counter()
    with demo.console.status(f"retraining on {batch.name} ..."), demo.library_output():
        result = run_cycle(batch, demo.workdir, canary_traffic=traffic)
    print_cycle(demo, month, result, time.perf_counter() - started)


def serve_and_monitor(demo: Demo, month: pd.Period) -> None:
    """Serve the month's records to the champion, then run the monitor flow, which may retrain on the inbox."""
    params = load_params(demo.workspace.params_file)
    champion = demo.results[-1].champion_version
    with demo.console.status(f"{month}: serving the month's records to the champion ..."):
        served = serve_month(demo.service.url, demo.traffic(month, "serve"), params)
    missing = served["unlabelled"]
    has = "record has" if missing == 1 else "records have"
    unlabelled = f" ({missing:,} {has} no label: their target is missing)" if missing else ""
    demo.console.print(
        f"   {month}  served {sum(served['by_arm'].values()):,} records to champion v{champion}, "
        f"{served['feedback_sent']:,} labels came back{unlabelled}; monitoring ...",
        highlight=False,
    )
    traffic = demo.traffic(demo.next_month(month), "canary")
    with (
        demo.console.status(f"{month}: monitoring (the monitor flow; it may retrain) ..."),
        demo.library_output(),
    ):
        run = load_flow(MONITOR)(root=str(demo.workdir), now=month_end(month), canary_traffic=str(traffic))
    outcome = MonitorResult.from_dict(run)
    for started in outcome.retrain or []:
        print_fired_retrain(demo, month, started)
    for line in monitor_lines(outcome):
        demo.note(line, style="yellow")
    demo.passes.append(outcome)


def print_fired_retrain(demo: Demo, month: pd.Period, started: dict) -> None:
    """The retrain a monitoring pass fired: the batches it took, then its row (read back from the batch record)."""
    entry = open_batch_record(demo.workspace.batch_record).get(started.get("batch_id") or "")
    if entry is None:  # the retrain failed before it claimed a batch
        print_cycle(demo, month, CycleResult(CycleStatus.FAILED, [started["reason"]]), 0.0)
        return
    result = recorded(entry)
    batches = [*(i["batch"] for i in result.included or []), result.batch]
    names = ", ".join(Path(name).stem.removeprefix(f"{demo.source.name}-") for name in batches)
    demo.note(f"the monitor fired: one retrain on the waiting batches ({names})", style="yellow")
    seconds = datetime.fromisoformat(entry["finished_at"]) - datetime.fromisoformat(entry["claimed_at"])
    print_cycle(demo, month, result, seconds.total_seconds())


def run_month(demo: Demo, month: pd.Period) -> None:
    """One month: its batch lands in the inbox; then a retrain at once, or serving and a monitoring pass."""
    batch = demo.source.write_batch(month, demo.workdir / "data" / "incoming")
    start_service_once(demo)
    if demo.drift and demo.service:
        serve_and_monitor(demo, month)
    else:
        retrain_month(demo, batch, month)


def print_summary(demo: Demo) -> None:
    """How many challengers each way, the champion now, and where to look closer."""
    counts = {status: sum(r.status == status for r in demo.results) for status in CycleStatus}
    final = demo.results[-1].champion_version if demo.results else None
    home = demo.workspace.home
    demo.console.print(
        f"[bold]summary[/bold]: {counts[CycleStatus.PROMOTED]} promoted, "
        f"{counts[CycleStatus.REJECTED]} rejected by the gate, "
        f"{counts[CycleStatus.ROLLED_BACK]} rolled back by the canary, "
        f"{counts[CycleStatus.QUARANTINED] + counts[CycleStatus.FAILED]} quarantined or failed; champion is v{final}."
    )
    if demo.passes:
        fired = sum(outcome.fired for outcome in demo.passes)
        demo.console.print(
            f"monitor: {len(demo.passes)} passes, {fired} fired a retrain, {len(demo.passes) - fired} suppressed "
            f"(every decision: {monitor_dir(home) / DECISIONS_FILE}; drift reports: {monitor_dir(home) / 'reports'})"
        )
    if demo.answered:
        demo.console.print(serving_line(demo.service.url, demo.answered), highlight=False)
    demo.console.print("look closer:")
    store = f"sqlite:///{home / MLFLOW_DB_FILE}" if database_url() is None else f'"${DATABASE_ENV}"'
    mlflow, retrainer = (Path(sys.executable).with_name(name) for name in ("mlflow", "retrainer"))  # venv: off PATH
    demo.console.print(f"  {mlflow} ui --backend-store-uri {store} --workers 1")
    demo.console.print(f"  cd {demo.workdir} && {retrainer} status && {retrainer} lineage {final}")
    if demo.service is not None:  # its params.yaml still points the canary at the demo's (stopped) service
        port = urlparse(demo.service.url).port
        demo.console.print(
            f"  the service stopped with the demo: before `retrainer run --batch FILE` there, start "
            f"`{retrainer} serve --port {port}` (its params.yaml's canary.service_url), or set canary.enabled: false"
        )


def serving_line(proxy_url: str, answered: dict[str, dict[str, int]]) -> str:
    """How the traffic was served: through HAProxy to N replicas, the prediction requests each answered per arm."""
    per_replica = "; ".join(
        f"{url} {sum(arms.values()):,} (" + ", ".join(f"{arm} {n:,}" for arm, n in sorted(arms.items())) + ")"
        for url, arms in answered.items()
    )
    return (
        f"serving: through HAProxy at {proxy_url} to {len(answered)} replicas; prediction requests each answered "
        f"(its /metrics, by arm): {per_replica}"
    )


def plan_months(root: Path, params_file: str | None, spec: str | None) -> list[pd.Period]:
    """The months the demo feeds: those `--months` names (`select_months`) among the calendar months the params'
    data.batch_source holds after data.bootstrap.end. Raises ConfigError (params) or ValueError (the months)."""
    params = load_params(params_file or root / "params.yaml")
    data, min_rows = params.data, params.validate.row_count.min
    return select_months(spec, data_months(root / data.batch_source, data.time_column, data.bootstrap.end, min_rows))


def check_fresh_team_state() -> None:
    """Nothing with the embedded default; with $RETRAINER_DATABASE_URL, raises ValueError when that database already
    records processed batches: the team's batch record is shared, so the demo's months (the same content) would be
    skipped as already processed instead of telling the story."""
    url = database_url()
    if url is None or not PostgresBatchRecord(url).recent(1):
        return
    raise ValueError(
        f"{DATABASE_ENV} ({describe_url(url)}) already records processed batches, which the demo would skip: "
        "run it on an empty database (e.g. a fresh `retrainer team up` after removing the old stack's folder)"
    )


def run_demo(
    root: Path,
    workdir: Path,
    months: list[pd.Period],
    params_file: str | None = None,
    canary: bool = True,
    trigger: str = "drift",
    replicas: int = 1,
) -> list[CycleResult]:
    """Bootstrap a model with `dvc repro`, then feed the following months one by one; return every retrain's result.

    The dataset is the one `params_file` (default: root/params.yaml) names. The first month makes the first champion
    and the service starts with it. With `trigger="drift"`, each later month's records are served (with labels as
    feedback) and a monitor flow run decides whether to retrain on the batches waiting in the inbox; with "monthly",
    every batch is retrained at once. With `canary`, a gate pass is canaried on the service with the next month's
    records as traffic; without, it promotes directly. With `replicas` > 1, the service is that many replicas behind
    HAProxy (`team.serve_replicas`): every request goes through the proxy, and the canary counts every replica's.
    """
    from rich.console import Console

    console = Console(soft_wrap=True)
    demo = Demo(root, workdir, console, canary=canary, drift=trigger == "drift", replicas=replicas)
    set_up(demo, params_file)
    print_plan(demo, months)
    try:
        for month in months:
            run_month(demo, month)
        if isinstance(demo.service, ReplicatedService):
            demo.answered = demo.service.requests_by_replica()
    finally:
        if demo.service is not None:
            demo.service.stop()
    print_summary(demo)
    return demo.results
