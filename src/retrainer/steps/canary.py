"""Canary analysis (pure): compare the challenger arm with the champion arm; continue, promote, roll back or wait."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from retrainer.config import CanaryConfig
from retrainer.steps.drift import bin_shares, compute_psi, psi_p_value, quantile_edges

Action = Literal["continue", "promote", "rollback", "wait"]
LATENCY_FLOOR_MS = 1.0  # sub-millisecond p95s are timer noise: ratios are taken against at least this


@dataclass(frozen=True)
class ArmStats:
    """What one arm did: attempted requests, failed ones, latencies, recent probabilities, and labelled feedback."""

    requests: int
    errors: int = 0
    latencies_ms: Sequence[float] = ()
    probabilities: Sequence[float] = ()
    feedback_labels: Sequence[int] = ()
    feedback_probabilities: Sequence[float] = ()
    threshold: float = 0.5


@dataclass(frozen=True)
class StepProgress:
    """Where the rollout is: which step (0-based) of how many, and how long the current step has run."""

    index: int
    total: int
    elapsed_seconds: float

    @property
    def last(self) -> bool:
        return self.index >= self.total - 1


@dataclass(frozen=True)
class CanaryDecision:
    action: Action
    reasons: list[str]
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"action": self.action, "reasons": list(self.reasons), "numbers": dict(self.numbers)}


def error_rate(arm: ArmStats) -> float:
    """Failed requests over attempted requests (0 when nothing was attempted)."""
    return arm.errors / arm.requests if arm.requests else 0.0


def p95(values: Sequence[float]) -> float:
    """The 95th percentile with numpy's default linear interpolation, NaN for no values. With +inf among the values it
    is computed here: numpy's interpolation makes NaN of inf - inf and of inf * 0 (a zero weight toward an
    infinity), which read as "no latencies"; here a percentile that falls on an infinity, or between a value and an
    infinity, is inf."""
    ordered = np.sort(np.asarray(values, dtype=float))
    if not ordered.size:
        return math.nan
    if not np.isposinf(ordered[-1]):
        return float(np.percentile(ordered, 95))
    rank = 0.95 * (ordered.size - 1)
    lower = math.floor(rank)
    weight = rank - lower
    below, above = float(ordered[lower]), float(ordered[min(lower + 1, ordered.size - 1)])
    if math.isinf(below) or (weight and math.isinf(above)):
        return math.inf
    return below + weight * (above - below) if weight else below


def psi(expected: Sequence[float], actual: Sequence[float], bins: int = 10) -> float:
    """Population stability index of `actual` against `expected`, on quantile bins of `expected` (smoothed)."""
    base, other = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    edges = quantile_edges(base, bins, inner=True)
    return compute_psi(bin_shares(base, edges, open_ended=True), bin_shares(other, edges, open_ended=True))


def positive_rate(probabilities: Sequence[float], threshold: float) -> float:
    values = np.asarray(probabilities, dtype=float)
    return float(np.mean(values >= threshold)) if len(values) else math.nan


def accuracy(labels: Sequence[int], probabilities: Sequence[float], threshold: float) -> float:
    predicted = np.asarray(probabilities, dtype=float) >= threshold
    return float(np.mean(predicted == (np.asarray(labels) == 1)))


def accuracy_worse_p_value(acc_champion: float, n_champion: int, acc_challenger: float, n_challenger: int) -> float:
    """One-sided two-proportion z-test: p-value of 'the challenger is less accurate than the champion'."""
    from scipy.stats import norm

    pooled = (acc_champion * n_champion + acc_challenger * n_challenger) / (n_champion + n_challenger)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_champion + 1 / n_challenger))
    if se == 0:
        return 0.0 if acc_challenger < acc_champion else 1.0
    return float(norm.sf((acc_champion - acc_challenger) / se))


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of a ROC AUC estimated on this many positives and negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return math.sqrt(max(variance, 0.0) / (positives * negatives))


def auc_worse_p_value(champion: tuple[float, int, int], challenger: tuple[float, int, int]) -> float:
    """One-sided z-test on (AUC, positives, negatives) of two independent samples: 'the challenger ranks worse'."""
    from scipy.stats import norm

    se = math.hypot(auc_standard_error(*champion), auc_standard_error(*challenger))
    if se == 0:
        return 0.0 if challenger[0] < champion[0] else 1.0
    return float(norm.sf((champion[0] - challenger[0]) / se))


def auc_chance_p_value(auc: float, positives: int, negatives: int) -> float:
    """One-sided p-value of 'this ranking is no better than chance' (Mann-Whitney null variance of the AUC)."""
    from scipy.stats import norm

    se = math.sqrt((positives + negatives + 1) / (12 * positives * negatives))
    return float(norm.sf((auc - 0.5) / se))


def _auc(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, probabilities)) if len(set(labels)) == 2 else math.nan


def _short_of_evidence(challenger: ArmStats, progress: StepProgress, policy: CanaryConfig) -> str:
    """Why the step must wait for more requests or time ("" when it can be judged)."""
    # Errors that already exceed the ceiling over the whole step's minimum cannot be diluted: roll back now.
    doomed = challenger.errors > policy.max_error_rate * max(policy.min_requests_per_step, challenger.requests)
    short = challenger.requests < policy.min_requests_per_step or progress.elapsed_seconds < policy.min_seconds_per_step
    if not short or doomed:
        return ""
    return (
        f"step {progress.index + 1}: {challenger.requests}/{policy.min_requests_per_step} challenger requests, "
        f"{progress.elapsed_seconds:.1f}/{policy.min_seconds_per_step:g} s"
    )


def analyse_canary(
    champion: ArmStats, challenger: ArmStats, progress: StepProgress, policy: CanaryConfig
) -> CanaryDecision:
    """Judge one step: every failed check is a reason to roll back; all passing continues (promotes at the last)."""
    numbers: dict[str, float] = {
        "step": float(progress.index + 1),
        "elapsed_seconds": float(progress.elapsed_seconds),
        "challenger_requests": float(challenger.requests),
        "champion_requests": float(champion.requests),
        "challenger_error_rate": error_rate(challenger),
        "champion_error_rate": error_rate(champion),
    }
    failures: list[str] = []
    notes: list[str] = []
    waiting = _short_of_evidence(challenger, progress, policy)
    if waiting:
        return CanaryDecision("wait", [waiting], numbers)

    _check_errors(champion, challenger, policy, numbers, failures)
    _check_latency(champion, challenger, policy, numbers, failures, notes)
    divergence: list[str] = []
    _check_distribution(champion, challenger, policy, numbers, divergence, notes)
    labels_vouch = _check_labels(champion, challenger, policy, numbers, failures, notes)
    # A model retrained on drifted data is expected to score differently: divergence and disagreement are proxies
    # for breakage that roll back only while the labels cannot vouch for the challenger (too few of them, a ranking
    # no better than chance, or a significant deficit in accuracy or AUC, which is then a failure of its own).
    if labels_vouch:
        notes += [
            f"{reason}, but on the labels it ranks better than chance and not worse than the champion: not a failure"
            for reason in divergence
        ]
    else:
        failures.extend(divergence)

    if failures:
        return CanaryDecision("rollback", failures + notes, numbers)
    action: Action = "promote" if progress.last else "continue"
    summary = "all checks pass at the last step" if progress.last else f"step {progress.index + 1} passes"
    return CanaryDecision(action, [summary, *notes], numbers)


def _check_errors(champion, challenger, policy, numbers, failures) -> None:
    ch, cp = numbers["challenger_error_rate"], numbers["champion_error_rate"]
    if ch > policy.max_error_rate:
        failures.append(f"challenger error rate {ch:.3f} > max {policy.max_error_rate:.3f}")
    elif champion.requests and ch > cp + policy.error_rate_tolerance:
        failures.append(
            f"challenger error rate {ch:.3f} > champion {cp:.3f} + tolerance {policy.error_rate_tolerance:.3f}"
        )


def _check_latency(champion, challenger, policy, numbers, failures, notes) -> None:
    challenger_ms, champion_ms = (
        _usable_latencies(challenger.latencies_ms, "challenger", notes),
        _usable_latencies(champion.latencies_ms, "champion", notes),
    )
    ch, cp = p95(challenger_ms), p95(champion_ms)
    numbers["challenger_p95_ms"], numbers["champion_p95_ms"] = ch, cp
    if math.isnan(ch):
        notes.append("no challenger latencies: latency check skipped")
        return
    if ch > policy.max_p95_latency_ms:
        failures.append(f"challenger p95 latency {ch:.1f} ms > max {policy.max_p95_latency_ms:g} ms")
    if math.isnan(cp):
        notes.append("no champion latencies: latency ratio skipped")
        return
    ratio = ch / max(cp, LATENCY_FLOOR_MS)
    numbers["p95_latency_ratio"] = ratio
    if ratio <= policy.max_p95_latency_ratio:
        return
    p_value = latency_slower_p_value(champion_ms, challenger_ms)
    numbers["latency_p_value"] = p_value
    reason = f"challenger p95 latency {ratio:.2f}x the champion's > max {policy.max_p95_latency_ratio:g}x"
    if p_value < policy.significance:
        failures.append(f"{reason} (Mann-Whitney p={p_value:.3g} < {policy.significance:g})")
    else:  # a few stalls in one arm's tail (a busy machine), not a slower model
        notes.append(f"{reason}, but its latencies are not significantly slower (p={p_value:.3g}): not a failure")


def _usable_latencies(latencies_ms: Sequence[float | None], arm: str, notes: list[str]) -> np.ndarray:
    """The arm's usable latencies (ms). The service measures every latency, so a missing one (None, NaN) or -inf comes
    from a damaged log: left out, with a note counting them (a NaN would otherwise read as "no latencies"). +inf is
    kept, as slower than every measured latency, with a note: dropping it would hide a challenger that never answered
    in time behind the p95 of the rest."""
    values = np.asarray(latencies_ms, dtype=float).ravel()  # None reads as NaN
    usable = values[~(np.isnan(values) | np.isneginf(values))]
    if usable.size < values.size:
        notes.append(f"{values.size - usable.size} missing or -inf {arm} latencies in the log: left out")
    if infinite := int(np.isposinf(usable).sum()):
        notes.append(f"{infinite} infinite {arm} latencies in the log: counted as slower than every other")
    return usable


def latency_slower_p_value(champion_ms: Sequence[float], challenger_ms: Sequence[float]) -> float:
    """One-sided p-value that the challenger's request latencies (ms, one per request) are stochastically greater
    than the champion's: scipy's Mann-Whitney U test, `alternative="greater"`. Both arms serve side by side within
    a step, so a machine's load spike lands on both; a slower model shifts the challenger's whole distribution."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(challenger_ms, champion_ms, alternative="greater").pvalue)


