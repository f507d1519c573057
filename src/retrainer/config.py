"""Load params.yaml once into a frozen, validated configuration object."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_ENV = "RETRAINER_PARAMS"


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Reference(_Frozen):
    name: str
    path: str
    join_on: tuple[str, ...] = Field(min_length=1)
    columns: dict[str, str] = Field(min_length=1, description="source column -> name in the dataset")


class Target(_Frozen):
    column: str
    threshold: float
    name: str = "label"


class Window(_Frozen):
    start: str
    end: str


class DataConfig(_Frozen):
    batch_source: str
    references: tuple[Reference, ...] = ()
    time_column: str
    key_columns: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    leaking_columns: tuple[str, ...] = ()
    target: Target
    bootstrap: Window
    batches_dir: str = "data/batches"


class FeaturesConfig(_Frozen):
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class SplitConfig(_Frozen):
    window_months: int = Field(ge=0)
    holdout_fraction: float = Field(gt=0, lt=1)
    validation_fraction: float = Field(gt=0, lt=1)


class SearchConfig(_Frozen):
    method: Literal["halving", "random"] = "halving"
    n_candidates: int = Field(ge=1)
    factor: int = Field(ge=2, default=3)
    space: dict[str, dict[str, list]]


class FeatureSelection(_Frozen):
    enabled: bool = False
    method: Literal["mutual_info", "l1"] = "mutual_info"
    k: int = Field(ge=1, default=15)
    sample_rows: int = Field(ge=100, default=20000)


class TrainConfig(_Frozen):
    model: Literal["hgb", "logreg"] = "hgb"
    seed: int
    class_weight: Literal["balanced", "none"] = "balanced"
    cv_splits: int = Field(ge=2)
    scoring: str = "roc_auc"
    search: SearchConfig
    feature_selection: FeatureSelection = FeatureSelection()


class EvaluateConfig(_Frozen):
    threshold_metric: Literal["f1"] = "f1"
    calibration_bins: int = Field(ge=2, default=10)
    importance_rows: int = Field(ge=100, default=5000)


class TrackingConfig(_Frozen):
    experiment: str
    registered_model: str


class ImprovementPolicy(_Frozen):
    policy: Literal["must_improve", "must_not_be_worse"] = "must_not_be_worse"
    margin: float = Field(ge=0, default=0.0)
    bootstrap_samples: int = Field(ge=50, default=500)
    confidence: float = Field(gt=0.5, lt=1, default=0.95)
    seed: int = 0


class SlicePolicy(_Frozen):
    columns: tuple[str, ...] = ()
    min_rows: int = Field(ge=1, default=200)
    max_drop: float = Field(ge=0, default=0.03)


class Budgets(_Frozen):
    latency_p95_ms: float = Field(gt=0)
    model_size_mb: float = Field(gt=0)
    train_seconds: float = Field(gt=0)


class GateConfig(_Frozen):
    metric: Literal["roc_auc", "pr_auc"] = "roc_auc"
    floors: dict[str, float] = Field(default_factory=dict)
    max_regression: dict[str, float] = Field(default_factory=dict)
    improvement: ImprovementPolicy = ImprovementPolicy()
    slices: SlicePolicy = SlicePolicy()
    budgets: Budgets
    latency_rows: int = Field(ge=10, default=200)


class CanaryConfig(_Frozen):
    enabled: bool = False


class RetrainConfig(_Frozen):
    inbox_dir: str = "data/incoming"
    schedule_cron: str = "0 6 * * *"
    deployment: str = "retrain-scheduled"


class Params(_Frozen):
    data: DataConfig
    features: FeaturesConfig
    split: SplitConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    gate: GateConfig
    canary: CanaryConfig = CanaryConfig()
    retrain: RetrainConfig = RetrainConfig()

    @model_validator(mode="after")
    def _no_leaks(self) -> Params:
        leaking = set(self.data.leaking_columns) | {self.data.target.column}
        bad = sorted(leaking & set(self.features.all))
        if bad:
            raise ValueError(
                f"features: {bad} leak the outcome (listed in data.leaking_columns or the target); remove them"
            )
        hidden = sorted(set(self.data.identifiers) & set(self.features.all))
        if hidden:
            raise ValueError(f"features: identifier columns {hidden} are pseudonymised and cannot be features")
        if self.train.model not in self.train.search.space:
            raise ValueError(f"train.search.space: no search space for train.model '{self.train.model}'")
        return self


def resolve_params_path(explicit: str | Path | None = None) -> Path:
    """The params file: explicit argument, else $RETRAINER_PARAMS, else ./params.yaml."""
    return Path(explicit or os.environ.get(PARAMS_ENV) or "params.yaml")


def load_params(path: str | Path | None = None) -> Params:
    """Read and validate a params file; every problem names its key."""
    file = resolve_params_path(path)
    if not file.is_file():
        raise ConfigError(f"params file not found: {file} (set --params or {PARAMS_ENV})")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{file}: {problems}") from None


def params_hash(params: Params) -> str:
    """A stable digest of the effective configuration."""
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
