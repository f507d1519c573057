"""The pure pieces of a model-change report, table-tested on tiny frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from retrainer.config import SlicePolicy
from retrainer.steps.model_change import (
    choose_holdout,
    is_batch,
    output_hashes,
    score_bundle,
    slice_deltas,
    split_changed_files,
)

LOCK = {
    "schema": "2.0",
    "stages": {
        "train": {"outs": [{"path": "models/model.pkl", "md5": "aa", "size": 3}]},
        "evaluate": {"outs": [{"path": "models/metrics.json", "md5": "bb"}, {"path": "models/plots/roc.png"}]},
        "validate": {"deps": [{"path": "data/batches", "md5": "cc.dir"}]},
    },
}


def test_output_hashes_lists_every_stage_output_with_an_md5():
    assert output_hashes(LOCK) == {"models/model.pkl": "aa", "models/metrics.json": "bb"}
    assert output_hashes({}) == {}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("data/batches/2013-02.csv", True),
        ("data/batches/sub/x.parquet", True),
        ("data/batches/.gitkeep", False),
        ("data/batches/abc.validation.json", False),
        ("data/batches", False),
        ("data/batches-old/x.csv", False),
        ("seeds/flights.parquet", False),
    ],
)
def test_is_batch(name, expected):
    assert is_batch(name, "data/batches") is expected


def test_split_changed_files_sorts_by_kind_and_leaves_pipeline_outputs_to_dvc_diff():
    files = [
        "src/retrainer/steps/train.py",
        "params.yaml",
        "dvc.lock",
        "data/batches.dvc",
        "data/batches/2013-02.csv",
        "models/metrics.json",
        "docs/report.png",
    ]
    groups = split_changed_files(files, "data/batches", ["models/metrics.json"])
    assert groups == {
        "batches": ["data/batches/2013-02.csv"],
        "code": ["src/retrainer/steps/train.py"],
        "pipeline": ["data/batches.dvc", "dvc.lock", "params.yaml"],
        "other": ["docs/report.png"],
    }


def frame(times: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"t": pd.to_datetime(times, utc=True), "x": range(len(times))})


@pytest.mark.parametrize(
    ("base_times", "head_times", "same", "side", "said"),
    [
        (["2013-01-01"], ["2013-01-01"], True, "head", "same holdout file"),
        (["2013-01-01", "2013-02-01"], ["2013-03-01"], False, "head", "the branch's"),
        (["2013-04-01"], ["2013-01-01", "2013-03-01"], False, "base", "the base's"),
        (["2013-03-01"], ["2013-02-01", "2013-03-01"], False, "head", "the branch's"),  # a tie: the branch's
    ],
)
def test_choose_holdout_takes_the_newer_one_and_says_so(base_times, head_times, same, side, said):
    choice = choose_holdout(frame(base_times), frame(head_times), "t", same)
    assert choice.side == side and said in choice.note
    assert len(choice.frame) == len(head_times if side == "head" else base_times)


def test_score_bundle_names_missing_feature_columns():
    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "y": [0, 0, 1, 1]})
    model = LogisticRegression().fit(x[["a"]], x["y"])
    scored = score_bundle({"model": model, "threshold": 0.5, "features": ["a"]}, x, "y")
    assert scored.metrics["roc_auc"] == 1.0 and scored.proba.shape == (4,)
    with pytest.raises(KeyError, match="'b'"):
        score_bundle({"model": model, "threshold": 0.5, "features": ["a", "b"]}, x, "y")


def test_slice_deltas_marks_the_slices_the_gate_judges():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    base = np.array([0.4, 0.6, 0.4, 0.6, 0.6, 0.4, 0.6, 0.4])
    head = np.array([0.4, 0.6, 0.4, 0.6, 0.4, 0.6, 0.4, 0.6])
    slices = pd.DataFrame({"origin": ["A"] * 4 + ["B"] * 4, "carrier": ["X"] * 6 + ["Y"] * 2})
    policy = SlicePolicy(columns=["origin", "carrier"], min_rows=4, max_drop=0.03)
    table = slice_deltas(y, head, base, slices, policy, "roc_auc").set_index("slice")
    assert table.loc["origin=A", "change"] == 0.0
    assert table.loc["origin=B", "change"] == 1.0  # AUC 0 -> 1
    assert table["judged"].to_dict() == {"origin=A": True, "origin=B": True, "carrier=X": True, "carrier=Y": False}
