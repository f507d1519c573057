"""Use case: report a model change in CI. Reproduce the branch's pipeline, read the base revision's model and holdout
through DVC, score both on the same rows, run the real gate, and say what changed (params, code, data, batches)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from retrainer.config import ConfigError, GateConfig, Params
from retrainer.cycle import finite
from retrainer.io import revisions
from retrainer.io.ci_plots import write_comparison_plots
from retrainer.io.project import Workspace
from retrainer.io.workspace import PipelineError, ReproResult, reproduce
from retrainer.stages import HOLDOUT, MODEL, PLOTS, TRAIN, TRAIN_REPORT, load_model
from retrainer.steps.gate import Evidence, GateDecision, decide_gate
from retrainer.steps.model_change import (
    HoldoutChoice,
    Scored,
    choose_holdout,
    is_batch,
    output_hashes,
    score_bundle,
    slice_deltas,
    split_changed_files,
)

REPRO_TARGET = "evaluate"  # the report needs the model and its evaluation, never a registration
IMPORTANCE_CSV = PLOTS / "feature_importance.csv"
REPORT_MD, REPORT_JSON = "report.md", "report.json"


class CiStatus(StrEnum):
    """The report's verdict; `EXIT_CODES` maps it to the command's exit code."""

    PASS = "pass"
    FAIL = "fail"
    NO_CHANGE = "no model change"
    UNDECIDED = "undecided"


EXIT_CODES = {CiStatus.PASS: 0, CiStatus.NO_CHANGE: 0, CiStatus.FAIL: 1, CiStatus.UNDECIDED: 2}


@dataclass(frozen=True)
class ModelCiReport:
    """What a model change does, judged against a base revision.

    `changes` holds the params diff ({"file:key": {"old", "new"}}), changed files by kind and the `dvc diff`;
    `validation` one entry per new or changed batch; `metrics` each side's holdout metrics ("base", "head");
    `gate` the gate decision's `to_dict()`, `gate_markdown` its table; `slices` per-slice deltas; `lineage` commits
    and output hashes; `plots` file names under the report folder.
    """

    status: CiStatus
    reasons: list[str]
    base_ref: str
    base_commit: str | None = None
    head_commit: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    validation: list[dict] = field(default_factory=list)
    holdout: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    gate: dict | None = None
    gate_markdown: str | None = None
    slices: list[dict] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    repro: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 pass or no model change, 1 fail, 2 could not decide."""
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict:
        """The JSON-ready form written to report.json and printed by `--json`."""
        payload = dataclasses.asdict(self)
        payload.pop("gate_markdown")
        return {**payload, "status": str(self.status), "exit_code": self.exit_code}

    def but(self, **changes: Any) -> ModelCiReport:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


Repro = Callable[[Path], ReproResult]


def reproduce_for_report(root: Path) -> ReproResult:
    """`dvc repro evaluate` in the working tree: DVC skips the stages whose deps, params and code did not change."""
    return reproduce(root, REPRO_TARGET)


def report_model_change(root: Path, base: str, out: Path, repro: Repro = reproduce_for_report) -> ModelCiReport:
    """Judge the working tree's model against the base revision's (see the module docstring); plots go to `out`.

    Never raises for a missing base, a failing pipeline or a blocked batch: those become UNDECIDED or FAIL with the
    reason. ConfigError when the branch's params do not load.
    """
    report = ModelCiReport(CiStatus.UNDECIDED, [], base)
    try:
        report = describe_changes(root, base, report)
    except revisions.RevisionError as exc:
        return report.but(reasons=[f"base revision unavailable: {exc}"])
    if any(not entry["passed"] for entry in report.validation):
        return report.but(status=CiStatus.FAIL, reasons=blocked_batch_reasons(report.validation))
    try:
        ran = repro(root)
    except PipelineError as exc:
        return report.but(reasons=[f"the branch's pipeline failed: {str(exc)[-1500:]}"])
    report = report.but(repro={"ran": ran.ran, "skipped": ran.skipped, "seconds": round(ran.seconds, 2)})
    try:
        return compare_models(root, report, out)
    except revisions.RevisionError as exc:
        return report.but(reasons=[f"base outputs unavailable, cannot compare (base not retrained): {exc}"])
    except KeyError as exc:
        return report.but(reasons=[f"the models cannot be scored on the same holdout: {exc.args[0]}"])


