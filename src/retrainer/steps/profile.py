"""The reference profile stored with each model version: what its inputs, outputs and metrics looked like."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from retrainer.config import Params
from retrainer.steps.drift import bin_shares, count_shares, quantile_edges

PROFILE_FORMAT = 1


def numeric_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of all values per bin of `edges` (see bin_shares), with the missing values' share as a last bin."""
    present = values[~np.isnan(values)]
    missing = 1.0 - len(present) / max(len(values), 1)
    if len(edges) == 0:
        return np.array([missing])
    return np.append(bin_shares(present, edges) * (1.0 - missing), missing)


def profile_numeric(series: pd.Series, bins: int, sample_rows: int, seed: int) -> dict:
    """Quantile edges, bin shares (missing values as a last bin) and a bounded seeded sample for KS."""
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    present = values[~np.isnan(values)]
    if len(present) == 0:
        return {"kind": "numeric", "edges": [], "shares": [1.0], "sample": [], "rows": len(values)}
    edges = quantile_edges(present, bins)
    shares = numeric_shares(values, edges)
    rng = np.random.default_rng(seed)
    sample = rng.choice(present, size=min(sample_rows, len(present)), replace=False)
    return {
        "kind": "numeric",
        "edges": edges.tolist(),
        "shares": shares.tolist(),
        "sample": np.sort(sample).tolist(),
        "rows": len(values),
    }


def profile_categorical(series: pd.Series) -> dict:
    """Share of each category (missing values as '<null>')."""
    return {"kind": "categorical", "shares": count_shares(series).to_dict(), "rows": len(series)}


def reference_metrics(labels: np.ndarray, proba: np.ndarray, threshold: float, holdout: dict) -> dict:
    """The holdout metrics the monitor compares rolling performance with, plus accuracy and predicted rate."""
    labels, predicted = np.asarray(labels).astype(int), np.asarray(proba) >= threshold
    keep = ("roc_auc", "pr_auc", "f1", "precision", "recall", "positive_rate", "rows")
    return {
        **{k: holdout[k] for k in keep if k in holdout},
        "accuracy": float(np.mean(predicted == (labels == 1))) if len(labels) else float("nan"),
        "predicted_positive_rate": float(np.mean(predicted)) if len(labels) else float("nan"),
        "threshold": float(threshold),
    }


def build_reference_profile(
    train: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    holdout_labels: np.ndarray,
    holdout_proba: np.ndarray,
    threshold: float,
    holdout_metrics: dict,
    bins: int,
    sample_rows: int,
    seed: int,
) -> dict:
    """Per-feature distributions of the training window, the holdout prediction distribution, holdout metrics."""
    features = {name: profile_numeric(train[name], bins, sample_rows, seed) for name in numeric}
    features |= {name: profile_categorical(train[name]) for name in categorical}
    proba = np.asarray(holdout_proba, dtype="float64")
    edges = quantile_edges(proba, bins)
    return {
        "format": PROFILE_FORMAT,
        "training_rows": len(train),
        "features": features,
        "prediction": {"edges": edges.tolist(), "shares": bin_shares(proba, edges).tolist(), "rows": len(proba)},
        "metrics": reference_metrics(holdout_labels, proba, threshold, holdout_metrics),
    }


def profile_from_params(
    params: Params,
    train: pd.DataFrame,
    holdout_labels: np.ndarray,
    holdout_proba: np.ndarray,
    threshold: float,
    holdout_metrics: dict,
) -> dict:
    """The reference profile of a model version, with the features, bins, sample size and seed params name."""
    drift = params.monitor.drift
    return build_reference_profile(
        train,
        params.features.numeric,
        params.features.categorical,
        holdout_labels,
        holdout_proba,
        threshold,
        holdout_metrics,
        drift.bins,
        drift.sample_rows,
        params.train.seed,
    )
