"""The compiled scorer gives the fitted pipeline's probabilities bit for bit, and compiles to None when it cannot."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from threadpoolctl import threadpool_limits

from retrainer.config import Params
from retrainer.serving import scorer as scorer_module
from retrainer.serving.scorer import CompiledScorer, compile_pipeline
from retrainer.steps.train import build_pipeline

CATEGORICAL = ["carrier", "origin", "dest"]
NUMERIC = ["distance", "hour", "temp", "wind_gust", "precip"]
CARRIERS = {"AA": 300, "UA": 250, "DL": 200, "B6": 120, "EV": 60, "WN": 30, "HA": 8, "OO": 3}  # last two are rare


def synthetic_flights(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """String categoricals with missing values and rare categories, numerics with NaN, one all-NaN column."""
    rng = np.random.default_rng(seed)
    weights = np.array(list(CARRIERS.values()), dtype=float)
    carrier = rng.choice(list(CARRIERS), rows, p=weights / weights.sum()).astype(object)
    dest = np.array([f"D{i:02d}" for i in rng.zipf(1.6, rows) % 60], dtype=object)
    carrier[rng.random(rows) < 0.05] = None
    dest[rng.random(rows) < 0.05] = None
    frame = pd.DataFrame(
        {
            "carrier": carrier.tolist(),
            "origin": rng.choice(["EWR", "JFK", "LGA"], rows).tolist(),
            "dest": dest.tolist(),
            "distance": rng.gamma(2.0, 500.0, rows),
            "hour": rng.integers(5, 23, rows).astype(float),
            "temp": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(50, 15, rows)),
            "wind_gust": np.where(rng.random(rows) < 0.3, np.nan, rng.normal(20, 5, rows)),
            "precip": np.full(rows, np.nan),
        }
    )
    signal = (frame["distance"] > 900).to_numpy() ^ (frame["carrier"] == "EV").to_numpy()
    label = (signal ^ (rng.random(rows) < 0.2)).astype(int)
    return frame, label


def fit(params: Params, model: str, frame: pd.DataFrame, label: np.ndarray, **settings: object) -> Pipeline:
    """The project's pipeline for `model`, with sklearn parameter overrides, fitted on the frame."""
    config = params.train.model_copy(update={"model": model})
    pipeline = build_pipeline(NUMERIC, CATEGORICAL, config).set_params(**settings)
    return pipeline.fit(frame[CATEGORICAL + NUMERIC], label)


def scoring_frame(params: Params) -> pd.DataFrame:
    """Fresh rows plus unseen categories, missing categorical and numeric values, and rare categories."""
    frame, _ = synthetic_flights(400, params.train.seed + 1)
    frame.loc[0:9, "carrier"] = ["ZZ", "HA", "OO", None, "__missing__", "AA", "OO", "HA", "QQ", None]
    frame.loc[0:9, "dest"] = ["NEW", None, "D01", "D59", "XXX", None, "D02", "D58", "D00", "D03"]
    frame.loc[0:9, "origin"] = ["EWR", "JFK", "LGA", "BOS", None, "EWR", "JFK", "LGA", "EWR", None]
    frame.loc[0:5, "distance"] = [np.nan, 0.0, 5000.0, np.nan, 1.0, -3.0]
    frame.loc[0:5, "precip"] = [0.0, 0.5, np.nan, 2.0, np.nan, 0.1]
    return frame


