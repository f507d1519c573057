"""The drift report of one monitoring pass: an HTML page with embedded plots, and a PNG summary."""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from retrainer.steps.drift import count_shares
from retrainer.steps.profile import numeric_shares

MAX_FEATURE_PLOTS = 12
MAX_CATEGORIES = 15
STYLE = "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def window_shares(reference: Mapping, values: pd.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Bin (or category) labels with the reference's and the window's shares, for plotting."""
    if reference["kind"] == "numeric":
        edges = np.asarray(reference["edges"], dtype="float64")
        shares = numeric_shares(values.to_numpy(dtype="float64", na_value=np.nan), edges)
        spans = [f"{a:.4g}-{b:.4g}" for a, b in itertools.pairwise(edges)]
        labels = [f"<{edges[0]:.4g}", *spans, f"={edges[-1]:.4g}", f">{edges[-1]:.4g}"] if len(edges) else []
        labels.append("missing")
        return labels, np.asarray(reference["shares"], dtype="float64"), shares
    ref = pd.Series(reference["shares"], dtype="float64")
    new = count_shares(values)
    top = (ref.add(new, fill_value=0.0)).sort_values(ascending=False).index[:MAX_CATEGORIES]
    return list(top), ref.reindex(top, fill_value=0.0).to_numpy(), new.reindex(top, fill_value=0.0).to_numpy()


def plot_feature(name: str, reference: Mapping, values: pd.Series, stats: Mapping) -> bytes:
    """Reference vs window shares of one feature, as PNG bytes."""
    plt = _pyplot()
    labels, ref, new = window_shares(reference, values)
    fig, ax = plt.subplots(figsize=(6, 3), dpi=90)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, ref, 0.4, label="reference")
    ax.bar(x + 0.2, new, 0.4, label="window")
    ax.set_xticks(x, labels, rotation=60, fontsize=7)
    ax.set_ylabel("share")
    detail = ", ".join(f"{k} {stats[k]:.3f}" for k in ("psi", "ks", "js") if stats.get(k) is not None)
    ax.set_title(f"{name}: {detail}", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_summary(result: Mapping) -> bytes:
    """Per-feature PSI against its threshold, and each signal's level (1 = threshold), as PNG bytes."""
    plt = _pyplot()
    features = result["assessment"]["features"]
    names = sorted(features, key=lambda n: features[n]["psi"] or 0.0)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, max(3, 0.25 * len(names) + 1)), dpi=90)
    colours = ["tab:red" if features[n]["drifted"] else "tab:blue" for n in names]
    left.barh(names, [features[n]["psi"] or 0.0 for n in names], color=colours)
    left.axvline(result["thresholds"]["psi_max"], color="black", linestyle="--", linewidth=1)
    left.set_xscale("symlog", linthresh=0.1)
    left.set_xlabel("PSI (red: drifted)")
    signals = result["assessment"]["signals"]
    right.bar(
        list(signals),
        [s["level"] for s in signals.values()],
        color=["tab:red" if s["alarm"] else "tab:green" for s in signals.values()],
    )
    right.axhline(1.0, color="black", linestyle="--", linewidth=1)
    right.set_ylabel("level (1 = threshold)")
    right.set_title(f"v{result['model_version']}: {result['decision']['reason'][:60]}", fontsize=9)
    return _png(fig)


def _row(cells: list[object]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def render_html(result: Mapping, summary_png: bytes, feature_pngs: Mapping[str, bytes]) -> str:
    """A self-contained HTML page (plots inlined as base64) for one pass."""
    assessment = result["assessment"]

    def image(data: bytes) -> str:
        return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    signals = "".join(
        _row([name, s["value"], s["threshold"], s["level"], "ALARM" if s["alarm"] else "ok"])
        for name, s in assessment["signals"].items()
    )
    features = "".join(
        _row(
            [
                name,
                s["kind"],
                s.get("psi"),
                s.get("ks", s.get("js")),
                s.get("ks_pvalue", s.get("chi2_pvalue")),
                ", ".join(s.get("new_categories") or []),
                "yes" if s["drifted"] else "",
                "" if s["judged"] else "not judged",
            ]
        )
        for name, s in sorted(assessment["features"].items(), key=lambda kv: -(kv[1]["psi"] or 0.0))
    )
    plots = "".join(f"<h3>{html.escape(n)}</h3>{image(png)}" for n, png in feature_pngs.items())
    decision = result["decision"]
    title = f"Drift report {html.escape(result['time'])}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>Drift report: {html.escape(result["model_name"])} v{html.escape(str(result["model_version"]))}</h1>
<p>{html.escape(result["time"])}: {assessment["rows"]} predictions ({html.escape(str(result["window"]["first"]))} to
{html.escape(str(result["window"]["last"]))}), {assessment["labelled"]} with feedback labels.</p>
<p><b>{"ALARM" if assessment["alarm"] else "no alarm"}</b>: {html.escape("; ".join(assessment["reasons"]) or "-")}.
Trigger: <b>{"FIRED" if decision["fired"] else "suppressed"}</b> ({html.escape(decision["reason"])}).</p>
{image(summary_png)}
<h2>Signals</h2><table><tr><th>signal</th><th>value</th><th>threshold</th><th>level</th><th></th></tr>{signals}</table>
<h2>Features</h2><table><tr><th>feature</th><th>kind</th><th>PSI</th><th>KS / JS</th><th>p-value</th>
<th>new categories</th><th>drifted</th><th></th></tr>{features}</table>
<h2>Drifting features</h2>{plots or "<p>none</p>"}
</body></html>
"""


def write_drift_report(result: Mapping, profile: Mapping, window: pd.DataFrame, directory: Path) -> dict[str, Path]:
    """Write report.html (with a plot per drifting feature) and summary.png into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = plot_summary(result)
    features = result["assessment"]["features"]
    pngs = {
        name: plot_feature(name, profile["features"][name], window[name], features[name])
        for name in result["assessment"]["drifted_features"][:MAX_FEATURE_PLOTS]
    }
    (directory / "summary.png").write_bytes(summary)
    (directory / "report.html").write_text(render_html(result, summary, pngs), encoding="utf-8")
    return {"html": directory / "report.html", "png": directory / "summary.png"}
