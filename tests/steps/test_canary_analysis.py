"""Table tests of the canary analysis: each case changes one thing about a healthy challenger."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from retrainer.config import CanaryConfig
from retrainer.steps.canary import ArmStats, StepProgress, analyse_canary, p95, psi
from retrainer.steps.drift import psi_p_value

POLICY = CanaryConfig(
    steps=(10, 50, 100),
    min_requests_per_step=200,
    min_seconds_per_step=10,
    max_error_rate=0.02,
    error_rate_tolerance=0.01,
    max_p95_latency_ratio=2.0,
    max_p95_latency_ms=250,
    max_divergence=0.25,
    min_agreement=0.9,
    min_labels=100,
    significance=0.05,
)


def _arm(seed: int, n: int, labels: int, errors: int = 0, latency_ms: float = 5.0, flip: float = 0.0) -> ArmStats:
    """Calibrated probabilities from Beta(2, 5); labels drawn from them, a share `flip` of them inverted."""
    rng = np.random.default_rng(seed)
    proba = rng.beta(2, 5, n)
    feedback = proba[:labels]
    observed = (rng.random(labels) < feedback).astype(int)
    flipped = rng.random(labels) < flip
    observed[flipped] = 1 - observed[flipped]
    return ArmStats(
        requests=n + errors,
        errors=errors,
        latencies_ms=list(rng.normal(latency_ms, latency_ms * 0.1, n)),
        probabilities=list(proba),
        feedback_labels=list(observed),
        feedback_probabilities=list(feedback),
        threshold=0.5,
    )


def _diverged(seed: int, n: int, labels: int) -> ArmStats:
    """A retrained model on drifted data: scores shifted upward (p ** 0.3, same positive rate at its own threshold)
    and sharper on the labels (they follow the score closely): its outputs diverge, yet it ranks better."""
    rng = np.random.default_rng(seed)
    base = rng.beta(2, 5, n)
    observed = (base[:labels] + rng.normal(0, 0.05, labels) > 0.3).astype(int)
    return ArmStats(
        requests=n,
        latencies_ms=list(rng.normal(5.0, 0.5, n)),
        probabilities=list(base**0.3),
        feedback_labels=list(observed),
        feedback_probabilities=list(base[:labels] ** 0.3),
        threshold=0.5**0.3,
    )


CHAMPION = _arm(1, 1000, 400, errors=2)
DIVERGED = _diverged(4, 300, 200)
HEALTHY = _arm(2, 300, 200)
MIDDLE, LAST = StepProgress(0, 3, 30.0), StepProgress(2, 3, 30.0)

CASES = {
    "healthy challenger continues": (HEALTHY, MIDDLE, POLICY, "continue", "passes"),
    "healthy challenger promotes at the last step": (HEALTHY, LAST, POLICY, "promote", "last step"),
    "high error rate rolls back": (_arm(2, 300, 200, errors=15), MIDDLE, POLICY, "rollback", "> max 0.020"),
    "error rate under the ceiling but beyond the champion's tolerance": (
        _arm(2, 300, 200, errors=5),  # 5/305 = 0.0164 > 0.002 + 0.01
        MIDDLE,
        POLICY,
        "rollback",
        "+ tolerance",
    ),
    "borderline error rate within tolerance continues": (_arm(2, 300, 200, errors=3), MIDDLE, POLICY, "continue", ""),
    "raising predictor rolls back before the step's minimum": (
        ArmStats(requests=10, errors=10),
        MIDDLE,
        POLICY,
        "rollback",
        "error rate 1.000",
    ),
    "latency blow-up rolls back": (_arm(2, 300, 200, latency_ms=15), MIDDLE, POLICY, "rollback", "x the champion's"),
    "latency above the absolute ceiling rolls back": (
        _arm(2, 300, 200, latency_ms=400),
        MIDDLE,
        POLICY.model_copy(update={"max_p95_latency_ratio": 1e3}),
        "rollback",
        "> max 250 ms",
    ),
    "constant predictor rolls back on divergence": (
        replace(HEALTHY, probabilities=[0.0] * 300, feedback_probabilities=[0.0] * 200),
        MIDDLE,
        POLICY,
        "rollback",
        "diverge",
    ),
    "always-positive predictor fails agreement": (
        replace(HEALTHY, probabilities=[0.9] * 300, feedback_probabilities=[0.9] * 200),
        MIDDLE,
        POLICY,
        "rollback",
        "label agreement",
    ),
    "significantly worse accuracy on labels rolls back": (
        _arm(2, 300, 200, flip=0.4),
        MIDDLE,
        POLICY,
        "rollback",
        "significantly below",
    ),
    "slightly worse accuracy, not significant, continues": (
        _arm(2, 300, 200, flip=0.03),
        MIDDLE,
        POLICY,
        "continue",
        "",
    ),
    "too few labels: the accuracy check is skipped, not failed": (
        _arm(2, 300, 50, flip=0.6),
        MIDDLE,
        POLICY,
        "continue",
        "accuracy check skipped",
    ),
    "ranking much worse on the labels rolls back on AUC": (
        _arm(2, 300, 200, flip=0.5),  # labels independent of the scores: AUC about 0.5 against the champion's 0.7
        MIDDLE,
        POLICY,
        "rollback",
        "Hanley-McNeil",
    ),
    "diverging but ranking better on the labels continues, with a note": (
        DIVERGED,
        MIDDLE,
        POLICY,
        "continue",
        "better than chance",
    ),
    "diverging and ranking worse on the labels rolls back": (
        replace(DIVERGED, feedback_labels=list(np.random.default_rng(9).integers(0, 2, 200))),
        MIDDLE,
        POLICY,
        "rollback",
        "diverge",
    ),
    "disagreeing but ranking better on the labels continues, with a note": (
        replace(DIVERGED, threshold=0.5**0.6),  # positive rate about 0.5 against the champion's 0.11
        MIDDLE,
        POLICY,
        "continue",
        "agreement",
    ),
    "constant predictor rolls back even where the label tests have no power to call it worse": (
        replace(HEALTHY, probabilities=[0.0] * 300, feedback_probabilities=[0.0] * 200),
        MIDDLE,
        POLICY.model_copy(update={"significance": 1e-6}),
        "rollback",
        "diverge",
    ),
    "diverging with too few labels to vouch rolls back": (
        replace(
            DIVERGED,
            feedback_labels=DIVERGED.feedback_labels[:50],
            feedback_probabilities=DIVERGED.feedback_probabilities[:50],
        ),
        MIDDLE,
        POLICY,
        "rollback",
        "diverge",
    ),
    "too few requests waits": (_arm(2, 150, 100), MIDDLE, POLICY, "wait", "150/200"),
    "too short a step waits": (HEALTHY, StepProgress(0, 3, 3.0), POLICY, "wait", "3.0/10 s"),
    "small healthy sample is not called divergent": (
        _arm(3, 40, 0),
        MIDDLE,
        POLICY.model_copy(update={"min_requests_per_step": 30}),
        "continue",
        "",
    ),
}


@pytest.mark.parametrize("challenger,progress,policy,action,reason", CASES.values(), ids=CASES.keys())
def test_canary_decision(challenger, progress, policy, action, reason):
    decision = analyse_canary(CHAMPION, challenger, progress, policy)
    assert decision.action == action, decision.reasons
    assert any(reason in r for r in decision.reasons), decision.reasons
    if action in ("continue", "promote"):
        assert not any("significantly" in r or "> max" in r for r in decision.reasons), decision.reasons
        proxies = [r for r in decision.reasons if "diverge" in r or "agreement" in r]
        assert all("not a failure" in r for r in proxies), decision.reasons


def _stalled(arm: ArmStats, share: float, seed: int) -> ArmStats:
    """`arm` with a share of its requests stalled at 40 ms, as on a busy machine (its other latencies ~5 ms)."""
    latencies = np.array(arm.latencies_ms)
    stalls = np.random.default_rng(seed).choice(len(latencies), int(share * len(latencies)), replace=False)
    latencies[stalls] = 40.0
    return replace(arm, latencies_ms=list(latencies))


def test_a_p95_that_lands_on_a_load_stall_is_not_a_slower_model():
    """Both arms see the machine's stalls (4 % and 6 % of their requests): the challenger's p95 lands on one and the
    champion's does not, so the p95 ratio is far over 2x; the arms' latencies are not significantly different
    (Mann-Whitney), so it is a note, not a rollback. A whole distribution 3x slower still rolls back (CASES)."""
    decision = analyse_canary(_stalled(CHAMPION, 0.04, 1), _stalled(HEALTHY, 0.06, 2), MIDDLE, POLICY)
    assert decision.numbers["p95_latency_ratio"] > 2 * POLICY.max_p95_latency_ratio
    assert decision.numbers["latency_p_value"] > POLICY.significance
    assert decision.action == "continue", decision.reasons
    assert any("not significantly slower" in r and "not a failure" in r for r in decision.reasons), decision.reasons


@pytest.mark.parametrize("damaged", [math.nan, None, -math.inf], ids=["nan", "none", "-inf"])
def test_damaged_latencies_in_the_log_are_left_out_and_named_not_read_as_no_latencies(damaged):
    """A damaged log line (the service measures every latency) must not turn the latency check off: a challenger 3x
    slower with a few missing latencies still rolls back, and a damaged champion latency does not hide the ratio."""
    slow = _arm(2, 300, 200, latency_ms=15)
    slow = replace(slow, latencies_ms=[damaged, *slow.latencies_ms[1:], damaged])
    decision = analyse_canary(CHAMPION, slow, MIDDLE, POLICY)
    assert decision.action == "rollback", decision.reasons
    assert any("x the champion's" in r for r in decision.reasons), decision.reasons
    assert "2 missing or -inf challenger latencies in the log: left out" in decision.reasons

    champion = replace(CHAMPION, latencies_ms=[*CHAMPION.latencies_ms, damaged])
    decision = analyse_canary(champion, HEALTHY, MIDDLE, POLICY)
    assert decision.action == "continue", decision.reasons
    assert 0.8 < decision.numbers["p95_latency_ratio"] < 1.25


@pytest.mark.parametrize("share", [0.0, 0.1, 1.0], ids=["one", "10-percent", "all"])
def test_infinite_challenger_latencies_count_as_slower_than_every_other(share):
    """+inf is kept as the slowest latency, not left out: a challenger whose requests took 'forever' (one of them,
    10 % or all) is never let through on the p95 of the rest. With one, its p95 is its measured one and it goes on;
    from 5 % on its p95 is infinite and it rolls back (a breaker's cases: leaving +inf out let them continue)."""
    healthy = HEALTHY.latencies_ms
    infinite = max(1, int(share * len(healthy)))
    arm = replace(HEALTHY, latencies_ms=[*healthy[: len(healthy) - infinite], *[math.inf] * infinite])
    decision = analyse_canary(CHAMPION, arm, MIDDLE, POLICY)
    note = f"{infinite} infinite challenger latencies in the log: counted as slower than every other"
    assert note in decision.reasons
    if infinite == 1:
        assert decision.action == "continue" and math.isfinite(decision.numbers["challenger_p95_ms"]), decision.reasons
    else:
        assert decision.action == "rollback" and decision.numbers["challenger_p95_ms"] == math.inf, decision.reasons


def test_p95_with_infinite_values_is_never_nan():
    """numpy's linear interpolation makes NaN of inf - inf and of a zero weight toward inf (n = 20k + 1 values with
    k infinities: a second breaker's case), and NaN read as 'no latencies'."""
    assert p95([math.inf, math.inf]) == math.inf
    assert p95([1.0, 2.0, math.inf]) == math.inf
    assert p95([1.0] * 99 + [math.inf]) == 1.0
    assert p95([1.0] * 19 + [2.0, math.inf]) == 2.0
    assert p95([5.0] * 286 + [math.inf] * 15) == 5.0
    assert math.isnan(p95([]))
    rng = np.random.default_rng(0)
    for n in range(1, 60):  # without an infinity it is numpy's own
        values = rng.gamma(2.0, 3.0, n)
        assert p95(values) == float(np.percentile(values, 95))


def test_a_slower_challenger_whose_p95_lands_just_below_its_infinities_rolls_back():
    """15 of 301 latencies at +inf put the p95 exactly on the last finite one; a 3x slower challenger rolls back."""
    rng = np.random.default_rng(0)
    slow = replace(HEALTHY, latencies_ms=[*rng.normal(15, 1.5, 286), *[math.inf] * 15])
    decision = analyse_canary(CHAMPION, slow, MIDDLE, POLICY)
    assert decision.action == "rollback", decision.reasons
    assert any("x the champion's" in r for r in decision.reasons), decision.reasons


def test_numbers_carry_the_measurements():
    decision = analyse_canary(CHAMPION, _arm(2, 300, 200, errors=15), MIDDLE, POLICY)
    assert decision.numbers["challenger_error_rate"] == pytest.approx(15 / 315)
    assert decision.numbers["champion_error_rate"] == pytest.approx(2 / 1002)
    assert 0.8 < decision.numbers["p95_latency_ratio"] < 1.25
    assert decision.numbers["challenger_labels"] == 200
    assert not math.isnan(decision.numbers["challenger_auc"])


def test_psi_is_zero_for_one_sample_and_large_for_a_constant():
    rng = np.random.default_rng(0)
    sample = rng.beta(2, 5, 2000)
    assert psi(sample, sample) == pytest.approx(0.0, abs=1e-9)
    assert psi(sample, np.zeros(200)) > 2.0
    assert psi_p_value(psi(sample, np.zeros(200)), 10, 2000, 200) < 1e-6
