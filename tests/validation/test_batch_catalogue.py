"""A catalogue of corrupted batches built from real March flights: each is named, blocked and quarantined."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrainer.io.batch_files import BatchParseError, ReadOptions, read_batch_file
from retrainer.validation import format_outcome, validate_batch_file

TRAINED_UNTIL_FEB = pd.Timestamp("2013-02-28 23:00", tz="UTC")


def to_csv_bytes(frame: pd.DataFrame, **kwargs) -> bytes:
    """The frame as the CSV bytes a producer would send (ISO timestamps with a Z)."""
    out = frame.copy()
    if "time_hour" in out and isinstance(out["time_hour"].dtype, pd.DatetimeTZDtype):
        out["time_hour"] = out["time_hour"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out.to_csv(index=False, **kwargs).encode()


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as Parquet bytes."""
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def batch_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """The frame as a batch file's bytes in `fmt` ("csv" or "parquet")."""
    return to_csv_bytes(frame) if fmt == "csv" else to_parquet_bytes(frame)


def set_rows(frame: pd.DataFrame, column: str, value, rows: int = 7) -> pd.DataFrame:
    """A copy with the first `rows` values of a column replaced."""
    out = frame.copy()
    out[column] = out[column].astype("object")
    out.loc[: rows - 1, column] = value
    return out


@dataclass(frozen=True)
class Case:
    name: str
    file: str
    build: Callable[[pd.DataFrame], bytes]
    check: str
    expectation: str
    example: object = None
    trained_until: pd.Timestamp | None = None
    max_file_mb: float | None = None


GX = [
    Case(
        "missing column",
        "b.csv",
        lambda m: to_csv_bytes(m.drop(columns="distance")),
        "columns",
        "expect_table_columns_to_match_set",
        "distance",
    ),
    Case(
        "renamed column",
        "b.csv",
        lambda m: to_csv_bytes(m.rename(columns={"dest": "destination"})),
        "columns",
        "expect_table_columns_to_match_set",
        "dest",
    ),
    Case(
        "distance as text",
        "b.csv",
        lambda m: to_csv_bytes(set_rows(m, "distance", "far")),
        "types.distance",
        "expect_column_dtype_to_be_kind",
        "str",
    ),
    Case(
        "distance as text in parquet",
        "b.parquet",
        lambda m: to_parquet_bytes(m.astype({"distance": "str"})),
        "types.distance",
        "expect_column_dtype_to_be_kind",
        "str",
    ),
    Case(
        "all-null column",
        "b.csv",
        lambda m: to_csv_bytes(m.assign(dest=None)),
        "not_null.dest",
        "expect_column_values_to_not_be_null",
    ),
    Case(
        "null in a required column",
        "b.parquet",
        lambda m: to_parquet_bytes(set_rows(m, "carrier", None)),
        "not_null.carrier",
        "expect_column_values_to_not_be_null",
    ),
    Case(
        "month 13",
        "b.csv",
        lambda m: to_csv_bytes(set_rows(m, "month", 13)),
        "ranges.month",
        "expect_column_values_to_be_between",
        13,
    ),
    Case(
        "hour 25",
        "b.parquet",
        lambda m: to_parquet_bytes(m.assign(hour=m["hour"].where(m.index > 3, 25))),
        "ranges.hour",
        "expect_column_values_to_be_between",
        25,
    ),
    Case(
        "zero distance",
        "b.csv",
        lambda m: to_csv_bytes(set_rows(m, "distance", 0)),
        "ranges.distance",
        "expect_column_values_to_be_between",
        0,
    ),
    Case(
        "unknown origin",
        "b.csv",
        lambda m: to_csv_bytes(set_rows(m, "origin", "XXX")),
        "categories.origin",
        "expect_column_values_to_be_in_set",
        "XXX",
    ),
    Case(
        "duplicated keys",
        "b.parquet",
        lambda m: to_parquet_bytes(pd.concat([m, m.iloc[:10]])),
        "unique_key",
        "expect_compound_columns_to_be_unique",
    ),
    Case(
        "too few rows",
        "b.csv",
        lambda m: to_csv_bytes(m.iloc[:100]),
        "row_count",
        "expect_table_row_count_to_be_between",
        100,
    ),
    Case(
        "stale dates",
        "b.parquet",
        to_parquet_bytes,
        "freshness",
        "expect_column_min_to_be_between",
        "2013-03-01T11:00:00+00:00",
        trained_until=pd.Timestamp("2013-06-01", tz="UTC"),
    ),
    Case(
        "all labels missing",
        "b.csv",
        lambda m: to_csv_bytes(m.assign(arr_delay=np.nan)),
        "labelled_share",
        "expect_column_values_to_not_be_null",
    ),
    Case(
        "unparseable timestamps",
        "b.csv",
        lambda m: to_csv_bytes(set_rows(m, "time_hour", "yesterday")),
        "types.time_hour",
        "expect_column_dtype_to_be_kind",
        "str",
    ),
    Case(
        "one timestamp that is not ISO 8601 among mixed valid spellings",
        "b.csv",
        lambda m: with_time_text(m, lambda i, t: "2013-03-32T09:00:00Z" if i == 1500 else iso_spelling(i, t)),
        "times.time_hour",
        "batch_file_reads_cleanly",
        "2013-03-32T09:00:00Z",
    ),
    *(
        Case(
            f"distance {text} in csv",
            "b.csv",
            lambda m, text=text: to_csv_bytes(set_rows(m, "distance", text, rows=1)),
            "finite.distance",
            "expect_column_values_to_be_between",
            "-inf" if text.startswith("-") else "inf",
        )
        for text in ("inf", "-inf", "Infinity", "-Infinity", "1e400", "INF")
    ),
    Case(
        "float inf in parquet",
        "b.parquet",
        lambda m: to_parquet_bytes(m.assign(distance=m["distance"].where(m.index != 2, np.inf))),
        "finite.distance",
        "expect_column_values_to_be_between",
        "inf",
    ),
    Case(
        "a month cut short half-way, last line a valid '+00' time with no final newline",
        "b.csv",
        lambda m: cut_half_way(m),
        "completeness.time_coverage",
        "batch_covers_its_period",
    ),
]


