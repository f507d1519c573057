"""Serving features equal the training features for the same flights; the request schema checks ranges."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import raw_records

from retrainer.config import Params
from retrainer.io.project import pseudonymisation_key
from retrainer.serving.features import FeatureBuilder
from retrainer.serving.schema import InvalidRecords, record_schema
from retrainer.steps.ingest import join_references, parse_time_column, pseudonymise


def test_serving_features_match_the_training_ingest_pseudonyms_included(
    params: Params, seed_flights: pd.DataFrame, references: dict[str, pd.DataFrame]
):
    """Records through the request schema, with the tail number (an identifier) made a feature too."""
    categorical = (*params.features.categorical, "tailnum")
    with_tailnum = params.model_copy(
        update={"features": params.features.model_copy(update={"categorical": categorical})}
    )
    records = record_schema(params).json_records(raw_records(seed_flights, 400, outcomes=True))
    served = FeatureBuilder(with_tailnum, references).transform(records)
    expected = _ingested(records, references, params)[with_tailnum.features.all]
    pd.testing.assert_frame_equal(served, expected.astype(dict.fromkeys(params.features.numeric, "float64")))
    assert served["temp"].notna().mean() > 0.9, "the weather join should match most flights"
    assert served["tailnum"].notna().mean() > 0.9
    assert not served["tailnum"].dropna().str.startswith("N").any(), "tail numbers are pseudonymised"


def _ingested(records: list[dict], references: dict[str, pd.DataFrame], params: Params) -> pd.DataFrame:
    """What training's ingest makes of the records: parsed times, merged references, pseudonyms."""
    frame = parse_time_column(pd.DataFrame.from_records(records), params.data.time_column)
    joined, _ = join_references(frame, references, params.data)
    return pseudonymise(joined, params.data.identifiers, pseudonymisation_key())


def _awkward_records(seed_flights: pd.DataFrame) -> list[dict]:
    """3,000 real flights from the whole year as clients send them, with unmatched keys, nulls and other zones."""
    rows = seed_flights.iloc[::100].head(3_000).reset_index(drop=True)
    records = json.loads(rows.to_json(orient="records", date_format="iso"))
    for i, record in enumerate(records):
        if i % 7 == 0:
            record["tailnum"] = None
        elif i % 11 == 0:
            record["tailnum"] = f"ZZ{i}"  # no such plane
        if i % 13 == 0:
            record["origin"] = "XYZ"  # no weather there
        if i % 17 == 0:
            record["minute"] = None
        instant = pd.Timestamp(record["time_hour"])
        # one text format (ingest refuses a batch that mixes formats), two zones: UTC and New York local time
        record["time_hour"] = (instant.tz_convert("America/New_York") if i % 5 == 0 else instant).isoformat()
    return records


