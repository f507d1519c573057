"""Integrate a raw batch with its reference tables, pseudonymise identifiers and derive the label."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict, dataclass, field

import pandas as pd

from retrainer.config import DataConfig, Reference


@dataclass(frozen=True)
class IngestReport:
    """What ingest did to the rows, so nothing is silently dropped."""

    rows_in: int
    rows_out: int
    excluded_unlabelled: int
    positive_rate: float
    unmatched: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_time_column(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Return the frame with its time column as a UTC timestamp (CSV batches hold it as text).

    Any ISO 8601 spelling parses, mixed within one column (`Z`, `+00:00`, `+00`, no offset taken as UTC, fractional
    seconds): pandas' `format="ISO8601"`, rather than a format guessed from the first value. Raises ValueError when a
    value is not ISO 8601.
    """
    if column not in frame.columns:
        raise KeyError(f"time column '{column}' is missing from the batch")
    if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
        return frame
    out = frame.copy()
    out[column] = pd.to_datetime(out[column], utc=True, format="ISO8601")
    return out


def pseudonym(value: object, key: bytes) -> str:
    """The keyed HMAC-SHA256 digest (16 hex chars) that stands in for one identifier value."""
    return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:16]


def pseudonymise(frame: pd.DataFrame, columns: tuple[str, ...], key: bytes) -> pd.DataFrame:
    """Replace identifier values with a keyed HMAC-SHA256 digest (16 hex chars); nulls stay null."""
    out = frame.copy()
    for column in columns:
        if column not in out.columns:
            continue
        values = out[column]
        mapping = {v: pseudonym(v, key) for v in values.dropna().unique()}
        out[column] = values.map(mapping).astype("str").where(values.notna(), None)
    return out


def reference_rows(table: pd.DataFrame, ref: Reference) -> pd.DataFrame:
    """The rows a reference contributes: its join keys and renamed columns, the first row of each key only."""
    missing = [c for c in (*ref.join_on, *ref.columns) if c not in table.columns]
    if missing:
        raise KeyError(f"reference '{ref.name}' lacks columns {missing}")
    right = table[[*ref.join_on, *ref.columns]].rename(columns=ref.columns)
    return right.drop_duplicates(subset=list(ref.join_on))


def join_references(
    frame: pd.DataFrame, references: dict[str, pd.DataFrame], config: DataConfig
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Left-join each reference table on its keys; count rows that found no match."""
    out = frame
    unmatched: dict[str, int] = {}
    for ref in config.references:
        right = reference_rows(references[ref.name], ref)
        marker = f"__matched_{ref.name}"
        right[marker] = True
        out = out.merge(right, on=list(ref.join_on), how="left", validate="many_to_one")
        unmatched[ref.name] = int(out[marker].isna().sum())
        out = out.drop(columns=marker)
    return out, unmatched


def add_label(frame: pd.DataFrame, config: DataConfig) -> tuple[pd.DataFrame, int]:
    """Drop rows with no outcome (counted) and add the binary label column."""
    target = config.target
    if target.column not in frame.columns:
        raise KeyError(f"target column '{target.column}' is missing from the batch")
    has_outcome = frame[target.column].notna()
    out = frame.loc[has_outcome].copy()
    out[target.name] = (out[target.column] > target.threshold).astype("int8")
    return out, int((~has_outcome).sum())


def integrate(
    batch: pd.DataFrame, references: dict[str, pd.DataFrame], config: DataConfig, key: bytes
) -> tuple[pd.DataFrame, IngestReport]:
    """Raw batch -> labelled, joined, pseudonymised rows sorted by time, plus the report."""
    frame = parse_time_column(batch, config.time_column)
    frame, unmatched = join_references(frame, references, config)
    frame, unlabelled = add_label(frame, config)
    frame = pseudonymise(frame, config.identifiers, key)
    frame = frame.sort_values(config.time_column, kind="stable").reset_index(drop=True)
    positive_rate = float(frame[config.target.name].mean()) if len(frame) else 0.0
    report = IngestReport(
        rows_in=len(batch),
        rows_out=len(frame),
        excluded_unlabelled=unlabelled,
        positive_rate=round(positive_rate, 6),
        unmatched=unmatched,
    )
    return frame, report