def iso_spelling(index: int, stamp: pd.Timestamp) -> str:
    """Valid ISO 8601 spellings of one UTC instant, varied by row, as different producers write them."""
    spellings = (
        stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        stamp.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        stamp.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        stamp.strftime("%Y-%m-%dT%H:%M:%S"),  # no offset: documented as UTC
        stamp.strftime("%Y-%m-%d %H:%M:%S+00"),
    )
    return spellings[(index // 700) % len(spellings)]


def with_time_text(m: pd.DataFrame, spell: Callable[[int, pd.Timestamp], str]) -> bytes:
    """The frame as CSV with each time written by `spell(row, instant)`."""
    return to_csv_bytes(m.assign(time_hour=[spell(i, t) for i, t in enumerate(m["time_hour"])]))


def cut_half_way(m: pd.DataFrame) -> bytes:
    """A partial upload: the first half of the month's rows, times ending '+00', no final newline (all parseable)."""
    half = m.iloc[: len(m) // 2]
    return with_time_text(half, lambda i, t: t.strftime("%Y-%m-%dT%H:%M:%S+00")).rstrip(b"\n")


def truncate_last_line(m: pd.DataFrame) -> bytes:
    data = to_csv_bytes(m)
    return data[: data.rstrip(b"\n").rfind(b",") - 3]


def with_invalid_utf8(m: pd.DataFrame) -> bytes:
    data = to_csv_bytes(m)
    cut = len(data) // 2
    return data[:cut] + b"\xff\xfe" + data[cut:]


PARSE = [
    Case("empty file", "b.csv", lambda m: b"", "parse.empty_file", "batch_file_is_parseable"),
    Case("header only", "b.csv", lambda m: to_csv_bytes(m.iloc[:0]), "parse.header_only", "batch_file_is_parseable"),
    Case(
        "semicolon delimiter",
        "b.csv",
        lambda m: to_csv_bytes(m, sep=";"),
        "parse.wrong_delimiter",
        "batch_file_is_parseable",
    ),
    Case("truncated last line", "b.csv", truncate_last_line, "parse.truncated", "batch_file_is_parseable"),
    Case("invalid utf-8", "b.csv", with_invalid_utf8, "parse.invalid_utf8", "batch_file_is_parseable"),
    Case(
        "binary garbage",
        "b.csv",
        lambda m: np.random.default_rng(0).bytes(4096),
        "parse.binary_content",
        "batch_file_is_parseable",
    ),
    Case(
        "gzip content named .csv",
        "b.csv",
        lambda m: gzip.compress(to_csv_bytes(m), mtime=0),
        "parse.compressed_or_binary",
        "batch_file_is_parseable",
    ),
    Case(
        "parquet content named .csv", "b.csv", to_parquet_bytes, "parse.compressed_or_binary", "batch_file_is_parseable"
    ),
    Case(
        "truncated parquet",
        "b.parquet",
        lambda m: to_parquet_bytes(m)[:-100],
        "parse.not_parquet",
        "batch_file_is_parseable",
    ),
    Case("txt extension", "b.txt", to_csv_bytes, "parse.unsupported_extension", "batch_file_is_parseable"),
    Case(
        "xlsx extension",
        "b.xlsx",
        lambda m: b"PK\x03\x04" + bytes(200),
        "parse.unsupported_extension",
        "batch_file_is_parseable",
    ),
    Case(
        "larger than max_file_mb", "b.csv", to_csv_bytes, "parse.too_large", "batch_file_is_parseable", max_file_mb=0.01
    ),
]


def list_files(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", GX + PARSE, ids=lambda c: c.name)
def test_corrupted_batch_is_named_and_quarantined(case, march, params, suite_runner, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if case.max_file_mb is not None:
        params = params.model_copy(
            update={"validate": params.validate.model_copy(update={"max_file_mb": case.max_file_mb})}
        )
    source = tmp_path / "inbox" / case.file
    source.parent.mkdir()
    original = case.build(march)
    source.write_bytes(original)
    root = tmp_path / "root"

    outcome = validate_batch_file(source, params, root, reference=None, trained_until=case.trained_until)

    assert outcome.passed is False
    assert outcome.frame is None
    named = {(f["check"], f["expectation"]) for f in outcome.failures}
    assert (case.check, case.expectation) in named, format_outcome(outcome)
    failure = next(f for f in outcome.failures if f["check"] == case.check)
    if case.example is not None:
        assert case.example in failure["examples"] + [failure["observed"]]
    assert all(len(f["examples"]) <= 5 for f in outcome.failures + outcome.warnings)

    assert outcome.batch_id == hashlib.sha256(original).hexdigest()[:16]
    qdir = root / "data" / "quarantine" / outcome.batch_id
    assert outcome.quarantine_dir == qdir
    assert (qdir / case.file).read_bytes() == original
    assert source.read_bytes() == original
    report = json.loads((qdir / "validation.json").read_text())
    assert report["passed"] is False
    assert case.check in [f["check"] for f in report["failures"]]
    assert json.loads(json.dumps(outcome.report)) == outcome.report
    html = (qdir / "report.html").read_text()
    assert case.check in html

    written = list_files(tmp_path) - {source}
    assert written and all(qdir in p.parents for p in written)
    assert not any(cwd.iterdir())
    if case.check.startswith("parse."):
        assert report["reason"] and "Traceback" not in report["reason"]
        assert report["parse_error"] == case.check.removeprefix("parse.")
    else:
        assert (qdir / "data_docs" / "index.html").is_file()
        pages = list((qdir / "data_docs" / "validations").rglob("*.html"))
        page = pages[0].read_text()
        assert len(pages) == 1 and "Unsuccessful Expectations" in page and "Failed" in page


def test_catalogue_covers_the_issue():
    assert {"finite.distance", "times.time_hour", "completeness.time_coverage"} <= {c.check for c in GX}
    assert len(GX + PARSE) >= 20
    assert len({c.name for c in GX + PARSE}) == len(GX + PARSE)


def test_schema_break_skips_dependent_checks(march, params, suite_runner, tmp_path):
    source = tmp_path / "b.csv"
    source.write_bytes(to_csv_bytes(march.drop(columns="month")))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, None)
    assert [f["check"] for f in outcome.failures] == ["columns"]
    skipped = {s["check"] for s in outcome.report["skipped"]}
    assert {"types.month", "not_null.month", "ranges.month", "unique_key"} <= skipped


def test_same_bad_batch_twice_reuses_its_quarantine(march, params, suite_runner, tmp_path):
    source = tmp_path / "b.csv"
    source.write_bytes(to_csv_bytes(set_rows(march, "origin", "XXX")))
    first = validate_batch_file(source, params, tmp_path / "root", None, None)
    second = validate_batch_file(source, params, tmp_path / "root", None, None)
    assert first.quarantine_dir == second.quarantine_dir
    assert len(list((tmp_path / "root" / "data" / "quarantine").iterdir())) == 1
    assert (first.quarantine_dir / "b.csv").read_bytes() == source.read_bytes()


# -- controls: these must pass ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_clean_batch_passes(fmt, march, params, suite_runner, tmp_path):
    source = tmp_path / f"march.{fmt}"
    source.write_bytes(batch_bytes(march, fmt))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    assert outcome.failures == [] and outcome.warnings == []
    assert outcome.quarantine_dir is None
    assert not (tmp_path / "root").exists()
    assert len(outcome.frame) == len(march)
    assert isinstance(outcome.frame["time_hour"].dtype, pd.DatetimeTZDtype)
    assert outcome.frame["time_hour"].min() == march["time_hour"].min()
    freshness = next(c for c in outcome.report["checks"] if c["check"] == "freshness")
    assert freshness["success"] is True
    assert outcome.report["statistics"]["evaluated_expectations"] == len(outcome.report["checks"])


def test_reordered_columns_and_an_extra_column_pass(march, params, suite_runner, tmp_path):
    shuffled = march[list(reversed(march.columns))].assign(note="extra")
    source = tmp_path / "march.csv"
    source.write_bytes(to_csv_bytes(shuffled))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, None)
    assert outcome.passed, format_outcome(outcome)
    assert outcome.failures == []
    assert list(outcome.frame.columns) == list(shuffled.columns)


def test_complete_last_line_without_newline_passes(march, params, suite_runner, tmp_path):
    source = tmp_path / "march.csv"
    source.write_bytes(to_csv_bytes(march).rstrip(b"\n"))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, None)
    assert outcome.passed, format_outcome(outcome)
    assert len(outcome.frame) == len(march)


def test_warn_severity_reports_and_goes_on(march, params, suite_runner, tmp_path):
    source = tmp_path / "march.csv"
    source.write_bytes(to_csv_bytes(set_rows(march, "carrier", "ZZ", rows=3)))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, None)
    assert outcome.passed
    assert [(w["check"], w["severity"], w["unexpected_count"]) for w in outcome.warnings] == [
        ("categories.carrier", "warn", 3)
    ]
    assert outcome.quarantine_dir is None and not (tmp_path / "root").exists()
    assert "categories.carrier" in format_outcome(outcome)


def test_drift_is_measured_per_feature_and_warns(march, february, params, suite_runner, tmp_path):
    shifted = march.assign(distance=march["distance"] * 3)
    source = tmp_path / "march.parquet"
    source.write_bytes(to_parquet_bytes(shifted))
    outcome = validate_batch_file(source, params, tmp_path / "root", february, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    assert set(outcome.drift) == set(params.validate.drift.features)
    assert outcome.drift["distance"]["drifted"] and outcome.drift["distance"]["ks"] > 0.5
    assert outcome.drift["origin"]["psi"] < 0.05 and not outcome.drift["origin"]["drifted"]
    assert "ks" not in outcome.drift["carrier"]
    warned = {w["check"] for w in outcome.warnings}
    assert "drift.distance" in warned and "drift.origin" not in warned
    assert "drift.month" in warned  # a new month is, by construction, outside the reference


# -- inputs from the wild: values real files contain ---------------------------------------------------------


NUMERIC_COLUMNS = ("year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time")
NUMERIC_COLUMNS += ("arr_delay", "flight", "air_time", "distance", "hour", "minute")


def test_every_numeric_column_refuses_non_finite_values_naming_the_row(march, params, suite_runner, tmp_path):
    declared = {n for n, r in params.validate.columns.items() if r.kind in ("integer", "number")}
    assert declared == set(NUMERIC_COLUMNS)
    # one batch, one validation: each column holds its infinity in a row of its own, so every failure must name its
    # own column's row and no other (a validation with quarantine costs seconds; one per column took 14 of them)
    source = tmp_path / "non-finite.parquet"
    bad = march.astype(dict.fromkeys(NUMERIC_COLUMNS, "float64"))
    rows = {column: 3 + 2 * place for place, column in enumerate(NUMERIC_COLUMNS)}
    for column, row in rows.items():
        bad.loc[row, column] = -np.inf if column == "dep_delay" else np.inf
    source.write_bytes(to_parquet_bytes(bad))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, None)
    summary = format_outcome(outcome)
    for column, row in rows.items():
        failure = next((f for f in outcome.failures if f["check"] == f"finite.{column}"), None)
        assert failure is not None, (column, summary)
        assert failure["rows"] == [row] and failure["examples"] in (["inf"], ["-inf"]), (column, failure)
        assert failure["severity"] == "block", (column, failure)
        assert f"rows [{row}]" in summary, (column, summary)


def test_padded_codes_are_trimmed_once_as_the_service_trims_them(march, params, suite_runner, tmp_path):
    from retrainer.serving.schema import record_schema

    padded = march.assign(
        carrier=" " + march["carrier"], dest=" " + march["dest"], tailnum=march["tailnum"].str.pad(8, side="right")
    )
    source = tmp_path / "padded.csv"
    source.write_bytes(to_csv_bytes(padded))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    warned = {w["check"]: w for w in outcome.warnings}
    assert set(warned) == {"whitespace.carrier", "whitespace.dest", "whitespace.tailnum"}
    assert warned["whitespace.carrier"]["unexpected_count"] == len(march)
    assert "' UA'" in format_outcome(outcome) or "' AA'" in format_outcome(outcome)
    for column in ("carrier", "dest", "tailnum"):
        assert outcome.frame[column].tolist() == march[column].tolist(), column
    # the service's request schema reads the same padded values as the same codes
    rows = padded.drop(columns=["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]).head(50)
    served = record_schema(params).json_records(json.loads(rows.to_json(orient="records", date_format="iso")))
    assert [r["carrier"] for r in served] == outcome.frame["carrier"].head(50).tolist()
    assert [r["tailnum"] for r in served] == outcome.frame["tailnum"].head(50).tolist()


def test_training_reads_an_accepted_batch_exactly_as_validation_did(march, params, project_root, tmp_path):
    from retrainer.stages import load_raw

    root = tmp_path / "ws"
    (root / "data" / "batches").mkdir(parents=True)
    (root / "seeds").symlink_to(project_root / "seeds")
    padded = set_rows(march, "carrier", "NA", rows=50).assign(dest=" " + march["dest"])
    (root / "data" / "batches" / "b.csv").write_bytes(to_csv_bytes(padded) + b",,,,,,,,,,,,,,,,,,\n" * 3)
    raw = load_raw(params, root)
    batch = raw.loc[raw["month"] == 3].reset_index(drop=True)
    assert len(batch) == len(march)
    assert batch["carrier"].head(50).tolist() == ["NA"] * 50
    assert batch["dest"].tolist() == march["dest"].tolist()
    assert batch["year"].dtype.kind == "i"


def test_training_reads_a_csv_seed_exactly_as_a_batch(march, params, tmp_path):
    """The bootstrap slice of a CSV seed was read by pandas' defaults: the carrier code `NA` became missing and padded
    text stayed padded, so the first champion learnt values no batch and no request ever carries."""
    from retrainer.stages import load_raw

    root = tmp_path / "ws"
    root.mkdir()
    padded = set_rows(march, "carrier", "NA", rows=50).assign(dest=" " + march["dest"] + " ")
    (root / "seed.csv").write_bytes(to_csv_bytes(padded))
    data = params.data.model_copy(
        update={
            "batch_source": "seed.csv",
            "bootstrap": params.data.bootstrap.model_copy(update={"start": "2013-03-01", "end": "2013-04-02"}),
        }
    )
    raw = load_raw(params.model_copy(update={"data": data}), root)
    assert len(raw) == len(march)
    assert raw["carrier"].head(50).tolist() == ["NA"] * 50
    assert raw["dest"].tolist() == march["dest"].tolist()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_text_NA_is_a_code_in_csv_as_in_parquet(fmt, march, params, suite_runner, tmp_path):
    coded = set_rows(march, "carrier", "NA", rows=50).astype({"carrier": "str"})
    source = tmp_path / f"na.{fmt}"
    source.write_bytes(batch_bytes(coded, fmt))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    assert [(w["check"], w["unexpected_count"]) for w in outcome.warnings] == [("categories.carrier", 50)]
    assert outcome.frame["carrier"].head(50).tolist() == ["NA"] * 50


def test_a_text_configured_as_missing_is_named_in_the_failure(march, params, suite_runner, tmp_path):
    missing = params.validate.missing_values.model_copy(update={"text": ("", "NA")})
    strict = params.model_copy(update={"validate": params.validate.model_copy(update={"missing_values": missing})})
    source = tmp_path / "na.csv"
    source.write_bytes(to_csv_bytes(set_rows(march, "carrier", "NA", rows=50)))
    outcome = validate_batch_file(source, strict, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    failure = next(f for f in outcome.failures if f["check"] == "not_null.carrier")
    assert failure["unexpected_count"] == 50 and failure["read_as_missing"] == {"NA": 50}
    assert "read as missing from the text 'NA' x50" in format_outcome(outcome)


@pytest.mark.parametrize("spelling", ["Z then .000Z", "+00:00 then no offset", "five spellings"])
def test_valid_iso_8601_times_in_mixed_spellings_parse(spelling, march, params, suite_runner, tmp_path):
    def spell(i: int, t: pd.Timestamp) -> str:
        if spelling == "Z then .000Z":
            return t.strftime("%Y-%m-%dT%H:%M:%SZ" if i < 2000 else "%Y-%m-%dT%H:%M:%S.000Z")
        if spelling == "+00:00 then no offset":
            return t.strftime("%Y-%m-%dT%H:%M:%S+00:00" if i % 2 else "%Y-%m-%dT%H:%M:%S")
        return iso_spelling(i, t)

    source = tmp_path / "times.csv"
    source.write_bytes(with_time_text(march, spell))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    assert outcome.frame["time_hour"].tolist() == march["time_hour"].tolist()


FIELDS = 19  # columns of the raw flights schema


@pytest.mark.parametrize(
    "record",
    [
        b"," * (FIELDS - 1),
        b",".join([b'""'] * 1 + [b""] * (FIELDS - 1)),
        b",".join([b'""', b'""', b" "] + [b""] * 16),
        b",,,",
        b'"",,,',
    ],
    ids=["bare commas", "one quoted empty cell", "quoted empty cells and a space", "short", "short and quoted"],
)
def test_spreadsheet_rows_of_bare_commas_at_the_end_are_dropped_and_counted(
    record, march, params, suite_runner, tmp_path
):
    source = tmp_path / "export.csv"
    source.write_bytes(to_csv_bytes(march) + (record + b"\n") * 3)
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    (warning,) = outcome.warnings
    assert warning["check"] == "empty_rows" and warning["unexpected_count"] == 3
    last = len(march) + 4
    assert f"3 empty rows at the end of the file (lines {last - 2}-{last})" in format_outcome(outcome)
    assert len(outcome.frame) == len(march) and outcome.frame["year"].dtype.kind == "i"


def _with_empty_rows(batch: pd.DataFrame, rows: int, first: bool = False) -> pd.DataFrame:
    """`batch` with `rows` rows of "" in every text column and nulls elsewhere, at the end (or the start)."""
    text = {column for column in batch if batch[column].dtype.kind not in "iufMb"}
    empty = pd.DataFrame([{column: "" if column in text else None for column in batch}] * rows)
    frame = pd.concat([empty, batch] if first else [batch, empty], ignore_index=True)
    return frame.astype({column: "Int64" for column in batch if batch[column].dtype.kind == "i"})


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("extra", [False, True], ids=["declared-columns", "an-undeclared-text-column"])
def test_rows_of_nothing_but_empty_text_are_dropped_and_counted_alike_in_csv_and_parquet(
    fmt, extra, march, params, suite_runner, tmp_path
):
    """A Parquet file keeps "" where a CSV reads a missing cell: a row of "" text cells and null numbers is empty in
    both, in a column the params do not declare too (a breaker's case: that column's "" kept the Parquet row, and every
    not_null check failed on it), and the drop adds no note about the dropped row's cells."""
    batch = march.assign(comment="ok") if extra else march
    source = tmp_path / f"export.{fmt}"
    source.write_bytes(batch_bytes(_with_empty_rows(batch, 3), fmt))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    dropped = next(w for w in outcome.warnings if w["check"] == "empty_rows")
    assert dropped["unexpected_count"] == 3
    if fmt == "parquet":
        assert dropped["rows"] == [len(march), len(march) + 1, len(march) + 2]
    assert len(outcome.frame) == len(march)
    assert not [w["check"] for w in outcome.warnings if w["check"].startswith(("empty.", "whitespace."))]


def test_a_note_and_a_check_name_the_same_rows_after_empty_rows_are_dropped(march, params, suite_runner, tmp_path):
    """Rows are numbered after empty rows are dropped, in the trimming notes as in the checks (a breaker's case: the
    trimming note counted rows of the file and not_null rows of the batch, for the same cells)."""
    frame = _with_empty_rows(march, 1, first=True)
    frame.loc[1:2, "carrier"] = "   "
    source = tmp_path / "export.parquet"
    source.write_bytes(to_parquet_bytes(frame))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    whitespace = next(w for w in outcome.warnings if w["check"] == "whitespace.carrier")
    not_null = next(f for f in outcome.failures if f["check"] == "not_null.carrier")
    assert whitespace["rows"] == not_null["rows"] == [0, 1], format_outcome(outcome)


SMALL = ReadOptions(max_file_mb=10, text_columns=("a", "b"), number_columns=("n",))
ABC = pd.DataFrame({"a": ["x", "y", "z", ""], "b": ["p", "q", "r", "  "], "n": [1.0, 2.0, 3.0, None]})


@pytest.mark.parametrize("dtype", ["object", "category"])
def test_a_parquet_row_of_blank_text_is_dropped_with_the_same_notes_as_the_csv_row(dtype, tmp_path):
    """Dictionary-encoded (category) text too: its blank row was kept, with no note."""
    csv, parquet = tmp_path / "b.csv", tmp_path / "b.parquet"
    csv.write_bytes(to_csv_bytes(ABC))
    parquet.write_bytes(to_parquet_bytes(ABC.astype({"a": dtype, "b": dtype})))
    read = [read_batch_file(path, SMALL) for path in (csv, parquet)]
    assert [len(table.frame) for table in read] == [3, 3]
    assert [sorted(note["check"] for note in table.notes) for table in read] == [["empty_rows"]] * 2


@pytest.mark.parametrize("labels", [["r1", "r2", "r3", "r4"], [10, 20, 30, 40]], ids=["text", "numbers"])
def test_a_parquet_file_that_stores_its_index_is_read_by_row_position(labels, tmp_path):
    """pandas stores a frame's own index in Parquet: rows are still named by position (a text index crashed the
    drop of empty rows with a raw ValueError; a number index made notes name its labels), and a named index is
    data, a column as `to_csv` would write it (so that row has a value: it is not empty)."""
    import io

    source = tmp_path / "b.parquet"
    for index, rows, columns in ((labels, 3, ["a", "b", "n"]), (pd.Index(labels, name="id"), 4, ["id", "a", "b", "n"])):
        buffer = io.BytesIO()
        ABC.set_axis(index).to_parquet(buffer, index=True)
        source.write_bytes(buffer.getvalue())
        table = read_batch_file(source, SMALL)
        assert list(table.frame.index) == list(range(rows)) and list(table.frame.columns) == columns
        assert [note["rows"] for note in table.notes if note["check"] == "empty_rows"] == ([[3]] if rows == 3 else [])


def test_a_named_parquet_index_is_a_column_and_one_named_like_a_column_is_refused(tmp_path):
    """A second breaker's cases: a named RangeIndex from 0 was dropped (and its row then read as empty); an index named
    like a column crashed with pandas' 'cannot insert a, already exists'."""
    import io

    source = tmp_path / "b.parquet"
    for index, refused in ((pd.RangeIndex(0, 4, name="id"), False), (pd.Index([7, 8, 9, 10], name="a"), True)):
        buffer = io.BytesIO()
        ABC.set_axis(index).to_parquet(buffer, index=True)
        source.write_bytes(buffer.getvalue())
        if refused:
            with pytest.raises(BatchParseError, match="stored index 'a' has the name of a column"):
                read_batch_file(source, SMALL)
        else:
            assert list(read_batch_file(source, SMALL).frame.columns) == ["id", "a", "b", "n"]


def test_bare_comma_rows_in_the_middle_are_named_by_line(march, params, suite_runner, tmp_path):
    header, *rows = to_csv_bytes(march).splitlines(keepends=True)
    rows[100:100] = [b",".join([b'""'] + [b""] * (FIELDS - 1)) + b"\n"]
    source = tmp_path / "export.csv"
    source.write_bytes(header + b"".join(rows))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    assert "1 empty row (line 102)" in format_outcome(outcome)


def test_a_cell_of_only_whitespace_is_missing_as_an_empty_cell_is(march, params, suite_runner, tmp_path):
    source = tmp_path / "blank.csv"
    source.write_bytes(to_csv_bytes(set_rows(march, "carrier", "   ", rows=2)))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    failure = next(f for f in outcome.failures if f["check"] == "not_null.carrier")
    assert failure["unexpected_count"] == 2 and failure["rows"] == [0, 1]
    assert "2 of them only whitespace, now missing" in format_outcome(outcome)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_empty_text_cell_is_missing_in_parquet_as_in_csv(fmt, march, params, suite_runner, tmp_path):
    """A Parquet file kept "" as a value: trained on as a category of its own, while a request's "" is missing."""
    blank = set_rows(march, "dest", "", rows=3).astype({"dest": "str"})
    source = tmp_path / f"blank.{fmt}"
    source.write_bytes(batch_bytes(blank, fmt))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    failure = next(f for f in outcome.failures if f["check"] == "not_null.dest")  # dest may not be missing
    assert failure["unexpected_count"] == 3 and failure["rows"] == [0, 1, 2]


def test_a_numeric_column_read_as_text_names_the_rows_to_blame(march, params, suite_runner, tmp_path):
    source = tmp_path / "text.csv"
    source.write_bytes(to_csv_bytes(set_rows(march, "distance", "nan", rows=1).pipe(set_rows, "minute", "1.5", 1)))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    types = {f["check"]: f for f in outcome.failures if f["check"].startswith("types.")}
    assert types["types.distance"]["rows"] == [0] and "row 0 'nan'" in types["types.distance"]["reason"]
    assert types["types.minute"]["rows"] == [0] and "row 0 1.5" in types["types.minute"]["reason"]


def test_a_stale_batch_says_where_it_starts_and_what_it_overlaps(march, params, suite_runner, tmp_path):
    source = tmp_path / "stale.csv"
    source.write_bytes(to_csv_bytes(march))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, pd.Timestamp("2013-06-01", tz="UTC"))
    failure = next(f for f in outcome.failures if f["check"] == "freshness")
    assert (
        "the batch starts at 2013-03-01" in failure["reason"]
        and "not after 2013-06-01T00:00:00+00:00" in (failure["reason"])
    )


def test_a_half_month_is_short_of_rows_against_the_reference(march, february, params, suite_runner, tmp_path):
    source = tmp_path / "half.csv"
    source.write_bytes(cut_half_way(march))
    outcome = validate_batch_file(source, params, tmp_path / "root", february, TRAINED_UNTIL_FEB)
    coverage = next(f for f in outcome.failures if f["check"] == "completeness.time_coverage")
    assert 0.4 < coverage["observed"] < 0.6 and "2013-03-01 .. 2013-04-01" in coverage["reason"]
    share = next(w for w in outcome.warnings if w["check"] == "completeness.row_share")
    assert share["observed"] < 0.5
    whole = tmp_path / "whole.csv"
    whole.write_bytes(to_csv_bytes(march))
    full = validate_batch_file(whole, params, tmp_path / "root", february, TRAINED_UNTIL_FEB)
    assert full.report["completeness"]["time_coverage"] > 0.95
    assert not any(e["check"].startswith("completeness.") for e in full.failures + full.warnings)


def test_a_padded_time_is_the_same_instant_in_a_batch_and_at_the_service(march, params, suite_runner, tmp_path):
    from retrainer.serving.schema import iso_instant

    source = tmp_path / "padded-times.csv"
    source.write_bytes(with_time_text(march, lambda i, t: f" {t.strftime('%Y-%m-%dT%H:%M:%SZ')}\t"))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    assert outcome.passed, format_outcome(outcome)
    assert outcome.frame["time_hour"].tolist() == march["time_hour"].tolist()
    padded = f" {march['time_hour'][0].strftime('%Y-%m-%dT%H:%M:%SZ')}\t"
    assert pd.Timestamp(iso_instant(padded)) == outcome.frame["time_hour"][0]


@pytest.mark.parametrize("spelling", ["%Y-%m-%dT%H:%M:%S+00", "%Y%m%dT%H%M%SZ", "%Y-%m-%d %H:%M:%S+00:00"])
def test_the_service_reads_every_iso_spelling_a_batch_accepts(spelling, march):
    from retrainer.serving.schema import iso_instant
    from retrainer.steps.ingest import parse_time_column

    instant = march["time_hour"][10]
    text = instant.strftime(spelling)
    batch = parse_time_column(pd.DataFrame({"t": [text]}), "t")["t"][0]
    assert batch == instant and pd.Timestamp(iso_instant(text)) == instant
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        iso_instant(instant.strftime("%m/%d/%Y %H:%M"))


def test_an_integer_column_stored_as_whole_floats_is_told_how_to_store_it(march, params, suite_runner, tmp_path):
    # pandas writes an integer column as float64 once a cell of it is missing; here the missing cells were in rows
    # the provider dropped, so every value left is whole and no row is to blame
    source = tmp_path / "whole-floats.parquet"
    source.write_bytes(to_parquet_bytes(march.astype({"flight": "float64"})))
    outcome = validate_batch_file(source, params, tmp_path / "root", None, TRAINED_UNTIL_FEB)
    failure = next(f for f in outcome.failures if f["check"] == "types.flight")
    assert "every value is a whole number" in failure["reason"] and "'Int64'" in failure["reason"], failure
    assert "every value is a whole number" in format_outcome(outcome)
    stored = march.astype({"flight": "Int64"})
    source.write_bytes(to_parquet_bytes(stored))
    assert not any(f["check"] == "types.flight" for f in validate_batch_file(source, params, tmp_path / "r2").failures)
