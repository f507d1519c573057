"""Pure validation steps: the suite derived from params, dtype kinds, result summaries, drift, JSON safety."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from retrainer.config import ConfigError, DriftConfig, load_params
from retrainer.steps import validate as steps
from retrainer.validation import ValidationOutcome, format_outcome


def test_suite_is_derived_from_params(params):
    specs = {s.check: s for s in steps.build_expectation_specs(params.validate, params.data)}
    columns = params.validate.columns
    assert {c for c in specs if c.startswith("types.")} == {f"types.{c}" for c in columns}
    required = {c for c, rule in columns.items() if not rule.nullable}
    assert {c.removeprefix("not_null.") for c in specs if c.startswith("not_null.")} == required
    assert "not_null.arr_delay" not in specs and "not_null.carrier" in specs
    assert specs["categories.carrier"].severity == "warn"
    assert specs["categories.origin"].severity == "block"
    assert specs["categories.origin"].kwargs["value_set"] == ["EWR", "JFK", "LGA"]
    assert specs["ranges.distance"].kwargs["strict_min"] is True
    assert specs["ranges.month"].kwargs["min_value"] == 1 and specs["ranges.month"].kwargs["max_value"] == 12
    assert specs["unique_key"].kwargs["column_list"] == list(params.data.key_columns)
    assert specs["labelled_share"].kwargs == {"column": "arr_delay", "mostly": 0.5}
    assert specs["positive_rate"].severity == "warn"
    assert specs["freshness"].kwargs["strict_min"] is True


def test_flight_key_is_unique_on_every_seed_month(params, seed_flights):
    key = list(params.data.key_columns)
    assert not seed_flights.duplicated(key).any()


@pytest.mark.parametrize(
    ("dtype", "kind", "expected"),
    [
        ("int64", "integer", True),
        ("Int32", "integer", True),
        ("float64", "integer", False),
        ("float64", "number", True),
        ("bool", "number", False),
        ("bool", "boolean", True),
        ("str", "string", True),
        ("str", "number", False),
        ("datetime64[us, UTC]", "datetime", True),
        ("str", "datetime", False),
        (None, "integer", False),
    ],
)
def test_dtype_kinds(dtype, kind, expected):
    resolved = None if dtype is None else pd.Series([], dtype=dtype).dtype
    assert steps.match_dtype_kind(resolved, kind) is expected


def test_label_rate_column_is_null_where_the_outcome_is(params):
    frame = pd.DataFrame({"arr_delay": [30.0, 15.0, np.nan, -4.0]})
    out = steps.add_label_rate(frame, params.data)
    assert out[steps.label_rate_column(params.data)].tolist()[:2] == [1.0, 0.0]
    assert np.isnan(out[steps.label_rate_column(params.data)].iloc[2])
    assert list(frame.columns) == ["arr_delay"]


def check(name, success, severity="block", column=None, error=None, observed=None):
    return steps.CheckResult(name, "expect_x", column, severity, success, observed=observed, error=error)


def test_summary_splits_blocking_warning_and_voided_checks():
    checks = [
        check("columns", False),
        check("types.a", False, column="a"),
        check("types.b", False, column="b", observed="str"),
        check("ranges.b", False, column="b", error="Column values must be the same type"),
        check("ranges.c", False, column="c"),
        check("categories.c", False, severity="warn", column="c"),
        check("not_null.c", True, column="c"),
        check("freshness", True),
    ]
    summary = steps.summarise_checks(checks, columns=["b", "c"], time_checked=False)
    assert [f["check"] for f in summary.failures] == ["columns", "types.b", "ranges.c"]
    assert [w["check"] for w in summary.warnings] == ["categories.c"]
    assert {s["check"]: s["reason"] for s in summary.skipped} == {
        "types.a": "column missing",
        "ranges.b": "b: dtype str is not the expected kind",
        "freshness": "no trained_until given",
    }
    assert len(summary.checks) == len(checks)


def test_errors_on_healthy_columns_still_fail():
    checks = [check("types.c", True, column="c"), check("ranges.c", False, column="c", error="boom")]
    summary = steps.summarise_checks(checks, columns=["c"])
    assert [(f["check"], f["error"]) for f in summary.failures] == [("ranges.c", "boom")]


def test_psi_is_zero_for_identical_and_large_for_disjoint():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=5000)
    assert steps.compute_numeric_psi(ref, ref.copy(), 10) == pytest.approx(0.0, abs=1e-12)
    assert steps.compute_numeric_psi(ref, rng.normal(size=5000), 10) < 0.05
    assert steps.compute_numeric_psi(ref, ref + 5, 10) > 1.0


def test_psi_sees_values_outside_a_constant_reference():
    ref = np.full(1000, 2.0)
    assert steps.compute_numeric_psi(ref, np.full(1000, 2.0), 10) == pytest.approx(0.0)
    assert steps.compute_numeric_psi(ref, np.full(1000, 3.0), 10) > 1.0
    assert steps.compute_numeric_psi(ref, np.full(1000, 1.0), 10) > 1.0


def test_categorical_psi_counts_new_categories_and_nulls():
    ref = pd.Series(["a", "b"] * 500)
    assert steps.compute_categorical_psi(ref, ref.sample(frac=1, random_state=0)) == pytest.approx(0.0)
    assert steps.compute_categorical_psi(ref, pd.Series(["a", "c"] * 500)) > 1.0
    assert steps.compute_categorical_psi(ref, pd.Series(["a", None] * 500)) > 1.0


def test_drift_thresholds_and_skips():
    config = DriftConfig(features=("x", "cat", "gone"), bins=5, psi_max=0.2, ks_max=0.1)
    ref = pd.DataFrame({"x": np.arange(1000.0), "cat": ["a", "b"] * 500})
    batch = pd.DataFrame({"x": np.arange(1000.0) + 150, "cat": ["a", "b"] * 500})
    drift = steps.measure_drift(ref, batch, config, {"x": "number", "cat": "string"})
    assert drift["x"]["ks"] == pytest.approx(0.15) and drift["x"]["drifted"] is True
    assert drift["cat"] == {"kind": "categorical", "psi": 0.0, "drifted": False}
    assert "skipped" in drift["gone"]
    alerts = steps.list_drift_alerts(drift, config, "warn")
    assert [(a["check"], a["severity"]) for a in alerts] == [("drift.x", "warn")]


def test_to_jsonable_makes_gx_values_json_safe():
    value = {
        "a": np.int64(3),
        "b": float("nan"),
        "c": pd.Timestamp("2013-03-01", tz="UTC"),
        "d": [np.float32(0.5), None, pd.NaT],
        "e": (1, "x"),
    }
    out = steps.to_jsonable(value)
    assert out == {"a": 3, "b": None, "c": "2013-03-01T00:00:00+00:00", "d": [0.5, None, None], "e": [1, "x"]}
    assert json.loads(json.dumps(out)) == out


def test_format_outcome_names_checks_and_place():
    outcome = ValidationOutcome(
        passed=False,
        batch_id="abc",
        drift={"distance": {"psi": 0.5, "drifted": True}},
        failures=[
            {
                "check": "ranges.month",
                "expectation": "expect_column_values_to_be_between",
                "column": "month",
                "severity": "block",
                "unexpected_count": 2,
                "examples": [13, 13],
            }
        ],
        warnings=[],
        quarantine_dir=None,
        report={"file": "b.csv", "rows": 10},
    )
    text = format_outcome(outcome)
    assert "QUARANTINED" in text and "ranges.month" in text and "[month]" in text and "2 unexpected" in text
    assert "1 of 1 features" in text and "distance" in text


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("validate", "severity", "ranges"), "fatal", "validate.severity.ranges"),
        (("validate", "ranges", "month"), {"min": 12, "max": 1}, "validate.ranges.month"),
        (("validate", "ranges", "nope"), {"min": 1}, "nope"),
        (("validate", "columns", "time_hour"), None, "time_hour"),
        (("validate", "row_count"), {"min": 10, "max": 5}, "validate.row_count"),
    ],
)
def test_bad_validate_params_name_the_key(path, value, message, project_root, tmp_path):
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_params(file)


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([1.0, 2.0, None], "float64", True),
        ([1.0, -0.0, 1e15], "float32", True),
        ([1.0, None], "Float64", True),
        ([1.0, 2.5], "float64", False),
        ([None, None], "float64", False),  # nothing to call whole
        ([1.0, float("inf")], "float64", False),
        ([1, 2], "int64", False),  # not a float column
        (["1", "2"], "object", False),
    ],
)
def test_holds_whole_floats(values, dtype, expected):
    assert steps.holds_whole_floats(pd.Series(values, dtype=dtype)) is expected
