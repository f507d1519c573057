"""Compile a fitted training pipeline into a numpy scorer over column arrays, with bit-identical probabilities.

`Pipeline.predict_proba` on a one-row DataFrame spends most of its time in the ColumnTransformer's pandas indexing
and validation. `compile_pipeline` reads the fitted imputers, encoders and scaler once and redoes their arithmetic
on plain arrays (a dict lookup per category, in-place numpy per numeric block), then scores the assembled float64
matrix along one of two paths, exposed as `CompiledScorer.path`:

- "hgb-trees" (HistGradientBoostingClassifier only): HGB's own re-encoding of the category codes (its private
  `_preprocessor`, an OrdinalEncoder inside a ColumnTransformer) is folded into the per-column code tables and the
  column order, and the fitted trees (`_predictors`, `_baseline_prediction`, `_bin_mapper`'s known-category bitsets,
  `_loss`) are summed exactly as HGB's `_raw_predict` / `_predict_iterations` / `predict_proba` do;
- "estimator": the matrix goes to the fitted estimator's public `predict_proba` (LogisticRegression, and HGB when
  its private state is not what this module expects or the trees path fails the self-check).

Any structure it does not implement compiles to None, and a compiled scorer is only returned after it reproduced the
pipeline exactly on a probe frame built from the pipeline; the trees path is tried first and must pass that check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils import check_array

from retrainer.serving.features import float_array, is_missing

PROBE_MIN_ROWS = 256
PROBE_SPREAD = np.linspace(-4.0, 4.0, 33)  # numeric probe values: centre + spread * width
UNSEEN = "__unseen__"
NO_COLUMN = -1  # one-hot code of a value that sets no output column
SUPPORTED_ESTIMATORS = (HistGradientBoostingClassifier, LogisticRegression)
PATH_TREES = "hgb-trees"  # HGB's fitted trees summed directly, its category re-encoding folded into the code tables
PATH_ESTIMATOR = "estimator"  # the fitted estimator's public predict_proba on the assembled matrix


class _Unsupported(Exception):
    """A fitted structure or parameter the compiler does not implement (compile_pipeline then returns None)."""


class _Codes(dict):
    """Category -> output code of one column; a value absent from it is looked up as missing or unseen."""

    __slots__ = ("missing", "unseen")

    def __init__(self, codes: Mapping[str, float], missing: float, unseen: float):
        super().__init__(codes)
        self.missing = missing
        self.unseen = unseen
        # The common missing markers hit the dict directly; other NaN objects go through __missing__.
        self.update({None: missing, pd.NA: missing, np.nan: missing})

    def __missing__(self, value: object) -> float:
        return self.missing if is_missing(value) else self.unseen

    def known(self) -> list[str]:
        """The categories the column was fitted with."""
        return [value for value in self if isinstance(value, str)]


@dataclass(frozen=True)
class _OrdinalBlock:
    """Ordinal codes of categorical columns, one output column each."""

    columns: tuple[str, ...]
    codes: tuple[_Codes, ...]
    start: int

    @property
    def width(self) -> int:
        return len(self.columns)

    def write(self, out: np.ndarray, data: Mapping[str, object]) -> None:
        """Fill this block's output columns from the raw columns."""
        for offset, (name, codes) in enumerate(zip(self.columns, self.codes, strict=True)):
            out[:, self.start + offset] = [codes[value] for value in _as_objects(data[name])]


@dataclass(frozen=True)
class _OneHotBlock:
    """One-hot indicators of categorical columns; each code is an output column, or NO_COLUMN."""

    columns: tuple[str, ...]
    codes: tuple[_Codes, ...]
    start: int
    width: int

    def write(self, out: np.ndarray, data: Mapping[str, object]) -> None:
        """Zero this block's output columns and set the one of each row and input column."""
        out[:, self.start : self.start + self.width] = 0.0
        rows = np.arange(out.shape[0])
        for name, codes in zip(self.columns, self.codes, strict=True):
            hot = np.fromiter((codes[value] for value in _as_objects(data[name])), dtype=np.intp, count=out.shape[0])
            hit = hot != NO_COLUMN
            out[rows[hit], hot[hit]] = 1.0