def _check_distribution(champion, challenger, policy, numbers, divergence, notes) -> None:
    if not len(challenger.probabilities) or not len(champion.probabilities):
        notes.append("an arm has no predictions: divergence and agreement skipped")
        return
    value = psi(champion.probabilities, challenger.probabilities, policy.divergence_bins)
    p_value = psi_p_value(value, policy.divergence_bins, len(champion.probabilities), len(challenger.probabilities))
    numbers["psi"], numbers["psi_p_value"] = value, p_value
    # Small samples inflate PSI: a divergence fails only when it is both large and unlikely under no change.
    if value > policy.max_divergence and p_value < policy.significance:
        divergence.append(
            f"prediction distributions diverge: PSI {value:.3f} > {policy.max_divergence:g} (p={p_value:.3g})"
        )
    # Sticky routing scores each record with one arm, so agreement is between the arms' predicted-label rates.
    rate_ch = positive_rate(challenger.probabilities, challenger.threshold)
    rate_cp = positive_rate(champion.probabilities, champion.threshold)
    agreement = 1.0 - abs(rate_ch - rate_cp)
    numbers.update(challenger_positive_rate=rate_ch, champion_positive_rate=rate_cp, agreement=agreement)
    if agreement < policy.min_agreement:
        divergence.append(
            f"label agreement {agreement:.3f} < min {policy.min_agreement:g} "
            f"(positive rate {rate_ch:.3f} vs champion {rate_cp:.3f})"
        )


