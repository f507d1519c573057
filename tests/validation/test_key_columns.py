"""Key columns: none -> no uniqueness check, one -> plain uniqueness, several -> compound uniqueness (real GX)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from retrainer.config import load_params
from retrainer.steps import validate as steps

FLIGHT_KEY = ("year", "month", "day", "carrier", "flight", "origin", "sched_dep_time")


def params_with_key(project_root, tmp_path, key: list[str]):
    """The real params with data.key_columns set as a user would write it in the file."""
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["data"]["key_columns"] = key
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)


def unique_key_result(params, frame: pd.DataFrame) -> steps.CheckResult | None:
    runner = steps.create_suite_runner(params.validate, params.data)
    checks = steps.extract_check_results(runner.run(frame))
    return next((c for c in checks if c.check == "unique_key"), None)


@pytest.fixture(scope="module")
def one_a_day(march: pd.DataFrame) -> pd.DataFrame:
    """One March flight per day: unique on `day` and on the flight key."""
    return march.groupby("day").head(1).reset_index(drop=True)


@pytest.mark.parametrize(
    ("key", "duplicated", "expectation", "success"),
    [
        ([], False, None, None),
        ([], True, None, None),
        (["day"], False, "expect_column_values_to_be_unique", True),
        (["day"], True, "expect_column_values_to_be_unique", False),
        (list(FLIGHT_KEY), False, "expect_compound_columns_to_be_unique", True),
        (list(FLIGHT_KEY), True, "expect_compound_columns_to_be_unique", False),
    ],
)
def test_key_columns_choose_the_uniqueness_check(
    project_root, tmp_path, one_a_day, key, duplicated, expectation, success
):
    params = params_with_key(project_root, tmp_path, key)
    frame = pd.concat([one_a_day, one_a_day.iloc[[3]]], ignore_index=True) if duplicated else one_a_day
    result = unique_key_result(params, frame)
    if expectation is None:
        assert result is None
        return
    assert result.expectation == expectation
    assert result.success is success
    assert result.error is None
    assert result.column == ",".join(key)