@dataclass(frozen=True)
class _NumericBlock:
    """Numeric columns: NaN filled with the imputer's statistics, then standardised, as sklearn does it."""

    columns: tuple[str, ...]
    start: int
    fill: np.ndarray | None
    mean: np.ndarray | None
    scale: np.ndarray | None

    @property
    def width(self) -> int:
        return len(self.columns)

    def write(self, out: np.ndarray, data: Mapping[str, object]) -> None:
        """Fill this block's output columns from the raw columns, in place."""
        block = out[:, self.start : self.start + self.width]
        for offset, name in enumerate(self.columns):
            block[:, offset] = float_array(data[name])
        if np.isinf(block).any():
            raise ValueError(f"numeric input contains infinity in one of {list(self.columns)}")
        if self.fill is not None:
            np.copyto(block, self.fill, where=np.isnan(block))
        if self.mean is not None:
            block -= self.mean
        if self.scale is not None:
            block /= self.scale


_Block = _OrdinalBlock | _OneHotBlock | _NumericBlock


def _as_objects(values: object) -> Iterable:
    """A categorical column as something cheap to iterate (pandas containers become object arrays)."""
    if isinstance(values, np.ndarray | list | tuple):
        return values
    if hasattr(values, "to_numpy"):
        return values.to_numpy(dtype=object)
    return values


class _EstimatorHead:
    """The fitted estimator's public predict_proba on the assembled matrix."""

    path = PATH_ESTIMATOR

    def __init__(self, estimator: object):
        self._estimator = estimator

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        return self._estimator.predict_proba(matrix)[:, 1].copy()


class _TreesHead:
    """A fitted HistGradientBoostingClassifier's trees over a matrix already in its internal encoding and order.

    Mirrors sklearn 1.9's `_raw_predict` + `_predict_iterations` + `predict_proba` step for step: zeros in the
    baseline's dtype (Fortran order) plus the baseline, then each iteration's tree added in turn with the raw-data
    predictor, the bin mapper's known-category bitsets and `_openmp_effective_n_threads()` read per call (so the
    caller's threadpool limits apply), then the loss's own predict_proba.
    """

    path = PATH_TREES

    def __init__(
        self,
        predictors: tuple[tuple[object, ...], ...],
        baseline: np.ndarray,
        bitsets: tuple[np.ndarray, np.ndarray],
        loss: object,
        n_threads: Callable[[], int],
        order: np.ndarray | None,
    ):
        self._predictors = predictors
        self._baseline = baseline
        self._known_cat_bitsets, self._f_idx_map = bitsets
        self._loss = loss
        self._n_threads = n_threads
        self._order = order

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        if self._order is not None:
            matrix = np.take(matrix, self._order, axis=1)
        raw = np.zeros((matrix.shape[0], self._baseline.shape[1]), dtype=self._baseline.dtype, order="F")
        raw += self._baseline
        n_threads = self._n_threads()
        for trees in self._predictors:
            for k, tree in enumerate(trees):
                raw[:, k] += tree.predict(
                    matrix, known_cat_bitsets=self._known_cat_bitsets, f_idx_map=self._f_idx_map, n_threads=n_threads
                )
        return self._loss.predict_proba(raw)[:, 1].copy()


_Head = _EstimatorHead | _TreesHead


class CompiledScorer:
    """A fitted pipeline's preprocessing redone on numpy column arrays, then scored along `path`.

    `path` is "hgb-trees" (HGB's trees summed directly) or "estimator" (the estimator's public predict_proba).
    """

    def __init__(self, blocks: Sequence[_Block], width: int, head: _Head):
        self._blocks = tuple(blocks)
        self._width = width
        self._head = head
        self.path: str = head.path
        self.columns: tuple[str, ...] = tuple(dict.fromkeys(name for b in self._blocks for name in b.columns))

    def predict_proba(self, columns: Mapping[str, np.ndarray | Sequence]) -> np.ndarray:
        """Positive-class probability per row, from one array per raw feature (extra keys are ignored)."""
        rows = _count_rows(columns, self.columns)
        matrix = np.empty((rows, self._width), dtype=np.float64)
        for block in self._blocks:
            block.write(matrix, columns)
        return self._head(matrix)