def _check_labels(champion, challenger, policy, numbers, failures, notes) -> bool:
    """Accuracy and AUC on delayed labels, each with a one-sided test; True when the labels vouch for the challenger:
    enough of them for both arms, its ranking significantly better than chance, and neither test finding it
    significantly worse than the champion. (No evidence of a deficit alone is weak with a hundred labels: a constant
    predictor would pass; it does not rank better than chance.)"""
    n_ch, n_cp = len(challenger.feedback_labels), len(champion.feedback_labels)
    numbers["challenger_labels"], numbers["champion_labels"] = float(n_ch), float(n_cp)
    if min(n_ch, n_cp) < policy.min_labels:
        notes.append(f"labels {n_ch}/{n_cp} (challenger/champion) < {policy.min_labels}: accuracy check skipped")
        return False
    acc_ch = accuracy(challenger.feedback_labels, challenger.feedback_probabilities, challenger.threshold)
    acc_cp = accuracy(champion.feedback_labels, champion.feedback_probabilities, champion.threshold)
    p_value = accuracy_worse_p_value(acc_cp, n_cp, acc_ch, n_ch)
    auc_ch = _auc(challenger.feedback_labels, challenger.feedback_probabilities)
    auc_cp = _auc(champion.feedback_labels, champion.feedback_probabilities)
    numbers.update(
        challenger_accuracy=acc_ch,
        champion_accuracy=acc_cp,
        accuracy_p_value=p_value,
        challenger_auc=auc_ch,
        champion_auc=auc_cp,
    )
    failed = len(failures)
    if p_value < policy.significance:
        failures.append(
            f"challenger accuracy {acc_ch:.3f} significantly below champion {acc_cp:.3f} "
            f"(z-test p={p_value:.3g} < {policy.significance:g})"
        )
    return _check_auc(champion, challenger, policy, numbers, failures, notes) and len(failures) == failed


