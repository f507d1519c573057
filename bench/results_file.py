"""Where a benchmark's figures go: bench/results/<name>.json, with the versions and machine they were measured on."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, figures: dict, **versions: str) -> Path:
    """Add python, pandas, machine (and `versions`) to the figures, write them as JSON, print them; return the file."""
    figures = {**figures, "python": platform.python_version(), "pandas": pd.__version__, **versions}
    figures["machine"] = platform.machine()
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return out