def as_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The frame as the service hands it over: object arrays (None where missing) and float arrays."""
    columns = {}
    for name in frame.columns:
        if name in CATEGORICAL:
            values = frame[name].to_numpy(dtype=object)
            values[frame[name].isna().to_numpy()] = None
            columns[name] = values
        else:
            columns[name] = frame[name].to_numpy(dtype=float)
    return columns


@pytest.fixture(scope="module")
def training(params: Params) -> tuple[pd.DataFrame, np.ndarray]:
    return synthetic_flights(1500, params.train.seed)


@pytest.fixture(scope="module", params=["hgb", "logreg"])
def fitted(request: pytest.FixtureRequest, params: Params, training) -> Pipeline:
    frame, label = training
    return fit(params, request.param, frame, label, model__max_iter=25 if request.param == "hgb" else 2000)


@pytest.fixture(scope="module")
def scored(params: Params) -> pd.DataFrame:
    return scoring_frame(params)


@pytest.fixture(scope="module")
def hgb(params: Params, training) -> Pipeline:
    """A small HGB pipeline for the tests that tamper with a copy of its private state."""
    return fit(params, "hgb", *training, model__max_iter=10)


def expected(pipeline: Pipeline, frame: pd.DataFrame) -> np.ndarray:
    return pipeline.predict_proba(frame[list(pipeline.feature_names_in_)])[:, 1]


def fast_path(pipeline: Pipeline) -> str:
    """The path an intact pipeline must compile to: HGB's trees directly, LogisticRegression's own predict_proba."""
    return "hgb-trees" if isinstance(pipeline.named_steps["model"], HistGradientBoostingClassifier) else "estimator"


def test_compiled_scores_equal_the_pipeline_on_hard_rows(fitted: Pipeline, scored: pd.DataFrame):
    compiled = compile_pipeline(fitted)
    assert isinstance(compiled, CompiledScorer)
    assert compiled.path == fast_path(fitted)
    columns = as_columns(scored)
    proba = compiled.predict_proba(columns)
    assert proba.dtype == np.float64 and proba.shape == (len(scored),)
    assert np.array_equal(proba, expected(fitted, scored))
    assert len(np.unique(proba)) > 50  # the rows are scored differently, not all to one value
    assert np.isnan(columns["temp"]).sum() == scored["temp"].isna().sum() > 0  # the caller's arrays are not filled


def test_the_training_frame_exercises_rare_and_missing_categories(fitted: Pipeline):
    encoder = fitted.named_steps["preprocess"].named_transformers_["categorical"].named_steps["encode"]
    carriers = list(encoder.categories_[0])
    assert "__missing__" in carriers and "OO" in carriers
    if isinstance(fitted.named_steps["model"], LogisticRegression):
        assert {"HA", "OO"} <= set(encoder.infrequent_categories_[0])  # min_frequency=20 groups them


def test_one_row_at_a_time_equals_the_pipeline(fitted: Pipeline, scored: pd.DataFrame):
    compiled = compile_pipeline(fitted)
    assert compiled.path == fast_path(fitted)
    columns = as_columns(scored)
    for row in range(12):
        one = compiled.predict_proba({name: values[row : row + 1] for name, values in columns.items()})
        assert one.shape == (1,)
        assert np.array_equal(one, expected(fitted, scored.iloc[row : row + 1]))


def test_every_missing_marker_and_container_scores_the_same(fitted: Pipeline, scored: pd.DataFrame):
    compiled = compile_pipeline(fitted)
    assert compiled.path == fast_path(fitted)
    base = as_columns(scored.iloc[:10])
    markers = [None, np.nan, pd.NA, float("nan")]
    variants = []
    for marker in markers:
        columns = dict(base)
        columns["carrier"] = np.array([marker if v is None else v for v in base["carrier"]], dtype=object)
        variants.append(columns)
    lists = {name: list(values) for name, values in base.items()}
    series = {name: pd.Series(values) for name, values in base.items()}
    nullable = dict(base, temp=pd.array(base["temp"], dtype="Float64"), dest=pd.array(base["dest"], dtype="string"))
    want = expected(fitted, scored.iloc[:10])
    for columns in [*variants, lists, series, nullable]:
        assert np.array_equal(compiled.predict_proba(columns), want)


def test_key_order_and_extra_keys_do_not_matter(fitted: Pipeline, scored: pd.DataFrame):
    compiled = compile_pipeline(fitted)
    columns = as_columns(scored)
    shuffled = {name: columns[name] for name in reversed(list(columns))}
    shuffled["tailnum"] = np.array(["N1"] * len(scored), dtype=object)
    shuffled["flight"] = np.arange(len(scored))
    assert np.array_equal(compiled.predict_proba(shuffled), expected(fitted, scored))


def test_a_missing_column_raises_key_error_naming_it(fitted: Pipeline, scored: pd.DataFrame):
    compiled = compile_pipeline(fitted)
    columns = as_columns(scored)
    del columns["wind_gust"]
    with pytest.raises(KeyError, match="wind_gust"):
        compiled.predict_proba(columns)


def test_infinity_is_refused_as_the_pipeline_refuses_it(fitted: Pipeline, scored: pd.DataFrame):
    compiled = compile_pipeline(fitted)
    frame = scored.iloc[:3].copy()
    frame.loc[frame.index[1], "distance"] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        fitted.predict_proba(frame)
    with pytest.raises(ValueError, match="infinity"):
        compiled.predict_proba(as_columns(frame))


def test_ordinal_infrequent_grouping_is_compiled_exactly(params: Params, training, scored: pd.DataFrame):
    pipeline = fit(params, "hgb", *training, model__max_iter=10, preprocess__categorical__encode__max_categories=4)
    encoder = pipeline.named_steps["preprocess"].named_transformers_["categorical"].named_steps["encode"]
    assert encoder.infrequent_categories_[0] is not None and encoder.infrequent_categories_[2] is not None
    compiled = compile_pipeline(pipeline)
    assert compiled is not None and compiled.path == "hgb-trees"
    assert np.array_equal(compiled.predict_proba(as_columns(scored)), expected(pipeline, scored))


@pytest.mark.parametrize(
    "categorical_features",
    [[False, True, True, False, False, False, False, False], None],
    ids=["hgb-reorders-columns", "no-categorical-features"],
)
def test_the_trees_path_follows_hgbs_own_column_order(
    params: Params, training, scored: pd.DataFrame, categorical_features: list[bool] | None
):
    """carrier as a plain number moves HGB's categorical columns first; None leaves HGB without a preprocessor.

    Fitted without class weights, so that the baseline the trees path adds is not 0 (balanced weights make it 0).
    """
    pipeline = fit(
        params,
        "hgb",
        *training,
        model__max_iter=10,
        model__categorical_features=categorical_features,
        model__class_weight=None,
    )
    assert pipeline.named_steps["model"]._baseline_prediction[0, 0] != 0.0
    compiled = compile_pipeline(pipeline)
    assert compiled is not None and compiled.path == "hgb-trees"
    assert np.array_equal(compiled.predict_proba(as_columns(scored)), expected(pipeline, scored))


def test_the_trees_path_folds_hgbs_re_encoding_of_codes_it_never_saw(params: Params, training, scored: pd.DataFrame):
    """A declared but never-seen category takes outer code 0, which HGB's own encoder does not know: every inner code
    differs from the outer one, so the folded tables (not the outer codes) must reach the trees."""
    frame, _ = training
    declared = [["A0_never", *sorted(frame[name].fillna("__missing__").unique())] for name in CATEGORICAL]
    pipeline = fit(params, "hgb", *training, model__max_iter=10, preprocess__categorical__encode__categories=declared)
    inner = pipeline.named_steps["model"]._preprocessor.named_transformers_["encoder"]
    assert all(0.0 not in categories for categories in inner.categories_)
    compiled = compile_pipeline(pipeline)
    assert compiled is not None and compiled.path == "hgb-trees"
    rows = scored.copy()
    rows.loc[rows.index[:3], "carrier"] = "A0_never"
    assert np.array_equal(compiled.predict_proba(as_columns(rows)), expected(pipeline, rows))


def test_scores_are_exact_under_a_one_thread_limit(fitted: Pipeline, scored: pd.DataFrame):
    compiled = compile_pipeline(fitted)
    assert compiled.path == fast_path(fitted)
    with threadpool_limits(limits=1):
        assert np.array_equal(compiled.predict_proba(as_columns(scored)), expected(fitted, scored))


def test_odd_private_hgb_state_falls_back_to_the_public_path(hgb: Pipeline, scored: pd.DataFrame):
    """Mock of a future sklearn change: `_baseline_prediction` stored with shape (1,) instead of (1, 1).

    HGB's own predict_proba broadcasts it and still works; the trees path refuses the shape.
    """
    changed = copy.deepcopy(hgb)
    model = changed.named_steps["model"]
    model._baseline_prediction = model._baseline_prediction.reshape(-1)
    assert np.array_equal(expected(changed, scored), expected(hgb, scored))
    compiled = compile_pipeline(changed)
    assert compiled is not None and compiled.path == "estimator"
    assert np.array_equal(compiled.predict_proba(as_columns(scored)), expected(changed, scored))


def test_a_renamed_private_hgb_attribute_falls_back_to_the_public_path(hgb: Pipeline, scored: pd.DataFrame):
    """Mock of a future sklearn change: HGB's internal `_preprocessor` renamed (AttributeError for the trees path)."""
    changed = copy.deepcopy(hgb)
    model = changed.named_steps["model"]
    model._category_preprocessor = model.__dict__.pop("_preprocessor")
    model._preprocess_X = lambda X, reset: model._category_preprocessor.transform(X)
    assert not hasattr(model, "_preprocessor")
    compiled = compile_pipeline(changed)
    assert compiled is not None and compiled.path == "estimator"
    assert np.array_equal(compiled.predict_proba(as_columns(scored)), expected(hgb, scored))


