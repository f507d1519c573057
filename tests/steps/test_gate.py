"""Table tests for the evaluation gate: each rule failing alone, bootstrap CIs, slices and the report."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from retrainer.config import GateConfig
from retrainer.steps.evaluate import classification_metrics
from retrainer.steps.gate import (
    Evidence,
    GateDecision,
    bootstrap_metric,
    decide_gate,
    paired_bootstrap_diff,
    slice_metrics,
)

ROWS = 3000
ORIGINS = {"JFK": 1200, "EWR": 1000, "LGA": 790, "TINY": 10}
ALL_CHECKS_WITH_CHAMPION = {
    "floor:roc_auc",
    "floor:pr_auc",
    "budget:latency_p95_ms",
    "budget:model_size_mb",
    "budget:train_seconds",
    "regression:roc_auc",
    "regression:pr_auc",
    "improvement:roc_auc",
    "slice:origin=JFK",
    "slice:origin=EWR",
    "slice:origin=LGA",
    "slice:origin=TINY",
    "slice:carrier=AA",
    "slice:carrier=UA",
    "slice:carrier=ZZ",
}
FLOORS_AND_BUDGETS = {
    "floor:roc_auc",
    "floor:pr_auc",
    "budget:latency_p95_ms",
    "budget:model_size_mb",
    "budget:train_seconds",
}


def make_policy(**overrides) -> GateConfig:
    """The params.yaml gate policy with a smaller bootstrap, top-level sections replaced by overrides."""
    raw = {
        "metric": "roc_auc",
        "floors": {"roc_auc": 0.60, "pr_auc": 0.30},
        "max_regression": {"roc_auc": 0.01, "pr_auc": 0.02},
        "improvement": {
            "policy": "must_not_be_worse",
            "margin": 0.005,
            "bootstrap_samples": 200,
            "confidence": 0.95,
            "seed": 7,
        },
        "slices": {"columns": ["origin", "carrier"], "min_rows": 300, "max_drop": 0.03},
        "budgets": {"latency_p95_ms": 50, "model_size_mb": 50, "train_seconds": 900},
    }
    return GateConfig.model_validate(raw | overrides)


def make_holdout(seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Labels (~30% positive), a decent model's probabilities, and slice columns; ZZ holds only negatives."""
    rng = np.random.default_rng(seed)
    y = (rng.random(ROWS) < 0.3).astype(int)
    proba = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, ROWS), 0.02, 0.98)
    origin = np.repeat(list(ORIGINS), list(ORIGINS.values()))
    rng.shuffle(origin)
    carrier = rng.choice(["AA", "UA"], ROWS)
    negatives = np.flatnonzero(y == 0)
    carrier[rng.choice(negatives, 400, replace=False)] = "ZZ"
    return y, proba, pd.DataFrame({"origin": origin, "carrier": carrier})


def evidence(version: str, y: np.ndarray, proba: np.ndarray, **fields) -> Evidence:
    """Evidence whose metrics really come from the probabilities; budgets met unless overridden."""
    base = {"latency_p95_ms": 5.0, "size_mb": 2.0, "train_seconds": 60.0}
    return Evidence(version, classification_metrics(y, proba, 0.5), proba, **(base | fields))


Y, PROBA, SLICES = make_holdout()
CHAMPION = evidence("1", Y, PROBA, train_seconds=None)
CHALLENGER = evidence("2", Y, PROBA.copy())


def failed_names(decision: GateDecision) -> set[str]:
    return {check.name for check in decision.checks if not check.passed}


def check_named(decision: GateDecision, name: str):
    (found,) = [check for check in decision.checks if check.name == name]
    return found


def degraded_on(mask: np.ndarray, noise: float, seed: int = 1) -> np.ndarray:
    """The shared probabilities with the rows in mask blended with that share of noise."""
    proba = PROBA.copy()
    proba[mask] = (1 - noise) * proba[mask] + noise * np.random.default_rng(seed).random(int(mask.sum()))
    return proba


def test_baseline_identical_models_pass_every_check():
    decision = decide_gate(CHALLENGER, CHAMPION, Y, SLICES, make_policy())
    assert {check.name for check in decision.checks} == ALL_CHECKS_WITH_CHAMPION
    assert failed_names(decision) == set()
    assert decision.passed
    assert decision.champion_version == "1" and decision.challenger_version == "2"


