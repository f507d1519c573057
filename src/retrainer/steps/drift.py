"""Distribution shift measures shared by validation, the reference profile, the monitor and the canary (pure)."""

from __future__ import annotations

import numpy as np
import pandas as pd

PSI_FLOOR = 1e-4


def quantile_edges(values: np.ndarray, bins: int, *, inner: bool = False) -> np.ndarray:
    """Distinct quantile edges of the values at 0, 1/bins, ..., 1 (fewer where values repeat).

    With `inner`, only the edges strictly between the minimum and the maximum quantile are taken: the bins are then
    open-ended at both sides (see `bin_shares(..., open_ended=True)`).
    """
    probabilities = np.linspace(0, 1, bins + 1)
    return np.unique(np.quantile(values, probabilities[1:-1] if inner else probabilities))


def bin_shares(values: np.ndarray, edges: np.ndarray, *, open_ended: bool = False) -> np.ndarray:
    """Share of values per bin of `edges`.

    Closed (default): below the first edge, between edges, at the last edge, above it (len(edges) + 2 bins), so
    values outside the reference's range have bins of their own. Open-ended: below the first edge, between edges,
    from the last edge up (len(edges) + 1 bins).
    """
    index = np.searchsorted(edges, values, side="right")
    if open_ended:
        return np.bincount(index, minlength=len(edges) + 1) / max(len(values), 1)
    index[values > edges[-1]] = len(edges) + 1
    return np.bincount(index, minlength=len(edges) + 2) / max(len(values), 1)


def compute_psi(reference_shares: np.ndarray, batch_shares: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index between two share vectors (empty bins floored to avoid log(0))."""
    ref = np.clip(reference_shares, floor, None)
    new = np.clip(batch_shares, floor, None)
    return float(np.sum((new - ref) * np.log(new / ref)))


def psi_p_value(value: float, bins: int, n_expected: int, n_actual: int) -> float:
    """Chance of a PSI this large between two samples of one distribution (PSI * n_eff ~ chi2(bins - 1))."""
    from scipy.stats import chi2

    n_eff = 1.0 / (1.0 / n_expected + 1.0 / n_actual)
    return float(chi2.sf(value * n_eff, max(bins - 1, 1)))


def count_shares(series: pd.Series) -> pd.Series:
    """Share of each value, missing values counted under one '<null>' label."""
    shares = series.value_counts(normalize=True, dropna=False)
    shares.index = pd.Index(["<null>" if pd.isna(v) else str(v) for v in shares.index])
    return shares.groupby(level=0).sum()