def test_a_trees_path_missing_the_probe_falls_back_to_the_public_path(
    hgb: Pipeline, scored: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
):
    """Mocked: the trees path is wrapped to move every probability up by one ulp; the self-check must catch it."""
    exact = scorer_module._TreesHead.__call__
    monkeypatch.setattr(scorer_module._TreesHead, "__call__", lambda self, matrix: np.nextafter(exact(self, matrix), 2))
    compiled = compile_pipeline(hgb)
    assert compiled is not None and compiled.path == "estimator"
    assert np.array_equal(compiled.predict_proba(as_columns(scored)), expected(hgb, scored))


def test_one_hot_unknowns_can_go_to_the_infrequent_column(params: Params, training, scored: pd.DataFrame):
    pipeline = fit(params, "logreg", *training, preprocess__categorical__encode__handle_unknown="infrequent_if_exist")
    compiled = compile_pipeline(pipeline)
    assert compiled is not None and compiled.path == "estimator"
    assert np.array_equal(compiled.predict_proba(as_columns(scored)), expected(pipeline, scored))


@pytest.mark.parametrize(
    ("model", "settings"),
    [
        ("hgb", {"model": RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0)}),
        ("logreg", {"preprocess__categorical__encode__drop": "first"}),
        ("logreg", {"preprocess__categorical__encode__sparse_output": True}),
        ("logreg", {"preprocess__numeric__impute__add_indicator": True}),
        ("logreg", {"preprocess__numeric__scale": FunctionTransformer(np.arcsinh)}),
        ("logreg", {"preprocess__remainder": "passthrough"}),
    ],
    ids=["random-forest", "one-hot-drop", "sparse-one-hot", "imputer-indicator", "function-transformer", "remainder"],
)
def test_unsupported_pipelines_compile_to_none(params: Params, training, model: str, settings: dict):
    frame, label = training
    frame = frame.assign(flight=np.arange(len(frame)) % 3 - 1.0)  # a column for the remainder to pass through
    config = params.train.model_copy(update={"model": model})
    pipeline = build_pipeline(NUMERIC, CATEGORICAL, config).set_params(**settings)
    pipeline.fit(frame[[*CATEGORICAL, *NUMERIC, "flight"]], label)
    assert pipeline.predict_proba(frame.iloc[:5]).shape == (5, 2)  # a working pipeline, just not a compilable one
    assert compile_pipeline(pipeline) is None


def test_unfitted_or_foreign_objects_compile_to_none(params: Params):
    assert compile_pipeline(build_pipeline(NUMERIC, CATEGORICAL, params.train)) is None
    assert compile_pipeline("not a pipeline") is None


def test_the_self_check_rejects_a_scorer_off_by_one_ulp(
    fitted: Pipeline, scored: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
):
    """Mocked: CompiledScorer.predict_proba is wrapped to move every probability up by one ulp (on both paths)."""
    assert compile_pipeline(fitted) is not None
    exact = scorer_module.CompiledScorer.predict_proba
    monkeypatch.setattr(
        scorer_module.CompiledScorer, "predict_proba", lambda self, columns: np.nextafter(exact(self, columns), 2.0)
    )
    assert compile_pipeline(fitted) is None
