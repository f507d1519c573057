"""Build the Great Expectations suite from params, run it on a DataFrame, summarise results, measure drift."""

from __future__ import annotations

import datetime as dt
import enum
import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from retrainer.config import CompletenessConfig, DataConfig, DriftConfig, SeverityPolicy, ValidateConfig
from retrainer.steps.drift import bin_shares, compute_psi, count_shares, quantile_edges

GX_SEVERITY = {"block": "critical", "warn": "warning"}
TRAINED_UNTIL_PARAMETER = "trained_until"
MAX_EXAMPLES = 5
NUMERIC_KINDS = ("integer", "number")
SCHEMA_CHECKS = ("columns", "types")
# the largest finite float64: a value outside [-FLOAT_MAX, FLOAT_MAX] is inf or -inf (NaN is missing, not a value)
FLOAT_MAX = float(np.finfo(np.float64).max)
# pandas period aliases for the completeness check's calendar periods
PERIOD_ALIASES = {"month": "M", "week": "W", "day": "D"}


@dataclass(frozen=True)
class ExpectationSpec:
    """One expectation as params describe it: a stable check name, the GX class, its arguments, a severity."""

    check: str
    expectation: str
    kwargs: dict[str, Any]
    severity: str
    column: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """One expectation's outcome in plain, JSON-safe values."""

    check: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    unexpected_count: int | None = None
    examples: list = field(default_factory=list)
    observed: Any = None
    error: str | None = None
    rows: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The result as the failure/warning dict the outcome reports (`rows`: 0-based row numbers of examples)."""
        out = {
            "check": self.check,
            "expectation": self.expectation,
            "column": self.column,
            "severity": self.severity,
            "unexpected_count": self.unexpected_count,
            "examples": self.examples[:MAX_EXAMPLES],
            "observed": self.observed,
            "rows": self.rows[:MAX_EXAMPLES],
        }
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class ResultSummary:
    """Expectation results split by what they mean for the batch."""

    failures: list[dict]
    warnings: list[dict]
    skipped: list[dict]
    checks: list[dict]


def label_rate_column(data: DataConfig) -> str:
    """The derived column (label share per row) the positive-rate expectation reads."""
    return f"{data.target.name}__positive"


def build_expectation_specs(config: ValidateConfig, data: DataConfig) -> list[ExpectationSpec]:
    """Every expectation of the batch suite, derived from the validate and data sections of params."""
    sev = config.severity
    specs = [
        ExpectationSpec(
            "columns",
            "ExpectTableColumnsToMatchSet",
            {"column_set": list(config.columns), "exact_match": False},
            sev.columns,
        )
    ]
    for name, rule in config.columns.items():
        specs.append(
            ExpectationSpec(
                f"types.{name}",
                "ExpectColumnDtypeToBeKind",
                {"column": name, "kind": rule.kind},
                sev.types,
                name,
            )
        )
    for name, rule in config.columns.items():
        if not rule.nullable:
            specs.append(
                ExpectationSpec(
                    f"not_null.{name}", "ExpectColumnValuesToNotBeNull", {"column": name}, sev.not_null, name
                )
            )
    for name, rule in config.columns.items():
        if rule.kind in NUMERIC_KINDS:
            bounds = {"column": name, "min_value": -FLOAT_MAX, "max_value": FLOAT_MAX}
            specs.append(ExpectationSpec(f"finite.{name}", "ExpectColumnValuesToBeBetween", bounds, sev.finite, name))
    for name, rng in config.ranges.items():
        kwargs = {
            "column": name,
            "min_value": rng.min,
            "max_value": rng.max,
            "strict_min": rng.strict_min,
            "strict_max": rng.strict_max,
        }
        specs.append(
            ExpectationSpec(f"ranges.{name}", "ExpectColumnValuesToBeBetween", kwargs, rng.severity or sev.ranges, name)
        )
    for name, cat in config.categories.items():
        specs.append(
            ExpectationSpec(
                f"categories.{name}",
                "ExpectColumnValuesToBeInSet",
                {"column": name, "value_set": list(cat.values)},
                cat.severity or sev.categories,
                name,
            )
        )
    if len(data.key_columns) == 1:
        (key,) = data.key_columns
        unique = {"column": key}
        specs.append(ExpectationSpec("unique_key", "ExpectColumnValuesToBeUnique", unique, sev.unique_key, key))
    elif data.key_columns:
        specs.append(
            ExpectationSpec(
                "unique_key",
                "ExpectCompoundColumnsToBeUnique",
                {"column_list": list(data.key_columns)},
                sev.unique_key,
            )
        )
    specs.append(
        ExpectationSpec(
            "row_count",
            "ExpectTableRowCountToBeBetween",
            {"min_value": config.row_count.min, "max_value": config.row_count.max},
            sev.row_count,
        )
    )
    specs.append(
        ExpectationSpec(
            "freshness",
            "ExpectColumnMinToBeBetween",
            {
                "column": data.time_column,
                "min_value": {"$PARAMETER": TRAINED_UNTIL_PARAMETER},
                "strict_min": True,
            },
            sev.freshness,
            data.time_column,
        )
    )
    specs.append(
        ExpectationSpec(
            "labelled_share",
            "ExpectColumnValuesToNotBeNull",
            {"column": data.target.column, "mostly": config.label.min_labelled_share},
            sev.labelled_share,
            data.target.column,
        )
    )
    rate = config.label.positive_rate
    specs.append(
        ExpectationSpec(
            "positive_rate",
            "ExpectColumnMeanToBeBetween",
            {"column": label_rate_column(data), "min_value": rate.min, "max_value": rate.max},
            sev.positive_rate,
            label_rate_column(data),
        )
    )
    return specs


def match_dtype_kind(dtype: Any, kind: str) -> bool:
    """Whether a pandas dtype is of a params kind (integer, number, string, datetime, boolean)."""
    if dtype is None:
        return False
    types = pd.api.types
    if kind == "boolean":
        return bool(types.is_bool_dtype(dtype))
    if types.is_bool_dtype(dtype):
        return False
    if kind == "integer":
        return bool(types.is_integer_dtype(dtype))
    if kind == "number":
        return bool(types.is_numeric_dtype(dtype))
    if kind == "string":
        return bool(types.is_string_dtype(dtype))
    if kind == "datetime":
        return bool(types.is_datetime64_any_dtype(dtype))
    raise ValueError(f"unknown dtype kind '{kind}'")


def locate_kind_breaks(values: pd.Series, kind: str) -> tuple[list[int], list]:
    """The first rows (0-based) and values that keep a column from being of a numeric `kind`: text that is not a
    number (`nan`, `None`, ` inf `), or for `integer` a fractional number. ([], []) when no value is to blame (e.g.
    an integer column that is float only because of missing cells)."""
    numeric = pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
    if kind not in NUMERIC_KINDS or (numeric and kind != "integer"):
        return [], []
    if numeric:
        numbers = values.astype("float64")
        bad = values.notna() & (numbers != numbers.round())
    else:
        bad = values.notna() & pd.to_numeric(values, errors="coerce").isna()
    at = np.flatnonzero(bad.to_numpy(dtype=bool))[:MAX_EXAMPLES]
    return [int(i) for i in values.index[at]], [to_jsonable(v) for v in values.iloc[at]]


def holds_whole_floats(values: pd.Series) -> bool:
    """Whether a float column holds at least one value and only whole, finite numbers: how pandas stores an integer
    column once a cell of it is missing (float64, NaN for the missing cells)."""
    if not pd.api.types.is_float_dtype(values.dtype):
        return False
    present = values.dropna().to_numpy(dtype="float64")
    return bool(present.size) and bool(np.isfinite(present).all() and (present == np.round(present)).all())


@functools.cache
def define_dtype_kind_expectation() -> type:
    """The custom GX expectation on a column's dtype kind (GX's type-list check misses pandas 3 dtypes)."""
    from great_expectations.expectations.expectation import BatchExpectation

    class ExpectColumnDtypeToBeKind(BatchExpectation):
        """Expect a column's pandas dtype to be of a kind: integer, number, string, datetime or boolean."""

        column: str
        kind: str

        metric_dependencies = ("table.column_types",)
        success_keys = ("column", "kind")
        args_keys = ("column", "kind")

        def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
            kwargs = self.configuration.kwargs
            types = {item["name"]: item["type"] for item in metrics["table.column_types"]}
            dtype = types.get(kwargs["column"])
            return {
                "success": match_dtype_kind(dtype, kwargs["kind"]),
                "result": {"observed_value": None if dtype is None else str(dtype)},
            }

    return ExpectColumnDtypeToBeKind


