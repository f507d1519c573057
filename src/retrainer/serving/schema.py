"""The HTTP contract of the service: typed, range-checked request bodies and the prediction response."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

MAX_RECORDS = 10_000

Code = Annotated[str, Field(min_length=2, max_length=4, pattern=r"^[A-Z0-9]+$")]


class FlightRecord(BaseModel):
    """One flight in the raw batch schema; outcome columns are optional (unknown at prediction time)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    year: int = Field(ge=1900, le=2100)
    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)
    sched_dep_time: int = Field(ge=0, le=2359)
    sched_arr_time: int = Field(ge=0, le=2359)
    carrier: Code
    flight: int = Field(ge=0, le=99_999)
    tailnum: str | None = Field(default=None, max_length=16)
    origin: Code
    dest: Code
    distance: float = Field(gt=0, le=20_000)
    hour: int = Field(ge=0, le=23)
    minute: int = Field(ge=0, le=59)
    time_hour: datetime
    dep_time: float | None = Field(default=None, ge=0, le=2400)
    dep_delay: float | None = None
    arr_time: float | None = Field(default=None, ge=0, le=2400)
    arr_delay: float | None = None
    air_time: float | None = Field(default=None, ge=0)


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