def describe_changes(root: Path, base: str, report: ModelCiReport) -> ModelCiReport:
    """Commits, the params diff, changed files by kind, and the validation of every new or changed batch."""
    params = Workspace.at(root).load_params()
    base_commit = revisions.resolve_commit(root, base)
    tracked = output_hashes(revisions.read_lock_at(root, base_commit)) | output_hashes(revisions.read_lock(root))
    files = split_changed_files(revisions.changed_files(root, base_commit), params.data.batches_dir, tracked)
    data = revisions.data_diff(root, base_commit)  # batches a `.dvc` file tracks show here, not in git
    batches = {
        *files["batches"],
        *(n for kind in ("added", "modified") for n in data[kind] if is_batch(n, params.data.batches_dir)),
    }
    changes = {"params": revisions.params_diff(root, base_commit), "files": files}
    return report.but(
        base_commit=base_commit,
        head_commit=revisions.resolve_commit(root, "HEAD"),
        changes=changes,
        validation=[validate_changed_batch(root, name, params) for name in sorted(batches) if (root / name).is_file()],
    )


def validate_changed_batch(root: Path, name: str, params: Params) -> dict:
    """Validate one new or changed batch as a retrain cycle would, its freshness judged without itself."""
    from retrainer.app.validate import validate_batch

    outcome = validate_batch(root / name, params, Workspace.at(root), replaces=Path(name).stem)
    return {
        "batch": name,
        "passed": outcome.passed,
        "failures": outcome.failure_reasons(),
        "warnings": sorted({str(w.get("check")) for w in outcome.warnings}),
        "quarantine_dir": outcome.quarantine_dir,
    }


def blocked_batch_reasons(validation: list[dict]) -> list[str]:
    """One line per blocking failure of every batch that failed validation."""
    return [
        f"batch {entry['batch']} fails validation: {failure}"
        for entry in validation
        if not entry["passed"]
        for failure in entry["failures"]
    ]


def compare_models(root: Path, report: ModelCiReport, out: Path) -> ModelCiReport:
    """Same model file as the base: no change. Else score both on one holdout and run the gate."""
    base_hashes = output_hashes(revisions.read_lock_at(root, report.base_commit))
    head_hashes = output_hashes(revisions.read_lock(root))
    report = report.but(
        changes={**report.changes, "data": revisions.data_diff(root, report.base_commit)},
        lineage=lineage(report, base_hashes, head_hashes),
    )
    model = MODEL.as_posix()
    if model not in base_hashes:
        raise revisions.RevisionError(f"{report.base_ref} has no {model} in its dvc.lock (never trained there)")
    if base_hashes[model] == head_hashes.get(model):
        return report.but(status=CiStatus.NO_CHANGE, reasons=[f"no model change: {model} is byte-identical to base"])
    same_holdout = base_hashes.get(HOLDOUT.as_posix()) == head_hashes.get(HOLDOUT.as_posix())
    return judge(root, report, same_holdout, out)


def lineage(report: ModelCiReport, base: dict[str, str], head: dict[str, str]) -> dict:
    """Commits and the data and model hashes each side's `dvc.lock` records."""
    keys = (TRAIN, HOLDOUT, MODEL)
    return {
        "base": {
            "ref": report.base_ref,
            "commit": report.base_commit,
            **{k.as_posix(): base.get(k.as_posix()) for k in keys},
        },
        "head": {"commit": report.head_commit, **{k.as_posix(): head.get(k.as_posix()) for k in keys}},
    }


def read_base_model(root: Path, commit: str) -> tuple[dict, pd.DataFrame]:
    """The base commit's trained bundle and holdout, through the DVC cache or remote (RevisionError if neither)."""
    bundle = joblib.load(io.BytesIO(revisions.open_output(root, commit, MODEL)))
    holdout = pd.read_parquet(io.BytesIO(revisions.open_output(root, commit, HOLDOUT)))
    return bundle, holdout


def judge(root: Path, report: ModelCiReport, same_holdout: bool, out: Path) -> ModelCiReport:
    """Score base and branch on the shared holdout, run the base's gate policy, draw the plots into `out`."""
    params = Workspace.at(root).load_params()
    base_bundle, base_holdout = read_base_model(root, report.base_commit)
    head_bundle = load_model(root)
    choice = choose_holdout(base_holdout, pd.read_parquet(root / HOLDOUT), params.data.time_column, same_holdout)
    label = params.data.target.name
    base, head = score_bundle(base_bundle, choice.frame, label), score_bundle(head_bundle, choice.frame, label)
    holdout = {"side": choice.side, "rows": len(choice.frame), "note": choice.note}
    report = report.but(holdout=holdout, metrics={"base": finite(base.metrics), "head": finite(head.metrics)})
    if np.array_equal(base.proba, head.proba):
        return report.but(status=CiStatus.NO_CHANGE, reasons=["no model change: identical predictions on every row"])
    policy, policy_note = gate_policy(root, report.base_commit, params)
    decision = run_gate(root, params, policy, choice, head_bundle, head, base, version_names(report))
    y = choice.frame[label].to_numpy()
    slices = slice_deltas(y, head.proba, base.proba, choice.frame, policy.slices, policy.metric)
    plots = write_comparison_plots(
        y,
        {"base": base.proba, "head": head.proba},
        {"base": base.metrics, "head": head.metrics},
        slices,
        {"base": read_importance_at(root, report.base_commit), "head": read_importance_at(root, None)},
        out,
    )
    return report.but(
        status=CiStatus.PASS if decision.passed else CiStatus.FAIL,
        reasons=[*decision.reasons(), policy_note],
        gate=decision.to_dict(),
        gate_markdown=decision.to_markdown(),
        slices=[finite(row) for row in slices.to_dict("records")],
        plots=[path.name for path in plots],
    )


