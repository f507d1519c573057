"""The HTTP contract of the service: typed, range-checked request bodies and the prediction response."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Annotated, Literal, NotRequired
from uuid import UUID

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

MAX_RECORDS = 10_000
_INSTANT = TypeAdapter(datetime)


@lru_cache(maxsize=4_096)
def _iso_text(text: str) -> str:
    try:
        return _json_instant(text)
    except ValidationError:
        # ISO 8601 spellings pydantic does not read (`+00`, the basic `20130401T090000Z`) but batches do: the
        # batch reader's rule (pandas, format="ISO8601"), so the service refuses no time that training accepts
        from retrainer.steps.ingest import parse_time_column

        try:
            parsed = parse_time_column(pd.DataFrame({"t": [text]}), "t")["t"].iloc[0]
        except ValueError:
            parsed = pd.NaT
        if pd.isna(parsed):  # pandas reads "" as missing: a time is required here
            raise ValueError(f"{text!r} is not an ISO 8601 time") from None
        return _json_instant(parsed.to_pydatetime())


def _json_instant(value: object) -> str:
    return _INSTANT.dump_python(_INSTANT.validate_python(value), mode="json")


def iso_instant(value: object) -> str:
    """A time read by pydantic's datetime rules, written as pydantic writes it in JSON ("...Z" for UTC).

    The same text a validated datetime field gave once dumped: digests, routing keys and golden records are unchanged.
    Records of one hour share one parse. Surrounding whitespace is trimmed first, as batches are read (pandas' ISO 8601
    parser ignores it), so a padded time means the same instant to training and to the service.
    """
    return _iso_text(value.strip()) if isinstance(value, str) else _json_instant(value)


# Kept as text: hashing and digesting text is cheaper than datetimes, and every consumer parses ISO 8601.
InstantText = Annotated[str, BeforeValidator(iso_instant), Field(json_schema_extra={"format": "date-time"})]

Code = Annotated[str, Field(min_length=2, max_length=4, pattern=r"^[A-Z0-9]+$")]


class FlightRecord(TypedDict):
    """One flight in the raw batch schema; outcome columns are optional (unknown at prediction time).

    A TypedDict rather than a model: validation then yields plain dicts, which is what the features are built from
    (about 2.5x cheaper for 1,000 records than building models and dumping them again). Unknown keys are dropped;
    `time_hour` is any time pydantic reads, given back as ISO 8601 text.
    """

    __pydantic_config__ = ConfigDict(extra="ignore", str_strip_whitespace=True)  # type: ignore[misc]

    year: Annotated[int, Field(ge=1900, le=2100)]
    month: Annotated[int, Field(ge=1, le=12)]
    day: Annotated[int, Field(ge=1, le=31)]
    sched_dep_time: Annotated[int, Field(ge=0, le=2359)]
    sched_arr_time: Annotated[int, Field(ge=0, le=2359)]
    carrier: Code
    flight: Annotated[int, Field(ge=0, le=99_999)]
    tailnum: NotRequired[Annotated[str | None, Field(max_length=16)]]
    origin: Code
    dest: Code
    distance: Annotated[float, Field(gt=0, le=20_000)]
    hour: Annotated[int, Field(ge=0, le=23)]
    minute: Annotated[int, Field(ge=0, le=59)]
    time_hour: InstantText
    dep_time: NotRequired[Annotated[float | None, Field(ge=0, le=2400)]]
    dep_delay: NotRequired[float | None]
    arr_time: NotRequired[Annotated[float | None, Field(ge=0, le=2400)]]
    arr_delay: NotRequired[float | None]
    air_time: NotRequired[Annotated[float | None, Field(ge=0)]]


FLIGHT_RECORDS = TypeAdapter(list[FlightRecord])


def json_records(rows: list[dict]) -> list[dict]:
    """Rows validated by the request schema and dumped as JSON types: what a client would send for them."""
    return FLIGHT_RECORDS.dump_python(FLIGHT_RECORDS.validate_python(rows), mode="json")


class PredictRequest(BaseModel):
    """A batch of flights to score."""

    records: list[FlightRecord] = Field(min_length=1, max_length=MAX_RECORDS)


class Prediction(BaseModel):
    """The answer for one record, with the lineage needed to trace it back."""

    prediction_id: str
    probability: float
    label: int
    model_version: str
    arm: Literal["champion", "challenger"]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class FeedbackRequest(BaseModel):
    """The observed outcome of an earlier prediction."""

    prediction_id: UUID
    label: Literal[0, 1]


class WeightsRequest(BaseModel):
    """The share of traffic the challenger should get."""

    challenger_weight: float = Field(ge=0.0, le=1.0)