def _count_rows(columns: Mapping[str, object], names: Sequence[str]) -> int:
    """The common length of the named columns; KeyError names the first absent one."""
    lengths = set()
    for name in names:
        if name not in columns:
            raise KeyError(f"missing feature column {name!r}")
        lengths.add(len(columns[name]))
    if len(lengths) != 1:
        raise ValueError(f"feature columns differ in length: {sorted(lengths)}")
    return lengths.pop()


def compile_pipeline(pipeline: object) -> CompiledScorer | None:
    """A CompiledScorer equal to `pipeline.predict_proba(...)[:, 1]` on its probe frame, or None if unsupported.

    For a HistGradientBoostingClassifier the trees path is tried first; if its private state cannot be read as
    expected or it misses the probe by any bit, the public-estimator path is tried; None if that misses too.
    """
    try:
        public = _build_scorer(pipeline)
        probe = _probe_columns(public, list(pipeline.feature_names_in_))
        expected = pipeline.predict_proba(pd.DataFrame(probe))[:, 1]
    except Exception:  # the contract is "None, never raises" for whatever the fitted object turns out to be
        return None
    for scorer in (_trees_scorer(public), public):
        if scorer is not None and _reproduces(scorer, probe, expected):
            return scorer
    return None


def _reproduces(scorer: CompiledScorer, probe: Mapping[str, object], expected: np.ndarray) -> bool:
    """Whether the scorer gives the pipeline's probabilities on the probe bit for bit (False if it raises)."""
    try:
        return bool(np.array_equal(scorer.predict_proba(probe), expected))
    except Exception:
        return False


def _build_scorer(pipeline: object) -> CompiledScorer:
    """Walk a fitted Pipeline([("preprocess", ColumnTransformer), ("model", estimator)]) into a public-path scorer."""
    if type(pipeline) is not Pipeline or [name for name, _ in pipeline.steps] != ["preprocess", "model"]:
        raise _Unsupported("expected Pipeline([('preprocess', ...), ('model', ...)])")
    preprocess, estimator = (step for _, step in pipeline.steps)
    blocks, width = _compile_column_transformer(preprocess)
    _check_estimator(estimator, width)
    return CompiledScorer(blocks, width, _EstimatorHead(estimator))


def _trees_scorer(public: CompiledScorer) -> CompiledScorer | None:
    """The trees-path twin of a public-path HGB scorer, or None when HGB's private state is not as expected."""
    estimator = public._head._estimator
    if type(estimator) is not HistGradientBoostingClassifier:
        return None
    try:  # private sklearn state: any surprise (renamed attribute, new shape, new type) means "use the public path"
        return _fold_hgb(public, estimator)
    except Exception:
        return None


def _check_estimator(estimator: object, width: int) -> None:
    """A binary HistGradientBoostingClassifier or LogisticRegression fitted on a numpy matrix of `width` columns."""
    if type(estimator) not in SUPPORTED_ESTIMATORS:
        raise _Unsupported(f"estimator {type(estimator).__name__}")
    if hasattr(estimator, "feature_names_in_") or estimator.n_features_in_ != width:
        raise _Unsupported("estimator was not fitted on the ColumnTransformer's numpy output")
    if len(estimator.classes_) != 2:
        raise _Unsupported("not a binary classifier")


def _compile_column_transformer(preprocess: object) -> tuple[list[_Block], int]:
    """One block per fitted transformer, placed at the transformer's output columns."""
    if type(preprocess) is not ColumnTransformer:
        raise _Unsupported("preprocess is not a ColumnTransformer")
    if preprocess.remainder != "drop" or preprocess.transformer_weights is not None or preprocess.sparse_output_:
        raise _Unsupported("remainder, transformer weights or sparse output")
    names = [str(name) for name in preprocess.feature_names_in_]
    blocks: list[_Block] = []
    for label, transformer, selection in preprocess.transformers_:
        if isinstance(transformer, str) and transformer == "drop":
            continue
        columns = _select_columns(selection, names)
        if not columns:
            continue
        where = preprocess.output_indices_[label]
        block = _compile_chain(_chain_steps(transformer), columns, where.start)
        if block.width != where.stop - where.start:
            raise _Unsupported(f"transformer {label!r} output width")
        blocks.append(block)
    return blocks, _tiled_width(blocks)


