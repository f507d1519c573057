"""Serving-time features: the same ingest transforms as training (time parsing, reference joins, pseudonyms).

Training joins with pandas merges; a request instead looks its keys up in dictionaries built once from the same
deduplicated reference rows (`reference_rows`), and builds each model input column as one numpy array straight from
the records (`FeatureBuilder.columns`), so a one-record request pays for neither a merge nor a DataFrame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd

from retrainer.config import Params, Reference
from retrainer.io.project import pseudonymisation_key
from retrainer.io.tables import read_table
from retrainer.steps.ingest import parse_time_column, pseudonym, reference_rows

PSEUDONYM_CACHE = 65_536


def load_references(params: Params, root: Path) -> dict[str, pd.DataFrame]:
    """Read every reference table named in params once (the service keeps them in memory)."""
    return {ref.name: read_table(root / ref.path) for ref in params.data.references}


def key_values(column: pd.Series) -> list:
    """A join-key column as hashable values that are equal where a pandas merge matches them.

    Instants compare as UTC nanoseconds whatever their unit or zone, and every missing value (None, NaN, NaT) is
    one key, as merge matches missing keys with each other.
    """
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column.dtype):
        return column.array.as_unit("ns").asi8.tolist()
    values = column.to_numpy(dtype=object, copy=True)
    values[column.isna().to_numpy()] = None
    return values.tolist()


_PRESENT_TYPES = (str, int, bool)


def is_missing(value: object) -> bool:
    """None, pd.NA and every NaN-like scalar (NaN, NaT): what pandas counts as missing (plain types answered first)."""
    kind = type(value)
    if kind in _PRESENT_TYPES:
        return False
    if kind is float:
        return value != value
    if value is None or value is pd.NA:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):  # e.g. a container: not a missing scalar
        return False


def instant_keys(values: Sequence[object]) -> list:
    """Record times as the UTC nanoseconds `key_values` gives a parsed time column (None where missing).

    Datetimes (naive ones are UTC, as ingest reads them) and ISO 8601 text (each distinct text parsed once) are
    converted directly; anything else goes through the same pandas parser as ingest, for the whole column.
    """
    parsed: dict[str, int] = {}
    try:
        return [_instant_key(value, parsed) for value in values]
    except (TypeError, ValueError):
        frame = parse_time_column(pd.DataFrame({"t": pd.Series(list(values), dtype=object)}), "t")
        return key_values(frame["t"])


def _instant_key(value: object, parsed: dict[str, int]) -> int | None:
    """One record time's key (`parsed` caches ISO texts); TypeError or ValueError for anything else."""
    if type(value) is str:
        if value not in parsed:
            parsed[value] = _datetime_key(datetime.fromisoformat(value))
        return parsed[value]
    if isinstance(value, datetime):
        return _datetime_key(value)
    if is_missing(value):
        return None
    raise TypeError(f"{type(value).__name__} is not a time")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def _datetime_key(instant: datetime) -> int:
    """UTC nanoseconds since the epoch, exactly (a Timestamp keeps its nanoseconds)."""
    if isinstance(instant, pd.Timestamp):
        return int(instant.as_unit("ns").value)
    delta = instant - (_EPOCH if instant.tzinfo is not None else _EPOCH_NAIVE)
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1_000


def column_values(records: Sequence[Mapping[str, object]], name: str) -> list:
    """One field of every record (None where a record lacks it)."""
    return [record.get(name) for record in records]


def _object_array(values: Sequence[object]) -> np.ndarray:
    """Category values as an object array, every kind of missing as None."""
    out = np.empty(len(values), dtype=object)
    out[:] = values if all(type(v) is str for v in values) else [None if is_missing(v) else v for v in values]
    return out


def float_array(values: object) -> np.ndarray:
    """Numbers as float64, every kind of missing as NaN (a float64 array is returned as it is, not copied)."""
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):  # pandas containers, nullable ones too
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    try:
        return np.array(values, dtype=np.float64)  # None becomes NaN
    except (TypeError, ValueError):
        return np.array([np.nan if is_missing(v) else v for v in values], dtype=np.float64)