def read_importance_at(root: Path, commit: str | None) -> pd.DataFrame | None:
    """The permutation importance the evaluate stage wrote (at `commit`, or in the working tree), or None."""
    if commit is None:
        path = root / IMPORTANCE_CSV
        return pd.read_csv(path) if path.is_file() else None
    text = revisions.read_text_at(root, commit, IMPORTANCE_CSV)
    return pd.read_csv(io.StringIO(text)) if text else None


def version_names(report: ModelCiReport) -> tuple[str, str]:
    """How the gate report names the two models: ("branch@<sha>", "<base ref>@<sha>")."""
    return f"branch@{(report.head_commit or '?')[:7]}", f"{report.base_ref}@{(report.base_commit or '?')[:7]}"


def gate_policy(root: Path, base_commit: str, params: Params) -> tuple[GateConfig, str]:
    """The base revision's gate policy (a branch cannot loosen the gate that judges it), else the branch's."""
    text = revisions.read_text_at(root, base_commit, "params.yaml")
    if text is None:
        return params.gate, "gate policy: the branch's (the base has no params.yaml)"
    try:
        import yaml

        raw = yaml.safe_load(text) or {}
        return GateConfig.model_validate(raw["gate"]), "gate policy: the base's params.yaml"
    except (KeyError, ValueError, ConfigError) as exc:
        return params.gate, f"gate policy: the branch's (the base's gate section does not load: {exc})"


def run_gate(
    root: Path,
    params: Params,
    policy: GateConfig,
    choice: HoldoutChoice,
    head_bundle: dict,
    head: Scored,
    base: Scored,
    versions: tuple[str, str],
) -> GateDecision:
    """The real gate: floors, regression, paired bootstrap CI, slices and budgets (latency, size, train time)."""
    from retrainer.io.tables import read_json
    from retrainer.steps.evaluate import latency_p95_ms

    features = choice.frame[head_bundle["features"]]
    challenger = Evidence(
        version=versions[0],
        metrics=head.metrics,
        proba=head.proba,
        latency_p95_ms=latency_p95_ms(head_bundle["model"], features, params.gate.latency_rows),
        size_mb=(root / MODEL).stat().st_size / 1e6,
        train_seconds=read_json(root / TRAIN_REPORT).get("fit_seconds"),
    )
    champion = Evidence(versions[1], base.metrics, base.proba, float("nan"), float("nan"))
    y = choice.frame[params.data.target.name].to_numpy()
    slices = choice.frame[[c for c in policy.slices.columns if c in choice.frame.columns]]
    return decide_gate(challenger, champion, y, slices, policy)


def write_report(report: ModelCiReport, out: Path) -> tuple[Path, Path]:
    """Write report.md and report.json into `out` (the plots are there already); returns both paths."""
    from retrainer.io.tables import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(report.to_dict(), out / REPORT_JSON)
    (out / REPORT_MD).write_text(render_markdown(report))
    return out / REPORT_MD, out / REPORT_JSON


VERDICTS = {
    CiStatus.PASS: "PASS",
    CiStatus.FAIL: "FAIL",
    CiStatus.NO_CHANGE: "NO MODEL CHANGE",
    CiStatus.UNDECIDED: "COULD NOT DECIDE",
}


def render_markdown(report: ModelCiReport) -> str:
    """The pull-request comment: verdict and reasons, metrics, gate checks, slices, plots, what changed, lineage."""
    head = (report.head_commit or "?")[:10]
    lines = [
        f"# Model CI: {VERDICTS[report.status]}",
        "",
        f"Branch `{head}` against base `{report.base_ref}` (`{(report.base_commit or '?')[:10]}`); "
        f"exit code {report.exit_code}.",
        "",
        *[f"- {reason}" for reason in report.reasons],
    ]
    for section in (metrics_section, gate_section, slices_section, plots_section, changes_section, lineage_section):
        lines += section(report)
    return "\n".join(lines) + "\n"


