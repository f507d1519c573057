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


def write_evaluation_plots(
    curves: dict[str, pd.DataFrame], importance: pd.DataFrame, metrics: dict, directory: Path
) -> list[Path]:
    """ROC, PR, calibration, confusion matrix and feature importance as PNG files; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(plt, fig, name: str) -> None:
        fig.tight_layout()
        path = directory / f"{name}.png"
        write_figure(fig, path)
        plt.close(fig)
        written.append(path)

    plt, fig, ax = _figure()
    ax.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], label=f"AUC {metrics['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
    ax.legend(loc="lower right")
    save(plt, fig, "roc")

    plt, fig, ax = _figure()
    ax.plot(curves["pr"]["recall"], curves["pr"]["precision"], label=f"AP {metrics['pr_auc']:.3f}")
    ax.axhline(metrics["positive_rate"], ls="--", color="grey", label="base rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (holdout)")
    ax.legend(loc="upper right")
    save(plt, fig, "pr")

    plt, fig, ax = _figure()
    cal = curves["calibration"]
    ax.plot(cal["mean_predicted"], cal["fraction_positive"], marker="o", label=f"Brier {metrics['brier']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration (holdout)")
    ax.legend(loc="upper left")
    save(plt, fig, "calibration")

    plt, fig, ax = _figure()
    matrix = curves["confusion"].pivot(index="actual", columns="predicted", values="count").to_numpy()
    ax.imshow(matrix, cmap="Blues")
    for (row, col), value in pd.DataFrame(matrix).stack().items():
        ax.text(col, row, f"{value:,}", ha="center", va="center")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xlabel="predicted",
        ylabel="actual",
        title=f"Confusion matrix at threshold {metrics['threshold']:.2f}",
    )
    save(plt, fig, "confusion_matrix")

    plt, fig, ax = _figure()
    top = importance.head(15).iloc[::-1]
    ax.barh(top["feature"], top["importance"], xerr=top["std"])
    ax.set(xlabel="drop in ROC AUC when permuted", title="Feature importance (holdout)")
    save(plt, fig, "feature_importance")
    return written