def build_expectation(spec: ExpectationSpec) -> Any:
    """A GX expectation object from its spec, tagged with the check name and severity."""
    import great_expectations.expectations as gxe

    cls = (
        define_dtype_kind_expectation()
        if spec.expectation == "ExpectColumnDtypeToBeKind"
        else (getattr(gxe, spec.expectation))
    )
    kwargs = {k: v for k, v in spec.kwargs.items() if v is not None}
    return cls(
        **kwargs,
        severity=GX_SEVERITY[spec.severity],
        meta={"check": spec.check, "severity": spec.severity},
    )


class SuiteRunner:
    """An ephemeral GX context holding the suite built from params, ready to validate DataFrames."""

    def __init__(self, specs: list[ExpectationSpec], data: DataConfig, suite_name: str = "batch") -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.specs = specs
        self.data = data
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self.context.data_sources.add_pandas("batches")
        batch_definition = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole")
        suite = gx.ExpectationSuite(name=suite_name, expectations=[build_expectation(s) for s in specs])
        self.suite = self.context.suites.add(suite)
        self.definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}-validation", data=batch_definition, suite=self.suite)
        )

    def run(self, frame: pd.DataFrame, trained_until: pd.Timestamp | None = None, detailed: bool = False) -> Any:
        """Validate a frame; returns GX's ExpectationSuiteValidationResult.

        `detailed` asks GX for the SUMMARY result format, which adds the row numbers of unexpected values but costs
        about three times as much on a passing batch (measured in bench/validation_bench.py); validation asks for it
        only when a check found unexpected values.
        """
        floor = pd.Timestamp.min.tz_localize("UTC") if trained_until is None else to_utc(trained_until)
        result_format = {"result_format": "SUMMARY" if detailed else "BASIC", "partial_unexpected_count": MAX_EXAMPLES}
        return self.definition.run(
            batch_parameters={"dataframe": add_label_rate(frame, self.data)},
            expectation_parameters={TRAINED_UNTIL_PARAMETER: floor},
            result_format=result_format,
        )


