"""Rollback on a real MLflow registry (SQLite): the alias moves back, the state follows, the golden set proves it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import register_fitted

from retrainer.config import Params
from retrainer.io import registry
from retrainer.serving.rollback import (
    NoPreviousChampion,
    RollbackConflict,
    golden_record_path,
    golden_set_path,
    record_golden_predictions,
    rollback,
    sample_golden_set,
)
from retrainer.serving.schema import InvalidRecords, record_schema
from retrainer.serving.state import load_state, state_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory,
    params: Params,
    seed_flights: pd.DataFrame,
    references: dict[str, pd.DataFrame],
) -> Iterator[Path]:
    """A home of its own (other serving tests share theirs) with two real versions, no alias set."""
    from threadpoolctl import threadpool_limits

    path = tmp_path_factory.mktemp("rollback-home")
    # One thread: OpenMP spin-waiting makes these tiny fits many times slower on a busy 2-core machine.
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(limits=1):
        patch.setenv("RETRAINER_HOME", str(path))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
        patch.delenv("RETRAINER_PARAMS", raising=False)
        for version, max_iter in (("1", 20), ("2", 40)):
            registered = register_fitted(
                params, seed_flights, references, run_params={"max_iter": max_iter}, model__max_iter=max_iter
            )
            assert registered == version
        yield path


def _v2_promoted_over_v1(params: Params, home: Path) -> None:
    """v1 becomes the first champion, then v2 is promoted over it, both through compare-and-set."""
    name, lock = params.tracking.registered_model, home / "registry.lock"
    registry.clear_alias(name, registry.CHAMPION)
    assert registry.promote_if_current(name, "1", None, lock).promoted
    assert registry.promote_if_current(name, "2", "1", lock).promoted
    assert registry.version_tags(name, "2")["promoted_from"] == "1"


def test_rollback_restores_the_previous_champion_and_verifies(params: Params, home: Path):
    name = params.tracking.registered_model
    _v2_promoted_over_v1(params, home)
    for version in ("1", "2"):
        path = record_golden_predictions(version, params, ROOT, overwrite=True)
        assert (
            path == golden_record_path(home, params.tracking.registered_model, version)
            and len(json.loads(path.read_text())["rows"]) == 200
        )

    report = rollback(params, ROOT)

    assert (report.from_version, report.to_version) == ("2", "1")
    assert registry.alias_version(name, registry.CHAMPION) == "1"
    assert report.verified is True, report.reason
    assert report.max_abs_diff == 0.0 and report.rows == 200 and report.mismatches == []
    state = load_state(state_path(home))
    assert (state.champion_version, state.challenger_version, state.challenger_weight) == ("1", None, 0.0)
    assert registry.version_tags(name, "2")["rolled_back_to"] == "1"

    # v1 was the first champion: a second rollback has nowhere to go, and says so without moving anything.
    with pytest.raises(NoPreviousChampion, match=r"v1 .* nothing to roll back to"):
        rollback(params, ROOT)
    assert registry.alias_version(name, registry.CHAMPION) == "1"


def test_no_champion_at_all_is_a_clear_error(params: Params, home: Path):
    registry.clear_alias(params.tracking.registered_model, registry.CHAMPION)
    with pytest.raises(NoPreviousChampion, match="has no champion"):
        rollback(params, ROOT)


def test_a_stale_expected_champion_is_refused(params: Params, home: Path):
    _v2_promoted_over_v1(params, home)
    with pytest.raises(RollbackConflict, match="champion is v2, not v7"):
        rollback(params, ROOT, expected_champion="7")
    assert registry.alias_version(params.tracking.registered_model, registry.CHAMPION) == "2"


def test_a_tampered_golden_record_fails_verification_naming_the_row(params: Params, home: Path):
    _v2_promoted_over_v1(params, home)
    path = record_golden_predictions("1", params, ROOT, overwrite=True)
    payload = json.loads(path.read_text())
    payload["rows"][17]["probability"] += 1e-6
    path.write_text(json.dumps(payload))

    report = rollback(params, ROOT)

    assert report.to_version == "1" and report.verified is False
    assert len(report.mismatches) == 1 and report.mismatches[0].startswith("row 17 (")
    assert "row 17 (" in report.reason
    assert report.max_abs_diff == pytest.approx(1e-6, rel=1e-3)


def test_a_version_without_golden_predictions_is_not_verified(params: Params, home: Path):
    _v2_promoted_over_v1(params, home)
    golden_record_path(home, params.tracking.registered_model, "1").unlink(missing_ok=True)

    report = rollback(params, ROOT)

    assert report.to_version == "1" and report.verified is False
    assert "no golden predictions recorded for v1" in report.reason


def test_the_golden_set_is_drawn_once_from_the_training_data_as_a_client_sends_it(params: Params, home: Path):
    """No golden file ships with the project: the set is drawn (seeded) from what training reads, outcome columns
    removed, stored under the home and reused by every version, so rollback verifies on any dataset."""
    record_golden_predictions("1", params, ROOT, overwrite=True)
    stored = golden_set_path(home, params.tracking.registered_model)
    records = json.loads(stored.read_text())["records"]
    assert len(records) == params.serve.golden_rows
    assert not set(params.data.outcome_columns) & set().union(*records)
    assert record_schema(params).json_records(records) == records, "every golden record is a valid request"
    assert sample_golden_set(params, ROOT) == records, "the draw is seeded"
    assert records != sample_golden_set(
        params.model_copy(update={"train": params.train.model_copy(update={"seed": params.train.seed + 1})}), ROOT
    )
    before = stored.stat().st_mtime_ns
    record_golden_predictions("2", params, ROOT, overwrite=True)
    assert stored.stat().st_mtime_ns == before
    digests = {
        json.loads(golden_record_path(home, params.tracking.registered_model, v).read_text())["golden_sha256"]
        for v in ("1", "2")
    }
    assert len(digests) == 1


def test_a_golden_file_with_an_invalid_record_is_refused_naming_the_field(
    params: Params, home: Path, seed_flights: pd.DataFrame, tmp_path: Path
):
    rows = seed_flights.head(5).copy()
    rows.loc[rows.index[2], "month"] = 13
    path = tmp_path / "golden.parquet"
    rows.to_parquet(path)
    with pytest.raises(InvalidRecords, match=r"records\[2\]\.month"):
        record_golden_predictions("1", params, ROOT, path, overwrite=True)


def test_each_model_keeps_its_own_golden_set_and_a_changed_schema_is_named_not_replayed(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A workspace switched to the car-loan params draws the car-loan model's own golden set (flights records are
    never replayed to it); a model whose request schema changed under its stored set is told so, by file."""
    from retrainer.config import load_params
    from retrainer.serving.rollback import GoldenSetMismatch, check_golden, golden_records

    monkeypatch.setenv("RETRAINER_HOME", str(tmp_path / ".retrainer"))
    (tmp_path / "seeds").symlink_to(ROOT / "seeds")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    stored, flights = golden_records(params, tmp_path)  # drawn at the flights model's first promotion
    car_loan = load_params(ROOT / "examples" / "car_loan" / "params.yaml")
    own, loans = golden_records(car_loan, tmp_path)
    assert own != stored and Path(own).parent.name == car_loan.tracking.registered_model
    assert all("id" in r and "carrier" not in r for r in loans) and all("carrier" in r for r in flights)

    columns = {**params.validate.columns, "gate": params.validate.columns["carrier"]}  # a new required field
    changed = params.model_copy(update={"validate": params.validate.model_copy(update={"columns": columns})})
    named = rf"golden set {stored} does not fit .*records\[0\]\.gate: Field required"
    with pytest.raises(GoldenSetMismatch, match=named):
        golden_records(changed, tmp_path)
    check = check_golden("1", changed, tmp_path, None, lambda records: pytest.fail("replayed unfit records"))
    assert not check.verified and check.reason.startswith(f"the golden set {stored} does not fit")