JFK = SLICES["origin"].to_numpy() == "JFK"
LGA = SLICES["origin"].to_numpy() == "LGA"
FAIL_ALONE = [
    ("floor roc_auc", CHALLENGER, CHAMPION, {"floors": {"roc_auc": 0.99, "pr_auc": 0.30}}, {"floor:roc_auc"}),
    ("floor pr_auc", CHALLENGER, CHAMPION, {"floors": {"roc_auc": 0.60, "pr_auc": 0.99}}, {"floor:pr_auc"}),
    ("latency budget", replace(CHALLENGER, latency_p95_ms=50.5), CHAMPION, {}, {"budget:latency_p95_ms"}),
    ("size budget", replace(CHALLENGER, size_mb=51.0), CHAMPION, {}, {"budget:model_size_mb"}),
    ("train-time budget", replace(CHALLENGER, train_seconds=901.0), CHAMPION, {}, {"budget:train_seconds"}),
    (
        "regression pr_auc (metrics dicts only, proba identical)",
        CHALLENGER,
        replace(CHAMPION, metrics=CHAMPION.metrics | {"pr_auc": CHAMPION.metrics["pr_auc"] + 0.021}),
        {},
        {"regression:pr_auc"},
    ),
    (
        "improvement under must_improve (identical models: CI is [0, 0])",
        CHALLENGER,
        CHAMPION,
        {
            "improvement": {
                "policy": "must_improve",
                "margin": 0.005,
                "bootstrap_samples": 200,
                "confidence": 0.95,
                "seed": 7,
            }
        },
        {"improvement:roc_auc"},
    ),
    (
        # LGA's AUC drops ~0.085; that moves the overall metric too, so the overall rules are relaxed here.
        "one slice drop (overall regression/improvement relaxed)",
        evidence("2", Y, degraded_on(LGA, noise=0.4)),
        CHAMPION,
        {
            "max_regression": {},
            "improvement": {
                "policy": "must_not_be_worse",
                "margin": 1.0,
                "bootstrap_samples": 200,
                "seed": 7,
            },
        },
        {"slice:origin=LGA"},
    ),
]


@pytest.mark.parametrize(
    ("challenger", "champion", "overrides", "expected"),
    [case[1:] for case in FAIL_ALONE],
    ids=[case[0] for case in FAIL_ALONE],
)
def test_each_check_fails_alone(challenger, champion, overrides, expected):
    decision = decide_gate(challenger, champion, Y, SLICES, make_policy(**overrides))
    assert not decision.passed
    assert failed_names(decision) == expected
    assert decision.reasons() == [check_named(decision, name).detail for name in expected]


@pytest.mark.parametrize(
    ("field", "value", "name"),
    [("latency_p95_ms", 50.0, "budget:latency_p95_ms"), ("size_mb", 50.0, "budget:model_size_mb")],
)
def test_budget_at_exactly_the_limit_passes(field, value, name):
    decision = decide_gate(replace(CHALLENGER, **{field: value}), CHAMPION, Y, SLICES, make_policy())
    check = check_named(decision, name)
    assert check.passed and check.values == {"observed": value, "limit": 50.0}


def test_regression_within_tolerance_passes_and_reports_the_change():
    champion = replace(CHAMPION, metrics=CHAMPION.metrics | {"roc_auc": CHAMPION.metrics["roc_auc"] + 0.009})
    check = check_named(decide_gate(CHALLENGER, champion, Y, SLICES, make_policy()), "regression:roc_auc")
    assert check.passed
    assert check.values["diff"] == pytest.approx(-0.009)
    assert check.values["limit"] == -0.01


def test_missing_or_nan_metric_fails_instead_of_crashing():
    broken = replace(CHALLENGER, metrics={"roc_auc": float("nan")})
    decision = decide_gate(broken, CHAMPION, Y, SLICES, make_policy())
    expected = {"floor:roc_auc", "floor:pr_auc", "regression:roc_auc", "regression:pr_auc"}
    assert expected <= failed_names(decision)
    assert "n/a" in check_named(decision, "floor:pr_auc").detail


def test_no_champion_judges_only_floors_and_budgets():
    decision = decide_gate(CHALLENGER, None, Y, SLICES, make_policy())
    assert {check.name for check in decision.checks} == FLOORS_AND_BUDGETS
    assert decision.passed and decision.champion_version is None
    assert "only absolute floors and budgets apply" in decision.to_markdown()


def test_no_champion_still_fails_a_floor_and_skips_unknown_train_time():
    challenger = replace(CHALLENGER, train_seconds=None)
    decision = decide_gate(challenger, None, Y, SLICES, make_policy(floors={"roc_auc": 0.95}))
    assert {check.name for check in decision.checks} == FLOORS_AND_BUDGETS - {
        "budget:train_seconds",
        "floor:pr_auc",
    }
    assert failed_names(decision) == {"floor:roc_auc"}


