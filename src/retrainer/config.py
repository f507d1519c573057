"""Load params.yaml once into a frozen, validated configuration object."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Annotated, Literal

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
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$", description="names batch files")
    batch_source: str
    references: tuple[Reference, ...] = ()
    time_column: str
    key_columns: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    leaking_columns: tuple[str, ...] = ()
    target: Target
    bootstrap: Window
    batches_dir: str = "data/batches"

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        """Columns known only after the fact (the target and the leaking columns): never asked of a client."""
        return tuple(dict.fromkeys((self.target.column, *self.leaking_columns)))


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
    n_jobs: int = Field(ge=1, default=1)
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
    enabled: bool = True
    service_url: str = Field(default="http://127.0.0.1:3000", pattern=r"^https?://", description="`retrainer serve`")
    replica_urls: tuple[Annotated[str, Field(pattern=r"^https?://")], ...] = Field(
        default=(), description="each replica behind service_url (a proxy): the canary sums their /metrics counters"
    )
    steps: tuple[float, ...] = Field(default=(10, 25, 50, 100), min_length=1, description="challenger traffic, %")
    min_requests_per_step: int = Field(default=200, ge=1, description="challenger requests before a step is judged")
    min_seconds_per_step: float = Field(default=60, ge=0)
    max_seconds_per_step: float = Field(default=900, gt=0, description="a step still waiting then is rolled back")
    max_error_rate: float = Field(default=0.02, ge=0, le=1)
    error_rate_tolerance: float = Field(default=0.01, ge=0, le=1)
    max_p95_latency_ratio: float = Field(default=2.0, gt=0)
    max_p95_latency_ms: float = Field(default=250, gt=0)
    divergence_bins: int = Field(default=10, ge=2)
    max_divergence: float = Field(default=0.25, ge=0, description="PSI of the arms' predicted probabilities")
    min_agreement: float = Field(default=0.9, ge=0, le=1)
    min_labels: int = Field(default=100, ge=1)
    significance: float = Field(default=0.05, gt=0, lt=1)
    feedback_delay_seconds: float = Field(default=0.5, ge=0)

    @model_validator(mode="after")
    def _check_steps(self) -> CanaryConfig:
        steps = list(self.steps)
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError(f"canary.steps must rise strictly within (0, 100] and end at 100, got {steps}")
        if self.max_seconds_per_step < self.min_seconds_per_step:
            raise ValueError("canary.max_seconds_per_step must be at least canary.min_seconds_per_step")
        return self


class ServeConfig(_Frozen):
    max_request_bytes: int = Field(
        default=8 << 20, ge=1024, description="larger request bodies are refused (413) before they are read"
    )
    routing_key: tuple[str, ...] = Field(
        default=(), description="record fields whose values pick the arm (sticky); empty: data.key_columns"
    )
    golden_rows: int = Field(default=200, ge=10, description="rows in the golden set `retrainer rollback` replays")
    state_refresh_seconds: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="each service process re-reads the saved rollout state this often (replicas share it)",
    )


class RetrainConfig(_Frozen):
    inbox_dir: str = "data/incoming"
    schedule_cron: str = "0 6 * * *"
    deployment: str = "retrain-scheduled"
    ship_deployment: str = Field(
        default="ship-on-merge", description="the unscheduled deployment of the ship flow, started by CD on a merge"
    )
    lock_timeout_seconds: float = Field(
        ge=0, default=1800, description="how long a run waits for another run's workspace lock (0: do not wait)"
    )


class MonitorWindow(_Frozen):
    hours: float = Field(gt=0, default=168, description="predictions logged in the last N hours")
    max_predictions: int = Field(ge=1, default=200_000, description="the newest N of them at most")
    min_predictions: int = Field(ge=1, default=500, description="fewer: drift is not judged")


class MonitorDrift(_Frozen):
    exclude: tuple[str, ...] = Field(default=(), description="features whose drift is reported but not judged")
    bins: int = Field(ge=2, default=10)
    sample_rows: int = Field(ge=100, default=5000, description="reference values kept per numeric feature for KS")
    psi_max: float = Field(gt=0, default=0.2)
    ks_max: float = Field(gt=0, le=1, default=0.1)
    js_max: float = Field(gt=0, le=1, default=0.1, description="Jensen-Shannon distance, base 2")
    new_category_share: float = Field(gt=0, le=1, default=0.01)
    significance: float = Field(gt=0, lt=1, default=0.01)
    share_max: float = Field(gt=0, le=1, default=0.5, description="share of judged features drifting")
    prediction_psi_max: float = Field(gt=0, default=0.2)


class MonitorPerformance(_Frozen):
    metric: Literal["roc_auc", "accuracy"] = "roc_auc"
    max_drop: float = Field(gt=0, le=1, default=0.05)
    min_labels: int = Field(ge=10, default=2000)


class MonitorTrigger(_Frozen):
    consecutive: int = Field(ge=1, default=2, description="alarming passes in a row before a retrain fires")
    rearm_level: float = Field(gt=0, lt=1, default=0.5, description="signal level (1 = threshold) that re-arms")
    cooldown_hours: float = Field(ge=0, default=24)
    min_new_labels: int = Field(ge=0, default=2000, description="labelled rows waiting in the inbox")


class MonitorConfig(_Frozen):
    schedule_cron: str = "30 * * * *"
    deployment: str = "monitor-scheduled"
    window: MonitorWindow = MonitorWindow()
    drift: MonitorDrift = MonitorDrift()
    performance: MonitorPerformance = MonitorPerformance()
    trigger: MonitorTrigger = MonitorTrigger()


Severity = Literal["block", "warn"]


class ColumnRule(_Frozen):
    kind: Literal["integer", "number", "string", "datetime", "boolean"]
    nullable: bool = False


class RangeRule(_Frozen):
    min: float | None = None
    max: float | None = None
    strict_min: bool = False
    strict_max: bool = False
    severity: Severity | None = Field(default=None, description="overrides validate.severity.ranges")

    @model_validator(mode="after")
    def _bounded(self) -> RangeRule:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class CategoryRule(_Frozen):
    values: tuple[str, ...] = Field(min_length=1)
    severity: Severity | None = Field(default=None, description="overrides validate.severity.categories")


class RowCountRule(_Frozen):
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> RowCountRule:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class ShareBounds(_Frozen):
    min: float = Field(ge=0, le=1)
    max: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> ShareBounds:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class LabelChecks(_Frozen):
    min_labelled_share: float = Field(ge=0, le=1)
    positive_rate: ShareBounds


class DriftConfig(_Frozen):
    features: tuple[str, ...] = ()
    bins: int = Field(ge=2, default=10)
    psi_max: float = Field(gt=0, default=0.2)
    ks_max: float = Field(gt=0, le=1, default=0.1)


class MissingValues(_Frozen):
    """The exact CSV cell texts read as missing, per column kind (pandas `keep_default_na=False` + `na_values`)."""

    text: tuple[str, ...] = ("",)
    number: tuple[str, ...] = ("", "NA", "NaN", "N/A", "null")


class CompletenessConfig(_Frozen):
    """Is the batch the whole period it claims? It claims the calendar period (month by default) of its median time;
    `min_time_coverage` is the least share of that period its first-to-last time must span, `min_row_share` the least
    share of the rows the reference data shows for a span of that length."""

    period: Literal["month", "week", "day"] = "month"
    min_time_coverage: float = Field(default=0.9, ge=0, le=1)
    min_row_share: float = Field(default=0.05, ge=0)


class SeverityPolicy(_Frozen):
    columns: Severity = "block"
    types: Severity = "block"
    not_null: Severity = "block"
    finite: Severity = "block"
    ranges: Severity = "block"
    categories: Severity = "block"
    unique_key: Severity = "block"
    row_count: Severity = "block"
    freshness: Severity = "block"
    labelled_share: Severity = "block"
    time_coverage: Severity = "block"
    row_share: Severity = "warn"
    positive_rate: Severity = "warn"
    drift: Severity = "warn"


class ValidateConfig(_Frozen):
    max_file_mb: float = Field(gt=0)
    quarantine_dir: str = "data/quarantine"
    missing_values: MissingValues = MissingValues()
    columns: dict[str, ColumnRule] = Field(min_length=1, description="the raw batch schema")
    ranges: dict[str, RangeRule] = Field(default_factory=dict)
    categories: dict[str, CategoryRule] = Field(default_factory=dict)
    row_count: RowCountRule
    label: LabelChecks
    completeness: CompletenessConfig = CompletenessConfig()
    drift: DriftConfig = DriftConfig()
    severity: SeverityPolicy = SeverityPolicy()

    @model_validator(mode="after")
    def _known_columns(self) -> ValidateConfig:
        for section, names in (
            ("ranges", self.ranges),
            ("categories", self.categories),
            ("drift.features", self.drift.features),
        ):
            unknown = sorted(set(names) - set(self.columns))
            if unknown:
                raise ValueError(f"{section}: columns {unknown} are not in validate.columns")
        return self


# `validate` shadows the deprecated BaseModel.validate classmethod; the section is named after its stage,
# so the field keeps the name and the harmless shadowing warning is silenced here only.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "validate"', category=UserWarning)

    class _WithValidate(_Frozen):
        validate: ValidateConfig

        @model_validator(mode="after")
        def _validate_names_dataset_columns(self) -> _WithValidate:
            data = getattr(self, "data", None)
            if data is None:
                return self
            needed = {data.time_column, data.target.column, *data.key_columns}
            missing = sorted(needed - set(self.validate.columns))
            if missing:
                raise ValueError(f"validate.columns: lacks {missing} (time column, target or key columns)")
            serve = getattr(self, "serve", None)
            routing = sorted(set(serve.routing_key if serve else ()) - set(self.validate.columns))
            if routing:
                raise ValueError(f"serve.routing_key: {routing} are not in validate.columns")
            return self


class Params(_WithValidate):
    data: DataConfig
    features: FeaturesConfig
    split: SplitConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    gate: GateConfig
    canary: CanaryConfig = CanaryConfig()
    serve: ServeConfig = ServeConfig()
    retrain: RetrainConfig = RetrainConfig()
    monitor: MonitorConfig = MonitorConfig()

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
        unknown = sorted(set(self.monitor.drift.exclude) - set(self.features.all))
        if unknown:
            raise ValueError(f"monitor.drift.exclude: {unknown} are not in features")
        if self.train.model not in self.train.search.space:
            raise ValueError(f"train.search.space: no search space for train.model '{self.train.model}'")
        joined = {name for ref in self.data.references for name in ref.columns.values()}
        unmade = sorted(set(self.features.all) - set(self.validate.columns) - joined)
        if unmade:
            raise ValueError(
                f"features: {unmade} are neither in validate.columns (the batch schema) nor joined from "
                "data.references: the service could not build them from a request"
            )
        return self

    @model_validator(mode="after")
    def _feature_kinds(self) -> Params:
        """Features the model can take from their `validate.columns` kind: categories are text, numbers numeric."""
        columns = self.validate.columns
        coded = sorted(c for c in self.features.categorical if c in columns and columns[c].kind != "string")
        if coded:
            kinds = ", ".join(f"{c} ({columns[c].kind})" for c in coded)
            raise ValueError(
                f"features.categorical: {kinds} are not of kind string in validate.columns: training encodes a "
                "category as text, as the service does; make them string columns, or numeric features"
            )
        texts = sorted(c for c in self.features.numeric if c in columns and columns[c].kind in ("string", "datetime"))
        if texts:
            kinds = ", ".join(f"{c} ({columns[c].kind})" for c in texts)
            raise ValueError(
                f"features.numeric: {kinds} are not numbers in validate.columns: the model cannot use them"
            )
        return self


def resolve_params_path(explicit: str | Path | None = None, root: Path | None = None) -> Path:
    """The params file: explicit argument, else $RETRAINER_PARAMS, else params.yaml in `root` (default: ./)."""
    return Path(explicit or os.environ.get(PARAMS_ENV) or (root or Path()) / "params.yaml")


DVC_PARAMS = "params.yaml"


def require_dvc_params(root: Path) -> Path:
    """The params file, when DVC's stages will read it too; else ConfigError naming both files and the fix.

    dvc.yaml takes its data paths and tracked params from `root/params.yaml` (DVC cannot be pointed elsewhere), so a
    command that runs DVC stages with another --params file would silently decide on params.yaml. A file with the
    same content is the same choice and is accepted.
    """
    chosen, dvc_file = resolve_params_path(root=root).resolve(), (root / DVC_PARAMS).resolve()
    if chosen == dvc_file or (chosen.is_file() and dvc_file.is_file() and chosen.read_bytes() == dvc_file.read_bytes()):
        return chosen
    raise ConfigError(
        f"--params {chosen}: this command runs DVC stages, and DVC reads {dvc_file} (dvc.yaml's paths and params), "
        f"not {chosen.name}. Copy it there (cp {chosen} {dvc_file}) and run without --params/{PARAMS_ENV}, "
        f"or try it in a workspace of its own (retrainer --params {chosen} demo)."
    )


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
