"""The pipeline stages: one function each, run by `dvc repro` (via `retrainer stage NAME`) and by the flows."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from retrainer.config import Params, Reference, params_hash
from retrainer.io.tables import (
    list_batches,
    read_json,
    read_parquet,
    read_table,
    write_joblib,
    write_json,
    write_parquet,
)

if TYPE_CHECKING:
    from retrainer.io.batch_files import ReadOptions

VALIDATION_SUMMARY = Path("data/validated/summary.json")
REFERENCES_DIR = Path("data/references")
REFERENCE = "reference"
DATASET = Path("data/interim/dataset.parquet")
INGEST_REPORT = Path("data/interim/ingest_report.json")
TRAIN = Path("data/processed/train.parquet")
HOLDOUT = Path("data/processed/holdout.parquet")
SPLIT_REPORT = Path("data/processed/split_report.json")
MODEL = Path("models/model.pkl")
TRAIN_REPORT = Path("models/train_report.json")
METRICS = Path("models/metrics.json")
PREDICTIONS = Path("models/predictions.parquet")
PLOTS = Path("models/plots")
REGISTRATION = Path("models/registration.json")
PROFILE = Path("models/reference_profile.json")


def file_md5(path: Path) -> str:
    """The MD5 of a file's bytes: the hash DVC records for a single-file output."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_raw(params: Params, root: Path) -> pd.DataFrame:
    """The bootstrap slice of the seed batch table plus every accepted batch, in the raw batch schema.

    The seed and the accepted batches are read by the same reader validation uses (missing cells, trimmed text, ISO
    8601 times), so training sees exactly the values that were validated, and that the service reads from a request.
    """
    from retrainer.io.batch_files import read_batch_file, read_options

    data = params.data
    options = read_options(params)
    seed = read_seed_table(root / data.batch_source, options, data.time_column)
    start = pd.Timestamp(data.bootstrap.start, tz="UTC")
    end = pd.Timestamp(data.bootstrap.end, tz="UTC")
    frames = [seed.loc[(seed[data.time_column] >= start) & (seed[data.time_column] < end)]]
    frames += [read_batch_file(p, options).frame for p in list_batches(root / data.batches_dir)]
    return pd.concat(frames, ignore_index=True)


def read_seed_table(path: Path, options: ReadOptions, time_column: str) -> pd.DataFrame:
    """The seed table (data.batch_source) read as a batch is, whatever its size: a CSV seed's `NA` category stays
    text and its padded text is trimmed, as in batches and requests. ValueError when its time column does not parse.
    """
    from retrainer.io.batch_files import read_batch_file
    from retrainer.steps.ingest import parse_time_column

    unlimited = replace(options, max_file_mb=max(options.max_file_mb, path.stat().st_size / 2**20 + 1))
    return parse_time_column(read_batch_file(path, unlimited).frame, time_column)


class BatchRejected(RuntimeError):
    """An accepted batch failed a blocking expectation; it was quarantined."""


def validate(params: Params, root: Path) -> dict:
    """Validate every accepted batch with the GX suite; a blocking failure quarantines it and stops the pipeline.

    A batch whose stored report (written when the flow accepted it) was made under the same params is not re-run.
    """
    from retrainer.validation import format_outcome, validate_batch_file

    current = params_hash(params)
    batches = {}
    for path in list_batches(root / params.data.batches_dir):
        stored = path.with_name(f"{path.stem}.validation.json")
        report = read_json(stored) if stored.exists() else None
        if report is None or report.get("params_hash") != current or not report.get("passed"):
            outcome = validate_batch_file(path, params, root)
            if not outcome.passed:
                raise BatchRejected(format_outcome(outcome))
            report = outcome.report
        batches[path.name] = {
            "batch_id": report["batch_id"],
            "rows": report["rows"],
            "warnings": sorted({w["check"] for w in report["warnings"]}),
        }
    summary = {"batches": batches, "validated": len(batches)}
    write_json(summary, root / VALIDATION_SUMMARY)
    return {"validated": len(batches)}


def reference(params: Params, root: Path, ref: Reference) -> dict:
    """Fingerprint one reference table (its file's MD5, rows, the join keys ingest finds) into data/references/,
    so ingest reruns when the table changes. Raises FileNotFoundError or KeyError naming the file or columns."""
    from retrainer.steps.ingest import reference_rows

    path = root / ref.path
    if not path.is_file():
        raise FileNotFoundError(f"data.references '{ref.name}': file not found: {ref.path}")
    table = read_table(path)
    report = {"name": ref.name, "path": ref.path, "md5": file_md5(path), "rows": len(table)}
    report["keys"] = len(reference_rows(table, ref))
    write_json(report, root / REFERENCES_DIR / f"{ref.name}.json")
    return report


