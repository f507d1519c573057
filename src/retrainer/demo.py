"""`retrainer demo`: the main job, in a workspace of its own that starts from scratch every run."""

from __future__ import annotations

import os
import secrets
import time
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path

import pandas as pd
import typer
import yaml

from retrainer.config import Params, load_params
from retrainer.io.project import PREFECT_STARTUP_TIMEOUT_ENV, PREFECT_STARTUP_TIMEOUT_SECONDS
from retrainer.io.tables import read_json
from retrainer.io.workspace import create_workspace, reproduce
from retrainer.runner import canary_lines
from retrainer.stages import METRICS, REGISTRATION, SPLIT_REPORT, TRAIN_REPORT


def _stream(line: str) -> None:
    if line.startswith(("Running stage", "Stage '")) or ": done" in line:
        typer.echo(f"  | {line[:150]}")


@cache
def read_seed(seed_path: Path) -> pd.DataFrame:
    """The seed flights, read once per demo (every month and traffic sample is cut from them)."""
    return pd.read_parquet(seed_path)


def month_flights(seed_path: Path, month: int) -> pd.DataFrame:
    """One month of the seed flights, cut on the UTC time column as the bootstrap window is, so no flight falls
    between the two; the last month of the year keeps everything after its start."""
    flights = read_seed(seed_path)
    start = pd.Timestamp(year=2013, month=month, day=1, tz="UTC")
    in_month = flights["time_hour"] >= start
    if month < 12:
        in_month &= flights["time_hour"] < start + pd.DateOffset(months=1)
    return flights.loc[in_month]


