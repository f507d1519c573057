"""Drift and performance detectors: a window of served predictions against the version's reference profile."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from retrainer.config import MonitorConfig, MonitorDrift, MonitorPerformance
from retrainer.steps.drift import bin_shares, compute_psi, count_shares, psi_p_value
from retrainer.steps.profile import numeric_shares

MIN_EXPECTED = 5


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def numeric_drift(reference: Mapping, values: np.ndarray, config: MonitorDrift) -> dict:
    """PSI over the reference quantile bins (missing values a bin of their own) and two-sample KS on the sample."""
    from scipy.stats import ks_2samp

    values = np.asarray(values, dtype="float64")
    present = values[~np.isnan(values)]
    ref_shares = np.asarray(reference["shares"], dtype="float64")
    shares = numeric_shares(values, np.asarray(reference["edges"], dtype="float64"))
    psi = compute_psi(ref_shares, shares)
    psi_p = psi_p_value(psi, len(ref_shares), reference["rows"], len(values))
    sample = np.asarray(reference["sample"], dtype="float64")
    ks, ks_p = (math.nan, 1.0)
    if len(sample) and len(present):
        test = ks_2samp(sample, present, method="asymp")
        ks, ks_p = float(test.statistic), float(test.pvalue)
    alpha = config.significance
    drifted = (psi >= config.psi_max and psi_p < alpha) or (ks >= config.ks_max and ks_p < alpha)
    return {
        "kind": "numeric",
        "psi": _finite(psi),
        "psi_pvalue": psi_p,
        "ks": _finite(ks),
        "ks_pvalue": ks_p,
        "missing_share": _finite(float(shares[-1])),
        "drifted": bool(drifted),
    }


def chi2_pvalue(reference: np.ndarray, window: np.ndarray, reference_rows: int, window_rows: int) -> float:
    """Two-sample chi-squared test of category counts; categories expected fewer than 5 times are pooled.

    Unpooled, the sparse cells of a long-tailed category (e.g. 100 destinations) make the test reject far more
    often than its level on windows from the very same distribution.
    """
    from scipy.stats import chi2_contingency

    common = reference * window_rows >= MIN_EXPECTED
    ref = np.append(reference[common], reference[~common].sum())
    new = np.append(window[common], window[~common].sum())
    table = np.vstack([ref * reference_rows, new * window_rows])
    table = table[:, table.sum(axis=0) > 0]
    return float(chi2_contingency(table, correction=False).pvalue) if table.shape[1] > 1 else 1.0


def categorical_drift(reference: Mapping, series: pd.Series, config: MonitorDrift) -> dict:
    """PSI and Jensen-Shannon distance of category shares, a chi-squared test of the counts, new categories."""
    from scipy.spatial.distance import jensenshannon

    ref = pd.Series(reference["shares"], dtype="float64")
    new = count_shares(series)
    cats = ref.index.union(new.index)
    p, q = ref.reindex(cats, fill_value=0.0).to_numpy(), new.reindex(cats, fill_value=0.0).to_numpy()
    unseen = sorted(set(new.index) - set(ref.index))
    unseen_share = float(new.reindex(unseen).sum()) if unseen else 0.0
    psi = compute_psi(p, q)
    js = float(jensenshannon(p, q, base=2))
    chi2_p = chi2_pvalue(p, q, reference["rows"], len(series))
    alpha = config.significance
    shifted = (psi >= config.psi_max or js >= config.js_max) and chi2_p < alpha
    return {
        "kind": "categorical",
        "psi": _finite(psi),
        "js": _finite(js),
        "chi2_pvalue": chi2_p,
        "new_categories": unseen[:20],
        "new_category_share": _finite(unseen_share),
        "drifted": bool(shifted or unseen_share >= config.new_category_share),
    }


def prediction_drift(reference: Mapping, proba: np.ndarray, config: MonitorDrift) -> dict:
    """PSI of the served probabilities over the quantile bins of the holdout's probabilities."""
    edges = np.asarray(reference["edges"], dtype="float64")
    ref_shares = np.asarray(reference["shares"], dtype="float64")
    psi = compute_psi(ref_shares, bin_shares(np.asarray(proba, dtype="float64"), edges))
    p_value = psi_p_value(psi, len(ref_shares), reference["rows"], len(proba))
    return {
        "psi": _finite(psi),
        "psi_pvalue": p_value,
        "mean": _finite(float(np.mean(proba))),
        "drifted": bool(psi >= config.prediction_psi_max and p_value < config.significance),
    }


