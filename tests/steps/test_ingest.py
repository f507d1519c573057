"""Ingest: joins counted, identifiers pseudonymised with a key, cancelled flights excluded and counted."""

import pandas as pd
import pytest

from retrainer.steps.ingest import add_label, integrate, parse_time_column, pseudonymise


def test_integrate_real_sample(january_sample, references, params):
    frame, report = integrate(january_sample, references, params.data, b"key")
    cancelled = int(january_sample["arr_delay"].isna().sum())
    assert cancelled > 0
    assert report.rows_in == len(january_sample)
    assert report.excluded_unlabelled == cancelled
    assert report.rows_out == len(january_sample) - cancelled == len(frame)
    unmatched_planes = (~january_sample["tailnum"].isin(references["planes"]["tailnum"])).sum()
    assert report.unmatched["planes"] == unmatched_planes > 0
    assert {"temp", "plane_year", "seats", "delayed"} <= set(frame.columns)
    assert frame["delayed"].tolist() == (frame["arr_delay"] > 15).astype(int).tolist()
    assert frame["time_hour"].is_monotonic_increasing
    assert not frame["tailnum"].dropna().isin(january_sample["tailnum"]).any()


def test_unmatched_joins_are_counted_exactly(references, params):
    batch = pd.DataFrame({
        "origin": ["JFK", "JFK", "EWR"],
        "time_hour": pd.to_datetime(["2013-01-01T10:00:00Z", "2031-01-01T10:00:00Z", "2013-01-01T10:00:00Z"]),
        "tailnum": ["N14228", "N14228", "NOPE"],
        "arr_delay": [20.0, -3.0, 5.0],
    })
    frame, report = integrate(batch, references, params.data, b"key")
    assert report.unmatched == {"weather": 1, "planes": 1}
    assert len(frame) == 3


def test_pseudonymise_is_keyed_deterministic_and_keeps_nulls():
    frame = pd.DataFrame({"tailnum": ["N1", "N2", None, "N1"]})
    a = pseudonymise(frame, ("tailnum",), b"k1")["tailnum"]
    b = pseudonymise(frame, ("tailnum",), b"k2")["tailnum"]
    assert a[0] == a[3] != a[1]
    assert pd.isna(a[2])
    assert a[0] != b[0]
    assert len(a[0]) == 16 and "N1" not in a.dropna().tolist()


def test_add_label_threshold_is_strict(params):
    frame = pd.DataFrame({"arr_delay": [15.0, 15.5, None, -2.0]})
    labelled, excluded = add_label(frame, params.data)
    assert excluded == 1
    assert labelled["delayed"].tolist() == [0, 1, 0]


def test_csv_time_text_is_parsed_and_missing_time_is_named():
    parsed = parse_time_column(pd.DataFrame({"t": ["2013-01-01T10:00:00Z"]}), "t")
    assert parsed["t"].dt.tz is not None
    with pytest.raises(KeyError, match="time column 'time_hour'"):
        parse_time_column(pd.DataFrame({"x": [1]}), "time_hour")
