"""Pure pieces of a model-change report: output hashes from a `dvc.lock`, which holdout both models are scored on,
each model's scores on it, per-slice deltas, and which changed files are code and which are batches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from retrainer.config import SlicePolicy
from retrainer.steps.evaluate import classification_metrics
from retrainer.steps.gate import slice_metrics

CODE_SUFFIXES = (".py", ".toml", ".cfg", ".yaml", ".yml", ".sh", ".txt")


def output_hashes(lock: dict) -> dict[str, str]:
    """{path: md5} of every stage output recorded in a parsed `dvc.lock` (outputs without an md5 are left out)."""
    hashes = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("md5"):
                hashes[out["path"]] = out["md5"]
    return hashes


@dataclass(frozen=True)
class HoldoutChoice:
    """The holdout both models are scored on: which side's it is, and a sentence saying why."""

    side: str  # "base" or "head"
    frame: pd.DataFrame
    note: str


def choose_holdout(base: pd.DataFrame, head: pd.DataFrame, time_column: str, same_file: bool) -> HoldoutChoice:
    """The shared holdout: the one file when unchanged, else the newer one (later last time; the branch's on a tie)."""
    if same_file:
        return HoldoutChoice("head", head, f"same holdout file on both sides ({len(head):,} rows)")
    newer_base = base[time_column].max() > head[time_column].max()
    side, frame = ("base", base) if newer_base else ("head", head)
    return HoldoutChoice(
        side,
        frame,
        f"the split changed: both models scored on the newer holdout, the {'base' if newer_base else 'branch'}'s "
        f"({len(frame):,} rows, {frame[time_column].min()} .. {frame[time_column].max()}; "
        f"the other had {len(head if newer_base else base):,} rows)",
    )


@dataclass(frozen=True)
class Scored:
    """One model's probabilities and metrics on the shared holdout (rows in the holdout's order)."""

    proba: np.ndarray
    metrics: dict[str, float]


def score_bundle(bundle: dict, holdout: pd.DataFrame, label: str) -> Scored:
    """Score a trained bundle ({'model', 'threshold', 'features'}) on the holdout; KeyError naming missing columns."""
    missing = [c for c in bundle["features"] if c not in holdout.columns]
    if missing:
        raise KeyError(f"the holdout lacks the model's feature columns {missing}")
    proba = bundle["model"].predict_proba(holdout[bundle["features"]])[:, 1]
    return Scored(proba, classification_metrics(holdout[label].to_numpy(), proba, bundle["threshold"]))


def slice_deltas(
    y_true: np.ndarray, head: np.ndarray, base: np.ndarray, slices: pd.DataFrame, policy: SlicePolicy, metric: str
) -> pd.DataFrame:
    """Per slice: rows, whether the gate judges it (min_rows), the metric of base and branch, and the change
    (branch - base); NaN when the metric is undefined (one class in the slice)."""
    new = slice_metrics(y_true, head, slices, policy.columns, metric)
    old = slice_metrics(y_true, base, slices, policy.columns, metric)
    return pd.DataFrame(
        {
            "slice": [f"{c}={v}" for c, v in zip(new["column"], new["value"], strict=True)],
            "rows": new["rows"],
            "judged": new["rows"] >= policy.min_rows,
            "base": old["metric"],
            "head": new["metric"],
            "change": new["metric"] - old["metric"],
        }
    )


def is_batch(name: str, batches_dir: str) -> bool:
    """Whether a changed path is a batch file under `batches_dir` (not its stored report or a placeholder)."""
    inside = PurePosixPath(batches_dir) in PurePosixPath(name).parents
    return inside and not name.endswith((".gitkeep", ".validation.json"))


def split_changed_files(files: Iterable[str], batches_dir: str, dvc_tracked: Iterable[str]) -> dict[str, list[str]]:
    """Changed files (git paths) sorted into batches (under `batches_dir`), code, pipeline files and other files;
    pipeline outputs (`dvc_tracked`) are left out: `dvc diff` reports them."""
    tracked = set(dvc_tracked)
    groups: dict[str, list[str]] = {"batches": [], "code": [], "pipeline": [], "other": []}
    for name in sorted(set(files)):
        path = PurePosixPath(name)
        if name in tracked:
            continue
        if is_batch(name, batches_dir):
            groups["batches"].append(name)
        elif name in ("dvc.yaml", "dvc.lock", "params.yaml") or path.suffix == ".dvc":
            groups["pipeline"].append(name)
        elif path.suffix in CODE_SUFFIXES:
            groups["code"].append(name)
        else:
            groups["other"].append(name)
    return groups
