"""The evaluation gate: a pure decision over challenger and champion evidence on the same holdout."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from retrainer.config import GateConfig

METRICS = ("roc_auc", "pr_auc")
_BOOTSTRAP_CHUNK = 64

Value = float | int | str | None


@dataclass(frozen=True)
class Evidence:
    """One model's evidence on the shared holdout (rows in the same order for every model)."""

    version: str
    metrics: dict[str, float]
    proba: np.ndarray
    latency_p95_ms: float
    size_mb: float
    train_seconds: float | None = None


@dataclass(frozen=True)
class Check:
    """One rule of the gate, its outcome, a sentence with the numbers, and the numbers."""

    name: str
    passed: bool
    detail: str
    values: dict[str, Value] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    """Pass or fail with every check that led to it."""

    passed: bool
    checks: list[Check]
    champion_version: str | None
    challenger_version: str

    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [check for check in self.checks if not check.passed]

    def reasons(self) -> list[str]:
        """Details of the failed checks, or a one-line summary of what passed."""
        if not self.passed:
            return [check.detail for check in self.failed()]
        kinds = sorted({check.name.split(":", 1)[0] for check in self.checks})
        against = f"champion {self.champion_version}" if self.champion_version else "no champion"
        return [
            f"challenger {self.challenger_version} passed all {len(self.checks)} checks "
            f"({', '.join(kinds)}) against {against}"
        ]

    def to_dict(self) -> dict:
        """A JSON-safe form: plain Python types, None instead of NaN."""
        return {
            "passed": bool(self.passed),
            "challenger_version": str(self.challenger_version),
            "champion_version": None if self.champion_version is None else str(self.champion_version),
            "reasons": self.reasons(),
            "checks": [
                {
                    "name": check.name,
                    "passed": bool(check.passed),
                    "detail": check.detail,
                    "values": {str(key): _json_value(value) for key, value in check.values.items()},
                }
                for check in self.checks
            ],
        }

    def to_markdown(self) -> str:
        """A human report: decision line, every check in a table, the CI of the metric difference."""
        verdict = "PASS" if self.passed else "FAIL"
        against = f"champion `{self.champion_version}`" if self.champion_version else "no champion"
        lines = [f"# Gate report: {verdict}", "", f"Challenger `{self.challenger_version}` vs {against}.", ""]
        if self.champion_version is None:
            lines += [
                "No champion to compare with: only absolute floors and budgets apply "
                "(no regression, improvement or slice checks).",
                "",
            ]
        lines += [f"- {reason}" for reason in self.reasons()]
        lines += ["", "| check | result | detail |", "|---|---|---|"]
        lines += [
            f"| {check.name} | {'pass' if check.passed else 'FAIL'} | {_cell(check.detail)} |" for check in self.checks
        ]
        improvement = [check for check in self.checks if check.name.startswith("improvement:")]
        for check in improvement:
            v = check.values
            lines += [
                "",
                f"## Difference in {v.get('metric')} (challenger - champion)",
                "",
                f"Point {_fmt(v.get('diff'))}, {_fmt_pct(v.get('confidence'))} paired bootstrap CI "
                f"[{_fmt(v.get('ci_low'))}, {_fmt(v.get('ci_high'))}] over {v.get('samples')} resamples; "
                f"policy {v.get('policy')} requires the lower bound > {_fmt(v.get('limit'))}.",
            ]
        return "\n".join(lines) + "\n"


def metric_score(y_true: np.ndarray, proba: np.ndarray, metric: str) -> float:
    """ROC AUC or average precision; NaN when only one class is present."""
    y = np.asarray(y_true).astype(int)
    if len(np.unique(y)) < 2:
        return float("nan")
    if metric == "roc_auc":
        return float(roc_auc_score(y, proba))
    if metric == "pr_auc":
        return float(average_precision_score(y, proba))
    raise ValueError(f"unknown gate metric '{metric}' (expected one of {METRICS})")