class ReferenceLookup:
    """One reference table indexed by its join key: the row position of each key, and its columns as arrays."""

    def __init__(self, table: pd.DataFrame, ref: Reference, time_column: str):
        rows = reference_rows(table, ref)
        self.join_on = list(ref.join_on)
        self.time_column = time_column
        keys = zip(*(key_values(rows[c]) for c in self.join_on), strict=True)
        self._positions = {key: position for position, key in enumerate(keys)}  # unique: the rows are deduplicated
        # The reference's columns as model inputs: float64 with NaN where numeric, else objects with None.
        self.columns = {
            name: (
                rows[name].to_numpy(dtype=np.float64, na_value=np.nan)
                if pd.api.types.is_numeric_dtype(rows[name].dtype)
                else _object_array(rows[name].tolist())
            )
            for name in ref.columns.values()
        }

    def positions(self, records: Sequence[Mapping[str, object]]) -> np.ndarray:
        """The reference row each record joins, -1 where none matches (a left join, as ingest's merge).

        Keys compare as `key_values` gives them: the time key as UTC nanoseconds, any missing value as None.
        """
        get = self._positions.get
        parts = [
            instant_keys(column_values(records, c))
            if c == self.time_column
            else [None if is_missing(v) else v for v in column_values(records, c)]
            for c in self.join_on
        ]
        return np.fromiter((get(key, -1) for key in zip(*parts, strict=True)), dtype=np.intp, count=len(records))

    def take(self, name: str, positions: np.ndarray) -> np.ndarray:
        """One reference column as a model input for those rows: NaN (numbers) or None where -1."""
        values = self.columns[name]
        out = values[positions] if len(values) else np.empty(len(positions), dtype=values.dtype)
        out[positions < 0] = np.nan if out.dtype == np.float64 else None
        return out


class FeatureBuilder:
    """Turns raw records into the columns (or the frame) a registered pipeline expects."""

    def __init__(self, params: Params, references: Mapping[str, pd.DataFrame], key: bytes | None = None):
        self._data = params.data
        self._numeric = list(params.features.numeric)
        self._categorical = list(params.features.categorical)
        self._columns = params.features.all
        self._declared = frozenset(params.validate.columns)  # a record may omit an optional one: it is missing
        self._lookups = [
            ReferenceLookup(references[ref.name], ref, self._data.time_column) for ref in self._data.references
        ]
        self._pseudonym = lru_cache(maxsize=PSEUDONYM_CACHE)(
            partial(pseudonym, key=key if key is not None else pseudonymisation_key())
        )

    @property
    def feature_names(self) -> list[str]:
        return list(self._columns)

    def columns(self, records: Sequence[Mapping[str, object]]) -> dict[str, np.ndarray]:
        """Raw records -> one array per model feature, row for row: float64 (NaN missing) or objects (None missing).

        The values are those ingest gives the same records (parsed times, left joins, pseudonyms). A feature of the
        batch schema that no record carries (an optional field every record omits) is missing in every row, as it is
        in a record that omits it next to one that carries it.
        """
        present: set[str] = set().union(*records)
        joined: dict[str, tuple[ReferenceLookup, np.ndarray]] = {}
        for lookup in self._lookups:
            clash = sorted(set(lookup.columns) & present)
            if clash:
                raise KeyError(f"reference columns {clash} would shadow columns of the records")
            positions = lookup.positions(records)
            joined.update({name: (lookup, positions) for name in lookup.columns})
        missing = [c for c in self._columns if c not in joined and c not in present and c not in self._declared]
        if missing:
            raise KeyError(f"features {missing} are not produced from the records and references")
        out: dict[str, np.ndarray] = {}
        for name in self._columns:
            if name in joined:
                lookup, positions = joined[name]
                out[name] = lookup.take(name, positions)
                continue
            values = column_values(records, name)
            if name in self._data.identifiers:
                values = [None if is_missing(v) else self._pseudonym(v) for v in values]
            out[name] = float_array(values) if name in self._numeric else _object_array(values)
        return out

    def frame(self, columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
        """The feature columns as the DataFrame a pipeline scores: numbers as float64, categories as strings."""
        data = {
            name: columns[name] if name in self._numeric else pd.array(columns[name], dtype="str")
            for name in self._columns
        }
        return pd.DataFrame(data, copy=False)

    def transform(self, records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
        """Raw records -> the model's feature frame; a left join keeps one row per record, in order."""
        return self.frame(self.columns(records))
