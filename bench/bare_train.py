"""The baseline for bench/train_bench.py: the train stage's fit and holdout metrics in pandas + sklearn.

Mirrors src/retrainer/steps/train.py `fit_model` (hgb, halving search, no feature selection) and the
metrics of src/retrainer/steps/evaluate.py `classification_metrics`, without retrainer, DVC or plots.

Run: python bench/bare_train.py SETTINGS_JSON   (prints one JSON line: metrics, rows and in-process seconds)
"""

from __future__ import annotations

import json
import math
import sys
import time

START = time.perf_counter()

import numpy as np  # noqa: E402  (imports are part of what the baseline pays for, so they follow START)
import pandas as pd  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402
from sklearn.experimental import enable_halving_search_cv  # noqa: E402, F401
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
)
from sklearn.model_selection import HalvingRandomSearchCV, TimeSeriesSplit  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import OrdinalEncoder  # noqa: E402


def newest_split(frame: pd.DataFrame, time_column: str, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(older, newest) cut at one timestamp so the newest part holds about `fraction` of the rows."""
    ordered = frame.sort_values(time_column, kind="stable")
    cut = ordered[time_column].iloc[int(len(ordered) * (1 - fraction))]
    older = ordered.loc[ordered[time_column] < cut].reset_index(drop=True)
    newest = ordered.loc[ordered[time_column] >= cut].reset_index(drop=True)
    return older, newest


def make_pipeline(numeric: list[str], categorical: list[str], seed: int, class_weight: str | None) -> Pipeline:
    """Impute, ordinal-encode categoricals, HistGradientBoosting with native categorical support."""
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        encoded_missing_value=np.nan,
        max_categories=250,
    )
    categorical_steps = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("encode", encoder),
        ]
    )
    numeric_steps = Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True))])
    preprocess = ColumnTransformer(
        [("categorical", categorical_steps, categorical), ("numeric", numeric_steps, numeric)],
        verbose_feature_names_out=False,
    )
    model = HistGradientBoostingClassifier(
        categorical_features=[True] * len(categorical) + [False] * len(numeric),
        class_weight=class_weight,
        random_state=seed,
    )
    return Pipeline([("preprocess", preprocess), ("model", model)])


def best_f1_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The probability threshold with the highest F1."""
    precision, recall, thresholds = precision_recall_curve(y, proba)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def main(settings: dict) -> dict:
    """Fit as the train stage does, score the holdout as the evaluate stage does."""
    train = pd.read_parquet(settings["train_path"])
    holdout = pd.read_parquet(settings["holdout_path"])
    numeric, categorical, label = settings["numeric"], settings["categorical"], settings["label"]
    features = [*numeric, *categorical]
    seed, factor, candidates = settings["seed"], settings["factor"], settings["n_candidates"]
    class_weight = None if settings["class_weight"] == "none" else settings["class_weight"]

    fit_part, validation = newest_split(train, settings["time_column"], settings["validation_fraction"])
    rounds = max(1, math.ceil(math.log(candidates) / math.log(factor)))
    search = HalvingRandomSearchCV(
        make_pipeline(numeric, categorical, seed, class_weight),
        {f"model__{name}": values for name, values in settings["space"].items()},
        n_candidates=candidates,
        factor=factor,
        min_resources=max(len(fit_part) // factor ** (rounds - 1), 1),
        max_resources=len(fit_part),
        cv=TimeSeriesSplit(n_splits=settings["cv_splits"]),
        scoring=settings["scoring"],
        random_state=seed,
        n_jobs=1,
        refit=True,
    )
    search.fit(fit_part[features], fit_part[label])
    threshold = best_f1_threshold(
        validation[label].to_numpy(), search.best_estimator_.predict_proba(validation[features])[:, 1]
    )
    model = clone(search.best_estimator_).fit(train[features], train[label])
    fitted = time.perf_counter()

    y = holdout[label].to_numpy().astype(int)
    proba = model.predict_proba(holdout[features])[:, 1]
    metrics = {
        "roc_auc": float(roc_auc_score(y, proba)),
        "pr_auc": float(average_precision_score(y, proba)),
        "f1": float(f1_score(y, (proba >= threshold).astype(int), zero_division=0)),
        "brier": float(brier_score_loss(y, proba)),
        "log_loss": float(log_loss(y, np.clip(proba, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "threshold": threshold,
    }
    return {
        "metrics": metrics,
        "best_params": {k.removeprefix("model__"): v for k, v in search.best_params_.items()},
        "rows_train": len(train),
        "rows_fit": len(fit_part),
        "rows_validation": len(validation),
        "rows_holdout": len(holdout),
        "seconds_to_fitted": round(fitted - START, 3),
        "seconds_in_process": round(time.perf_counter() - START, 3),
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1])), default=str))