def _with_duplicate_and_null_keys(params: Params, references: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """References whose keys repeat later with other values (the first row must win) and a row with a null key."""
    out = {}
    for ref in params.data.references:
        table = references[ref.name]
        numeric = [c for c in ref.columns if pd.api.types.is_numeric_dtype(table[c])]
        repeats = table.head(200).copy()
        repeats[numeric] = -1
        null_key = table.head(1).copy()
        key = ref.join_on[0]
        null_key[key] = pd.array([None], dtype=table[key].dtype)  # a missing key, the column's dtype kept
        out[ref.name] = pd.concat([table, repeats, null_key], ignore_index=True)
    return out


def test_lookup_joins_equal_the_ingest_merges_exactly(
    params: Params, seed_flights: pd.DataFrame, references: dict[str, pd.DataFrame]
):
    records = _awkward_records(seed_flights)
    tables = _with_duplicate_and_null_keys(params, references)
    builder = FeatureBuilder(params, tables)
    expected = _ingested(records, tables, params)
    # the model's frame, built per column from the records: the same values, numbers as float64
    numbers_as_float = dict.fromkeys(params.features.numeric, "float64")
    pd.testing.assert_frame_equal(builder.transform(records), expected[params.features.all].astype(numbers_as_float))
    assert expected["seats"].isna().sum() > 400 and expected["temp"].isna().sum() > 200, "unmatched rows are tested"
    assert (expected["seats"] == -1).sum() == 0, "the first row of a repeated key wins"
    for record in records[:40]:  # one-record requests
        pd.testing.assert_frame_equal(
            builder.transform([record]),
            _ingested([record], tables, params)[params.features.all].astype(numbers_as_float),
        )


def test_every_way_of_writing_the_time_joins_the_same_weather(params: Params, seed_flights, references):
    """ISO text in any zone, datetimes and Timestamps take the fast path; other ISO 8601 spellings go through ingest's
    parser. Text that is not ISO 8601 is refused, as it is in a batch (training and serving read times alike)."""
    record = raw_records(seed_flights, 1, start=500)[0]
    instant = pd.Timestamp(record["time_hour"])
    builder = FeatureBuilder(params, references)
    expected = builder.transform([record])
    assert expected["temp"].notna().all(), "the chosen flight has weather"
    for written in (
        instant.isoformat(),
        instant.tz_convert("America/New_York").isoformat(),
        instant.tz_localize(None).isoformat(),  # naive: read as UTC, as ingest does
        instant.to_pydatetime(),
        instant,
        instant.strftime("%Y-%m-%d %H:%M:%S+00"),  # ISO 8601 that datetime.fromisoformat does not read
    ):
        served = builder.columns([{**record, "time_hour": written}])
        assert served["temp"][0] == expected["temp"][0], written
        assert served["carrier"][0] == expected["carrier"][0]
    with pytest.raises(ValueError, match="ISO8601"):
        builder.columns([{**record, "time_hour": instant.strftime("%m/%d/%Y %H:%M")}])


def test_a_reference_column_named_like_a_record_column_is_refused(params: Params, seed_flights, references):
    weather = params.data.references[0].model_copy(update={"columns": {"temp": "month"}})
    clashing = params.model_copy(
        update={"data": params.data.model_copy(update={"references": (weather, *params.data.references[1:])})}
    )
    with pytest.raises(KeyError, match="month"):
        FeatureBuilder(clashing, references).transform(raw_records(seed_flights, 3))


def test_transform_keeps_one_row_per_record_in_order(params: Params, seed_flights, references):
    records = raw_records(seed_flights, 30)
    records[5] = {**records[5], "tailnum": None, "origin": "XYZ"}
    frame = FeatureBuilder(params, references).transform(records)
    assert list(frame.columns) == params.features.all
    assert len(frame) == 30
    assert frame["dest"].tolist() == [r["dest"] for r in records]
    assert pd.isna(frame.loc[5, "temp"]) and pd.isna(frame.loc[5, "seats"])


@pytest.mark.parametrize(
    ("change", "field"), [({"month": 0}, "month"), ({"minute": 60}, "minute"), ({"time_hour": "soon"}, "time_hour")]
)
def test_schema_names_the_bad_field(params, seed_flights, change, field):
    with pytest.raises(InvalidRecords) as caught:
        record_schema(params).validate([{**raw_records(seed_flights, 1)[0], **change}])
    assert caught.value.errors[0]["loc"] == ("records", 0, field)
    assert f"records[0].{field}" in str(caught.value)


def test_an_optional_feature_every_record_omits_is_missing_not_an_error(project_root):
    """A nullable feature may be left out of a record (the request schema allows it). When every record of a request
    left it out, the service answered 500 (`KeyError: features [...] are not produced`), while the same record next
    to one that carried the field was scored with the value missing."""
    import yaml

    raw = yaml.safe_load((project_root / "examples" / "car_loan" / "params.yaml").read_text())
    raw["validate"]["columns"]["driver_tenure"]["nullable"] = True
    car_loan = Params.model_validate(raw)
    record = {
        "id": 1,
        "car_value": 12_000,
        "salary_range": "20K - 40K €",
        "debt_to_income_ratio": 0.4,
        "loan_length": 36,
        "repaid_loan_on_prev_car": 1,
        "size_of_downpayment": "10%",
        "timestamp": "2018-11-02T09:00:00Z",
    }
    schema, builder = record_schema(car_loan), FeatureBuilder(car_loan, {}, key=b"test")
    alone = builder.transform(schema.validate([record]))
    beside = builder.transform(schema.validate([record, {**record, "driver_tenure": 4.5}]))
    assert alone["driver_tenure"].isna().tolist() == [True]
    pd.testing.assert_frame_equal(alone, beside.iloc[:1])