def _tiled_width(blocks: Sequence[_Block]) -> int:
    """The matrix width when the blocks cover its columns back to back, each exactly once."""
    width = 0
    for block in sorted(blocks, key=lambda b: b.start):
        if block.start != width:
            raise _Unsupported("transformer outputs do not tile the matrix")
        width += block.width
    if not width:
        raise _Unsupported("no output columns")
    return width


def _select_columns(selection: object, names: Sequence[str]) -> list[str]:
    """A ColumnTransformer column selection (names or positions) as feature names."""
    if isinstance(selection, str) or not isinstance(selection, list | tuple | np.ndarray):
        raise _Unsupported(f"column selection {selection!r}")
    chosen = list(selection)
    if all(isinstance(c, str) for c in chosen):
        return chosen
    if all(isinstance(c, int | np.integer) and not isinstance(c, bool | np.bool_) for c in chosen):
        return [names[c] for c in chosen]
    raise _Unsupported(f"column selection {selection!r}")


def _chain_steps(transformer: object) -> list[object]:
    """A transformer, or a Pipeline's transformers without its passthrough steps."""
    if type(transformer) is Pipeline:
        return [step for _, step in transformer.steps if step is not None and step != "passthrough"]
    if isinstance(transformer, str):
        raise _Unsupported(f"transformer {transformer!r}")
    return [transformer]


def _compile_chain(steps: list[object], columns: list[str], start: int) -> _Block:
    """[SimpleImputer] + encoder for categorical columns, or [SimpleImputer] + [StandardScaler] for numeric ones."""
    if steps and type(steps[-1]) in (OrdinalEncoder, OneHotEncoder):
        *before, encoder = steps
        if len(before) > 1 or (before and type(before[0]) is not SimpleImputer):
            raise _Unsupported("categorical steps other than SimpleImputer -> encoder")
        columns, fill = _categorical_fill(before[0], columns) if before else (columns, None)
        return _compile_encoder(encoder, columns, fill, start)
    kinds = [type(step) for step in steps]
    if kinds not in ([SimpleImputer], [StandardScaler], [SimpleImputer, StandardScaler]):
        raise _Unsupported(f"numeric steps {[k.__name__ for k in kinds]}")
    fill = None
    if kinds[0] is SimpleImputer:
        columns, fill = _numeric_fill(steps[0], columns)
    mean, scale = _scaler_arrays(steps[-1], len(columns)) if kinds[-1] is StandardScaler else (None, None)
    return _NumericBlock(tuple(columns), start, fill, mean, scale)


def _imputer_statistics(imputer: SimpleImputer, columns: list[str]) -> tuple[list[str], np.ndarray]:
    """The columns a SimpleImputer keeps and their fill values, as its transform casts them."""
    missing_values = imputer.missing_values
    if imputer.add_indicator or not (isinstance(missing_values, float) and math.isnan(missing_values)):
        raise _Unsupported("SimpleImputer with an indicator or missing_values other than NaN")
    statistics = np.asarray(imputer.statistics_)
    if len(statistics) != len(columns):
        raise _Unsupported("SimpleImputer statistics do not match its columns")
    statistics = statistics.astype(getattr(imputer, "_fill_dtype", statistics.dtype), copy=False)
    if imputer.keep_empty_features:
        return columns, statistics
    keep = [i for i, value in enumerate(statistics) if not is_missing(value)]
    return [columns[i] for i in keep], statistics[keep]


def _categorical_fill(imputer: object, columns: list[str]) -> tuple[list[str], list[str]]:
    """The kept columns of a SimpleImputer over string columns and the string each fills missing values with."""
    if type(imputer) is not SimpleImputer or getattr(imputer, "_fit_dtype", None) != np.dtype(object):
        raise _Unsupported("categorical imputer not fitted on object data")
    kept, statistics = _imputer_statistics(imputer, columns)
    if not all(isinstance(value, str) for value in statistics):
        raise _Unsupported("categorical fill value is not a string")
    return kept, list(statistics)


