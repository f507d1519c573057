"""Normalise a freshly read batch, the same way for every reader: rows of nothing but empty cells dropped, text
trimmed as the service trims request fields, the time column parsed as ISO 8601 in UTC. Pure functions over frames;
each change or problem comes back as an entry shaped like a validation failure/warning."""

from __future__ import annotations

from typing import Any

import pandas as pd

from retrainer.steps.ingest import parse_time_column

MAX_EXAMPLES = 5


def read_entry(check: str, column: str | None, severity: str, count: int, reason: str, **extra: Any) -> dict:
    """One note or problem of reading, in the shape of a validation failure/warning entry."""
    return {
        "check": check,
        "expectation": "batch_file_reads_cleanly",
        "column": column,
        "severity": severity,
        "unexpected_count": count,
        "examples": extra.pop("examples", []),
        "observed": None,
        "reason": reason,
        **extra,
    }


def drop_empty_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The frame without rows whose every cell is empty, and a note counting them (0-based row numbers). A cell is
    empty when it is missing or is text of nothing but whitespace, in any text column (object, string or category
    dtype, declared or not): a CSV reader reads "" as missing in every column, and text is trimmed afterwards, so a
    Parquet row of "" and nulls is dropped as the same CSV row is."""
    text = [column for column in frame if _is_text(frame[column].dtype)]
    empty = frame.drop(columns=text).isna().all(axis=1)
    if text and empty.any():  # only rows with no other value can be empty: their text cells are looked at
        candidates = frame.loc[empty, text]
        blank = candidates.apply(lambda cells: cells.astype("string").str.strip().fillna("").eq("")).all(axis=1)
        empty = empty & blank.reindex(frame.index, fill_value=False)
    if not empty.any():
        return frame, []
    rows = [int(i) for i in frame.index[empty]]
    shown = ", ".join(map(str, rows[:MAX_EXAMPLES])) + (", ..." if len(rows) > MAX_EXAMPLES else "")
    reason = f"{plural(len(rows), 'row')} with every cell empty, dropped: {shown}"
    note = read_entry("empty_rows", None, "warn", len(rows), reason, rows=rows[:MAX_EXAMPLES])
    return frame.loc[~empty].reset_index(drop=True), [note]


def _is_text(dtype) -> bool:
    return pd.api.types.is_object_dtype(dtype) or isinstance(dtype, (pd.StringDtype, pd.CategoricalDtype))


def trim_text_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> tuple[pd.DataFrame, list[dict]]:
    """Text columns without surrounding whitespace (Python's `str.strip`, as pydantic's `str_strip_whitespace` in the
    service), one warning per column that had any, with the count and a few original values. A cell of nothing but
    whitespace is empty once trimmed, and an empty cell is missing (one warning per column that had empty cells: a
    Parquet file can hold "", which the service's request schema and a CSV batch read as missing)."""
    notes, out = [], frame
    for column in columns:
        if column not in frame or not isinstance(frame[column].dtype, pd.StringDtype):
            continue
        values = frame[column]
        stripped = values.str.strip()
        changed = ((stripped != values) & values.notna()).to_numpy(dtype=bool)
        already_empty = (values == "").fillna(False).to_numpy(dtype=bool)  # a Parquet file keeps "" (a CSV reads NA)
        if changed.any() or already_empty.any():
            out = out.assign(**{column: stripped.mask(stripped == "")})
        if already_empty.any():
            count = int(already_empty.sum())
            rows = [int(i) for i in frame.index[already_empty][:MAX_EXAMPLES]]
            reason = f"{plural(count, 'empty value')}: missing, as in a CSV batch and a request"
            notes.append(read_entry(f"empty.{column}", column, "warn", count, reason, rows=rows))
        if not changed.any():
            continue
        count = int(changed.sum())
        rows = [int(i) for i in frame.index[changed][:MAX_EXAMPLES]]
        examples = [shorten(str(v)) for v in values[changed].unique()[:MAX_EXAMPLES]]
        blank = int((stripped[changed] == "").sum())
        emptied = f"; {blank} of them only whitespace, now missing" if blank else ""
        reason = f"{plural(count, 'value')} had surrounding whitespace: trimmed{emptied} (e.g. {', '.join(examples)})"
        notes.append(read_entry(f"whitespace.{column}", column, "warn", count, reason, rows=rows, examples=examples))
    return out, notes


def shorten(text: str, limit: int = 40) -> str:
    """A value's repr, cut to `limit` characters (a cell padded with thousands of spaces stays readable)."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 12]}...({len(text)} chars)"


def plural(count: int, noun: str) -> str:
    """`1 value`, `3 values`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def parse_time_values(frame: pd.DataFrame, time_column: str | None) -> tuple[pd.DataFrame, list[dict]]:
    """The frame with its time column as UTC timestamps (any ISO 8601 spelling); values that do not parse are one
    blocking problem naming their rows, and the column is left as text for the dtype check."""
    if not time_column or time_column not in frame.columns:
        return frame, []
    try:
        return parse_time_column(frame, time_column), []
    except (ValueError, TypeError, OverflowError):
        pass
    values = frame[time_column]
    parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    bad = (parsed.isna() & values.notna()).to_numpy(dtype=bool)
    rows = [int(i) for i in frame.index[bad][:MAX_EXAMPLES]]
    examples = [str(v) for v in values[bad][:MAX_EXAMPLES]]
    shown = ", ".join(f"row {r} {v!r}" for r, v in zip(rows, examples, strict=True))
    reason = f"{int(bad.sum())} values are not ISO 8601 times (e.g. {shown})"
    entry = read_entry(
        f"times.{time_column}", time_column, "block", int(bad.sum()), reason, rows=rows, examples=examples
    )
    return frame, [entry]