def bootstrap_metric(y_true: np.ndarray, proba: np.ndarray, counts: np.ndarray, metric: str) -> np.ndarray:
    """The metric per resample, given per-row draw counts (resamples x rows); NaN for one-class resamples."""
    order = np.argsort(-np.asarray(proba, dtype=float), kind="stable")
    scores = np.asarray(proba, dtype=float)[order]
    positive = np.asarray(y_true).astype(bool)[order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
    weights = counts[:, order].astype(float)
    pos = np.add.reduceat(weights * positive, starts, axis=1)
    neg = np.add.reduceat(weights * ~positive, starts, axis=1)
    cum_pos, cum_neg = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    total_pos, total_neg = cum_pos[:, -1], cum_neg[:, -1]
    valid = (total_pos > 0) & (total_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "roc_auc":
            # Scores are descending: negatives strictly below a tie group, plus half the ties.
            below = total_neg[:, None] - cum_neg + 0.5 * neg
            value = (pos * below).sum(axis=1) / (total_pos * total_neg)
        elif metric == "pr_auc":
            precision = np.divide(cum_pos, cum_pos + cum_neg, out=np.zeros_like(cum_pos), where=cum_pos > 0)
            value = (pos * precision).sum(axis=1) / total_pos
        else:
            raise ValueError(f"unknown gate metric '{metric}' (expected one of {METRICS})")
    return np.where(valid, value, np.nan)


def paired_bootstrap_diff(
    y_true: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    metric: str,
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """(point diff a-b, ci_low, ci_high) of metric on the same rows, resampled with replacement, for both."""
    y = np.asarray(y_true).astype(int)
    a, b = np.asarray(proba_a, dtype=float), np.asarray(proba_b, dtype=float)
    if not (len(y) == len(a) == len(b)):
        raise ValueError(f"y_true, proba_a and proba_b differ in length: {len(y)}, {len(a)}, {len(b)}")
    point = metric_score(y, a, metric) - metric_score(y, b, metric)
    rng = np.random.default_rng(seed)
    n = len(y)
    diffs = []
    for done in range(0, samples, _BOOTSTRAP_CHUNK):
        chunk = min(_BOOTSTRAP_CHUNK, samples - done)
        rows = rng.integers(0, n, size=(chunk, n))
        offsets = (np.arange(chunk) * n)[:, None]
        counts = np.bincount((rows + offsets).ravel(), minlength=chunk * n).reshape(chunk, n)
        diffs.append(bootstrap_metric(y, a, counts, metric) - bootstrap_metric(y, b, counts, metric))
    diff = np.concatenate(diffs) if diffs else np.array([])
    diff = diff[~np.isnan(diff)]
    if not diff.size or math.isnan(point):
        return float(point), float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    return float(point), float(low), float(high)


def slice_metrics(
    y_true: np.ndarray, proba: np.ndarray, slices: pd.DataFrame, columns: Iterable[str], metric: str
) -> pd.DataFrame:
    """Per column value: rows, positives and the metric (NaN when the slice holds one class only)."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, dtype=float)
    records = []
    for column in columns:
        if column not in slices.columns:
            continue
        values = slices[column].to_numpy()
        for value in pd.unique(values):
            mask = pd.isna(values) if pd.isna(value) else values == value
            records.append(
                {
                    "column": column,
                    "value": value,
                    "rows": int(mask.sum()),
                    "positives": int(y[mask].sum()),
                    "metric": metric_score(y[mask], p[mask], metric),
                }
            )
    return pd.DataFrame.from_records(records, columns=["column", "value", "rows", "positives", "metric"])


def check_floors(challenger: Evidence, floors: dict[str, float]) -> list[Check]:
    """Each metric at or above its absolute floor."""
    checks = []
    for metric, floor in floors.items():
        observed = challenger.metrics.get(metric)
        passed = _finite(observed) and observed >= floor
        checks.append(
            Check(
                f"floor:{metric}",
                bool(passed),
                f"{metric} {_fmt(observed)} {'>=' if passed else '<'} floor {_fmt(floor)}",
                {"observed": observed, "limit": floor},
            )
        )
    return checks


def check_budgets(challenger: Evidence, policy: GateConfig) -> list[Check]:
    """Latency, model size and (when known) training time within budget."""
    budgets = policy.budgets
    observed = {
        "latency_p95_ms": (challenger.latency_p95_ms, budgets.latency_p95_ms, "ms"),
        "model_size_mb": (challenger.size_mb, budgets.model_size_mb, "MB"),
        "train_seconds": (challenger.train_seconds, budgets.train_seconds, "s"),
    }
    checks = []
    for name, (value, limit, unit) in observed.items():
        if value is None:
            continue
        passed = _finite(value) and value <= limit
        checks.append(
            Check(
                f"budget:{name}",
                bool(passed),
                f"{name} {_fmt(value, 2)} {unit} {'<=' if passed else '>'} budget {_fmt(limit, 2)} {unit}",
                {"observed": value, "limit": limit},
            )
        )
    return checks


def check_regression(challenger: Evidence, champion: Evidence, tolerances: dict[str, float]) -> list[Check]:
    """No metric drops below the champion's by more than its tolerance."""
    checks = []
    for metric, tolerance in tolerances.items():
        new, old = challenger.metrics.get(metric), champion.metrics.get(metric)
        diff = new - old if _finite(new) and _finite(old) else None
        passed = diff is not None and diff >= -tolerance
        checks.append(
            Check(
                f"regression:{metric}",
                bool(passed),
                f"{metric} {_fmt(new)} vs champion {_fmt(old)}: change {_fmt(diff, signed=True)} "
                f"{'>=' if passed else '<'} -{_fmt(tolerance)} allowed",
                {"observed": new, "champion": old, "diff": diff, "limit": -tolerance},
            )
        )
    return checks


def check_improvement(challenger: Evidence, champion: Evidence, y_true: np.ndarray, policy: GateConfig) -> Check:
    """The paired bootstrap CI lower bound of the metric difference clears the policy's bar."""
    rule = policy.improvement
    diff, low, high = paired_bootstrap_diff(
        y_true,
        challenger.proba,
        champion.proba,
        policy.metric,
        rule.bootstrap_samples,
        rule.confidence,
        rule.seed,
    )
    limit = rule.margin if rule.policy == "must_improve" else -rule.margin
    passed = _finite(low) and low > limit
    return Check(
        f"improvement:{policy.metric}",
        bool(passed),
        f"{policy.metric} difference {_fmt(diff, signed=True)}, {_fmt_pct(rule.confidence)} CI "
        f"[{_fmt(low, signed=True)}, {_fmt(high, signed=True)}]: lower bound {'>' if passed else '<='} "
        f"{_fmt(limit, signed=True)} ({rule.policy})",
        {
            "metric": policy.metric,
            "diff": diff,
            "ci_low": low,
            "ci_high": high,
            "limit": limit,
            "policy": rule.policy,
            "confidence": rule.confidence,
            "samples": rule.bootstrap_samples,
        },
    )


def check_slices(
    challenger: Evidence, champion: Evidence, y_true: np.ndarray, slices: pd.DataFrame, policy: GateConfig
) -> list[Check]:
    """No judged slice loses more than max_drop of the gate metric; small or one-class slices are recorded."""
    rule, metric = policy.slices, policy.metric
    new = slice_metrics(y_true, challenger.proba, slices, rule.columns, metric)
    old = slice_metrics(y_true, champion.proba, slices, rule.columns, metric)
    checks = []
    for row, old_metric in zip(new.itertuples(index=False), old["metric"], strict=True):
        name = f"slice:{row.column}={row.value}"
        values: dict[str, Value] = {"column": row.column, "value": str(row.value), "rows": row.rows}
        if row.rows < rule.min_rows:
            detail = f"too small to judge ({row.rows} rows < min_rows {rule.min_rows})"
            checks.append(Check(name, True, detail, {**values, "limit": rule.min_rows}))
            continue
        if not (_finite(row.metric) and _finite(old_metric)):
            detail = f"one class only in {row.rows} rows: {metric} undefined, not judged"
            checks.append(Check(name, True, detail, values))
            continue
        diff = row.metric - old_metric
        passed = diff >= -rule.max_drop
        detail = (
            f"{metric} {_fmt(row.metric)} vs champion {_fmt(old_metric)} on {row.rows} rows: "
            f"change {_fmt(diff, signed=True)} {'>=' if passed else '<'} -{_fmt(rule.max_drop)} allowed"
        )
        checks.append(
            Check(
                name,
                bool(passed),
                detail,
                {
                    **values,
                    "observed": row.metric,
                    "champion": old_metric,
                    "diff": diff,
                    "limit": -rule.max_drop,
                },
            )
        )
    return checks


def decide_gate(
    challenger: Evidence,
    champion: Evidence | None,
    y_true: np.ndarray,
    slices: pd.DataFrame,
    policy: GateConfig,
) -> GateDecision:
    """Judge the challenger: floors and budgets always; regression, improvement, slices against a champion."""
    checks = [*check_floors(challenger, policy.floors), *check_budgets(challenger, policy)]
    if champion is not None:
        checks += check_regression(challenger, champion, policy.max_regression)
        checks.append(check_improvement(challenger, champion, y_true, policy))
        checks += check_slices(challenger, champion, y_true, slices, policy)
    return GateDecision(
        passed=all(check.passed for check in checks),
        checks=checks,
        champion_version=None if champion is None else champion.version,
        challenger_version=challenger.version,
    )


def _finite(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and math.isfinite(float(value))


def _json_value(value: object) -> Value:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    return str(value)


def _fmt(value: object, digits: int = 3, signed: bool = False) -> str:
    if not _finite(value):
        return "n/a"
    return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"


def _fmt_pct(value: object) -> str:
    return f"{float(value) * 100:g}%" if _finite(value) else "n/a"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
