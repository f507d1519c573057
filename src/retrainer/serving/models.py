"""Where served models come from: the MLflow registry (by alias) or the models packed inside a Bento."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from retrainer.io import registry

if TYPE_CHECKING:
    from retrainer.serving.scorer import CompiledScorer

LOGGER = logging.getLogger("bentoml.retrainer")  # under BentoML's logger: the service's log shows it
MANIFEST = "retrainer_bento.json"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class LoadedModel:
    """A fitted pipeline ready to score, with the threshold its version was registered with.

    `compiled` is the same pipeline's arithmetic on numpy columns (checked equal when it was built), when the
    pipeline's structure allows; otherwise scoring goes through the pipeline itself.
    """

    version: str
    pipeline: Any
    threshold: float
    compiled: CompiledScorer | None = None

    @classmethod
    def of(cls, version: str, pipeline: Any, threshold: float) -> LoadedModel:
        """A loaded version, compiled for scoring when its pipeline allows (the log says which way it scores)."""
        # here, not at module level: packaging writes manifests with this module and never scores, and the scorer's
        # scikit-learn imports cost about 3 s of CPU per packaging process on a 2-core machine
        from retrainer.serving.scorer import compile_pipeline

        compiled = compile_pipeline(pipeline)
        way = f"compiled ({compiled.path})" if compiled is not None else "the sklearn pipeline (not compiled)"
        LOGGER.info("v%s scores with %s", version, way)
        return cls(version, pipeline, threshold, compiled)

    def score(self, columns: Mapping[str, np.ndarray], frame: Callable[[Mapping[str, np.ndarray]], Any]) -> np.ndarray:
        """Positive-class probabilities of feature columns; `frame` builds the DataFrame when the pipeline scores."""
        if self.compiled is not None:
            return self.compiled.predict_proba(columns)
        return np.asarray(self.pipeline.predict_proba(frame(columns))[:, 1], dtype=np.float64)


class ModelSource(Protocol):
    """Resolves aliases to versions, loads versions, and moves the champion."""

    def champion_version(self) -> str | None: ...

    def challenger_version(self) -> str | None: ...

    def load(self, version: str) -> LoadedModel: ...

    def set_champion(self, version: str, expected: str | None) -> tuple[bool, str]: ...


def _threshold(tags: dict[str, str]) -> float:
    try:
        return float(tags.get("threshold", DEFAULT_THRESHOLD))
    except ValueError:
        return DEFAULT_THRESHOLD


class MlflowSource:
    """The MLflow registry: champion/challenger aliases and compare-and-set promotion under the registry lock."""

    def __init__(self, model_name: str, lock_path: Path):
        from retrainer.io.tracking import connect

        connect()
        self.model_name = model_name
        self.lock_path = lock_path

    def champion_version(self) -> str | None:
        return registry.alias_version(self.model_name, registry.CHAMPION)

    def challenger_version(self) -> str | None:
        return registry.alias_version(self.model_name, registry.CHALLENGER)

    def load(self, version: str) -> LoadedModel:
        pipeline = registry.load_version(self.model_name, version)
        return LoadedModel.of(version, pipeline, _threshold(registry.version_tags(self.model_name, version)))

    def set_champion(self, version: str, expected: str | None) -> tuple[bool, str]:
        outcome = registry.promote_if_current(self.model_name, version, expected, self.lock_path)
        return outcome.promoted, outcome.reason


def bento_model_tag(model_name: str, version: str) -> str:
    """The BentoML store tag of an MLflow model version: one registered version, one immutable store entry."""
    return f"{model_name}:v{version}"


def write_manifest(
    directory: Path, model_name: str, versions: list[str], champion: str | None, challenger: str | None
) -> Path:
    """The file a built Bento carries to know its models without reaching MLflow."""
    path = directory / MANIFEST
    payload = {
        "model_name": model_name,
        "models": {v: bento_model_tag(model_name, v) for v in versions},
        "champion": champion,
        "challenger": challenger,
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
    return path


class BentoSource:
    """Models packed in a Bento, named by the manifest; promotion is local to the rollout state."""

    def __init__(self, manifest: Path):
        payload = json.loads(manifest.read_text(encoding="utf-8"))
        self.model_name = str(payload["model_name"])
        self._tags = {str(k): str(v) for k, v in payload["models"].items()}
        self._champion = payload.get("champion")
        self._challenger = payload.get("challenger")

    def champion_version(self) -> str | None:
        return self._champion

    def challenger_version(self) -> str | None:
        return self._challenger

    def load(self, version: str) -> LoadedModel:
        import bentoml
        import mlflow.sklearn

        if version not in self._tags:
            raise KeyError(f"v{version} is not packed in this Bento (has {sorted(self._tags)})")
        model = bentoml.models.get(self._tags[version])
        pipeline = mlflow.sklearn.load_model(model.path_of("mlflow_model"))
        return LoadedModel.of(version, pipeline, _threshold(dict(model.info.labels)))

    def set_champion(self, version: str, expected: str | None) -> tuple[bool, str]:
        if version not in self._tags:
            return False, f"v{version} is not packed in this Bento"
        self._champion = version
        return True, f"v{version} promoted over v{expected} (Bento-local)"


def open_source(root: Path, model_name: str, lock_path: Path) -> ModelSource:
    """A Bento manifest in the working folder means: serve the packed models; otherwise the MLflow registry."""
    manifest = root / MANIFEST
    if manifest.is_file():
        return BentoSource(manifest)
    return MlflowSource(model_name, lock_path)
