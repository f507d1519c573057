"""Training: one pipeline for training and serving, time-aware search, threshold from validation data."""

import numpy as np
import pandas as pd
import pytest

from retrainer.config import FeatureSelection
from retrainer.steps.ingest import integrate
from retrainer.steps.train import build_pipeline, choose_threshold, fit_model, select_features


@pytest.fixture(scope="module")
def labelled(january_sample, references, params) -> pd.DataFrame:
    frame, _ = integrate(january_sample, references, params.data, b"key")
    return frame


def _tiny_config(params, model="hgb"):
    search = params.train.search.model_copy(update={"n_candidates": 2})
    return params.train.model_copy(update={"model": model, "search": search})


@pytest.mark.parametrize("model", ["hgb", "logreg"])
def test_fit_model_on_real_sample(labelled, params, model):
    config = _tiny_config(params, model)
    result = fit_model(
        labelled,
        list(params.features.numeric),
        list(params.features.categorical),
        "delayed",
        "time_hour",
        config,
        params.train.feature_selection,
        0.2,
    )
    assert result.features == params.features.all
    assert 0 < result.threshold < 1
    assert result.rows_fit + result.rows_validation == len(labelled)
    assert set(result.best_params) <= set(params.train.search.space[model])
    assert len(result.cv_results) >= 2
    proba = result.model.predict_proba(labelled[result.features].head(50))[:, 1]
    assert proba.shape == (50,) and np.all((proba >= 0) & (proba <= 1))


def test_pipeline_accepts_unseen_categories_and_missing_values(labelled, params):
    features = params.features.all
    pipeline = build_pipeline(list(params.features.numeric), list(params.features.categorical), params.train)
    pipeline.fit(labelled[features], labelled["delayed"])
    odd = labelled[features].head(2).copy()
    odd.loc[odd.index[0], "dest"] = "ZZZ"
    odd.loc[odd.index[1], ["temp", "carrier"]] = [np.nan, None]
    assert np.isfinite(pipeline.predict_proba(odd)).all()


def test_pipeline_fitted_on_categoricals_predicts_as_the_one_fitted_on_strings(labelled, params):
    features, categorical = params.features.all, list(params.features.categorical)
    on_strings = build_pipeline(list(params.features.numeric), categorical, params.train)
    on_categoricals = build_pipeline(list(params.features.numeric), categorical, params.train)
    on_strings.fit(labelled[features], labelled["delayed"])
    on_categoricals.fit(labelled[features].astype(dict.fromkeys(categorical, "category")), labelled["delayed"])
    rows = labelled[features]
    np.testing.assert_array_equal(on_strings.predict_proba(rows), on_categoricals.predict_proba(rows))


@pytest.mark.parametrize("method", ["mutual_info", "l1"])
def test_select_features_keeps_k_informative_columns(method):
    rng = np.random.default_rng(0)
    n = 2000
    signal = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "signal": signal,
            "noise1": rng.normal(size=n),
            "noise2": rng.normal(size=n),
            "cat": rng.choice(["a", "b"], size=n),
        }
    )
    y = pd.Series((signal + rng.normal(scale=0.3, size=n) > 0).astype(int))
    config = FeatureSelection(enabled=True, method=method, k=1, sample_rows=1000)
    assert select_features(frame, ["signal", "noise1", "noise2"], ["cat"], y, config, seed=0) == ["signal"]
    disabled = FeatureSelection(enabled=False, k=1)
    assert len(select_features(frame, ["signal", "noise1", "noise2"], ["cat"], y, disabled, 0)) == 4


def test_choose_threshold_maximises_f1():
    y = np.array([0, 0, 0, 1, 1, 1])
    proba = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    assert 0.3 < choose_threshold(y, proba) <= 0.6


@pytest.mark.parametrize("model", ["hgb", "logreg"])
def test_numeric_imputation_is_scikit_learns_median_with_empty_columns_kept_as_zero(params, model):
    """The pipeline takes medians one column at a time (train.median_or_zero, for its memory); the values must be
    those of SimpleImputer's own "median" with keep_empty_features=True, an even count of values and a column with
    none among them."""
    from sklearn.impute import SimpleImputer

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "odd": np.where(rng.random(1001) < 0.2, np.nan, rng.normal(size=1001)),
            "even": np.r_[rng.normal(size=1000), np.nan],
            "empty": np.full(1001, np.nan),
            "carrier": rng.choice(["UA", "DL"], 1001),
        }
    )
    pipeline = build_pipeline(["odd", "even", "empty"], ["carrier"], _tiny_config(params, model))
    imputer = pipeline.named_steps["preprocess"].fit(frame).named_transformers_["numeric"].named_steps["impute"]
    reference = SimpleImputer(strategy="median", keep_empty_features=True).fit(frame[["odd", "even", "empty"]])
    np.testing.assert_array_equal(imputer.statistics_, reference.statistics_)
    assert imputer.statistics_[2] == 0.0
