"""The request record comes from params alone: a dataset that is not the flights gets its own schema, strict types,
ranges and routing key, and every refusal names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retrainer.config import Params
from retrainer.serving.http_guard import with_record_schema
from retrainer.serving.routing import routing_key
from retrainer.serving.schema import InvalidRecords, RecordSchema

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def loans() -> Params:
    """Another dataset's params: loans with an id, a category, a whole-number age, a flag and a 0/1 target."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"] = {
        "batch_source": "loans.parquet",
        "time_column": "applied_at",
        "key_columns": ["loan_id"],
        "identifiers": ["customer"],
        "leaking_columns": ["repaid_amount"],
        "target": {"column": "defaulted", "threshold": 0.5},
        "bootstrap": {"start": "2020-01-01", "end": "2020-03-01"},
    }
    raw["features"] = {"numeric": ["age", "amount"], "categorical": ["purpose"]}
    raw["validate"]["columns"] = {
        "loan_id": {"kind": "integer"},
        "customer": {"kind": "string", "nullable": True},
        "applied_at": {"kind": "datetime"},
        "age": {"kind": "integer"},
        "amount": {"kind": "number"},
        "purpose": {"kind": "string"},
        "first_time": {"kind": "boolean", "nullable": True},
        "repaid_amount": {"kind": "number", "nullable": True},
        "defaulted": {"kind": "integer"},
    }
    raw["validate"]["ranges"] = {
        "age": {"min": 18, "max": 120},
        "amount": {"min": 0, "strict_min": True},
        "loan_id": {"min": 0, "max": 10, "severity": "warn"},
    }
    raw["validate"]["categories"] = {"purpose": {"values": ["car", "home"]}}
    raw["validate"]["drift"]["features"] = ["age"]
    raw["gate"]["slices"]["columns"] = ["purpose"]
    raw["serve"].pop("routing_key")
    return Params.model_validate(raw)


GOOD = {"loan_id": 17, "applied_at": "2020-03-02T09:30:00+01:00", "age": 41, "amount": 2500, "purpose": "car"}


def _refusal(schema: RecordSchema, **change: object) -> InvalidRecords:
    with pytest.raises(InvalidRecords) as caught:
        schema.validate([GOOD, {**GOOD, **change}])
    return caught.value


def test_a_valid_record_is_typed_trimmed_and_stripped_of_unknown_fields(loans: Params):
    (record,) = RecordSchema(loans).validate([{**GOOD, "purpose": " car ", "customer": "  ", "colour": "red"}])
    assert record == {
        **GOOD,
        "amount": 2500.0,
        "purpose": "car",
        "customer": None,
        "applied_at": "2020-03-02T09:30:00+01:00",
    }
    assert "colour" not in record and isinstance(record["amount"], float)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"age": True}, "age", "valid integer"),  # JSON true is not the number 1
        ({"age": "41"}, "age", "valid integer"),
        ({"age": 41.0}, "age", "valid integer"),
        ({"age": 17}, "age", "greater than or equal to 18"),
        ({"amount": 0}, "amount", "greater than 0"),
        ({"amount": True}, "amount", "valid number"),
        ({"first_time": 1}, "first_time", "valid boolean"),
        ({"purpose": ""}, "purpose", "at least 1 character"),
        ({"purpose": 3}, "purpose", "valid string"),
        ({"applied_at": "soon"}, "applied_at", "ISO 8601"),
        ({"loan_id": 2**64}, "loan_id", "less than or equal to 9223372036854775807"),
    ],
)
def test_a_bad_value_is_refused_naming_record_and_field(loans: Params, change: dict, field: str, message: str):
    refusal = _refusal(RecordSchema(loans), **change)
    assert refusal.errors[0]["loc"] == ("records", 1, field)
    assert f"records[1].{field}: " in str(refusal) and message in str(refusal)


def test_a_missing_required_field_is_named_and_outcomes_nulls_and_warn_ranges_are_not_required(loans: Params):
    schema = RecordSchema(loans)
    lacking = {k: v for k, v in GOOD.items() if k != "purpose"}
    with pytest.raises(InvalidRecords, match=r"records\[0\]\.purpose: Field required"):
        schema.validate([lacking])
    # the target and the leaking column may come (null or not) or not at all; a warn range does not refuse
    (record,) = schema.validate([{**GOOD, "defaulted": None, "repaid_amount": 10.0, "loan_id": 99}])
    assert record["defaulted"] is None and record["loan_id"] == 99
    assert schema.validate([{**GOOD, "purpose": "boat"}])[0]["purpose"] == "boat", "a new category is drift, not 400"


def test_the_openapi_document_carries_the_dataset_record(loans: Params):
    record = RecordSchema(loans).json_schema()
    assert set(record["required"]) == {"loan_id", "applied_at", "age", "amount", "purpose"}
    assert record["properties"]["age"] == {"type": "integer", "minimum": 18, "maximum": 120, "title": "Age"}
    spec = {
        "paths": {
            "/predict": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"records": {"type": "array", "items": {"type": "object"}}},
                                }
                            }
                        }
                    }
                }
            }
        },
        "components": {"schemas": {}},
    }
    doc = with_record_schema(spec, record, 10)
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["records"]["items"] == {"$ref": "#/components/schemas/Record"}
    assert (body["properties"]["records"]["minItems"], body["properties"]["records"]["maxItems"]) == (1, 10)
    assert doc["components"]["schemas"]["Record"] == record


def test_routing_falls_back_to_the_key_columns(loans: Params):
    fields = loans.serve.routing_key or loans.data.key_columns
    assert fields == ("loan_id",)
    assert routing_key({**GOOD, "age": 50}, fields) == routing_key(GOOD, fields) == "17"


def test_a_routing_field_outside_the_schema_is_a_config_error(loans: Params):
    raw = loans.model_dump(mode="json")
    raw["serve"]["routing_key"] = ["loan_id", "branch"]
    with pytest.raises(ValueError, match=r"serve.routing_key: \['branch'\] are not in validate.columns"):
        Params.model_validate(raw)


def test_client_rows_drop_outcomes_and_send_whole_floats_of_integer_columns_as_integers(loans: Params):
    import pandas as pd

    from retrainer.serving.schema import client_rows

    frame = pd.DataFrame(
        {
            "loan_id": [1.0, None, 3.0],  # an integer column pandas holds as floats (a missing cell)
            "age": [40.0, 41.5, 42.0],  # a fractional value stays as it is, for the schema to refuse
            "applied_at": pd.to_datetime(["2020-03-02T09:30:00Z"] * 3),
            "defaulted": [0, 1, 0],
            "repaid_amount": [1.0, 2.0, 3.0],
        }
    )
    rows = client_rows(frame, loans)
    assert [r["loan_id"] for r in rows] == [1, None, 3] and isinstance(rows[0]["loan_id"], int)
    assert [r["age"] for r in rows] == [40.0, 41.5, 42.0]
    assert not {"defaulted", "repaid_amount"} & set().union(*rows)
    assert rows[0]["applied_at"].startswith("2020-03-02T09:30:00")