def rolling_performance(reference: Mapping, labels: np.ndarray, proba: np.ndarray, config: MonitorPerformance) -> dict:
    """ROC AUC and accuracy of the labelled predictions, and the drop of the policy metric from the reference."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    proba = np.asarray(proba, dtype="float64")
    threshold = float(reference["threshold"])
    auc = float(roc_auc_score(labels, proba)) if len(np.unique(labels)) == 2 else math.nan
    accuracy = float(np.mean((proba >= threshold) == (labels == 1))) if len(labels) else math.nan
    current = {"roc_auc": auc, "accuracy": accuracy}[config.metric]
    drop = float(reference[config.metric]) - current
    judged = len(labels) >= config.min_labels and math.isfinite(drop)
    return {
        "labels": len(labels),
        "roc_auc": _finite(auc),
        "accuracy": _finite(accuracy),
        "positive_rate": _finite(float(labels.mean())) if len(labels) else None,
        "metric": config.metric,
        "reference": _finite(float(reference[config.metric])),
        "drop": _finite(drop),
        "judged": judged,
        "decayed": bool(judged and drop >= config.max_drop),
    }


def _signal(value: float | None, threshold: float, alarm: bool, judged: bool) -> dict:
    level = (value or 0.0) / threshold if judged and value is not None else 0.0
    return {"value": value, "threshold": threshold, "alarm": alarm, "level": round(max(level, 0.0), 4)}


def feature_drift(references: Mapping, features: pd.DataFrame, config: MonitorDrift) -> dict[str, dict]:
    """Each profiled feature's drift detector on the window (`judged`: counted in the drift share)."""
    per_feature = {}
    for name, reference in references.items():
        if name not in features.columns:
            continue
        if reference["kind"] == "numeric":
            stats = numeric_drift(reference, features[name].to_numpy(dtype="float64", na_value=np.nan), config)
        else:
            stats = categorical_drift(reference, features[name], config)
        per_feature[name] = {**stats, "judged": name not in config.exclude}
    return per_feature


def window_signals(share: float | None, prediction: dict | None, performance: dict, config: MonitorConfig) -> dict:
    """The three signals of a window: dataset drift share, prediction drift, performance drop."""
    drift = config.drift
    return {
        "drift_share": _signal(
            share, drift.share_max, share is not None and share >= drift.share_max, share is not None
        ),
        "prediction_psi": _signal(
            prediction["psi"] if prediction else None,
            drift.prediction_psi_max,
            bool(prediction and prediction["drifted"]),
            prediction is not None,
        ),
        "performance_drop": _signal(
            performance["drop"], config.performance.max_drop, performance["decayed"], performance["judged"]
        ),
    }


def assess_window(
    profile: Mapping,
    features: pd.DataFrame,
    proba: np.ndarray,
    labels: np.ndarray,
    labelled_proba: np.ndarray,
    config: MonitorConfig,
) -> dict:
    """Every detector on one window, the three signals (dataset drift, prediction drift, performance) and the alarm.

    A signal's level is its value over its threshold; the trigger re-arms when the highest level falls low enough.
    """
    drift_cfg, rows = config.drift, len(proba)
    enough = rows >= config.window.min_predictions
    per_feature = feature_drift(profile["features"], features, drift_cfg) if enough else {}
    judged = [n for n, s in per_feature.items() if s["judged"]]
    drifted = [n for n in judged if per_feature[n]["drifted"]]
    share = round(len(drifted) / len(judged), 6) if judged else None
    prediction = prediction_drift(profile["prediction"], proba, drift_cfg) if enough else None
    performance = rolling_performance(profile["metrics"], labels, labelled_proba, config.performance)
    signals = window_signals(share, prediction, performance, config)
    reasons = [f"{name} {s['value']:.3f} >= {s['threshold']}" for name, s in signals.items() if s["alarm"]] or (
        [] if enough else [f"too few predictions to judge drift: {rows} < {config.window.min_predictions}"]
    )
    ranked = sorted(drifted, key=lambda n: -(per_feature[n]["psi"] or 0.0))
    return {
        "rows": rows,
        "labelled": len(labels),
        "features": per_feature,
        "drifted_features": ranked,
        "drift_share": share,
        "prediction": prediction,
        "performance": performance,
        "signals": signals,
        "alarm": any(s["alarm"] for s in signals.values()),
        "level": max(s["level"] for s in signals.values()),
        "reasons": reasons,
    }
