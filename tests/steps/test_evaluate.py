"""Holdout metrics and curve tables on cases with known answers."""

import numpy as np
import pandas as pd
import pytest

from retrainer.steps.evaluate import classification_metrics, evaluation_curves


def test_perfect_ranking_metrics():
    y = np.array([0, 0, 1, 1])
    metrics = classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), 0.5)
    assert metrics["roc_auc"] == 1.0 and metrics["pr_auc"] == 1.0
    assert metrics["f1"] == metrics["precision"] == metrics["recall"] == 1.0
    assert metrics["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert metrics["rows"] == 4 and metrics["positive_rate"] == 0.5


def test_threshold_changes_precision_recall_not_auc():
    y = np.array([0, 1, 0, 1, 1, 0])
    proba = np.array([0.3, 0.4, 0.5, 0.6, 0.9, 0.2])
    low, high = classification_metrics(y, proba, 0.35), classification_metrics(y, proba, 0.55)
    assert low["roc_auc"] == high["roc_auc"]
    assert low["recall"] == 1.0 and high["recall"] == pytest.approx(2 / 3)
    assert high["precision"] == 1.0


def test_single_class_gives_nan_auc_not_an_error():
    metrics = classification_metrics(np.array([0, 0, 0]), np.array([0.1, 0.5, 0.9]), 0.5)
    assert np.isnan(metrics["roc_auc"])


def test_curves_tables():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    proba = np.clip(y * 0.3 + rng.uniform(size=500) * 0.7, 0, 1)
    curves = evaluation_curves(y, proba, 0.5, bins=5)
    assert curves["confusion"]["count"].sum() == 500
    assert curves["roc"]["tpr"].iloc[-1] == 1.0
    assert len(curves["calibration"]) == 5


class _Cost:
    """A stand-in model whose one-row predict costs CPU (a busy loop) or only waits (a sleep), for `seconds`."""

    def __init__(self, seconds: float, busy: bool):
        self.seconds, self.busy = seconds, busy

    def predict_proba(self, frame):
        import time

        if self.busy:
            end = time.thread_time() + self.seconds
            while time.thread_time() < end:
                pass
        else:
            time.sleep(self.seconds)
        return np.zeros((len(frame), 2))


def test_latency_budget_measures_what_the_model_costs_not_the_wall_clock():
    """Stand-in models (no real model can be made to sleep): waiting is not cost, computing is."""
    from retrainer.steps.evaluate import latency_p95_ms

    frame = pd.DataFrame({"x": range(20)})
    assert latency_p95_ms(_Cost(0.004, busy=True), frame, 20) >= 3.5
    assert latency_p95_ms(_Cost(0.02, busy=False), frame, 20) < 2.0
