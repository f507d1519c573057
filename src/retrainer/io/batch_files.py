"""Read a batch file safely: every file that cannot be parsed becomes a BatchParseError with a reason.

Validation, ingest and the canary's traffic replay all read batches here, so a value means the same thing to each:
which cells are missing, which text is trimmed, how the time column parses.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from retrainer.steps.normalise import (
    MAX_EXAMPLES,
    drop_empty_rows,
    parse_time_values,
    plural,
    read_entry,
    trim_text_columns,
)

if TYPE_CHECKING:
    from retrainer.config import Params

CSV_SUFFIX = ".csv"
PARQUET_SUFFIX = ".parquet"
PARQUET_MAGIC = b"PAR1"
SNIFF_BYTES = 64 * 1024
OTHER_DELIMITERS = (";", "\t", "|")
# a record of only delimiters, spaces and quoted empty cells: what spreadsheet exports leave below the data
BARE_RECORD = re.compile(r'[ \t"]*,[, \t"]*')
SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed"),
    (b"PK\x03\x04", "a zip archive (e.g. .xlsx or .zip)"),
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (PARQUET_MAGIC, "Parquet"),
    (b"\xd0\xcf\x11\xe0", "an OLE2 document (e.g. .xls)"),
)


class BatchParseError(ValueError):
    """A batch file that cannot be read as a table; `reason` is a short code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReadOptions:
    """How a batch file is read: a size limit, the time column, the columns by kind, and the cells that are missing.

    `missing_text` / `missing_number` are the exact CSV cell texts read as missing in text / numeric columns (pandas'
    `keep_default_na=False` with explicit `na_values`): by default only an empty cell is missing in a text column, so
    a category coded `NA` stays the text `NA`, as it does in Parquet.
    """

    max_file_mb: float
    time_column: str | None = None
    text_columns: tuple[str, ...] = ()
    number_columns: tuple[str, ...] = ()
    missing_text: tuple[str, ...] = ("",)
    missing_number: tuple[str, ...] = ("",)
    datetime_columns: tuple[str, ...] = ()
    boolean_columns: tuple[str, ...] = ()


def read_options(params: Params) -> ReadOptions:
    """The ReadOptions params describe (validate.columns kinds, validate.missing_values, data.time_column)."""
    rules = params.validate.columns
    return ReadOptions(
        max_file_mb=params.validate.max_file_mb,
        time_column=params.data.time_column,
        text_columns=tuple(name for name, rule in rules.items() if rule.kind == "string"),
        number_columns=tuple(name for name, rule in rules.items() if rule.kind in ("integer", "number")),
        missing_text=params.validate.missing_values.text,
        missing_number=params.validate.missing_values.number,
        datetime_columns=tuple(name for name, rule in rules.items() if rule.kind == "datetime"),
        boolean_columns=tuple(name for name, rule in rules.items() if rule.kind == "boolean"),
    )


@dataclass(frozen=True)
class BatchTable:
    """A parsed batch: the rows, what reading changed (`notes`, warnings), what it could not read (`problems`).

    Notes and problems are shaped like validation entries (check, expectation, column, severity, unexpected_count,
    examples, rows, reason).
    """

    frame: pd.DataFrame
    notes: list[dict] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)


def hash_file(path: Path, length: int = 16) -> str:
    """A prefix of the file's SHA-256: the batch id."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:length]


def read_batch_file(path: Path, options: ReadOptions) -> BatchTable:
    """A CSV or Parquet batch read the one way every consumer reads it.

    Text columns are trimmed of surrounding whitespace (as the service's request schema does; each trimmed column is
    noted with its count), rows of nothing but empty cells are dropped and noted, the time column is parsed as ISO
    8601 in UTC, and so is every other datetime column (values that do not parse are a blocking problem naming their
    rows), boolean columns with missing cells are held as nullable booleans. Raises BatchParseError (with a
    reason code) for anything that cannot be read as a table.
    """
    if not path.is_file():
        raise BatchParseError("not_a_file", f"{path}: no such file")
    size = path.stat().st_size
    limit = int(options.max_file_mb * 1024 * 1024)
    if size > limit:
        raise BatchParseError(
            "too_large", f"{path.name}: {size:,} bytes exceeds validate.max_file_mb={options.max_file_mb} ({limit:,})"
        )
    suffix = path.suffix.lower()
    if suffix not in (CSV_SUFFIX, PARQUET_SUFFIX):
        raise BatchParseError(
            "unsupported_extension", f"{path.name}: extension '{suffix or '(none)'}' is not .csv or .parquet"
        )
    if size == 0:
        raise BatchParseError("empty_file", f"{path.name}: the file is empty (0 bytes)")
    data = path.read_bytes()
    if suffix == PARQUET_SUFFIX:
        table = BatchTable(parse_parquet_bytes(data, path.name))
    else:
        table = parse_csv_bytes(data, path.name, options)
    frame, notes = drop_empty_rows(table.frame)
    if frame.empty:
        raise BatchParseError("no_rows", f"{path.name}: the table has columns but no rows")
    frame, trimmed = trim_text_columns(frame, options.text_columns)
    problems = []
    for column in dict.fromkeys((options.time_column, *options.datetime_columns)):
        frame, unparsed = parse_time_values(frame, column)
        problems += unparsed
    frame = hold_booleans(frame, options.boolean_columns)
    return BatchTable(frame, [*table.notes, *notes, *trimmed], problems)


def hold_booleans(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Boolean columns with missing cells as pandas' nullable boolean dtype: pandas reads them as objects (CSV and
    Parquet alike), which the dtype check would refuse although the service takes `null` there. A column holding
    anything but booleans and missing cells is left as read, for the dtype check to name."""
    for column in columns:
        if column not in frame or frame[column].dtype != object:
            continue
        present = frame[column].dropna()
        if present.map(type).eq(bool).all():
            frame = frame.assign(**{column: frame[column].astype("boolean")})
    return frame