def create_suite_runner(config: ValidateConfig, data: DataConfig) -> SuiteRunner:
    """A ready SuiteRunner for these params (costs the GX import, about 4 s, the first time)."""
    return SuiteRunner(build_expectation_specs(config, data), data)


def to_utc(value: pd.Timestamp | dt.datetime | str) -> pd.Timestamp:
    """A timestamp in UTC; naive values are taken as UTC."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def add_label_rate(frame: pd.DataFrame, data: DataConfig) -> pd.DataFrame:
    """The frame plus a per-row positive indicator (NaN where the outcome is unknown) for the rate check."""
    target = data.target.column
    if target not in frame.columns or not pd.api.types.is_numeric_dtype(frame[target].dtype):
        return frame
    values = frame[target]
    positive = (values > data.target.threshold).astype("float64").where(values.notna())
    return frame.assign(**{label_rate_column(data): positive})


def to_jsonable(value: Any) -> Any:
    """A JSON-safe copy of a value from pandas, numpy or GX (NaN/NaT become None)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isinf(value):  # JSON has no infinity; the text says what the file held
            return "inf" if value > 0 else "-inf"
        return None if math.isnan(value) else value
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return None if pd.isna(value) else value.isoformat()
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray, pd.Index)):
        return [to_jsonable(v) for v in value]
    if value is pd.NaT or value is pd.NA:
        return None
    return str(value)


def extract_check_results(result: Any) -> list[CheckResult]:
    """GX's suite validation result as plain CheckResults, in suite order."""
    out = []
    for item in result.results:
        config = item.expectation_config
        meta = config.meta or {}
        payload = item.result or {}
        errors = [
            v.get("exception_message")
            for v in (item.exception_info or {}).values()
            if isinstance(v, dict) and v.get("raised_exception")
        ]
        if item.exception_info.get("raised_exception"):
            errors.append(item.exception_info.get("exception_message"))
        observed = payload.get("observed_value")
        if "partial_unexpected_list" in payload:
            examples = payload.get("partial_unexpected_list") or []
        elif config.type == "expect_table_columns_to_match_set":
            examples = sorted(((payload.get("details") or {}).get("mismatched") or {}).get("missing") or [])
            observed = None
        else:
            examples = [] if observed is None else [observed]
        column = config.kwargs.get("column")
        if column is None and "column_list" in config.kwargs:
            column = ",".join(config.kwargs["column_list"])
        out.append(
            CheckResult(
                check=meta.get("check", config.type),
                expectation=config.type,
                column=column,
                severity=meta.get("severity", "block"),
                success=bool(item.success),
                unexpected_count=to_jsonable(payload.get("unexpected_count")),
                examples=to_jsonable(list(examples)[:MAX_EXAMPLES]),
                observed=to_jsonable(observed),
                error=next((e for e in errors if e), None),
                rows=[int(i) for i in payload.get("partial_unexpected_index_list") or []][:MAX_EXAMPLES],
            )
        )
    return out


