"""MLflow adapter: log a training run and register its model as a new version."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from retrainer.io.backend import redact_uri
from retrainer.io.project import artifact_location, tracking_uri


@dataclass(frozen=True)
class Registration:
    """Where a trained model landed in MLflow."""

    run_id: str
    experiment_id: str
    model_name: str
    version: str
    tracking_uri: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def connect(root: Path | None = None) -> str:
    """Point MLflow at the project's store (MLFLOW_TRACKING_URI, else RETRAINER_DATABASE_URL, else SQLite under the
    home) and the object store's endpoint, if one is configured; return the tracking URI. Raises DatabaseUnreachable
    when the store is the team database and it does not answer."""
    import mlflow

    from retrainer.io.backend import check_database, database_url, export_s3_endpoint

    export_s3_endpoint()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(root)
    if uri == database_url():
        check_database(uri)  # our error names host and port; MLflow's would retry, then bury them in a traceback
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, root: Path | None = None) -> str:
    """The experiment id, creating the experiment with a project-local artifact root if needed."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location(root))


def _requirements() -> list[str]:
    """Pinned serving requirements, stated rather than inferred (inference re-imports the model: slow)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "pandas", "numpy", "cloudpickle", "pyarrow")]


# Open uses of own_functions_by_value per module it registered (the registry is process-wide).
_BY_VALUE_LOCK = threading.Lock()
_BY_VALUE_USERS: Counter[str] = Counter()


@contextmanager
def own_functions_by_value(model) -> Iterator[None]:
    """While open, cloudpickle stores the retrainer functions that `model`'s parameters name (such as the numeric
    imputer's strategy, steps.train.median_or_zero) by value, not by name.

    By name, the logged model would load only where retrainer is installed, which its pip requirements do not say:
    `mlflow models serve` or another project loading models:/<name>/<version> failed with "No module named
    'retrainer'" (a breaker test). cloudpickle's documented switch, `register_pickle_by_value`, is per module and
    process-wide; a module this registers is unregistered when the last open use of it closes, so nesting and threads
    are safe, and a module registered by someone else before the first use stays registered. (One registered by
    someone else while a use is open is undone with it: cloudpickle's registry records no owner.)
    """
    import cloudpickle

    names = {
        value.__module__
        for step in _estimators(model)
        for value in step.get_params(deep=False).values()
        if callable(value) and getattr(value, "__module__", "").startswith("retrainer.")
    }
    with _BY_VALUE_LOCK:
        ours = [name for name in sorted(names) if name in _BY_VALUE_USERS or not _registered(name)]
        for name in ours:
            if not _registered(name):  # first use, or unregistered by someone else under an open one
                cloudpickle.register_pickle_by_value(sys.modules[name])
            _BY_VALUE_USERS[name] += 1
    try:
        yield
    finally:
        with _BY_VALUE_LOCK:
            for name in ours:
                _BY_VALUE_USERS[name] -= 1
                if not _BY_VALUE_USERS[name]:
                    del _BY_VALUE_USERS[name]
                    if _registered(name):  # unregistered inside the block: raising here would hide its exception
                        cloudpickle.unregister_pickle_by_value(sys.modules[name])


def _registered(module_name: str) -> bool:
    import cloudpickle

    return module_name in cloudpickle.list_registry_pickle_by_value()


def _estimators(model) -> list:
    """`model` and every estimator nested in its parameters (pipelines, column transformers, their steps)."""
    nested = [value for value in model.get_params(deep=True).values() if hasattr(value, "get_params")]
    return [model, *nested]


def input_signature(model, frame: pd.DataFrame) -> tuple[pd.DataFrame, object]:
    """A five-row input example and the MLflow signature of the model's positive-class probability on it."""
    from mlflow.models import infer_signature

    example = frame.head(5)
    # integers may be missing at serving time: declare them as doubles in the signature
    example = example.astype({c: "float64" for c in example.select_dtypes("integer").columns})
    return example, infer_signature(example, model.predict_proba(example)[:, 1])


def log_records(params: dict, metrics: dict, reports: dict, artifacts: Sequence[Path]) -> None:
    """Params (as text), finite metrics, JSON reports and plot files into the active MLflow run."""
    import mlflow

    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
    for name, payload in reports.items():
        mlflow.log_dict(payload, f"reports/{name}.json")
    for path in artifacts:
        mlflow.log_artifact(str(path), artifact_path="plots")


def log_training_run(
    *,
    experiment: str,
    model_name: str,
    model,
    features: list[str],
    train_frame: pd.DataFrame,
    tags: dict[str, str],
    params: dict[str, object] | None = None,
    metrics: dict[str, float] | None = None,
    artifacts: Sequence[Path] = (),
    reports: dict[str, dict | list] | None = None,
    root: Path | None = None,
) -> Registration:
    """One MLflow run: params, metrics, reports, plots, training data input, and a registered model version."""
    import mlflow

    uri = connect(root)
    experiment_id = ensure_experiment(experiment, root)
    example, signature = input_signature(model, train_frame[features])
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        log_records(params or {}, metrics or {}, reports or {}, artifacts)
        dataset = mlflow.data.from_pandas(train_frame, name="training", targets=None)
        mlflow.log_input(dataset, context="training")
        with own_functions_by_value(model):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example,
                serialization_format="cloudpickle",
                pyfunc_predict_fn="predict_proba",
                registered_model_name=model_name,
                pip_requirements=_requirements(),
            )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_model_version_tag(model_name, version, "dataset_digest", dataset.digest)
    return Registration(run.info.run_id, experiment_id, model_name, version, redact_uri(uri))