def _check_auc(champion, challenger, policy, numbers, failures, notes) -> bool:
    """AUC on delayed labels: a significant deficit against the champion is a failure; True when the challenger
    ranks significantly better than chance."""
    auc_ch, auc_cp = numbers["challenger_auc"], numbers["champion_auc"]
    n_ch, n_cp = len(challenger.feedback_labels), len(champion.feedback_labels)
    if math.isnan(auc_ch) or math.isnan(auc_cp):
        notes.append("an arm's labels are all one class: AUC check skipped")
        return False
    positives_ch, positives_cp = int(np.sum(challenger.feedback_labels)), int(np.sum(champion.feedback_labels))
    auc_p = auc_worse_p_value((auc_cp, positives_cp, n_cp - positives_cp), (auc_ch, positives_ch, n_ch - positives_ch))
    numbers["auc_p_value"] = auc_p
    if auc_p < policy.significance:
        failures.append(
            f"challenger AUC {auc_ch:.3f} significantly below champion {auc_cp:.3f} "
            f"(Hanley-McNeil z-test p={auc_p:.3g} < {policy.significance:g})"
        )
    chance_p = auc_chance_p_value(auc_ch, positives_ch, n_ch - positives_ch)
    numbers["auc_chance_p_value"] = chance_p
    return chance_p < policy.significance