def write_raw_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Flights as a data provider delivers them: CSV in the raw schema, times as UTC ISO text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(time_hour=frame["time_hour"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
    return path


def write_month_batch(seed_path: Path, month: int, inbox: Path) -> Path:
    """One month of the seed flights as a CSV batch in the raw schema, as a data provider would deliver it."""
    return write_raw_csv(month_flights(seed_path, month), inbox / f"flights-2013-{month:02d}.csv")


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


def write_traffic(seed_path: Path, month: int, folder: Path, purpose: str, rows: int = TRAFFIC_ROWS) -> Path:
    """A seeded random sample of a month's flights, with outcomes, as client traffic (`purpose`: serve or canary).

    Sampled rather than taken in order: the first few hundred flights of a month are the early-morning departures
    of its first day, when delays are rare, and would not look like that month's traffic.
    """
    flights = month_flights(seed_path, month)
    sample = flights.sample(n=min(rows, len(flights)), random_state=month * 1000 + sum(map(ord, purpose)))
    return write_raw_csv(sample, folder / f"{purpose}-2013-{month:02d}.csv")


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


def month_end(month: int) -> datetime:
    """The simulated clock of a monitoring pass: the end of the month whose traffic was just served."""
    return datetime(2013 + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def serve_month(url: str, traffic: Path, params: Params) -> dict:
    """Replay a month's traffic to the service as clients would, 100 records per request, labels as feedback."""
    from flows.canary import load_traffic
    from retrainer.serving.replay import replay

    records, labels = load_traffic(traffic, params)
    stats = replay(url, records, labels, max_requests=len(records), timeout_s=600, batch_size=100)
    return stats.to_dict()


def monitor_lines(result: dict) -> list[str]:
    """The monitoring pass of a month, for the demo table."""
    if result["status"] != "ok":
        return [f"monitor: {result['status']}: {result['reason']}"]

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    drifted = ", ".join(result["drifted_features"]) or "none"
    state = "ALARM" if result["alarm"] else "ok"
    return [
        f"monitor v{result['model_version']}: {state}, drift share {number(result['drift_share'])} ({drifted}), "
        f"prediction PSI {number(result['prediction_psi'])}, rolling AUC {number(result['rolling_auc'])} on "
        f"{result['labelled']:,} labels vs {number(result['reference_auc'])} reference",
        f"retrain {'FIRED' if result['fired'] else 'suppressed'}: {result['reason'][:150]}",
    ]


def _improvement(result: dict) -> dict:
    for check in (result.get("gate") or {}).get("checks", []):
        if check["name"].startswith("improvement:"):
            return check["values"]
    return {}


def month_row(month: int, result: dict, seconds: float) -> list[str]:
    """One line of the demo table."""
    metrics = result.get("metrics") or {}
    challenger = (metrics.get("challenger") or {}).get("roc_auc")
    champion = (metrics.get("champion") or {}).get("roc_auc")
    ci = _improvement(result)
    ci_text = f"[{ci['ci_low']:+.3f}, {ci['ci_high']:+.3f}]" if ci.get("ci_low") is not None else "-"
    reasons = result.get("reasons") or []
    return [
        f"2013-{month:02d}",
        f"{read_rows(result):,}" if read_rows(result) else "-",
        f"v{result.get('challenger_version') or '-'}",
        f"{challenger:.3f}" if challenger is not None else "-",
        f"{champion:.3f}" if champion is not None else "-",
        ci_text,
        result["status"].upper(),
        f"v{result.get('champion_version') or '-'}",
        f"{seconds:.0f}s",
        reasons[0][:110] if reasons else "",
    ]


def read_rows(result: dict) -> int:
    """Holdout rows the decision was made on."""
    return int(((result.get("metrics") or {}).get("challenger") or {}).get("rows") or 0)


def run_demo(
    root: Path,
    workdir: Path,
    months: list[int],
    params_file: str | None = None,
    canary: bool = True,
    trigger: str = "drift",
) -> list[dict]:
    """Bootstrap a model with `dvc repro`, then feed the following months one by one.

    The first month makes the first champion and the service starts with it. With `trigger="drift"`, each later
    month's flights are served (with labels as feedback) and a monitoring pass decides whether to retrain on the
    batches waiting in the inbox; with "monthly", every batch is retrained at once. With `canary`, a gate pass is
    canaried on the service with the next month's flights as traffic; without, it promotes directly.
    """
    from rich.console import Console

    from retrainer.io.batches import BatchRecord, pending_batches
    from retrainer.monitoring import run_monitor_pass

    console = Console(soft_wrap=True)
    console.print(f"[bold]retrainer demo[/bold]: fresh workspace in {workdir}")
    create_workspace(root, workdir, Path(params_file) if params_file else None)
    home = workdir / ".retrainer"
    os.environ.update(
        {
            "RETRAINER_HOME": str(home),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            PREFECT_STARTUP_TIMEOUT_ENV: PREFECT_STARTUP_TIMEOUT_SECONDS,
            "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        }
    )
    os.environ.pop("RETRAINER_PARAMS", None)

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

    from retrainer.runner import run_cycle
    from retrainer.serving.launch import RunningService, start_service

    set_section(workdir, "canary", DEMO_CANARY if canary else {"enabled": False})
    set_section(workdir, "monitor", DEMO_MONITOR)
    os.environ["RETRAINER_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
    drift = trigger == "drift"
    console.print(
        f"[bold]2. monthly batches[/bold]: {len(months)} months. "
        + (
            "Each month the service scores that month's flights (labels follow as feedback), the batch lands in "
            "the inbox, and the monitor decides whether drift or decay calls for a retrain; "
            if drift
            else "Each month's batch goes straight through the retrain flow; "
        )
        + "a retrain validates, trains, gates and packages, then "
        + ("canaries on the live service with the next month's flights." if canary else "promotes on the gate.")
    )
    widths = (8, 8, 11, 6, 6, 17, 11, 9, 5)
    header = ("month", "holdout", "challenger", "AUC", "champ", "diff 95% CI", "decision", "champion", "time")
    console.print("   " + " ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), style="bold")
    results: list[dict] = []
    passes: list[dict] = []
    service: RunningService | None = None
    seed, traffic_dir, inbox = (
        root / "seeds" / "flights.parquet",
        workdir / "data" / "traffic",
        workdir / "data" / "incoming",
    )

    def retrain_waiting(_root: Path, month: int, params: Params) -> list[dict]:
        waiting = pending_batches(workdir / params.retrain.inbox_dir, BatchRecord(home / "batches.db"))
        names = ", ".join(path.stem.removeprefix("flights-") for path in waiting)
        console.print(f"   {'':8} the monitor fired: one retrain on the waiting batches ({names})", style="yellow")
        return [cycle(waiting[-1], month, waiting[:-1])] if waiting else []

    def cycle(batch: Path, month: int, earlier: list[Path] | None = None) -> dict:
        traffic = write_traffic(seed, min(month + 1, 12), traffic_dir, "canary") if service else None
        started = time.perf_counter()
        with console.status(f"retraining on {batch.name} ..."):
            result = run_cycle(batch, workdir, canary_traffic=traffic, earlier=earlier)
        row = month_row(int(batch.stem[-2:]), result, time.perf_counter() - started)
        console.print("   " + " ".join(c.ljust(w) for c, w in zip(row[:9], widths, strict=True)), highlight=False)
        console.print(f"   {'':8} {row[9]}", style="dim", highlight=False)
        if month == 12 and result.get("canary"):
            console.print(f"   {'':8} (no later month: the canary replayed December's own flights)", style="dim")
        for line in canary_lines(result):
            console.print(f"   {'':8} {line}", style="cyan", highlight=False)
        results.append(result)
        return result

    try:
        for month in months:
            batch = write_month_batch(seed, month, inbox)
            champion = results[-1].get("champion_version") if results else None
            if champion and service is None:
                with console.status("starting the service (`retrainer serve`) with the champion ..."):
                    service = start_service(workdir, home / "logs" / "serve.log")
                set_section(workdir, "canary", {"service_url": service.url})
                console.print(f"   service up at {service.url}, serving champion v{champion}")
            if not (drift and service):
                cycle(batch, month)
                continue
            params = load_params(workdir / "params.yaml")
            with console.status(f"2013-{month:02d}: serving the month's flights to the champion ..."):
                served = serve_month(service.url, write_traffic(seed, month, traffic_dir, "serve"), params)
            console.print(
                f"   2013-{month:02d}  served {sum(served['by_arm'].values()):,} flights to champion v{champion}, "
                f"{served['feedback_sent']:,} labels came back; monitoring ...",
                highlight=False,
            )
            outcome = run_monitor_pass(
                params, workdir, partial(retrain_waiting, month=month, params=params), now=month_end(month)
            )
            for line in monitor_lines(outcome):
                console.print(f"   {'':8} {line}", style="yellow", highlight=False)
            passes.append(outcome)
    finally:
        if service is not None:
            service.stop()
    promoted = sum(r["status"] == "promoted" for r in results)
    final = results[-1].get("champion_version") if results else None
    console.print(
        f"[bold]summary[/bold]: {promoted} promoted, "
        f"{sum(r['status'] == 'rejected' for r in results)} rejected by the gate, "
        f"{sum(r['status'] == 'rolled_back' for r in results)} rolled back by the canary, "
        f"{sum(r['status'] in ('quarantined', 'failed') for r in results)} quarantined or failed; "
        f"champion is v{final}."
    )
    if passes:
        fired = sum(bool(outcome.get("fired")) for outcome in passes)
        console.print(
            f"monitor: {len(passes)} passes, {fired} fired a retrain, {len(passes) - fired} suppressed "
            f"(every decision: {home / 'monitor' / 'decisions.jsonl'}; drift reports: {home / 'monitor' / 'reports'})"
        )
    console.print("look closer:")
    console.print(f"  mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'} --workers 1")
    console.print(f"  cd {workdir} && retrainer status && retrainer lineage {final}")
    return results
