"""Build the one sklearn Pipeline that both training and serving use, search it, fit it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from joblib import parallel_config
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.experimental import enable_halving_search_cv  # noqa: F401  (registers HalvingRandomSearchCV)
from sklearn.feature_selection import mutual_info_classif
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_curve
from sklearn.model_selection import HalvingRandomSearchCV, RandomizedSearchCV, TimeSeriesSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils.parallel import Parallel, delayed

from retrainer.config import FeatureSelection, TrainConfig
from retrainer.steps.split import split_by_time

MISSING_CATEGORY = "__missing__"


@dataclass(frozen=True)
class TrainResult:
    """A fitted pipeline and everything needed to explain how it was chosen."""

    model: Pipeline
    threshold: float
    best_params: dict
    cv_best_score: float
    cv_results: list[dict]
    features: list[str]
    fit_seconds: float
    search_seconds: float
    rows_fit: int
    rows_validation: int


def median_or_zero(values: np.ndarray) -> float:
    """The median of one column's non-missing values (1-D float array), 0.0 when it has none: scikit-learn's
    SimpleImputer strategy "median" with keep_empty_features=True, computed one column at a time.

    Used as a callable strategy (scikit-learn >= 1.5 passes it each column's non-missing values) because "median"
    runs numpy.ma.median over the whole numeric block (sklearn/impute/_base.py, `_dense_fit`), which sorts a masked
    copy of it beside an argsort: about 4.4x the block at its peak (602 MB for 1M rows x 18 columns, against 131 MB
    this way), the train stage's peak memory. The medians are the same. Pickled models refer to this function by
    name (retrainer.steps.train.median_or_zero): keep it here. The MLflow artifact carries it by value
    (io/tracking.own_functions_by_value), so it loads without retrainer installed.
    """
    return float(np.median(values)) if len(values) else 0.0


def build_pipeline(numeric: list[str], categorical: list[str], config: TrainConfig) -> Pipeline:
    """Imputation, categorical encoding (and scaling for linear models) followed by the estimator."""
    class_weight = None if config.class_weight == "none" else config.class_weight
    cat_impute = SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)
    if config.model == "hgb":
        encoder = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=250,
        )
        numeric_steps = Pipeline([("impute", SimpleImputer(strategy=median_or_zero, keep_empty_features=True))])
        estimator = HistGradientBoostingClassifier(
            categorical_features=[True] * len(categorical) + [False] * len(numeric),
            class_weight=class_weight,
            random_state=config.seed,
        )
    else:
        encoder = OneHotEncoder(handle_unknown="ignore", min_frequency=20, sparse_output=False)
        numeric_steps = Pipeline(
            [
                ("impute", SimpleImputer(strategy=median_or_zero, keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        estimator = LogisticRegression(class_weight=class_weight, max_iter=2000, random_state=config.seed)
    preprocess = ColumnTransformer(
        [
            ("categorical", Pipeline([("impute", cat_impute), ("encode", encoder)]), categorical),
            ("numeric", numeric_steps, numeric),
        ],
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def select_features(
    frame: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    target: pd.Series,
    config: FeatureSelection,
    seed: int,
) -> list[str]:
    """Rank raw features by mutual information or L1 weight on a sample; keep the best k (input order kept)."""
    columns = [*numeric, *categorical]
    if not config.enabled or config.k >= len(columns):
        return columns
    sample = frame.sample(n=min(config.sample_rows, len(frame)), random_state=seed)
    y = target.loc[sample.index].to_numpy()
    codes = sample[columns].copy()
    for column in categorical:  # the sample's own categories, also when the frame's column is already categorical
        codes[column] = codes[column].astype("category").cat.remove_unused_categories().cat.codes
    codes = codes.fillna(codes.median(numeric_only=True)).fillna(0)
    if config.method == "mutual_info":
        discrete = [c in categorical for c in columns]
        scores = mutual_info_classif(codes.to_numpy(float), y, discrete_features=discrete, random_state=seed)
    else:
        scaled = (codes - codes.mean()) / codes.std().replace(0, 1)
        l1 = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=0.05, random_state=seed)
        scores = np.abs(l1.fit(scaled.to_numpy(float), y).coef_[0])
    ranked = sorted(zip(scores, columns, strict=True), key=lambda pair: -pair[0])
    chosen = {name for _, name in ranked[: config.k]}
    return [c for c in columns if c in chosen]


def choose_threshold(y_true: np.ndarray, proba: np.ndarray) -> float:
    """The probability threshold that maximises F1 on validation data."""
    precision, recall, thresholds = precision_recall_curve(y_true, proba)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def _search(pipeline: Pipeline, config: TrainConfig, n_rows: int):
    space = {f"model__{name}": values for name, values in config.search.space[config.model].items()}
    cv = TimeSeriesSplit(n_splits=config.cv_splits)
    if config.search.method == "halving":
        rounds = max(1, math.ceil(math.log(config.search.n_candidates) / math.log(config.search.factor)))
        return HalvingRandomSearchCV(
            pipeline,
            space,
            n_candidates=config.search.n_candidates,
            factor=config.search.factor,
            min_resources=max(n_rows // config.search.factor ** (rounds - 1), 1),
            max_resources=n_rows,
            cv=cv,
            scoring=config.scoring,
            random_state=config.seed,
            n_jobs=config.n_jobs,
            refit=False,
        )
    return RandomizedSearchCV(
        pipeline,
        space,
        n_iter=config.search.n_candidates,
        cv=cv,
        scoring=config.scoring,
        random_state=config.seed,
        n_jobs=config.n_jobs,
        refit=False,
    )


def _cv_summary(cv_results: dict) -> list[dict]:
    keys = [
        k for k in ("iter", "n_resources", "mean_test_score", "std_test_score", "rank_test_score") if k in cv_results
    ]
    rows = []
    for i, params in enumerate(cv_results["params"]):
        row = {k: float(cv_results[k][i]) for k in keys}
        row["params"] = {k.removeprefix("model__"): v for k, v in params.items()}
        rows.append(row)
    return rows


def fit_best(best: Pipeline, parts: list[tuple[pd.DataFrame, pd.Series]], config: TrainConfig) -> list[Pipeline]:
    """A fresh clone of `best` fitted on each (X, y) in `parts`, as one joblib call: in turn in this process (n_jobs
    1), side by side on a Dask cluster when the search runs there (io/compute.py), the same fits either way."""
    return Parallel(n_jobs=config.n_jobs)(delayed(clone(best).fit)(X, y) for X, y in parts)


def fit_model(
    train: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    label: str,
    time_column: str,
    config: TrainConfig,
    feature_selection: FeatureSelection,
    validation_fraction: float,
) -> TrainResult:
    """Search on the older part with time-aware CV, pick the threshold on the newest part, refit on all.

    The best candidate is refitted on the older part (for the threshold) and on all rows in one joblib call (not
    the search's own refit, which would run alone after it), so a cluster fits both at once.

    The categorical columns are fitted as pandas categoricals: every fit's imputer turns them into an object array,
    which for a string column makes one Python string per cell (about 60 bytes each: 1.8 GB at 10M rows x 3
    columns, on every fit) and for a categorical only a pointer to one of its few categories. The encoder sees the
    same values either way, so the fitted model and its predictions (on strings, as served) are the same.
    """
    started = time.perf_counter()
    train = train.astype(dict.fromkeys(categorical, "category"))
    fit_part, validation = split_by_time(train, time_column, validation_fraction)
    chosen = select_features(fit_part, numeric, categorical, fit_part[label], feature_selection, config.seed)
    num = [c for c in numeric if c in chosen]
    cat = [c for c in categorical if c in chosen]
    pipeline = build_pipeline(num, cat, config)
    search, search_started = _search(pipeline, config, len(fit_part)), time.perf_counter()
    search.fit(fit_part[chosen], fit_part[label])
    search_seconds = time.perf_counter() - search_started
    best = clone(pipeline).set_params(**search.best_params_)
    validated, final = fit_best(best, [(fit_part[chosen], fit_part[label]), (train[chosen], train[label])], config)
    with parallel_config(backend="sequential"):  # the ColumnTransformer's per-column calls: here, never a cluster's
        proba = validated.predict_proba(validation[chosen])[:, 1]
    threshold = choose_threshold(validation[label].to_numpy(), proba)
    return TrainResult(
        model=final,
        threshold=threshold,
        best_params={k.removeprefix("model__"): v for k, v in search.best_params_.items()},
        cv_best_score=float(search.best_score_),
        cv_results=_cv_summary(search.cv_results_),
        features=chosen,
        fit_seconds=time.perf_counter() - started,
        search_seconds=search_seconds,
        rows_fit=len(fit_part),
        rows_validation=len(validation),
    )