def detect_signature(data: bytes) -> str | None:
    """What a known binary magic number says the content is, if any."""
    return next((label for magic, label in SIGNATURES if data.startswith(magic)), None)


def parse_parquet_bytes(data: bytes, name: str) -> pd.DataFrame:
    """A Parquet file's rows; anything that is not a whole Parquet file is refused."""
    if not (data.startswith(PARQUET_MAGIC) and data.endswith(PARQUET_MAGIC)):
        found = detect_signature(data)
        what = f"{found} content" if found else "no Parquet magic bytes at both ends (truncated?)"
        raise BatchParseError("not_parquet", f"{name}: {what}, not a Parquet file")
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise BatchParseError("unreadable_parquet", f"{name}: corrupt Parquet file: {exc}") from None
    return rows_by_position(frame, name)


def rows_by_position(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The frame indexed 0..n-1, as a CSV batch is, so notes and checks name row positions. A Parquet file written
    from pandas can store the frame's index: a named index level is data (it becomes a column, as `to_csv` writes
    it); an unnamed one is pandas' row labels, and dropped. Raises BatchParseError when a level's name is also a
    column's."""
    named = [level for level in frame.index.names if level is not None]
    if not named and isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1:
        return frame
    if clash := [level for level in named if level in frame.columns]:
        raise BatchParseError(
            "duplicate_columns", f"{name}: the stored index {clash[0]!r} has the name of a column: rename one of them"
        )
    return (frame.reset_index(level=named) if named else frame).reset_index(drop=True)


