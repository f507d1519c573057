"""One retrain cycle's pieces that the flow wires: gather gate evidence, record the decision, summarise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retrainer.config import Params
from retrainer.io import registry
from retrainer.io.tables import read_json, write_json
from retrainer.stages import (
    HOLDOUT,
    INGEST_REPORT,
    METRICS,
    MODEL,
    REGISTRATION,
    SPLIT_REPORT,
    TRAIN_REPORT,
    load_model,
)
from retrainer.steps.evaluate import classification_metrics, latency_p95_ms
from retrainer.steps.gate import Evidence, GateDecision, decide_gate

GATE_JSON = Path("models/gate_report.json")
GATE_MD = Path("models/gate_report.md")


@dataclass(frozen=True)
class GateOutcome:
    """The gate decision with the evidence summary it was made on."""

    decision: GateDecision
    challenger_metrics: dict
    champion_metrics: dict | None


def gather_and_decide(params: Params, root: Path) -> GateOutcome:
    """Score challenger and champion on the same newest holdout and apply the gate policy."""
    bundle = load_model(root)
    registration = read_json(root / REGISTRATION)
    holdout = pd.read_parquet(root / HOLDOUT)
    label = params.data.target.name
    y = holdout[label].to_numpy()
    features = bundle["features"]
    challenger_metrics = read_json(root / METRICS)
    challenger = Evidence(
        version=registration["version"],
        metrics=challenger_metrics,
        proba=bundle["model"].predict_proba(holdout[features])[:, 1],
        latency_p95_ms=latency_p95_ms(bundle["model"], holdout[features], params.gate.latency_rows),
        size_mb=(root / MODEL).stat().st_size / 1e6,
        train_seconds=read_json(root / TRAIN_REPORT)["fit_seconds"],
    )
    champion = None
    champion_metrics = None
    name = params.tracking.registered_model
    champion_version = registry.alias_version(name, registry.CHAMPION)
    if champion_version is not None and champion_version != challenger.version:
        model = registry.load_version(name, champion_version)
        threshold = float(registry.version_tags(name, champion_version).get("threshold", 0.5))
        champion_features = list(model.feature_names_in_)
        proba = model.predict_proba(holdout[champion_features])[:, 1]
        champion_metrics = classification_metrics(y, proba, threshold)
        champion = Evidence(champion_version, champion_metrics, proba, float("nan"), float("nan"))
    slices = holdout[[c for c in params.gate.slices.columns if c in holdout.columns]]
    decision = decide_gate(challenger, champion, y, slices, params.gate)
    return GateOutcome(decision, challenger_metrics, champion_metrics)


def write_gate_report(outcome: GateOutcome, root: Path) -> dict:
    """Store the decision as JSON and markdown next to the model."""
    payload = {
        **outcome.decision.to_dict(),
        "challenger_metrics": outcome.challenger_metrics,
        "champion_metrics": outcome.champion_metrics,
    }
    write_json(payload, root / GATE_JSON)
    (root / GATE_MD).write_text(outcome.decision.to_markdown())
    return payload


def data_counts(root: Path) -> list[dict]:
    """Rows at each step of the pipeline, for the Prefect table artifact."""
    ingest, split = read_json(root / INGEST_REPORT), read_json(root / SPLIT_REPORT)
    rows = [
        {"step": "raw rows (bootstrap + accepted batches)", "rows": ingest["rows_in"]},
        {"step": "excluded: no outcome (cancelled)", "rows": ingest["excluded_unlabelled"]},
        *({"step": f"unmatched join: {k} (kept, features null)", "rows": v} for k, v in ingest["unmatched"].items()),
        {"step": "labelled rows", "rows": ingest["rows_out"]},
        {
            "step": f"train window ({split['train']['start'][:10]} .. {split['train']['end'][:10]})",
            "rows": split["train"]["rows"],
        },
        {
            "step": f"holdout ({split['holdout']['start'][:10]} .. {split['holdout']['end'][:10]})",
            "rows": split["holdout"]["rows"],
        },
    ]
    return rows


def finite(metrics: dict | None) -> dict | None:
    """Metrics with NaN replaced by None (JSON-safe)."""
    if metrics is None:
        return None
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()}