def metrics_section(report: ModelCiReport) -> list[str]:
    """Both models' holdout metrics and the change, on the shared holdout."""
    if not report.metrics:
        return []
    base, head = report.metrics["base"], report.metrics["head"]
    lines = ["", "## Metrics on the same holdout rows", "", f"{report.holdout['note']}.", ""]
    lines += ["| metric | base | branch | change |", "|---|---:|---:|---:|"]
    for name in ("roc_auc", "pr_auc", "f1", "precision", "recall", "brier", "log_loss"):
        old, new = base.get(name), head.get(name)
        change = f"{new - old:+.4f}" if old is not None and new is not None else "n/a"
        lines.append(f"| {name} | {_num(old)} | {_num(new)} | {change} |")
    return lines


def gate_section(report: ModelCiReport) -> list[str]:
    """The gate report of the branch's model against the base's, headings moved one level down."""
    if not report.gate_markdown:
        return []
    body = report.gate_markdown.replace("\n## ", "\n### ").replace("# Gate report", "## Gate", 1)
    return ["", *(line for line in body.rstrip().splitlines() if not line.startswith("- "))]  # reasons are above


def slices_section(report: ModelCiReport) -> list[str]:
    """The gate metric per slice, base and branch, with the change."""
    if not report.slices:
        return []
    lines = ["", "## Slices", "", "| slice | rows | judged | base | branch | change |", "|---|---:|---|---:|---:|---:|"]
    for row in sorted(report.slices, key=lambda r: (not r["judged"], r["change"] is None, r["change"] or 0)):
        change = "n/a" if row["change"] is None else f"{row['change']:+.4f}"
        judged = "yes" if row["judged"] else "too small"
        cells = f"{row['rows']:,} | {judged} | {_num(row['base'])} | {_num(row['head'])} | {change}"
        lines.append(f"| {row['slice']} | {cells} |")
    return lines


def plots_section(report: ModelCiReport) -> list[str]:
    """The PNG plots, linked relative to report.md."""
    if not report.plots:
        return []
    return ["", "## Plots", "", *[f"![{Path(name).stem}]({name})" for name in report.plots]]


def changes_section(report: ModelCiReport) -> list[str]:
    """Params diff, changed files by kind, `dvc diff`, and the validation of new or changed batches."""
    changes = report.changes
    lines = ["", "## What changed"]
    if changes.get("params"):
        lines += ["", "| param | base | branch |", "|---|---|---|"]
        lines += [f"| `{key}` | {v.get('old')} | {v.get('new')} |" for key, v in sorted(changes["params"].items())]
    else:
        lines += ["", "Params: no change."]
    lines.append("")
    for kind, names in (changes.get("files") or {}).items():
        if names:
            lines.append(f"- {kind} ({len(names)}): " + ", ".join(f"`{n}`" for n in names[:20]))
    for kind, names in (changes.get("data") or {}).items():
        if names:
            lines.append(f"- data {kind} (dvc diff): " + ", ".join(f"`{n}`" for n in names))
    for entry in report.validation:
        verdict = "passed" if entry["passed"] else "FAILED (blocking)"
        lines.append(f"- batch `{entry['batch']}`: validation {verdict}")
        lines += [f"  - {failure}" for failure in entry["failures"]]
        lines += [f"  - warning: {name}" for name in entry["warnings"]]
    return lines


def lineage_section(report: ModelCiReport) -> list[str]:
    """Commits and the output hashes both `dvc.lock` files record."""
    if not report.lineage:
        return []
    lines = ["", "## Lineage", "", "| | base | branch |", "|---|---|---|"]
    base, head = report.lineage["base"], report.lineage["head"]
    for key in ("commit", *(k for k in base if "/" in k)):
        lines.append(f"| {key} | `{base.get(key)}` | `{head.get(key)}` |")
    if report.repro:
        ran, skipped = (", ".join(report.repro[k]) or "nothing" for k in ("ran", "skipped"))
        lines += ["", f"Pipeline (`dvc repro {REPRO_TARGET}`): ran {ran}; skipped {skipped}."]
    return lines


def format_report(report: ModelCiReport, written: tuple[Path, Path] | None = None) -> str:
    """The console summary: verdict, reasons, the headline metric, where the report files are."""
    lines = [f"{VERDICTS[report.status]}  (exit {report.exit_code})  base {report.base_ref}"]
    lines += [f"  - {reason}" for reason in report.reasons]
    if report.metrics:
        base, head = report.metrics["base"], report.metrics["head"]
        lines.append(f"  roc_auc base {_num(base.get('roc_auc'))} -> branch {_num(head.get('roc_auc'))}")
    if written:
        lines += [f"  report: {written[0]}", f"  json:   {written[1]}"]
    return "\n".join(lines)


def _num(value: object) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"
