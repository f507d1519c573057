"""Read a batch file safely: every file that cannot be parsed becomes a BatchParseError with a reason."""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from pathlib import Path

import pandas as pd

from retrainer.steps.ingest import parse_time_column

CSV_SUFFIX = ".csv"
PARQUET_SUFFIX = ".parquet"
PARQUET_MAGIC = b"PAR1"
SNIFF_BYTES = 64 * 1024
OTHER_DELIMITERS = (";", "\t", "|")
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


def hash_file(path: Path, length: int = 16) -> str:
    """A prefix of the file's SHA-256: the batch id."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:length]


def read_batch_file(path: Path, max_file_mb: float, time_column: str | None = None) -> pd.DataFrame:
    """A CSV or Parquet batch as a DataFrame (time column parsed to UTC when it parses)."""
    if not path.is_file():
        raise BatchParseError("not_a_file", f"{path}: no such file")
    size = path.stat().st_size
    limit = int(max_file_mb * 1024 * 1024)
    if size > limit:
        raise BatchParseError(
            "too_large", f"{path.name}: {size:,} bytes exceeds validate.max_file_mb={max_file_mb} ({limit:,})"
        )
    suffix = path.suffix.lower()
    if suffix not in (CSV_SUFFIX, PARQUET_SUFFIX):
        raise BatchParseError(
            "unsupported_extension", f"{path.name}: extension '{suffix or '(none)'}' is not .csv or .parquet"
        )
    if size == 0:
        raise BatchParseError("empty_file", f"{path.name}: the file is empty (0 bytes)")
    data = path.read_bytes()
    parse = parse_parquet_bytes if suffix == PARQUET_SUFFIX else parse_csv_bytes
    frame = parse(data, path.name)
    if frame.empty:
        raise BatchParseError("no_rows", f"{path.name}: the table has columns but no rows")
    return parse_time_if_possible(frame, time_column)


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
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise BatchParseError("unreadable_parquet", f"{name}: corrupt Parquet file: {exc}") from None


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


def parse_csv_bytes(data: bytes, name: str) -> pd.DataFrame:
    """A comma-separated UTF-8 file's rows; truncated or ragged rows are refused, never padded."""
    text = decode_text(data, name)
    header, rows = split_header(text, name)
    last = next(csv.reader([rows[-1]]), [])
    if len(last) != len(header):
        ending = "" if text.endswith(("\n", "\r")) else " and no final newline"
        raise BatchParseError(
            "truncated", f"{name}: the last row has {len(last)} fields, the header {len(header)}{ending}"
        )
    try:
        frame = pd.read_csv(io.StringIO(text), on_bad_lines="error")
    except (pd.errors.ParserError, ValueError) as exc:
        raise BatchParseError("malformed_csv", f"{name}: not parseable as CSV: {exc}".strip()) from None
    return frame


def parse_time_if_possible(frame: pd.DataFrame, time_column: str | None) -> pd.DataFrame:
    """The frame with its time column as UTC timestamps; unparseable values are left for the dtype check."""
    if not time_column or time_column not in frame.columns:
        return frame
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pandas' "could not infer format" on bad values
            return parse_time_column(frame, time_column)
    except (ValueError, TypeError, OverflowError):
        return frame