def decode_text(data: bytes, name: str) -> str:
    """The file as UTF-8 text, refusing compressed, binary and non-UTF-8 content."""
    found = detect_signature(data)
    if found:
        raise BatchParseError("compressed_or_binary", f"{name}: {found} content, not plain CSV text")
    if b"\x00" in data[:SNIFF_BYTES]:
        raise BatchParseError("binary_content", f"{name}: binary content (NUL bytes), not CSV text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BatchParseError(
            "invalid_utf8", f"{name}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    controls = sum(1 for ch in text[:SNIFF_BYTES] if ord(ch) < 32 and ch not in "\r\n\t")
    if controls > 0:
        raise BatchParseError("binary_content", f"{name}: {controls} control characters, not CSV text")
    return text


def split_header(text: str, name: str) -> tuple[list[str], list[str]]:
    """The header fields and the non-blank data lines; refuses empty and header-only files."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise BatchParseError("empty_file", f"{name}: no content, only whitespace")
    header = next(csv.reader([lines[0]]))
    if len(header) == 1:
        used = [d for d in OTHER_DELIMITERS if d in lines[0]]
        if used:
            raise BatchParseError("wrong_delimiter", f"{name}: the header is split by {used[0]!r}, expected commas")
    if len(lines) == 1:
        raise BatchParseError("header_only", f"{name}: a header and no data rows")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise BatchParseError("duplicate_columns", f"{name}: duplicated column names {duplicated}")
    return header, lines[1:]


def drop_bare_records(text: str) -> tuple[str, list[int]]:
    """The CSV text without records made only of delimiters and empty cells (`,,,,`, `"","",,`), and the 1-based
    line numbers dropped."""
    lines = text.splitlines()
    bare = [n for n, line in enumerate(lines[1:], start=2) if BARE_RECORD.fullmatch(line)]
    if not bare:
        return text, []
    dropped = set(bare)
    return "\n".join(line for n, line in enumerate(lines, start=1) if n not in dropped) + "\n", bare


def describe_lines(lines: list[int], last_line: int) -> str:
    """`3 empty rows at the end of the file (lines 3002-3004)` or `2 empty rows (lines 17, 40)`."""
    at_end = lines == list(range(last_line - len(lines) + 1, last_line + 1))
    where = " at the end of the file" if at_end else ""
    span = f"{lines[0]}-{lines[-1]}" if at_end and len(lines) > 1 else ", ".join(map(str, lines[:MAX_EXAMPLES]))
    return f"{plural(len(lines), 'empty row')}{where} (line{'s' if len(lines) > 1 else ''} {span})"


def parse_csv_bytes(data: bytes, name: str, options: ReadOptions) -> BatchTable:
    """A comma-separated UTF-8 file's rows; truncated or ragged rows are refused, never padded.

    Records of nothing but delimiters (a spreadsheet export's trailing `,,,,` lines) are dropped and noted with their
    line numbers, and the file read again without them, so they leave no trace in the dtypes; only the cell texts in
    `options.missing_*` are read as missing.
    """
    text = decode_text(data, name)
    header, rows = split_header(text, name)
    # a file cut short shows in its last data record; bare records after it (any width) are dropped below
    last_data = next((row for row in reversed(rows) if not BARE_RECORD.fullmatch(row)), rows[-1])
    last = next(csv.reader([last_data]), [])
    if len(last) != len(header):
        ending = "" if text.endswith(("\n", "\r")) else " and no final newline"
        raise BatchParseError(
            "truncated", f"{name}: the last row has {len(last)} fields, the header {len(header)}{ending}"
        )
    missing = missing_cells(header, options)
    texts = tuple(c for c in header if c in options.text_columns)  # `02134` is the text it says, not the number 2134
    frame = read_csv_text(text, name, missing, texts)
    if not may_hold_bare_records(frame, rows[-1], options):  # the common case: no line-by-line scan of the text
        return BatchTable(frame)
    text, bare = drop_bare_records(text)
    if not bare:
        return BatchTable(frame)
    reason = f"{describe_lines(bare, len(rows) + 1)} of only delimiters, quotes and spaces: dropped"
    note = read_entry("empty_rows", None, "warn", len(bare), reason, lines=bare[:MAX_EXAMPLES])
    return BatchTable(read_csv_text(text, name, missing, texts), [note])


def may_hold_bare_records(frame: pd.DataFrame, last_line: str, options: ReadOptions) -> bool:
    """Signs of delimiter-only records worth a line-by-line scan: an all-missing row, a bare last line, or a numeric
    column read as text (a bare record with a space in it)."""
    text_numbers = [c for c in options.number_columns if c in frame and not pd.api.types.is_numeric_dtype(frame[c])]
    return bool(BARE_RECORD.fullmatch(last_line)) or bool(text_numbers) or bool(frame.isna().all(axis=1).any())


def read_csv_text(text: str, name: str, missing: dict[str, list[str]], texts: tuple[str, ...] = ()) -> pd.DataFrame:
    """pandas' read of CSV text with exactly these missing-cell texts per column (`keep_default_na=False`), the
    `texts` columns read as text whatever they look like (a code of digits keeps its leading zeros)."""
    dtypes = dict.fromkeys(texts, "str")
    try:
        return pd.read_csv(
            io.StringIO(text), on_bad_lines="error", keep_default_na=False, na_values=missing, dtype=dtypes
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise BatchParseError("malformed_csv", f"{name}: not parseable as CSV: {exc}".strip()) from None


def missing_cells(header: list[str], options: ReadOptions) -> dict[str, list[str]]:
    """Per column, the exact cell texts pandas reads as missing (numeric columns' list, else the text list)."""
    numbers = set(options.number_columns)
    return {c: list(options.missing_number if c in numbers else options.missing_text) for c in header}


def read_missing_texts(path: Path, options: ReadOptions, columns: list[str]) -> dict[str, dict[str, int]]:
    """In a CSV batch, the non-empty cell texts of these columns that were read as missing, with their counts.

    Read again, raw (pandas, `na_filter=False`), only when a report needs it (a failed not-null check), so it can
    say "read as missing from the text 'NA'" instead of blaming a missing value that is not in the file. Parquet
    keeps its own nulls: nothing to name there.
    """
    if path.suffix.lower() != CSV_SUFFIX or not columns:
        return {}
    text = decode_text(path.read_bytes(), path.name)
    missing = missing_cells(split_header(text, path.name)[0], options)
    wanted = [c for c in dict.fromkeys(columns) if any(missing.get(c, []))]
    if not wanted:
        return {}
    raw = pd.read_csv(io.StringIO(text), usecols=wanted, dtype=str, keep_default_na=False, na_filter=False)
    counts = {}
    for column in wanted:
        values = raw[column]
        found = values[values.isin([t for t in missing[column] if t])].value_counts()
        if len(found):
            counts[column] = {str(k): int(v) for k, v in found.items()}
    return counts
