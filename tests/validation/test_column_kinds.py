"""Every `validate.columns` kind reads from a batch file as the service reads it from a request: a datetime column
that is not the time column, a nullable boolean column with missing cells, and a text code made of digits, in CSV
and in Parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from retrainer.config import Params
from retrainer.io.batch_files import read_batch_file, read_options
from retrainer.steps.validate import match_dtype_kind
from retrainer.validation import validate_batch_file

ROOT = Path(__file__).resolve().parents[2]
CAR_LOAN = ROOT / "examples" / "car_loan"


@pytest.fixture(scope="module")
def kinds_params() -> Params:
    """The car-loan params with a nullable boolean column and a second datetime column."""
    raw = yaml.safe_load((CAR_LOAN / "params.yaml").read_text())
    raw["validate"]["columns"]["insured"] = {"kind": "boolean", "nullable": True}
    raw["validate"]["columns"]["opened_at"] = {"kind": "datetime"}
    raw["validate"]["columns"]["dealer_code"] = {"kind": "string"}
    return Params.model_validate(raw)


def _month_with_kinds() -> pd.DataFrame:
    loans = pd.read_parquet(CAR_LOAN / "car_loan.parquet")
    month = loans[(loans["timestamp"] >= "2018-11-01") & (loans["timestamp"] < "2018-12-01")].reset_index(drop=True)
    return month.assign(
        insured=[[True, False, None][i % 3] for i in range(len(month))],
        opened_at=(month["timestamp"] - pd.Timedelta(days=400)).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        dealer_code=[f"{i % 50:05d}" for i in range(len(month))],
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_both_kinds_read_as_their_kind(tmp_path: Path, kinds_params: Params, suffix: str):
    path = tmp_path / f"batch{suffix}"
    frame = _month_with_kinds()
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    read = read_batch_file(path, read_options(kinds_params)).frame
    assert match_dtype_kind(read["insured"].dtype, "boolean"), read["insured"].dtype
    assert match_dtype_kind(read["opened_at"].dtype, "datetime"), read["opened_at"].dtype
    assert read["insured"].isna().sum() == len(frame) // 3
    assert read["opened_at"].iloc[0] == pd.Timestamp(frame["opened_at"].iloc[0])
    assert match_dtype_kind(read["dealer_code"].dtype, "string"), read["dealer_code"].dtype
    assert read["dealer_code"].tolist() == frame["dealer_code"].tolist()  # `00007`, not 7.0


def test_a_csv_batch_with_both_kinds_passes_validation(tmp_path: Path, kinds_params: Params):
    """Before: quarantined on `types.insured` (dtype object), `types.opened_at` (dtype str) and `types.dealer_code`
    (dtype int64: a code of digits read as a number), on every batch."""
    path = tmp_path / "car_loan-2018-11.csv"
    _month_with_kinds().to_csv(path, index=False)
    outcome = validate_batch_file(path, kinds_params, tmp_path)
    assert outcome.passed, [failure["check"] for failure in outcome.failures]


def test_a_datetime_value_that_does_not_parse_is_named_by_row(tmp_path: Path, kinds_params: Params):
    frame = _month_with_kinds()
    frame.loc[7, "opened_at"] = "last spring"
    path = tmp_path / "batch.csv"
    frame.to_csv(path, index=False)
    problems = read_batch_file(path, read_options(kinds_params)).problems
    assert [(p["check"], p["rows"], p["examples"]) for p in problems] == [("times.opened_at", [7], ["last spring"])]
