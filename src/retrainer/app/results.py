"""The statuses and typed results the use cases return, with `to_dict()` for `--json` and a formatter for people."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from retrainer.outcomes import CycleStatus
from retrainer.steps.normalise import plural

SHOWN_METRICS = ("roc_auc", "pr_auc", "f1", "brier")


def field_names(cls: type) -> set[str]:
    """The field names of a dataclass (what `from_dict` keeps of a payload)."""
    return {f.name for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class CycleResult:
    """One batch's outcome in a retrain cycle: status, reasons, versions, figures and the records behind them.

    `gate` is the gate report (`models/gate_report.json`), `registration` the MLflow ids of the challenger,
    `stages` the DVC stages (ran or skipped), `canary` the canary's result as a dict, `replaces` the accepted batch
    this one re-delivered (set aside, `superseded`), `change` what names a shipped change (`batch_id` is then
    `change-...`, `batch` None: see app/ship.py). `validation` is the validation summary (a dict), or its text for
    a quarantined batch. Optional fields left at None are not in `to_dict()`,
    except the versions, which always are.
    """

    status: CycleStatus
    reasons: list[str]
    batch_id: str | None = None
    batch: str | None = None
    challenger_version: str | None = None
    compared_champion: str | None = None
    champion_version: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict | None = None
    registration: dict | None = None
    stages: list[dict] | None = None
    included: list[dict] | None = None
    bento_tag: str | None = None
    canary: dict | None = None
    validation: dict | str | None = None
    quarantine_dir: str | None = None
    trained_with: str | None = None
    replaces: str | None = None
    change: dict | None = None
    already_processed: bool = False
    reused: bool = False

    ALWAYS = ("status", "reasons", "challenger_version", "champion_version", "metrics")

    def to_dict(self) -> dict:
        """The JSON-ready form: the record's `result`, the flow's return value, `retrainer run --json`."""
        shown = {}
        for name, value in dataclasses.asdict(self).items():
            gated = name == "compared_champion" and self.gate is not None
            if name in self.ALWAYS or gated or value not in (None, False):
                shown[name] = str(value) if name == "status" else value
        return shown

    @classmethod
    def from_dict(cls, payload: dict) -> CycleResult:
        """A result read back from the batch record or a flow run (unknown keys are ignored)."""
        known = {k: v for k, v in payload.items() if k in field_names(cls)}
        return cls(**{**known, "status": CycleStatus(payload["status"]), "reasons": list(payload.get("reasons", []))})

    def but(self, **changes: Any) -> CycleResult:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def metric_line(metrics: dict | None) -> str:
    """The shown metrics of a model on one line ("-" when there are none)."""
    if not metrics:
        return "-"
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in SHOWN_METRICS if metrics.get(k) is not None)


def format_cycle(result: CycleResult) -> str:
    """A human summary of one cycle."""
    source = f"change {result.batch_id}" if result.change else f"batch {result.batch_id or '?'} ({result.batch or ''})"
    lines = [f"{result.status.upper()}  {source}"]
    if result.already_processed:
        lines.append("  (already processed earlier; use --force to run it again)")
    if result.status in (CycleStatus.QUARANTINED, CycleStatus.FAILED, CycleStatus.UNCHANGED):
        lines.append(f"  champion v{result.champion_version or '-'} unchanged")
    if result.challenger_version:
        lines.append(
            f"  challenger v{result.challenger_version}   champion now v{result.champion_version or '-'}   "
            f"compared against v{result.compared_champion or '-'}"
        )
    for role in ("challenger", "champion"):
        if result.metrics.get(role):
            lines.append(f"  {role:<10}  {metric_line(result.metrics[role])}")
    lines += [f"  - {reason}" for reason in result.reasons]
    if checks := warning_checks(result.validation):
        lines.append(
            f"  validation passed with warnings from {plural(len(checks), 'check')}: {', '.join(checks)} "
            "(the accepted batch's .validation.json names the rows)"
        )
    if result.bento_tag:
        lines.append(f"  bento {result.bento_tag}")
    lines += [f"  {line}" for line in canary_lines(result.canary)]
    return "\n".join(lines)


def warning_checks(validation: dict | str | None) -> list[str]:
    """The checks that warned, by name, from a cycle's validation summary (a record written by hand or by another
    version may hold a string or odd entries: those are read as names, and empty ones left out)."""
    warnings = validation.get("warnings") if isinstance(validation, dict) else None
    if isinstance(warnings, str):
        warnings = [warnings]
    if not isinstance(warnings, list | tuple):
        return []
    return sorted({str(check) for check in warnings if check not in (None, "")})


def canary_lines(canary: dict | None) -> list[str]:
    """One line per canary step (weight, decision, key numbers) and the outcome, for the CLI and the demo table."""
    if not canary:
        return []
    lines = []
    for step in canary["steps"]:
        n = step["decision"]["numbers"]
        shown = [f"{n.get('challenger_requests', 0):.0f} req"]
        for key, label in (("psi", "PSI"), ("agreement", "agree"), ("challenger_accuracy", "acc")):
            if key in n:
                shown.append(f"{label} {n[key]:.3f}")
        if "champion_accuracy" in n:
            shown[-1] += f" vs {n['champion_accuracy']:.3f}"
        lines.append(f"canary {step['weight']:>3g}%: {step['decision']['action']:<8} {', '.join(shown)}")
    lines.append(f"canary {canary['outcome'].upper()}: {'; '.join(canary['reasons'])}")  # whole: the why
    return lines
