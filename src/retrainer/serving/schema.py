"""The HTTP contract of the service: the request record built from params (types, nullability, ranges), and the
prediction response."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal, NotRequired
from uuid import UUID

import pandas as pd
from annotated_types import Interval
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from retrainer.config import Params, RangeRule, params_hash

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


def _empty_text_is_missing(value: object) -> object:
    """A nullable text field reads "" (after trimming) as missing, as batches read an empty cell."""
    return None if isinstance(value, str) and not value.strip() else value


# One field type per `validate.columns` kind, strict at the HTTP boundary as the batch reader is for a column:
# (the base type, what follows its bounds). Bounds come first so they stay JSON Schema's minimum/maximum.
_KINDS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    # strict: `true` is not 1, "3" is not 3, and 3.0 is not an integer (a pydantic-core check, no Python call per
    # value: a validator function here cost 2 ms per 1,000 records); within int64 too (`_bounds`), as a batch column
    "integer": (int, (Strict(),)),
    "number": (float, (Strict(), Field(allow_inf_nan=False))),
    "string": (str, (Strict(), StringConstraints(strip_whitespace=True, min_length=1))),
    "datetime": (InstantText, ()),
    "boolean": (bool, (Strict(),)),
}


INT64 = Interval(ge=-(2**63), le=2**63 - 1)


def _bounds(rule: RangeRule | None, kind: str) -> list[Interval]:
    """The value's bounds: a blocking range from params (after int64's, so JSON Schema shows the range's)."""
    machine = [INT64] if kind == "integer" else []
    if rule is None:
        return machine
    lower = {("gt" if rule.strict_min else "ge"): rule.min} if rule.min is not None else {}
    upper = {("lt" if rule.strict_max else "le"): rule.max} if rule.max is not None else {}
    return [*machine, Interval(**lower, **upper)]


def field_type(params: Params, name: str) -> tuple[Any, bool]:
    """The request field of one `validate.columns` entry: (its annotation, whether a record must carry it).

    Outcome columns (target, `data.leaking_columns`) are optional and may be null: they are unknown when a
    prediction is asked for. Blocking ranges (`validate.ranges`, severity block) bound the value; categories are not
    enforced here (a new category is drift, for the monitor to see, not a client error).
    """
    validate, rule = params.validate, params.validate.columns[name]
    ranges = validate.ranges.get(name)
    blocking = ranges if ranges and (ranges.severity or validate.severity.ranges) == "block" else None
    base, extras = _KINDS[rule.kind]
    bounds = _bounds(blocking, rule.kind) if rule.kind in ("integer", "number") else []
    metadata = (*bounds, *extras)
    annotation: Any = Annotated[base, *metadata] if metadata else base
    optional = name in params.data.outcome_columns or rule.nullable or validate.severity.not_null != "block"
    if not optional:
        return annotation, True
    if rule.kind == "string":
        annotation = Annotated[annotation | None, BeforeValidator(_empty_text_is_missing)]
    return annotation | None, False


def record_type(params: Params) -> type:
    """The record `POST /predict` takes, built from params' `validate.columns` (the batch schema), as a TypedDict.

    A TypedDict rather than a model: validation then yields plain dicts, which is what the features are built from
    (about 2.5x cheaper for 1,000 records than building models and dumping them again). Unknown keys are dropped;
    times are any ISO 8601 time, given back as ISO 8601 text.
    """
    fields = {}
    for name in params.validate.columns:
        annotation, required = field_type(params, name)
        fields[name] = annotation if required else NotRequired[annotation]
    record = TypedDict("Record", fields)  # type: ignore[operator]  # the functional form: names come from params
    record.__pydantic_config__ = ConfigDict(extra="ignore", str_strip_whitespace=True)  # type: ignore[attr-defined]
    return record


class InvalidRecords(ValueError):
    """Records that do not match the request schema; `errors` are pydantic's (loc, msg, type), loc from `records`."""

    def __init__(self, errors: list[dict]) -> None:
        self.errors = errors
        named = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} invalid field(s): {named}{more}")


def _where(loc: tuple) -> str:
    """`records[3].month` for pydantic's ('records', 3, 'month')."""
    text = str(loc[0]) if loc else "body"
    return text + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])


class RecordSchema:
    """The request schema of one params file: validates records and dumps them as a client would send them."""

    def __init__(self, params: Params) -> None:
        self.record = record_type(params)
        self.adapter = TypeAdapter(list[self.record])

    def validate(self, rows: Sequence[object]) -> list[dict]:
        """Records as validated plain dicts (extra keys dropped, times as ISO text); raises InvalidRecords."""
        try:
            return self.adapter.validate_python(rows)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise InvalidRecords([{**e, "loc": ("records", *e["loc"])} for e in errors]) from None

    def json_records(self, rows: Sequence[object]) -> list[dict]:
        """Rows validated by the request schema and dumped as JSON types: what a client would send for them."""
        return self.adapter.dump_python(self.validate(rows), mode="json")

    def json_schema(self) -> dict:
        """The record's JSON Schema (2020-12, as OpenAPI 3.1 takes it)."""
        return TypeAdapter(self.record).json_schema()


def client_rows(frame: pd.DataFrame, params: Params) -> list[dict]:
    """Raw-schema rows as a client sends them: without the outcome columns (the target and `data.leaking_columns`),
    times as ISO 8601 text, and an integer column that pandas holds as floats (missing cells) as JSON integers."""
    sent = frame.drop(columns=[c for c in params.data.outcome_columns if c in frame.columns])
    kinds = params.validate.columns
    floats = [
        c for c in sent.columns if c in kinds and kinds[c].kind == "integer" and pd.api.types.is_float_dtype(sent[c])
    ]
    whole = [c for c in floats if (sent[c].dropna() % 1 == 0).all()]  # a fractional value stays, for a 400 to name
    return json.loads(sent.astype(dict.fromkeys(whole, "Int64")).to_json(orient="records", date_format="iso"))


def record_schema(params: Params) -> RecordSchema:
    """The request schema for params, built once per distinct configuration (params are frozen)."""
    key = params_hash(params)
    if key not in _SCHEMAS:
        _SCHEMAS[key] = RecordSchema(params)
    return _SCHEMAS[key]


_SCHEMAS: dict[str, RecordSchema] = {}


class PredictRequest(BaseModel):
    """A batch of records to score: each one is checked against the dataset's record schema (`record_type`)."""

    # 1..MAX_RECORDS is checked by `check_record_count` (an error body like a record's, not BentoML's model dump)
    # and declared in the OpenAPI document (http_guard.with_record_schema).
    records: list[dict[str, Any]]


def check_record_count(records: Sequence[object]) -> None:
    """Between 1 and MAX_RECORDS records; InvalidRecords at `records` otherwise."""
    if not 1 <= len(records) <= MAX_RECORDS:
        kind = "too_short" if not records else "too_long"
        message = f"between 1 and {MAX_RECORDS:,} records are scored per request, not {len(records):,}"
        raise InvalidRecords([{"loc": ("records",), "msg": message, "type": kind}])


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
    label: Annotated[int, Strict(), Interval(ge=0, le=1)]  # 0 or 1; strict: `true` is not a label


class WeightsRequest(BaseModel):
    """The share of traffic the challenger should get."""

    challenger_weight: float = Field(ge=0.0, le=1.0)
