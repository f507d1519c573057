"""Serving features equal the training features for the same flights; the request schema checks ranges."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import raw_records
from pydantic import ValidationError

from retrainer.config import Params
from retrainer.io.project import pseudonymisation_key
from retrainer.serving.features import FeatureBuilder
from retrainer.serving.schema import FlightRecord, PredictRequest
from retrainer.steps.ingest import integrate


def test_serving_features_match_the_training_ingest(
    params: Params, seed_flights: pd.DataFrame, references: dict[str, pd.DataFrame]
):
    records = raw_records(seed_flights, 400, outcomes=True)
    served = FeatureBuilder(params, references).integrate(
        [FlightRecord.model_validate(r).model_dump(mode="json") for r in records]
    )
    raw = seed_flights.loc[seed_flights["month"] == 2].iloc[:400].reset_index(drop=True)
    trained, _ = integrate(raw, references, params.data, pseudonymisation_key())
    keys = ["carrier", "flight", "time_hour"]
    merged = trained.merge(served, on=keys, suffixes=("_train", "_serve"), validate="one_to_one")
    assert len(merged) == len(trained) > 350
    for column in [*params.features.all, "tailnum"]:
        if column in keys:
            continue
        left, right = merged[f"{column}_train"], merged[f"{column}_serve"]
        if column in params.features.categorical or column == "tailnum":
            assert (left.fillna("<NA>").astype(str) == right.fillna("<NA>").astype(str)).all(), column
        else:
            pd.testing.assert_series_equal(left.astype(float), right.astype(float), check_names=False, obj=column)
    assert merged["temp_serve"].notna().mean() > 0.9, "the weather join should match most flights"
    assert not served["tailnum"].dropna().str.startswith("N").any(), "tail numbers are pseudonymised"


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
def test_schema_names_the_bad_field(seed_flights, change, field):
    with pytest.raises(ValidationError) as caught:
        PredictRequest.model_validate({"records": [{**raw_records(seed_flights, 1)[0], **change}]})
    assert caught.value.errors()[0]["loc"] == ("records", 0, field)