def test_small_and_one_class_slices_are_recorded_not_judged():
    tiny = SLICES["origin"].to_numpy() == "TINY"
    proba = PROBA.copy()
    proba[tiny] = 1 - proba[tiny]  # a terrible model on a slice too small to judge
    decision = decide_gate(evidence("2", Y, proba), CHAMPION, Y, SLICES, make_policy())
    small = check_named(decision, "slice:origin=TINY")
    assert small.passed and small.detail == "too small to judge (10 rows < min_rows 300)"
    assert small.values["rows"] == 10
    one_class = check_named(decision, "slice:carrier=ZZ")  # ZZ holds only negatives
    assert one_class.passed and "one class only" in one_class.detail and "observed" not in one_class.values
    assert decision.passed


def test_slice_column_absent_from_frame_is_ignored():
    decision = decide_gate(CHALLENGER, CHAMPION, Y, SLICES[["carrier"]], make_policy())
    assert not any(check.name.startswith("slice:origin") for check in decision.checks)
    assert any(check.name.startswith("slice:carrier") for check in decision.checks)


def test_slice_metrics_per_value_match_sklearn():
    table = slice_metrics(Y, PROBA, SLICES, ["origin", "carrier", "absent"], "pr_auc")
    assert set(table["column"]) == {"origin", "carrier"}
    origin = table[table["column"] == "origin"].set_index("value")
    assert origin["rows"].to_dict() == ORIGINS
    assert origin.loc["JFK", "metric"] == pytest.approx(average_precision_score(Y[JFK], PROBA[JFK]))
    assert origin.loc["JFK", "positives"] == int(Y[JFK].sum())
    zz = table[(table["column"] == "carrier") & (table["value"] == "ZZ")]
    assert zz["positives"].item() == 0 and math.isnan(zz["metric"].item())


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
def test_bootstrap_metric_matches_sklearn_on_resamples_with_ties(metric):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    proba = np.round(rng.random(400) * 0.6 + 0.3 * y, 1)  # heavy ties
    rows = rng.integers(0, 400, size=(25, 400))
    counts = np.stack([np.bincount(r, minlength=400) for r in rows])
    reference = roc_auc_score if metric == "roc_auc" else average_precision_score
    expected = [reference(y[r], proba[r]) for r in rows]
    np.testing.assert_allclose(bootstrap_metric(y, proba, counts, metric), expected, rtol=0, atol=1e-12)


def test_bootstrap_metric_is_nan_for_a_one_class_resample():
    y = np.array([0, 1, 0, 1])
    counts = np.array([[2, 0, 2, 0], [1, 1, 1, 1]])
    result = bootstrap_metric(y, np.array([0.1, 0.9, 0.2, 0.8]), counts, "roc_auc")
    assert math.isnan(result[0]) and result[1] == 1.0


def test_paired_bootstrap_identical_models_is_exactly_zero():
    assert paired_bootstrap_diff(Y, PROBA, PROBA, "roc_auc", 100, 0.95, 0) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
def test_paired_bootstrap_perfect_vs_random_is_entirely_positive(metric):
    random = np.random.default_rng(9).random(ROWS)
    point, low, high = paired_bootstrap_diff(Y, Y * 0.5 + 0.25, random, metric, 200, 0.95, 0)
    expected = 1.0 - (roc_auc_score if metric == "roc_auc" else average_precision_score)(Y, random)
    assert point == pytest.approx(expected)
    assert 0 < low <= point <= high < 1


def test_paired_bootstrap_is_antisymmetric_because_rows_are_shared():
    better = PROBA + 0.03 * Y
    forward = paired_bootstrap_diff(Y, better, PROBA, "roc_auc", 200, 0.9, 4)
    backward = paired_bootstrap_diff(Y, PROBA, better, "roc_auc", 200, 0.9, 4)
    assert forward[0] == pytest.approx(-backward[0])
    assert forward[1] == pytest.approx(-backward[2]) and forward[2] == pytest.approx(-backward[1])


def test_paired_bootstrap_is_deterministic_for_a_seed():
    noisy = PROBA + np.random.default_rng(2).normal(0, 0.1, ROWS)
    first = paired_bootstrap_diff(Y, noisy, PROBA, "roc_auc", 200, 0.95, 11)
    assert paired_bootstrap_diff(Y, noisy, PROBA, "roc_auc", 200, 0.95, 11) == first
    other = paired_bootstrap_diff(Y, noisy, PROBA, "roc_auc", 200, 0.95, 12)
    assert other[0] == first[0] and other[1:] != first[1:]


