"""Drift and performance detectors on synthetic data whose answer is known, under the params defaults."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrainer.config import MonitorConfig, Params
from retrainer.steps.monitor import assess_window, categorical_drift, numeric_drift, rolling_performance
from retrainer.steps.profile import build_reference_profile

SEEDS = range(100)
CITIES = [f"C{i:02d}" for i in range(40)]
CITY_SHARES = (1 / np.arange(1, 41)) / (1 / np.arange(1, 41)).sum()  # Zipf-like: a long tail of rare categories


def draw(rng: np.random.Generator, n: int, mean: float = 0.0, cities: list[str] = CITIES) -> pd.DataFrame:
    """A frame like the flights features: a continuous, a skewed, an integer-valued, a part-missing, a categorical."""
    gust = rng.gamma(2.0, 10.0, n)
    gust[rng.random(n) < 0.6] = np.nan
    shares = CITY_SHARES if cities is CITIES else np.full(len(cities), 1 / len(cities))
    return pd.DataFrame(
        {
            "temp": rng.normal(40 + mean, 10, n),
            "distance": rng.lognormal(6.5, 0.6, n),
            "hour": rng.integers(5, 23, n).astype("float64"),
            "wind_gust": gust,
            "dest": pd.Series(rng.choice(cities, n, p=shares), dtype="str"),
        }
    )


NUMERIC, CATEGORICAL = ["temp", "distance", "hour", "wind_gust"], ["dest"]
NONE = np.empty(0)  # no feedback labels in the window


@pytest.fixture(scope="module")
def config(params: Params) -> MonitorConfig:
    return params.monitor


@pytest.fixture(scope="module")
def profile(config: MonitorConfig) -> dict:
    rng = np.random.default_rng(12345)
    train = draw(rng, 60_000)
    labels = rng.random(10_000) < 0.25
    proba = np.clip(0.25 + 0.2 * (labels - 0.25) + rng.normal(0, 0.15, 10_000), 0, 1)
    return build_reference_profile(
        train,
        NUMERIC,
        CATEGORICAL,
        labels,
        proba,
        0.4,
        {"roc_auc": 0.8},
        config.drift.bins,
        config.drift.sample_rows,
        7,
    )


def _window_proba(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.random(n) < 0.25
    return labels.astype(int), np.clip(0.25 + 0.2 * (labels - 0.25) + rng.normal(0, 0.15, n), 0, 1)


@pytest.mark.parametrize("rows", [500, 5000])
def test_windows_from_the_reference_distribution_never_alarm_over_many_seeds(profile, config, rows):
    drifted_features, alarms = 0, 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        _, proba = _window_proba(rng, rows)
        result = assess_window(profile, draw(rng, rows), proba, NONE, NONE, config)
        drifted_features += len(result["drifted_features"])
        alarms += result["alarm"]
    assert alarms == 0
    # a single feature may be flagged by chance about as often as the significance level says, never more
    judgements = len(SEEDS) * (len(NUMERIC) + len(CATEGORICAL))
    assert drifted_features <= config.drift.significance * judgements, drifted_features


def test_a_shifted_mean_alarms_on_that_feature_only(profile, config):
    rng = np.random.default_rng(1)
    window = draw(rng, 2000, mean=6.0)  # 0.6 standard deviations
    stats = numeric_drift(profile["features"]["temp"], window["temp"].to_numpy(), config.drift)
    assert stats["drifted"]
    assert stats["psi"] >= config.drift.psi_max and stats["ks"] >= config.drift.ks_max
    result = assess_window(profile, window, _window_proba(rng, 2000)[1], NONE, NONE, config)
    assert result["drifted_features"] == ["temp"]
    assert result["drift_share"] == pytest.approx(1 / 5)
    assert not result["alarm"], "one feature of five is below the dataset drift share"


def test_a_small_shift_is_significant_but_too_small_to_alarm(profile, config):
    rng = np.random.default_rng(2)
    window = draw(rng, 50_000, mean=1.0)  # 0.1 standard deviations: detectable with 50k rows, not material
    stats = numeric_drift(profile["features"]["temp"], window["temp"].to_numpy(), config.drift)
    assert stats["ks_pvalue"] < config.drift.significance
    assert not stats["drifted"], stats


def test_more_missing_values_drift_through_the_missing_bin(profile, config):
    rng = np.random.default_rng(3)
    gust = draw(rng, 3000)["wind_gust"].to_numpy().copy()
    gust[rng.random(3000) < 0.6] = np.nan  # 60% -> 84% missing
    stats = numeric_drift(profile["features"]["wind_gust"], gust, config.drift)
    assert stats["missing_share"] == pytest.approx(0.84, abs=0.03)
    assert stats["drifted"] and stats["psi"] >= config.drift.psi_max


def test_a_new_category_alarms_even_when_the_rest_is_unchanged(profile, config):
    rng = np.random.default_rng(4)
    dest = draw(rng, 3000)["dest"]
    dest.iloc[:60] = "NEW"  # 2% of the window
    stats = categorical_drift(profile["features"]["dest"], dest, config.drift)
    assert stats["new_categories"] == ["NEW"]
    assert stats["new_category_share"] == pytest.approx(0.02)
    assert stats["drifted"]


def test_a_reshuffled_category_mix_alarms_on_js_and_chi_squared(profile, config):
    rng = np.random.default_rng(5)
    dest = pd.Series(rng.choice(CITIES, 3000), dtype="str")  # uniform instead of Zipf
    stats = categorical_drift(profile["features"]["dest"], dest, config.drift)
    assert stats["new_categories"] == []
    assert stats["js"] >= config.drift.js_max and stats["chi2_pvalue"] < config.drift.significance
    assert stats["drifted"]


def test_dataset_drift_alarms_when_enough_features_shift(profile, config):
    rng = np.random.default_rng(6)
    window = draw(rng, 3000, mean=8.0)
    window["distance"] *= 1.6
    window["dest"] = pd.Series(rng.choice(CITIES, 3000), dtype="str")
    result = assess_window(profile, window, _window_proba(rng, 3000)[1], NONE, NONE, config)
    assert set(result["drifted_features"]) == {"temp", "distance", "dest"}
    assert result["signals"]["drift_share"]["alarm"] and result["alarm"]
    assert result["signals"]["drift_share"]["level"] == pytest.approx((3 / 5) / config.drift.share_max, abs=1e-3)


def test_shifted_probabilities_alarm_as_prediction_drift(profile, config):
    rng = np.random.default_rng(7)
    labels, proba = _window_proba(rng, 3000)
    result = assess_window(profile, draw(rng, 3000), np.clip(proba + 0.15, 0, 1), labels, proba, config)
    assert result["prediction"]["drifted"] and result["signals"]["prediction_psi"]["alarm"]
    assert result["drifted_features"] == []


def test_too_few_predictions_are_not_judged(profile, config):
    rng = np.random.default_rng(8)
    rows = config.window.min_predictions - 1
    window = draw(rng, rows, mean=30.0)
    result = assess_window(profile, window, _window_proba(rng, rows)[1], NONE, NONE, config)
    assert not result["alarm"] and result["features"] == {} and result["drift_share"] is None
    assert "too few predictions" in result["reasons"][0]


def _labelled(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(n) < 0.25).astype(int)
    return labels, 1 / (1 + np.exp(-(signal * labels + rng.normal(0, 1, n))))


def test_performance_decay_needs_enough_labels_and_a_real_drop(config):
    rng = np.random.default_rng(9)
    reference = {"roc_auc": 0.75, "accuracy": 0.7, "threshold": 0.5}
    perf = config.performance
    labels, proba = _labelled(rng, 20_000, 1.0)  # AUC about 0.76
    steady = rolling_performance(reference, labels, proba, perf)
    assert steady["judged"] and not steady["decayed"] and abs(steady["drop"]) < 0.02
    labels, proba = _labelled(rng, 20_000, 0.5)  # AUC about 0.64
    decayed = rolling_performance(reference, labels, proba, perf)
    assert decayed["judged"] and decayed["decayed"] and decayed["drop"] > perf.max_drop
    few = rolling_performance(reference, labels[: perf.min_labels - 1], proba[: perf.min_labels - 1], perf)
    assert not few["judged"] and not few["decayed"]
