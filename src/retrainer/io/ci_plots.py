"""PNG plots of a model-change report: base and branch on one chart each (ROC, PR, calibration), slice deltas,
feature importance before and after."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retrainer.io.tables import write_figure
from retrainer.steps.evaluate import evaluation_curves

SIDES = (("base", "base (main)", "tab:grey"), ("head", "branch", "tab:blue"))


def _draw(path: Path, draw: Callable, size: tuple[float, float] = (5, 4)) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    draw(ax)
    fig.tight_layout()
    write_figure(fig, path)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class CurveSpec:
    """One two-model chart: the curve table's columns, the metric in the legend, axis labels, a reference line."""

    table: str
    x: str
    y: str
    metric: str
    short: str
    xlabel: str
    ylabel: str
    title: str
    legend: str
    diagonal: bool  # y = x as the reference; otherwise the base rate
    marker: str | None = None


CURVES = (
    CurveSpec(
        "roc", "fpr", "tpr", "roc_auc", "AUC", "false positive rate", "true positive rate", "ROC", "lower right", True
    ),
    CurveSpec(
        "pr", "recall", "precision", "pr_auc", "AP", "recall", "precision", "Precision-recall", "upper right", False
    ),
    CurveSpec(
        "calibration",
        "mean_predicted",
        "fraction_positive",
        "brier",
        "Brier",
        "mean predicted probability",
        "observed positive rate",
        "Calibration",
        "upper left",
        True,
        "o",
    ),
)


def draw_curve_pair(ax, spec: CurveSpec, curves: dict[str, dict], metrics: dict[str, dict]) -> None:
    """Base and branch on one chart, each labelled with its metric, with the chart's reference line."""
    for side, label, color in SIDES:
        table = curves[side][spec.table]
        legend = f"{label}: {spec.short} {metrics[side][spec.metric]:.3f}"
        ax.plot(table[spec.x], table[spec.y], color=color, marker=spec.marker, label=legend)
    if spec.diagonal:
        ax.plot([0, 1], [0, 1], ls="--", color="lightgrey")
    else:
        ax.axhline(metrics["head"]["positive_rate"], ls="--", color="lightgrey", label="base rate")
    ax.set(xlabel=spec.xlabel, ylabel=spec.ylabel, title=f"{spec.title} (same holdout)")
    ax.legend(loc=spec.legend)


def write_comparison_plots(
    y_true: np.ndarray,
    proba: dict[str, np.ndarray],
    metrics: dict[str, dict],
    slices: pd.DataFrame,
    importance: dict[str, pd.DataFrame | None],
    directory: Path,
) -> list[Path]:
    """Write roc.png, pr.png, calibration.png, slices.png and (when both are known) feature_importance.png.

    `proba` and `metrics` are keyed "base" and "head" (same holdout rows); `slices` is `slice_deltas`' table;
    `importance` each side's permutation importance table (feature, importance) or None. Returns the paths.
    """
    directory.mkdir(parents=True, exist_ok=True)
    curves = {side: evaluation_curves(y_true, proba[side], metrics[side]["threshold"], 10) for side in proba}
    paths = [
        _draw(directory / f"{spec.table}.png", lambda ax, spec=spec: draw_curve_pair(ax, spec, curves, metrics))
        for spec in CURVES
    ]
    paths.append(_draw(directory / "slices.png", lambda ax: draw_slice_deltas(ax, slices), (6, 5)))
    if all(importance.get(side) is not None for side, _, _ in SIDES):
        paths.append(_draw(directory / "feature_importance.png", lambda ax: draw_importance(ax, importance), (6, 5)))
    return paths


def draw_slice_deltas(ax, slices: pd.DataFrame) -> None:
    """A horizontal bar per slice: the change of the gate metric (branch - base), red where it dropped; slices too
    small for the gate to judge are grey and listed after the judged ones."""
    shown = slices.dropna(subset=["change"]).sort_values(["judged", "change"])
    colors = [
        ("tab:red" if change < 0 else "tab:green") if judged else "lightgrey"
        for change, judged in zip(shown["change"], shown["judged"], strict=True)
    ]
    labels = [f"{name} ({rows:,})" for name, rows in zip(shown["slice"], shown["rows"], strict=True)]
    ax.barh(labels, shown["change"], color=colors)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel="change of the gate metric (branch - base); grey: too small to judge", title="Slices (rows)")


def draw_importance(ax, importance: dict[str, pd.DataFrame]) -> None:
    """Permutation importance of the 15 most important features (by either model), base and branch side by side."""
    table = pd.DataFrame({side: importance[side].set_index("feature")["importance"] for side, _, _ in SIDES})
    top = table.fillna(0).assign(peak=lambda t: t.max(axis=1)).nlargest(15, "peak").iloc[::-1]
    rows = np.arange(len(top))
    for offset, (side, label, color) in zip((-0.2, 0.2), SIDES, strict=True):
        ax.barh(rows + offset, top[side], height=0.4, color=color, label=label)
    ax.set_yticks(rows, top.index)
    ax.set(xlabel="drop in ROC AUC when permuted", title="Feature importance: before / after")
    ax.legend(loc="lower right")