def find_schema_breaks(checks: Iterable[CheckResult], columns: Iterable[str]) -> dict[str, str]:
    """Columns the rest of the suite cannot judge: missing, or of the wrong dtype kind."""
    present = set(columns)
    broken: dict[str, str] = {}
    for check in checks:
        if check.check.startswith("types.") and not check.success and check.column:
            broken[check.column] = (
                "column missing"
                if check.column not in present
                else (f"dtype {check.observed} is not the expected kind")
            )
    return broken


def summarise_checks(checks: list[CheckResult], columns: Iterable[str], time_checked: bool = True) -> ResultSummary:
    """Split results into blocking failures, warnings and skipped checks (those a broken schema voids)."""
    present = set(columns)
    broken = find_schema_breaks(checks, present)
    failures, warnings, skipped, rows = [], [], [], []
    for check in checks:
        entry = check.to_dict()
        rows.append({**entry, "success": check.success})
        if check.check == "freshness" and not time_checked:
            skipped.append({**entry, "reason": "no trained_until given"})
            continue
        if check.success:
            continue
        if check.check.startswith("types.") and check.column not in present:
            skipped.append({**entry, "reason": "column missing"})
            continue
        void = [c for c in (check.column or "").split(",") if c in broken]
        if check.error and void and check.check not in SCHEMA_CHECKS:
            skipped.append({**entry, "reason": f"{void[0]}: {broken[void[0]]}"})
            continue
        (failures if check.severity == "block" else warnings).append(entry)
    return ResultSummary(failures=failures, warnings=warnings, skipped=skipped, checks=rows)


