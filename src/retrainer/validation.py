"""Validate one batch file end to end: parse, run the GX suite, measure drift, quarantine if blocked."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from retrainer.config import Params, params_hash
from retrainer.io.batch_files import (
    BatchParseError,
    BatchTable,
    hash_file,
    read_batch_file,
    read_missing_texts,
    read_options,
)
from retrainer.io.quarantine import locate_quarantine, quarantine_batch, write_data_docs
from retrainer.steps import validate as steps

_RUNNERS: dict[str, steps.SuiteRunner] = {}


@dataclass(frozen=True)
class ValidationOutcome:
    """What validation decided about one batch file, and why."""

    passed: bool
    batch_id: str
    failures: list[dict]
    warnings: list[dict]
    drift: dict[str, dict]
    quarantine_dir: Path | None
    report: dict[str, Any]
    frame: pd.DataFrame | None = field(default=None, repr=False)


def freshness_floor(params: Params, root: Path, exclude: Iterable[str] = ()) -> pd.Timestamp | None:
    """The newest time already trained on or accepted for training; a new batch must start after it.

    Read from the data itself, not from a pipeline output a failed run may have left: the bootstrap slice of the seed
    table and every accepted batch except those in `exclude` (a batch being replaced). An accepted batch's newest
    time comes from its stored validation report, else from reading it. None when there is no data at all.
    """
    from retrainer.io.tables import list_batches, read_json, read_table
    from retrainer.steps.ingest import parse_time_column

    data, skipped = params.data, set(exclude)
    newest: list[pd.Timestamp] = []
    seed = root / data.batch_source
    if seed.is_file():
        times = parse_time_column(read_table(seed)[[data.time_column]], data.time_column)[data.time_column]
        window = times[(times >= steps.to_utc(data.bootstrap.start)) & (times < steps.to_utc(data.bootstrap.end))]
        newest += [window.max()] if len(window) else []
    for path in list_batches(root / data.batches_dir):
        if path.stem in skipped:
            continue
        report = path.with_name(f"{path.stem}.validation.json")
        last = (read_json(report).get("completeness") or {}).get("last") if report.is_file() else None
        if last is None:
            last = read_batch_file(path, read_options(params)).frame[data.time_column].max()
        newest.append(steps.to_utc(last))
    return max(newest) if newest else None


def same_period_batches(params: Params, root: Path, completeness: dict) -> list[str]:
    """Ids of accepted batches whose stored report claims the same period as `completeness` (a batch's report)."""
    from retrainer.io.tables import read_json

    claimed = completeness.get("claimed_start")
    if not claimed:
        return []
    reports = sorted((root / params.data.batches_dir).glob("*.validation.json"))
    return [
        r.name.removesuffix(".validation.json")
        for r in reports
        if (read_json(r).get("completeness") or {}).get("claimed_start") == claimed
    ]


def get_suite_runner(params: Params) -> steps.SuiteRunner:
    """The GX suite runner for these params, built once per process and configuration."""
    key = params_hash(params)
    if key not in _RUNNERS:
        _RUNNERS[key] = steps.create_suite_runner(params.validate, params.data)
    return _RUNNERS[key]


def validate_batch_file(
    path: Path,
    params: Params,
    root: Path,
    reference: pd.DataFrame | None = None,
    trained_until: pd.Timestamp | None = None,
) -> ValidationOutcome:
    """Parse and validate a batch file; a blocking failure quarantines it under root (frame set on a pass)."""
    path = Path(path)
    batch_id = hash_file(path)
    base = {
        "batch_id": batch_id,
        "file": path.name,
        "bytes": path.stat().st_size,
        "trained_until": steps.to_jsonable(trained_until),
    }
    try:
        table = read_batch_file(path, read_options(params))
    except BatchParseError as exc:
        return reject_unparseable(path, params, root, base, exc)

    frame, runner = table.frame, get_suite_runner(params)
    result, summary = run_suite(runner, frame, trained_until)
    failures, warnings = read_problems(table, summary, path, params)
    drift = measure_batch_drift(frame, reference, params)
    for alert in steps.list_drift_alerts(drift, params.validate.drift, params.validate.severity.drift):
        (failures if alert["severity"] == "block" else warnings).append(alert)
    completeness = measure_batch_completeness(frame, reference, params)
    for alert in steps.list_completeness_alerts(completeness, params.validate.completeness, params.validate.severity):
        (failures if alert["severity"] == "block" else warnings).append(alert)
    explain_failures(failures + warnings, frame, params, root, trained_until, completeness)
    passed = not failures
    findings = {"failures": failures, "warnings": warnings, "drift": drift, "completeness": completeness}
    report = {**base, **findings, **suite_report(frame, summary, result, runner, params), "passed": passed}
    directory = None if passed else quarantine_failed(path, params, root, batch_id, report, (runner, result))
    return ValidationOutcome(passed, batch_id, failures, warnings, drift, directory, report, frame if passed else None)


def suite_report(
    frame: pd.DataFrame, summary: steps.ResultSummary, result: Any, runner: steps.SuiteRunner, params: Params
) -> dict[str, Any]:
    """The report's account of the rows read and the suite run on them."""
    return {
        "rows": len(frame),
        "columns": [str(c) for c in frame.columns],
        "skipped": summary.skipped,
        "checks": summary.checks,
        "statistics": steps.to_jsonable(dict(result.statistics)),
        "suite": runner.suite.name,
        "params_hash": params_hash(params),
    }


def run_suite(
    runner: steps.SuiteRunner, frame: pd.DataFrame, trained_until: pd.Timestamp | None
) -> tuple[Any, steps.ResultSummary]:
    """GX's result and its summary; run again in GX's detailed format when a check found unexpected values, to name
    their rows (that format costs about 3x on a passing batch)."""
    result = runner.run(frame, trained_until)
    checks = steps.extract_check_results(result)
    if any(not check.success and check.unexpected_count for check in checks):
        result = runner.run(frame, trained_until, detailed=True)
        checks = steps.extract_check_results(result)
    return result, steps.summarise_checks(checks, frame.columns, time_checked=trained_until is not None)


def measure_batch_drift(frame: pd.DataFrame, reference: pd.DataFrame | None, params: Params) -> dict[str, dict]:
    """Per-feature drift of the batch against the training rows ({} before the first training)."""
    if reference is None:
        return {}
    kinds = {name: rule.kind for name, rule in params.validate.columns.items()}
    return steps.measure_drift(reference, frame, params.validate.drift, kinds)


def quarantine_failed(
    path: Path, params: Params, root: Path, batch_id: str, report: dict, gx: tuple[steps.SuiteRunner, Any]
) -> Path:
    """Quarantine a batch that failed a blocking check: its bytes, the report and GX Data Docs; returns the folder."""
    runner, result = gx
    directory = locate_quarantine(root, params.validate.quarantine_dir, batch_id)
    directory.mkdir(parents=True, exist_ok=True)
    write_data_docs(runner.context, result, directory)
    report["quarantine_dir"] = str(directory)
    quarantine_batch(path, directory, report)
    return directory


def read_problems(
    table: BatchTable, summary: steps.ResultSummary, path: Path, params: Params
) -> tuple[list[dict], list[dict]]:
    """Blocking failures and warnings: what reading the file found, then the suite's; a not-null entry names the
    cell texts that were read as missing (validate.missing_values), so it never blames a value not in the file."""
    failures = [*table.problems, *summary.failures]
    warnings = [*table.notes, *summary.warnings]
    nulls = [e for e in failures + warnings if e["check"].startswith(("not_null.", "labelled_share")) and e["column"]]
    texts = read_missing_texts(path, read_options(params), [e["column"] for e in nulls])
    for entry in nulls:
        if texts.get(entry["column"]):
            entry["read_as_missing"] = texts[entry["column"]]
    return failures, warnings


def explain_failures(
    entries: list[dict],
    frame: pd.DataFrame,
    params: Params,
    root: Path,
    trained_until: pd.Timestamp | None,
    completeness: dict,
) -> None:
    """Say in words what a bare expectation result leaves to guess (entries are changed in place): which rows keep
    a column from its dtype kind, and what a stale batch overlaps, with the re-delivery command when an accepted
    batch claims the same period."""
    kinds = {name: rule.kind for name, rule in params.validate.columns.items()}
    for entry in entries:
        column = entry.get("column")
        if entry["check"].startswith("types.") and column in frame.columns:
            rows, values = steps.locate_kind_breaks(frame[column], kinds[column])
            if rows:
                shown = ", ".join(f"row {r} {v!r}" for r, v in zip(rows, values, strict=True))
                entry.update(rows=rows, reason=f"dtype {entry['observed']}, not {kinds[column]}: e.g. {shown}")
            elif kinds[column] == "integer" and steps.holds_whole_floats(frame[column]):
                entry["reason"] = (
                    f"dtype {entry['observed']}, not integer, though every value is a whole number: the file stores "
                    "the column as floating point, as pandas does for an integer column with missing cells; write it "
                    "as an integer type (pandas 'Int64' keeps missing cells)"
                )
        elif entry["check"] == "freshness" and trained_until is not None and column in frame.columns:
            first = steps.to_utc(frame[column].min()).isoformat()
            reason = f"the batch starts at {first}, not after {steps.to_utc(trained_until).isoformat()}, the newest "
            reason += "time already accepted for training"
            hints = [
                f"accepted batch {other} claims the same period: if this file re-delivers it, run "
                f"`retrainer run --batch FILE --replaces {other}`"
                for other in same_period_batches(params, root, completeness)
            ]
            entry["reason"] = "; ".join([reason, *hints])


def measure_batch_completeness(frame: pd.DataFrame, reference: pd.DataFrame | None, params: Params) -> dict:
    """The batch's time coverage of the periods it claims and its row share against the reference's density."""
    column = params.data.time_column
    if column not in frame.columns:
        return {"skipped": f"no time column '{column}'"}
    reference_times = reference[column] if reference is not None and column in reference.columns else None
    return steps.measure_completeness(frame[column], reference_times, params.validate.completeness)


def reject_unparseable(
    path: Path, params: Params, root: Path, base: dict[str, Any], error: BatchParseError
) -> ValidationOutcome:
    """Quarantine a file that cannot be read as a table, with the reason."""
    failure = {
        "check": f"parse.{error.reason}",
        "expectation": "batch_file_is_parseable",
        "column": None,
        "severity": "block",
        "unexpected_count": None,
        "examples": [],
        "observed": None,
        "reason": str(error),
    }
    directory = locate_quarantine(root, params.validate.quarantine_dir, base["batch_id"])
    report = {
        **base,
        "passed": False,
        "reason": str(error),
        "parse_error": error.reason,
        "failures": [failure],
        "warnings": [],
        "skipped": [],
        "drift": {},
        "quarantine_dir": str(directory),
        "params_hash": params_hash(params),
    }
    quarantine_batch(path, directory, report)
    return ValidationOutcome(False, base["batch_id"], [failure], [], {}, directory, report, None)


def format_entry(entry: dict[str, Any]) -> str:
    """One failure or warning as a line for humans."""
    where = f" [{entry['column']}]" if entry.get("column") else ""
    detail = entry.get("reason") or entry.get("error")
    if not detail:
        parts = []
        if entry.get("unexpected_count") is not None:
            parts.append(f"{entry['unexpected_count']} unexpected")
        if any(e is not None for e in entry.get("examples") or []):
            parts.append(f"e.g. {entry['examples'][:3]}")
        elif entry.get("observed") is not None:
            parts.append(f"observed {entry['observed']}")
        if entry.get("rows"):
            parts.append(f"rows {entry['rows']}")
        if entry.get("read_as_missing"):
            texts = ", ".join(f"{text!r} x{count}" for text, count in entry["read_as_missing"].items())
            parts.append(f"read as missing from the text {texts} (validate.missing_values)")
        detail = ", ".join(parts)
    return f"  - {entry['check']}: {entry['expectation']}{where}{': ' + detail if detail else ''}"


def format_outcome(outcome: ValidationOutcome) -> str:
    """A short human-readable account of a validation outcome."""
    report = outcome.report
    verdict = "PASSED" if outcome.passed else "QUARANTINED"
    lines = [
        f"batch {outcome.batch_id} ({report.get('file')}): {verdict}"
        + (f", {report['rows']:,} rows" if "rows" in report else "")
    ]
    if outcome.failures:
        lines.append(f"blocking failures ({len(outcome.failures)}):")
        lines.extend(format_entry(e) for e in outcome.failures)
    if outcome.warnings:
        lines.append(f"warnings ({len(outcome.warnings)}):")
        lines.extend(format_entry(e) for e in outcome.warnings)
    drifted = sorted(f for f, s in outcome.drift.items() if s.get("drifted"))
    if outcome.drift:
        lines.append(
            f"drift: {len(drifted)} of {len(outcome.drift)} features over threshold"
            + (f" ({', '.join(drifted)})" if drifted else "")
        )
    if outcome.quarantine_dir is not None:
        lines.append(f"quarantined in {outcome.quarantine_dir}")
    return "\n".join(lines)