def _numeric_fill(imputer: SimpleImputer, columns: list[str]) -> tuple[list[str], np.ndarray]:
    """The kept columns of a SimpleImputer over float columns and their float64 fill values."""
    if getattr(imputer, "_fit_dtype", np.dtype(object)).kind != "f":
        raise _Unsupported("numeric imputer not fitted on float data")
    kept, statistics = _imputer_statistics(imputer, columns)
    return kept, statistics.astype(np.float64)


def _scaler_arrays(scaler: StandardScaler, n_columns: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The mean subtracted and the scale divided by, each None when the scaler skips it."""
    if scaler.n_features_in_ != n_columns:
        raise _Unsupported("StandardScaler width")
    mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
    scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None
    return mean, scale


def _encoder_categories(encoder: OrdinalEncoder | OneHotEncoder, n_columns: int) -> list[tuple[list[str], set[str]]]:
    """Per column: the fitted categories (strings only) and the infrequent ones among them."""
    if encoder.n_features_in_ != n_columns or np.dtype(encoder.dtype) != np.float64:
        raise _Unsupported("encoder width or output dtype")
    infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * n_columns
    result = []
    for categories, rare in zip(encoder.categories_, infrequent, strict=True):
        if categories.dtype != object or not all(isinstance(c, str) for c in categories):
            raise _Unsupported("encoder categories are not all strings")
        result.append((list(categories), set() if rare is None else set(rare)))
    return result


def _grouped_codes(categories: list[str], rare: set[str]) -> dict[str, int]:
    """sklearn's infrequent grouping: frequent categories numbered in order, every infrequent one after them."""
    frequent = [c for c in categories if c not in rare]
    codes = {c: i for i, c in enumerate(frequent)}
    codes.update(dict.fromkeys(rare, len(frequent)))
    return codes


def _compile_encoder(
    encoder: object, columns: list[str], fill: list[str] | None, start: int
) -> _OrdinalBlock | _OneHotBlock:
    """An OrdinalEncoder or OneHotEncoder over (possibly imputed) string columns as per-column code dicts."""
    per_column = _encoder_categories(encoder, len(columns))
    fills = fill if fill is not None else [None] * len(columns)
    if type(encoder) is OrdinalEncoder:
        if encoder.handle_unknown != "use_encoded_value":
            raise _Unsupported("OrdinalEncoder handle_unknown")
        unknown = float(encoder.unknown_value)
        tables = []
        for (categories, rare), value in zip(per_column, fills, strict=True):
            codes = {c: float(code) for c, code in _grouped_codes(categories, rare).items()}
            tables.append(_Codes(codes, codes.get(value, unknown), unknown))
        return _OrdinalBlock(tuple(columns), tuple(tables), start)
    if encoder.handle_unknown not in ("ignore", "infrequent_if_exist") or encoder.drop is not None:
        raise _Unsupported("OneHotEncoder handle_unknown or drop")
    if encoder.sparse_output:
        raise _Unsupported("sparse one-hot output")
    tables, offset = [], start
    for (categories, rare), value in zip(per_column, fills, strict=True):
        codes = {c: offset + code for c, code in _grouped_codes(categories, rare).items()}
        width = len(categories) - len(rare) + (1 if rare else 0)
        unknown = offset + width - 1 if rare and encoder.handle_unknown == "infrequent_if_exist" else NO_COLUMN
        tables.append(_Codes(codes, codes.get(value, unknown), unknown))
        offset += width
    if offset - start != len(encoder.get_feature_names_out()):
        raise _Unsupported("OneHotEncoder output width")
    return _OneHotBlock(tuple(columns), tuple(tables), start, offset - start)


def _fold_hgb(public: CompiledScorer, estimator: HistGradientBoostingClassifier) -> CompiledScorer:
    """Fold HGB's internal category re-encoding into the code tables and read its trees (sklearn 1.9 layout)."""
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    width = public._width
    order, inner_tables = _hgb_layout(estimator._preprocessor, width)
    blocks = [_fold_block(block, inner_tables) for block in public._blocks]

    n_per_iteration = int(estimator.n_trees_per_iteration_)
    baseline = np.asarray(estimator._baseline_prediction)
    if baseline.shape != (1, n_per_iteration) or baseline.dtype != np.float64:
        raise _Unsupported(f"baseline prediction of shape {baseline.shape} and dtype {baseline.dtype}")
    predictors = tuple(tuple(trees) for trees in estimator._predictors)
    if any(len(trees) != n_per_iteration for trees in predictors) or not all(
        callable(getattr(tree, "predict", None)) for trees in predictors for tree in trees
    ):
        raise _Unsupported("predictors are not one list of trees per iteration")
    known_cat_bitsets, f_idx_map = estimator._bin_mapper.make_known_categories_bitsets()
    if np.shape(f_idx_map) != (width,) or np.ndim(known_cat_bitsets) != 2:
        raise _Unsupported("known-category bitsets do not match the matrix")
    loss = estimator._loss
    if not callable(getattr(loss, "predict_proba", None)):
        raise _Unsupported("loss without predict_proba")
    head = _TreesHead(predictors, baseline, (known_cat_bitsets, f_idx_map), loss, _openmp_effective_n_threads, order)
    return CompiledScorer(blocks, width, head)


def _hgb_layout(preprocessor: object, width: int) -> tuple[np.ndarray | None, dict[int, _InnerCodes]]:
    """HGB's internal ColumnTransformer as (outer column of each inner column, or None if unchanged) and the inner
    code table of each outer column it re-encodes (OrdinalEncoder over the float codes; identity for the rest)."""
    if preprocessor is None:  # no categorical features: HGB only validates the matrix
        return None, {}
    if type(preprocessor) is not ColumnTransformer or preprocessor.n_features_in_ != width:
        raise _Unsupported("HGB preprocessor is not a ColumnTransformer over the matrix")
    order = np.full(width, -1, dtype=np.intp)
    inner_tables: dict[int, _InnerCodes] = {}
    for label, transformer, selection in preprocessor.transformers_:
        columns = _selected_indices(selection, width)
        where = preprocessor.output_indices_[label]
        if where.stop - where.start != len(columns):
            raise _Unsupported(f"HGB preprocessor transformer {label!r} output width")
        if not len(columns):
            continue
        if type(transformer) is OrdinalEncoder:
            tables = _inner_ordinal_tables(transformer, len(columns))
            inner_tables.update(zip(columns.tolist(), tables, strict=True))
        elif not _is_float_check(transformer):
            raise _Unsupported(f"HGB preprocessor transformer {label!r}")
        if (order[where] != -1).any():
            raise _Unsupported("HGB preprocessor outputs overlap")
        order[where] = columns
    if sorted(order.tolist()) != list(range(width)):
        raise _Unsupported("HGB preprocessor outputs are not a permutation of the matrix columns")
    return (None if (order == np.arange(width)).all() else order), inner_tables


def _selected_indices(selection: object, width: int) -> np.ndarray:
    """A ColumnTransformer column selection over a numpy matrix (boolean mask or positions) as positions."""
    chosen = np.asarray(selection)
    if chosen.dtype == bool and chosen.shape == (width,):
        return np.flatnonzero(chosen)
    if chosen.size == 0:
        return np.zeros(0, dtype=np.intp)
    if chosen.ndim == 1 and chosen.dtype.kind in "iu" and chosen.min() >= 0 and chosen.max() < width:
        return chosen.astype(np.intp)
    raise _Unsupported(f"HGB preprocessor column selection {selection!r}")


def _is_float_check(transformer: object) -> bool:
    """HGB's numerical pass-through: FunctionTransformer(partial(check_array, dtype=[float64], ...))."""
    func = getattr(transformer, "func", None)
    return (
        type(transformer) is FunctionTransformer
        and isinstance(func, functools.partial)
        and func.func is check_array
        and func.keywords.get("dtype") in ([np.float64], np.float64)
        and transformer.inverse_func is None
    )


@dataclass(frozen=True)
class _InnerCodes:
    """HGB's OrdinalEncoder over one column of outer float codes: code -> inner code, NaN and unknown handled."""

    codes: Mapping[float, float]
    missing: float
    unknown: float

    def __call__(self, value: float) -> float:
        if is_missing(value):
            return self.missing
        return self.codes.get(float(value), self.unknown)


def _inner_ordinal_tables(encoder: OrdinalEncoder, n_columns: int) -> list[_InnerCodes]:
    """The fitted OrdinalEncoder HGB uses on its categorical columns, one table per column."""
    if encoder.n_features_in_ != n_columns or np.dtype(encoder.dtype) != np.float64:
        raise _Unsupported("HGB encoder width or output dtype")
    if encoder.handle_unknown != "use_encoded_value" or getattr(encoder, "infrequent_categories_", None) is not None:
        raise _Unsupported("HGB encoder handle_unknown or infrequent grouping")
    if encoder.max_categories is not None or encoder.min_frequency is not None:
        raise _Unsupported("HGB encoder infrequent grouping")
    unknown = float(encoder.unknown_value)
    encoded_missing = float(encoder.encoded_missing_value)
    tables = []
    for categories in encoder.categories_:
        categories = np.asarray(categories)
        if categories.dtype.kind != "f":
            raise _Unsupported("HGB encoder categories are not floats")
        present = categories[~np.isnan(categories)]
        if len(present) != len(categories) and not np.isnan(categories[-1]):
            raise _Unsupported("HGB encoder NaN category is not last")
        if len(np.unique(present)) != len(present):
            raise _Unsupported("HGB encoder categories repeat")
        codes = {float(value): float(code) for code, value in enumerate(present)}
        missing = encoded_missing if len(present) != len(categories) else unknown
        tables.append(_InnerCodes(codes, missing, unknown))
    return tables


def _fold_block(block: _Block, inner_tables: Mapping[int, _InnerCodes]) -> _Block:
    """A block whose codes already are HGB's inner codes for the columns HGB re-encodes."""
    positions = range(block.start, block.start + block.width)
    if not any(position in inner_tables for position in positions):
        return block
    if not isinstance(block, _OrdinalBlock):
        raise _Unsupported("HGB re-encodes a column that is not an ordinal code")
    tables = []
    for position, codes in zip(positions, block.codes, strict=True):
        inner = inner_tables.get(position)
        if inner is None:
            tables.append(codes)
            continue
        folded = {category: inner(codes[category]) for category in codes.known()}
        tables.append(_Codes(folded, inner(codes.missing), inner(codes.unseen)))
    return _OrdinalBlock(block.columns, tuple(tables), block.start)


def _probe_values(block: _Block, index: int) -> list:
    """Values that exercise one column: every category plus missing and unseen, or numbers around its centre."""
    if isinstance(block, _NumericBlock):
        centres = block.fill if block.fill is not None else block.mean
        centre = float(centres[index]) if centres is not None else 0.0
        width = block.scale[index] if block.scale is not None else max(abs(centre), 1.0)
        return [*(centre + width * PROBE_SPREAD), centre, 0.0, np.nan]
    known = block.codes[index].known()
    unseen = UNSEEN
    while unseen in known:
        unseen += "_"
    return [*known, None, unseen]


def _probe_columns(scorer: CompiledScorer, feature_names: list[str]) -> dict[str, list]:
    """A deterministic probe frame (as columns) built only from the fitted pipeline's own parameters."""
    values = {}
    for block in scorer._blocks:
        for index, name in enumerate(block.columns):
            values[name] = _probe_values(block, index)
    rows = max(PROBE_MIN_ROWS, *(len(v) for v in values.values()))
    probe = {}
    for position, name in enumerate(feature_names):
        column = values.get(name, [np.nan])
        shift = (7 * position) % len(column)  # a different rotation per column mixes the combinations
        rotated = column[shift:] + column[:shift]
        probe[name] = [rotated[row % len(rotated)] for row in range(rows)]
    return probe