def claimed_period(times: pd.Series, period: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start, end) of the calendar period (month, week or day, UTC) holding the batch's median time: the period the
    batch claims. The median, not the first and last times: a month of local times spills a few hours into the next
    UTC month without claiming it."""
    middle = to_utc(times.quantile(0.5)).tz_localize(None).to_period(PERIOD_ALIASES[period])
    return middle.start_time.tz_localize("UTC"), (middle + 1).start_time.tz_localize("UTC")


def measure_completeness(
    times: pd.Series, reference_times: pd.Series | None, config: CompletenessConfig
) -> dict[str, Any]:
    """Is a batch the whole period it claims? Its time coverage and, against the reference, its row share.

    times: the batch's time column (UTC timestamps). `time_coverage` = (last - first) / length of the claimed period
    (capped at 1: a batch may span several periods). `row_share` = batch rows / (reference rows per day x days the
    batch spans, at least the claimed period), None without a reference of at least two distinct times.
    """
    values = times.dropna()
    if values.empty or not isinstance(values.dtype, pd.DatetimeTZDtype):
        return {"skipped": "no parsed times"}
    first, last = values.min(), values.max()
    start, end = claimed_period(values, config.period)
    length = end - start
    out: dict[str, Any] = {
        "first": first.isoformat(),
        "last": last.isoformat(),
        "claimed_start": start.isoformat(),
        "claimed_end": end.isoformat(),
        "time_coverage": round(min(1.0, float((last - first) / length)), 4),
        "rows": len(times),
        "row_share": None,
    }
    reference = None if reference_times is None else reference_times.dropna()
    if reference is not None and reference.nunique() > 1:
        reference_days = (reference.max() - reference.min()) / pd.Timedelta(days=1)
        expected = len(reference) / reference_days * (max(length, last - first) / pd.Timedelta(days=1))
        out["expected_rows"] = round(expected)
        out["row_share"] = round(len(times) / expected, 4)
    return out


def list_completeness_alerts(
    stats: Mapping[str, Any], config: CompletenessConfig, severity: SeverityPolicy
) -> list[dict]:
    """Failure/warning entries for a batch short of its claimed period (time coverage) or of rows (row share)."""
    if "skipped" in stats:
        return []
    span = f"{stats['claimed_start'][:10]} .. {stats['claimed_end'][:10]}"
    alerts = []
    if stats["time_coverage"] < config.min_time_coverage:
        alerts.append(
            completeness_entry(
                "time_coverage",
                severity.time_coverage,
                stats["time_coverage"],
                f"times run {stats['first']} .. {stats['last']}: {stats['time_coverage']:.1%} of the {config.period} "
                f"the batch claims ({span}); at least {config.min_time_coverage:.0%} expected (a file cut short?)",
            )
        )
    share = stats.get("row_share")
    if share is not None and share < config.min_row_share:
        alerts.append(
            completeness_entry(
                "row_share",
                severity.row_share,
                share,
                f"{stats['rows']:,} rows, {share:.1%} of the {stats['expected_rows']:,} the reference data shows for a "
                f"span that long; at least {config.min_row_share:.0%} expected",
            )
        )
    return alerts


def completeness_entry(name: str, severity: str, observed: float, reason: str) -> dict:
    """One completeness alert in the shape of an expectation entry."""
    return {
        "check": f"completeness.{name}",
        "expectation": "batch_covers_its_period",
        "column": None,
        "severity": severity,
        "unexpected_count": None,
        "examples": [],
        "observed": observed,
        "rows": [],
        "reason": reason,
    }


def compute_numeric_psi(reference: np.ndarray, batch: np.ndarray, bins: int) -> float:
    """PSI over quantile bins of the reference, plus bins for values outside its range."""
    edges = quantile_edges(reference, bins)
    return compute_psi(bin_shares(reference, edges), bin_shares(batch, edges))


def compute_categorical_psi(reference: pd.Series, batch: pd.Series) -> float:
    """PSI over category shares (missing values count as their own category)."""
    ref, new = (count_shares(series) for series in (reference, batch))
    cats = ref.index.union(new.index)
    return compute_psi(ref.reindex(cats, fill_value=0).to_numpy(), new.reindex(cats, fill_value=0).to_numpy())


def measure_feature_drift(reference: pd.Series, batch: pd.Series, kind: str, bins: int) -> dict[str, Any]:
    """PSI (and KS for numeric features) between the reference and the batch for one feature."""
    from scipy.stats import ks_2samp

    if kind in NUMERIC_KINDS:
        if not all(pd.api.types.is_numeric_dtype(s.dtype) for s in (batch, reference)):
            return {"kind": "numeric", "skipped": "not numeric in the batch or the reference"}
        ref = reference.dropna().to_numpy(dtype="float64")
        new = batch.dropna().to_numpy(dtype="float64")
        if len(ref) == 0 or len(new) == 0:
            return {"kind": "numeric", "skipped": "no values"}
        ks = ks_2samp(ref, new, method="asymp")
        return {
            "kind": "numeric",
            "psi": round(compute_numeric_psi(ref, new, bins), 6),
            "ks": round(float(ks.statistic), 6),
            "ks_pvalue": float(ks.pvalue),
        }
    return {"kind": "categorical", "psi": round(compute_categorical_psi(reference, batch), 6)}


def measure_drift(
    reference: pd.DataFrame, batch: pd.DataFrame, config: DriftConfig, kinds: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Per-feature drift of the batch against the reference, flagged against the params thresholds."""
    drift: dict[str, dict[str, Any]] = {}
    for feature in config.features:
        if feature not in reference.columns or feature not in batch.columns:
            drift[feature] = {"skipped": "missing from the batch or the reference"}
            continue
        kind = kinds.get(feature, "string")
        stats = measure_feature_drift(reference[feature], batch[feature], kind, config.bins)
        if "psi" in stats:
            stats["drifted"] = bool(stats["psi"] > config.psi_max or stats.get("ks", 0.0) > config.ks_max)
        drift[feature] = stats
    return drift


def list_drift_alerts(drift: Mapping[str, Mapping[str, Any]], config: DriftConfig, severity: str) -> list[dict]:
    """One failure/warning entry per drifted feature, shaped like the expectation entries."""
    alerts = []
    for feature, stats in drift.items():
        if not stats.get("drifted"):
            continue
        observed = {k: stats[k] for k in ("psi", "ks") if k in stats}
        alerts.append(
            {
                "check": f"drift.{feature}",
                "expectation": "feature_distribution_stable",
                "column": feature,
                "severity": severity,
                "unexpected_count": None,
                "examples": [],
                "observed": observed,
                "thresholds": {"psi_max": config.psi_max, "ks_max": config.ks_max},
            }
        )
    return alerts


def snake_case(name: str) -> str:
    """GX's expectation type name for a class name (ExpectColumnMinToBeBetween -> expect_column_min_...)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
