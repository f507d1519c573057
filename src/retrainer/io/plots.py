"""Render evaluation tables as PNG plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from retrainer.io.tables import write_figure


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(5, 4), dpi=100)


def draw_roc(ax, curves: dict[str, pd.DataFrame], importance: pd.DataFrame, metrics: dict) -> None:
    """The ROC curve with its AUC."""
    ax.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], label=f"AUC {metrics['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
    ax.legend(loc="lower right")


def draw_pr(ax, curves: dict[str, pd.DataFrame], importance: pd.DataFrame, metrics: dict) -> None:
    """The precision-recall curve with its average precision and the base rate."""
    ax.plot(curves["pr"]["recall"], curves["pr"]["precision"], label=f"AP {metrics['pr_auc']:.3f}")
    ax.axhline(metrics["positive_rate"], ls="--", color="grey", label="base rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (holdout)")
    ax.legend(loc="upper right")


def draw_calibration(ax, curves: dict[str, pd.DataFrame], importance: pd.DataFrame, metrics: dict) -> None:
    """The calibration curve with the Brier score."""
    cal = curves["calibration"]
    ax.plot(cal["mean_predicted"], cal["fraction_positive"], marker="o", label=f"Brier {metrics['brier']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration (holdout)")
    ax.legend(loc="upper left")


def draw_confusion(ax, curves: dict[str, pd.DataFrame], importance: pd.DataFrame, metrics: dict) -> None:
    """The confusion matrix at the decision threshold, counts written in its cells."""
    matrix = curves["confusion"].pivot(index="actual", columns="predicted", values="count").to_numpy()
    ax.imshow(matrix, cmap="Blues")
    for (row, col), value in pd.DataFrame(matrix).stack().items():
        ax.text(col, row, f"{value:,}", ha="center", va="center")
    title = f"Confusion matrix at threshold {metrics['threshold']:.2f}"
    ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual", title=title)


def draw_importance(ax, curves: dict[str, pd.DataFrame], importance: pd.DataFrame, metrics: dict) -> None:
    """The 15 most important features by permutation importance, with their spread."""
    top = importance.head(15).iloc[::-1]
    ax.barh(top["feature"], top["importance"], xerr=top["std"])
    ax.set(xlabel="drop in ROC AUC when permuted", title="Feature importance (holdout)")


PLOTS = (
    ("roc", draw_roc),
    ("pr", draw_pr),
    ("calibration", draw_calibration),
    ("confusion_matrix", draw_confusion),
    ("feature_importance", draw_importance),
)


def write_evaluation_plots(
    curves: dict[str, pd.DataFrame], importance: pd.DataFrame, metrics: dict, directory: Path
) -> list[Path]:
    """ROC, PR, calibration, confusion matrix and feature importance as PNG files; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, draw in PLOTS:
        plt, fig, ax = _figure()
        draw(ax, curves, importance, metrics)
        fig.tight_layout()
        path = directory / f"{name}.png"
        write_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written