def ingest(params: Params, root: Path) -> dict:
    """Raw batches + references -> the labelled, pseudonymised dataset."""
    from retrainer.io.project import pseudonymisation_key
    from retrainer.steps.ingest import integrate

    references = {ref.name: read_table(root / ref.path) for ref in params.data.references}
    dataset, report = integrate(load_raw(params, root), references, params.data, pseudonymisation_key())
    write_parquet(dataset, root / DATASET)
    write_json(report.to_dict(), root / INGEST_REPORT)
    return report.to_dict()


def split(params: Params, root: Path) -> dict:
    """Training window and time-aware holdout."""
    from retrainer.steps.split import make_train_holdout

    time_column, label = params.data.time_column, params.data.target.name
    train, holdout = make_train_holdout(read_parquet(root / DATASET), time_column, params.split)
    write_parquet(train, root / TRAIN)
    write_parquet(holdout, root / HOLDOUT)
    report = {
        name: {
            "rows": len(part),
            "start": str(part[time_column].min()),
            "end": str(part[time_column].max()),
            "positive_rate": round(float(part[label].mean()), 6),
        }
        for name, part in (("train", train), ("holdout", holdout))
    }
    write_json(report, root / SPLIT_REPORT)
    return report


def train(params: Params, root: Path) -> dict:
    """Search and fit the pipeline on the training window: in this process, or on the Dask cluster that
    $RETRAINER_DASK_SCHEDULER names (io/compute.py; ComputeUnreachable naming it when it does not answer)."""
    from retrainer.io.compute import retry_lost_worker, search_backend
    from retrainer.steps.train import fit_model

    columns = list(dict.fromkeys([*params.features.all, params.data.target.name, params.data.time_column]))
    with search_backend() as scheduler:  # first: an unreachable scheduler is reported before the rows are read
        frame = read_parquet(root / TRAIN, columns=columns)  # not the other columns (identifiers, leaks)
        result = retry_lost_worker(
            lambda: fit_model(
                frame,
                list(params.features.numeric),
                list(params.features.categorical),
                params.data.target.name,
                params.data.time_column,
                params.train,
                params.train.feature_selection,
                params.split.validation_fraction,
            ),
            scheduler,
        )
    write_joblib({"model": result.model, "threshold": result.threshold, "features": result.features}, root / MODEL)
    report = {
        "best_params": result.best_params,
        "cv_best_score": result.cv_best_score,
        "cv_scoring": params.train.scoring,
        "cv_results": result.cv_results,
        "features": result.features,
        "threshold": result.threshold,
        "fit_seconds": round(result.fit_seconds, 3),
        "search_seconds": round(result.search_seconds, 3),
        "search_on": scheduler or "in-process",  # the Dask scheduler's address when the search ran on a cluster
        "rows_fit": result.rows_fit,
        "rows_validation": result.rows_validation,
    }
    write_json(report, root / TRAIN_REPORT)
    return report


def load_model(root: Path) -> dict:
    """The trained bundle: {'model', 'threshold', 'features'}."""
    import joblib  # here: the stages that never load a model skip its import

    return joblib.load(root / MODEL)


def evaluate(params: Params, root: Path) -> dict:
    """Holdout metrics, per-row predictions, plot tables and PNGs."""
    from retrainer.io.plots import write_evaluation_plots
    from retrainer.steps.evaluate import classification_metrics, evaluation_curves, feature_importance

    bundle = load_model(root)
    holdout = read_parquet(root / HOLDOUT)
    label, time_column = params.data.target.name, params.data.time_column
    y = holdout[label].to_numpy()
    proba = bundle["model"].predict_proba(holdout[bundle["features"]])[:, 1]
    metrics = classification_metrics(y, proba, bundle["threshold"])
    curves = evaluation_curves(y, proba, bundle["threshold"], params.evaluate.calibration_bins)
    importance = feature_importance(
        bundle["model"],
        holdout[bundle["features"]],
        holdout[label],
        params.evaluate.importance_rows,
        params.train.seed,
    )
    plots = root / PLOTS
    plots.mkdir(parents=True, exist_ok=True)
    for name, table in {**curves, "feature_importance": importance}.items():
        table.to_csv(plots / f"{name}.csv", index=False)
    write_evaluation_plots(curves, importance, metrics, plots)
    keep = [c for c in (time_column, *params.features.categorical) if c in holdout.columns]
    write_parquet(holdout[keep].assign(label=y, proba=proba), root / PREDICTIONS)
    write_json(metrics, root / METRICS)
    return metrics


def lineage_tags(params: Params, root: Path, threshold: float) -> dict[str, str]:
    """The tags that tie a model version to its code, data files, params and threshold."""
    from retrainer.io.git import code_version

    return {
        **code_version(root),
        "data_md5": file_md5(root / TRAIN),
        "holdout_md5": file_md5(root / HOLDOUT),
        "dataset_md5": file_md5(root / DATASET),
        "params_hash": params_hash(params),
        "threshold": f"{threshold:.6f}",
        "model_family": params.train.model,
    }


