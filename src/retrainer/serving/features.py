"""Serving-time features: the same ingest transforms as training (time parsing, reference joins, pseudonyms).

Training joins with pandas merges; a request instead looks its keys up in dictionaries built once from the same
deduplicated reference rows (`reference_rows`), and takes the reference columns by position, so a one-record
request does not pay for a merge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray, take

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


def _values(column: pd.Series) -> np.ndarray | ExtensionArray:
    return column.to_numpy() if isinstance(column.dtype, np.dtype) else column.array


class ReferenceLookup:
    """One reference table indexed by its join key: the row position of each key, and its columns as arrays."""

    def __init__(self, table: pd.DataFrame, ref: Reference):
        rows = reference_rows(table, ref)
        self.join_on = list(ref.join_on)
        # Plain numpy arrays where the dtype allows: taking from them skips the extension-array dispatch.
        self.columns = {name: _values(rows[name]) for name in ref.columns.values()}
        keys = zip(*(key_values(rows[c]) for c in self.join_on), strict=True)
        self._positions = {key: position for position, key in enumerate(keys)}  # unique: the rows are deduplicated

    def positions(self, columns: Mapping[str, object], rows: int) -> np.ndarray:
        """The reference row each of `rows` rows joins, -1 where none matches."""
        get = self._positions.get
        keys = zip(*(key_values(pd.Series(columns[c], copy=False)) for c in self.join_on), strict=True)
        return np.fromiter((get(key, -1) for key in keys), dtype=np.intp, count=rows)

    def take(self, positions: np.ndarray) -> dict[str, object]:
        """The reference columns for those rows; missing where -1 (integers widen to float, as a merge does)."""
        return {name: take(values, positions, allow_fill=True) for name, values in self.columns.items()}


class FeatureBuilder:
    """Turns raw flight records into the frame a registered pipeline expects."""

    def __init__(self, params: Params, references: Mapping[str, pd.DataFrame], key: bytes | None = None):
        self._data = params.data
        self._columns = params.features.all
        self._lookups = [ReferenceLookup(references[ref.name], ref) for ref in self._data.references]
        self._pseudonym = lru_cache(maxsize=PSEUDONYM_CACHE)(
            partial(pseudonym, key=key if key is not None else pseudonymisation_key())
        )

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def integrate(self, records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
        """Raw records -> joined, pseudonymised rows, in the order received (no label, nothing dropped)."""
        return pd.DataFrame(self._integrated_columns(records), copy=False)

    def transform(self, records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
        """Raw records -> the model's feature columns; a left join keeps one row per record, in order."""
        columns = self._integrated_columns(records)
        missing = [c for c in self._columns if c not in columns]
        if missing:
            raise KeyError(f"features {missing} are not produced from the records and references")
        return pd.DataFrame({c: columns[c] for c in self._columns}, copy=False)

    def _integrated_columns(self, records: Sequence[Mapping[str, object]]) -> dict[str, object]:
        """What ingest's parse, joins and pseudonymisation give each record, as one array per column, in order."""
        frame = parse_time_column(pd.DataFrame.from_records(list(records)), self._data.time_column)
        columns: dict[str, object] = {name: frame[name].array for name in frame.columns}
        for lookup in self._lookups:
            joined = lookup.take(lookup.positions(columns, len(frame)))
            clash = sorted(set(joined) & set(columns))
            if clash:
                raise KeyError(f"reference columns {clash} would shadow columns of the records")
            columns.update(joined)
        for name in self._data.identifiers:
            if name in columns:
                columns[name] = self._pseudonymised(pd.Series(columns[name], copy=False))
        return columns

    def _pseudonymised(self, values: pd.Series) -> ExtensionArray:
        """Identifier values replaced by their pseudonyms (each distinct value hashed once per process); nulls stay."""
        missing = values.isna().to_numpy()
        hashed = [None if gone else self._pseudonym(v) for v, gone in zip(values.tolist(), missing, strict=True)]
        return pd.array(hashed, dtype="str")