def test_paired_bootstrap_wider_confidence_gives_a_wider_interval():
    noisy = PROBA + np.random.default_rng(2).normal(0, 0.1, ROWS)
    _, low80, high80 = paired_bootstrap_diff(Y, noisy, PROBA, "roc_auc", 300, 0.80, 1)
    _, low99, high99 = paired_bootstrap_diff(Y, noisy, PROBA, "roc_auc", 300, 0.99, 1)
    assert low99 < low80 < high80 < high99


def test_paired_bootstrap_skips_one_class_resamples_and_single_class_labels_give_nan():
    y = np.zeros(30, dtype=int)
    y[0] = 1  # about a third of resamples draw no positive
    proba = np.linspace(0, 1, 30)
    point, low, high = paired_bootstrap_diff(y, proba, proba[::-1], "roc_auc", 200, 0.95, 0)
    assert all(math.isfinite(v) for v in (point, low, high))
    one_class = paired_bootstrap_diff(np.zeros(30), proba, proba, "roc_auc", 60, 0.95, 0)
    assert all(math.isnan(v) for v in one_class)


SLIGHTLY_BETTER = PROBA + 0.004 * Y  # better in every resample, by a small amount


@pytest.mark.parametrize(
    ("rule", "challenger_proba", "champion_proba", "nudge", "passes"),
    [
        ("must_improve", SLIGHTLY_BETTER, PROBA, -1e-5, True),  # margin just below ci_low
        ("must_improve", SLIGHTLY_BETTER, PROBA, +1e-5, False),  # margin just above ci_low
        ("must_not_be_worse", PROBA, SLIGHTLY_BETTER, +1e-5, True),  # -margin just below ci_low
        ("must_not_be_worse", PROBA, SLIGHTLY_BETTER, -1e-5, False),  # -margin just above ci_low
    ],
    ids=["improve-above", "improve-below", "not-worse-above", "not-worse-below"],
)
def test_improvement_borderline_ci_low_against_margin(rule, challenger_proba, champion_proba, nudge, passes):
    point, low, high = paired_bootstrap_diff(Y, challenger_proba, champion_proba, "roc_auc", 200, 0.95, 7)
    assert (low > 0) == (rule == "must_improve")  # the constructed difference has the intended sign
    margin = (low if rule == "must_improve" else -low) + nudge
    improvement = {"policy": rule, "margin": margin, "bootstrap_samples": 200, "confidence": 0.95, "seed": 7}
    challenger = evidence("2", Y, challenger_proba)
    champion = evidence("1", Y, champion_proba)
    check = check_named(
        decide_gate(challenger, champion, Y, SLICES, make_policy(improvement=improvement)),
        "improvement:roc_auc",
    )
    assert check.passed is passes
    assert (check.values["diff"], check.values["ci_low"], check.values["ci_high"]) == (point, low, high)
    assert check.values["limit"] == pytest.approx(margin if rule == "must_improve" else -margin)


def test_to_dict_is_json_safe_even_with_nan_numbers():
    y = np.zeros(ROWS, dtype=int)  # one class: every AUC and the CI are undefined
    challenger = replace(evidence("2", y, PROBA), latency_p95_ms=np.float32(3.5), size_mb=np.float64(1.0))
    decision = decide_gate(challenger, evidence("1", y, PROBA), y, SLICES, make_policy())
    payload = decision.to_dict()
    restored = json.loads(json.dumps(payload, allow_nan=False))
    assert restored == payload
    improvement = next(c for c in restored["checks"] if c["name"] == "improvement:roc_auc")
    assert improvement["passed"] is False and improvement["values"]["ci_low"] is None
    latency = next(c for c in restored["checks"] if c["name"] == "budget:latency_p95_ms")
    assert latency["values"]["observed"] == 3.5 and type(latency["values"]["observed"]) is float
    assert restored["passed"] is False and restored["reasons"] == decision.reasons()


def test_to_markdown_lists_every_check_and_the_ci():
    decision = decide_gate(
        CHALLENGER, CHAMPION, Y, SLICES, make_policy(floors={"roc_auc": 0.99, "pr_auc": 0.30})
    )
    report = decision.to_markdown()
    assert report.startswith("# Gate report: FAIL")
    for check in decision.checks:
        assert f"| {check.name} | {'pass' if check.passed else 'FAIL'} |" in report
    assert "95% paired bootstrap CI [0.000, 0.000] over 200 resamples" in report


def test_reasons_when_passed_is_one_summary_line():
    decision = decide_gate(CHALLENGER, CHAMPION, Y, SLICES, make_policy())
    (summary,) = decision.reasons()
    assert f"all {len(ALL_CHECKS_WITH_CHAMPION)} checks" in summary and "champion 1" in summary
