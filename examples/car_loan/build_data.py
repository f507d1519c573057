"""Rebuild car_loan.parquet from the nannyml 0.13.1 wheel's synthetic car loan files (see PROVENANCE.md).

Usage: python examples/car_loan/build_data.py PATH/TO/nannyml/datasets/data
"""

import sys
from pathlib import Path

import pandas as pd

MODEL_OUTPUTS = ["y_pred_proba", "y_pred"]  # the predictions of nannyml's own model: not data, and they leak


def main(src: Path, dest: Path) -> None:
    reference = pd.read_csv(src / "synthetic_car_loan_reference.csv").drop(columns=MODEL_OUTPUTS)
    analysis = pd.read_csv(src / "synthetic_car_loan_analysis.csv").drop(columns=MODEL_OUTPUTS)
    targets = pd.read_csv(src / "synthetic_car_loan_analysis_target.csv")
    frame = pd.concat([reference, analysis.merge(targets, on="id", how="left")], ignore_index=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize("UTC")
    frame["repaid_loan_on_prev_car"] = frame["repaid_loan_on_prev_car"].astype("int8")
    frame["repaid"] = frame["repaid"].astype("int8")
    frame["car_value"] = frame["car_value"].astype("int64")
    frame["loan_length"] = frame["loan_length"].astype("int64")
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    frame.to_parquet(dest / "car_loan.parquet", compression="zstd", compression_level=19, index=False)
    print(f"car_loan: {len(frame):,} rows x {frame.shape[1]} -> car_loan.parquet")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
