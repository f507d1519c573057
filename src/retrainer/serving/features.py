"""Serving-time features: the same ingest transforms as training (time parsing, reference joins, pseudonyms)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from retrainer.config import Params
from retrainer.io.project import pseudonymisation_key
from retrainer.io.tables import read_table
from retrainer.steps.ingest import join_references, parse_time_column, pseudonymise


def load_references(params: Params, root: Path) -> dict[str, pd.DataFrame]:
    """Read every reference table named in params once (the service keeps them in memory)."""
    return {ref.name: read_table(root / ref.path) for ref in params.data.references}


class FeatureBuilder:
    """Turns raw flight records into the frame a registered pipeline expects."""

    def __init__(self, params: Params, references: Mapping[str, pd.DataFrame], key: bytes | None = None):
        self._data = params.data
        self._columns = params.features.all
        # Deduplicated and indexed once, so a request joins against only the reference rows it can match.
        self._indexed = {
            ref.name: references[ref.name].drop_duplicates(subset=list(ref.join_on)).set_index(list(ref.join_on))
            for ref in self._data.references
        }
        self._key = key if key is not None else pseudonymisation_key()

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def integrate(self, records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
        """Raw records -> joined, pseudonymised rows, in the order received (no label, nothing dropped)."""
        frame = parse_time_column(pd.DataFrame.from_records(list(records)), self._data.time_column)
        joined, _ = join_references(frame, self._matching_references(frame), self._data)
        return pseudonymise(joined, self._data.identifiers, self._key)

    def _matching_references(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Each reference table cut down to the keys present in the frame (same join result, far fewer rows)."""
        out = {}
        for ref in self._data.references:
            table = self._indexed[ref.name]
            keys = frame[list(ref.join_on)].dropna().drop_duplicates()
            wanted = pd.MultiIndex.from_frame(keys) if len(ref.join_on) > 1 else pd.Index(keys.iloc[:, 0])
            out[ref.name] = table.loc[table.index.intersection(wanted)].reset_index()
        return out

    def transform(self, records: Sequence[Mapping[str, object]]) -> pd.DataFrame:
        """Raw records -> the model's feature columns; a left join keeps one row per record, in order."""
        frame = self.integrate(records)
        if len(frame) != len(records):
            raise RuntimeError(f"reference joins changed the row count: {len(records)} -> {len(frame)}")
        missing = [c for c in self._columns if c not in frame.columns]
        if missing:
            raise KeyError(f"features {missing} are not produced from the records and references")
        return frame[self._columns]