def run_params(params: Params, train_report: dict, bundle: dict) -> dict:
    """The MLflow run params: the search's best values and the choices that shaped the training."""
    return {
        **{f"best.{k}": v for k, v in train_report["best_params"].items()},
        "model": params.train.model,
        "class_weight": params.train.class_weight,
        "seed": params.train.seed,
        "search": params.train.search.method,
        "cv_splits": params.train.cv_splits,
        "window_months": params.split.window_months,
        "holdout_fraction": params.split.holdout_fraction,
        "features": ",".join(bundle["features"]),
        "threshold": bundle["threshold"],
    }


def register(params: Params, root: Path) -> dict:
    """Log the run to MLflow and register the model as a new version."""
    from retrainer.io.tracking import log_training_run

    bundle = load_model(root)
    train_report = read_json(root / TRAIN_REPORT)
    metrics = read_json(root / METRICS)
    tags = lineage_tags(params, root, bundle["threshold"])
    registration = log_training_run(
        experiment=params.tracking.experiment,
        model_name=params.tracking.registered_model,
        model=bundle["model"],
        features=bundle["features"],
        train_frame=read_parquet(root / TRAIN),
        params=run_params(params, train_report, bundle),
        metrics={
            **{f"holdout_{k}": v for k, v in metrics.items()},
            "cv_best_score": train_report["cv_best_score"],
            "fit_seconds": train_report["fit_seconds"],
        },
        tags=tags,
        artifacts=sorted((root / PLOTS).glob("*.png")),
        reports={
            "ingest": read_json(root / INGEST_REPORT),
            "split": read_json(root / SPLIT_REPORT),
            "train": train_report,
            "metrics": metrics,
            "reference_profile": write_reference_profile(params, root, bundle["threshold"], metrics),
        },
        root=root,
    )
    payload = {**registration.to_dict(), "tags": tags}
    write_json(payload, root / REGISTRATION)
    return payload


def write_reference_profile(params: Params, root: Path, threshold: float, metrics: dict) -> dict:
    """The profile the monitor compares served traffic with: training-window features, holdout predictions."""
    from retrainer.steps.profile import profile_from_params

    holdout = read_parquet(root / PREDICTIONS, columns=["label", "proba"])
    train = read_parquet(root / TRAIN, columns=params.features.all)
    profile = profile_from_params(
        params, train, holdout["label"].to_numpy(), holdout["proba"].to_numpy(), threshold, metrics
    )
    write_json(profile, root / PROFILE)
    return profile


STAGES: dict[str, Callable[[Params, Path], dict]] = {
    "validate": validate,
    "ingest": ingest,
    "split": split,
    "train": train,
    "evaluate": evaluate,
    "register": register,
}


def pipeline_stages(params: Params) -> list[str]:
    """The dvc.yaml stage names in run order: a reference table's stage is DVC's foreach name, reference@<index>."""
    references = [f"{REFERENCE}@{index}" for index in range(len(params.data.references))]
    return ["validate", *references, *(name for name in STAGES if name != "validate")]


def find_reference(params: Params, key: str) -> Reference:
    """The reference table a `reference@KEY` stage names: KEY is its name (dvc.yaml's cmd) or index (DVC's name)."""
    references = params.data.references
    for ref in references:
        if ref.name == key:
            return ref
    if key.isdigit() and int(key) < len(references):
        return references[int(key)]
    raise KeyError(f"no reference table '{key}' in data.references ({', '.join(r.name for r in references) or 'none'})")


def run_stage(name: str, params: Params, root: Path) -> dict:
    """Run one stage by name (`reference@NAME` for a reference table) with one OpenMP/BLAS thread per process.

    At these data sizes a second thread gains a few percent on a quiet machine and loses several-fold on a busy
    one (an idle Prefect server, a service, the other core's work); the flow and `dvc repro` both come here.
    """
    kind, _, key = name.partition("@")
    if kind == REFERENCE and key:
        return reference(params, root, find_reference(params, key))
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}'; choose from {', '.join(STAGES)}, {REFERENCE}@NAME")
    with one_thread(loads_model=name in MODEL_STAGES):
        return STAGES[name](params, root)


MODEL_STAGES = frozenset({"train", "evaluate", "register"})  # the stages that fit, score or load a model


def one_thread(loads_model: bool = True) -> contextlib.AbstractContextManager:
    """A context with one OpenMP and one BLAS thread. threadpoolctl limits only the libraries already loaded, and
    the stages import scikit-learn lazily: for a stage that `loads_model`, its OpenMP runtime is loaded first
    (without it, a `dvc repro` train stage ran on two spinning OpenMP threads: 315 s on a loaded 2-core machine
    against 8 s with one). The other stages never import scikit-learn, so they skip its import (about 1 s a stage)."""
    if loads_model:
        import sklearn.ensemble  # noqa: F401  # loads the OpenMP (HistGradientBoosting) and BLAS runtimes
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)
