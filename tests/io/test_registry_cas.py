"""Compare-and-set promotion against a real MLflow registry on SQLite, raced by real processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock, Timeout
from test_workspace_lock import HOLD  # a real process that holds the workspace lock, as a running cycle does

from retrainer.io import registry

# mlflow and sklearn are imported inside the fixture and tests only: the spawned children import this module,
# and the lock-holding ones must start fast.

MODEL = "cas-model"
ROUNDS = 3
EXITED_HOLDING = 7
SPAWN = multiprocessing.get_context("spawn")
# Generous on purpose: on a loaded 2-core machine a spawned child took over 2 min to import MLflow and open the
# store (BrokenBarrierError at 120 s). Starting is waited for separately, so a round's timeout only bounds a round.
START_TIMEOUT_S = 600
ROUND_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A registry with versions 1..3 of a tiny model; MLFLOW_TRACKING_URI is exported for spawned children."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    home = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        experiment = mlflow.create_experiment("cas", artifact_location=(home / "artifacts").as_uri())
        rng = np.random.default_rng(0)
        x = rng.normal(size=(20, 2))
        y = (x[:, 0] > 0).astype(int)
        for _ in range(3):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(
                    LogisticRegression().fit(x, y),
                    name="model",
                    registered_model_name=MODEL,
                    serialization_format="cloudpickle",
                    pip_requirements=["scikit-learn"],
                )
        yield home
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def _race(version: str, lock_path: str, rounds: int, barrier, results) -> None:
    """Child: once started (the first barrier), at each round's barrier try to promote `version` over champion v1."""
    registry.alias_version(MODEL, registry.CHAMPION)  # import MLflow and open the store before the race
    barrier.wait(timeout=START_TIMEOUT_S)
    for _ in range(rounds):
        barrier.wait(timeout=ROUND_TIMEOUT_S)
        outcome = registry.promote_if_current(MODEL, version, "1", Path(lock_path))
        results.put((version, outcome.promoted, outcome.champion_version, outcome.reason))


def _hold_lock(lock_path: str, held) -> None:
    """Child: take the registry lock, say so, and hang on to it until killed."""
    lock = FileLock(lock_path)
    lock.acquire()
    held.set()
    time.sleep(600)


def _hold_lock_and_exit(lock_path: str) -> None:
    """Child: take the registry lock and die without releasing it."""
    FileLock(lock_path).acquire()
    os._exit(EXITED_HOLDING)


def _reset_champion(version: str) -> None:
    registry.set_alias(MODEL, registry.CHAMPION, version)
    for candidate in ("2", "3"):
        registry.tag_version(MODEL, candidate, {"promoted_from": "-"})


def test_the_registry_fixture_has_three_versions(tracking):
    import mlflow

    versions = {v.version for v in mlflow.MlflowClient().search_model_versions(f"name='{MODEL}'")}
    assert {str(v) for v in versions} == {"1", "2", "3"}


def test_two_processes_racing_to_promote_over_the_same_champion_never_both_win(tracking):
    lock_path = tracking / "registry.lock"
    barrier = SPAWN.Barrier(3)
    results = SPAWN.Queue()
    workers = [
        SPAWN.Process(target=_race, args=(version, str(lock_path), ROUNDS, barrier, results)) for version in ("2", "3")
    ]
    for worker in workers:
        worker.start()
    winners = []
    try:
        barrier.wait(timeout=START_TIMEOUT_S)  # both children have started and opened the store
        for _ in range(ROUNDS):
            _reset_champion("1")
            assert registry.alias_version(MODEL, registry.CHAMPION) == "1"
            barrier.wait(timeout=ROUND_TIMEOUT_S)
            reports = [results.get(timeout=ROUND_TIMEOUT_S) for _ in range(2)]
            outcomes = {report[0]: report[1:] for report in reports}
            assert set(outcomes) == {"2", "3"}
            won = [v for v, (promoted, _, _) in outcomes.items() if promoted]
            assert len(won) == 1, f"both or neither promoted: {outcomes}"
            winner = won[0]
            loser = "3" if winner == "2" else "2"
            _, champion_seen, reason = outcomes[loser]
            assert reason.startswith(registry.STALE), reason
            assert champion_seen == winner
            assert f"champion is v{winner}" in reason
            assert outcomes[winner][1] == winner
            assert registry.alias_version(MODEL, registry.CHAMPION) == winner
            assert registry.version_tags(MODEL, winner)["promoted_from"] == "1"
            assert registry.version_tags(MODEL, loser)["promoted_from"] == "-"
            winners.append(winner)
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert len(winners) == ROUNDS


def test_promotion_clears_the_challenger_alias_only_when_it_points_at_the_winner(tracking):
    lock_path = tracking / "registry.lock"
    _reset_champion("1")
    registry.set_alias(MODEL, registry.CHALLENGER, "3")
    outcome = registry.promote_if_current(MODEL, "2", "1", lock_path)
    assert outcome.promoted and outcome.reason == "v2 promoted over v1"
    assert registry.alias_version(MODEL, registry.CHALLENGER) == "3"
    outcome = registry.promote_if_current(MODEL, "3", "2", lock_path)
    assert outcome.promoted
    assert registry.alias_version(MODEL, registry.CHAMPION) == "3"
    assert registry.alias_version(MODEL, registry.CHALLENGER) is None


def test_a_stale_expectation_of_no_champion_does_not_promote(tracking):
    _reset_champion("1")
    outcome = registry.promote_if_current(MODEL, "2", None, tracking / "registry.lock")
    assert not outcome.promoted
    assert outcome.reason == f"{registry.STALE}: champion is v1, compared against vNone"
    assert registry.alias_version(MODEL, registry.CHAMPION) == "1"


def _assert_promotes_at_once(lock_path: Path, version: str) -> None:
    """Over champion v1, `version` is promoted well before the lock's 120 s timeout: the dead holder's lock does not
    block (the bound is loose: registry writes alone took several seconds on a loaded machine)."""
    _reset_champion("1")
    started = time.perf_counter()
    outcome = registry.promote_if_current(MODEL, version, "1", lock_path)
    assert outcome.promoted
    assert time.perf_counter() - started < 60
    assert registry.alias_version(MODEL, registry.CHAMPION) == version


def test_a_lock_held_by_a_killed_process_does_not_block_promotion(tracking):
    lock_path = tracking / "killed.lock"
    held = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_lock, args=(str(lock_path), held))
    holder.start()
    try:
        assert held.wait(timeout=START_TIMEOUT_S), "the child never took the lock"
        with pytest.raises(Timeout):
            FileLock(str(lock_path), timeout=0.2).acquire()  # the lock really is held while the child lives
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=30)
        assert holder.exitcode == -signal.SIGKILL
    finally:
        if holder.is_alive():
            holder.kill()
    _assert_promotes_at_once(lock_path, "2")


def test_a_lock_held_by_a_process_that_exits_without_releasing_does_not_block_promotion(tracking):
    lock_path = tracking / "exited.lock"
    holder = SPAWN.Process(target=_hold_lock_and_exit, args=(str(lock_path),))
    holder.start()
    holder.join(timeout=START_TIMEOUT_S)
    assert holder.exitcode == EXITED_HOLDING, "the child failed before it took the lock"
    _assert_promotes_at_once(lock_path, "3")


BEGIN_AND_DIE = (
    "import os, signal, sys\n"
    "from pathlib import Path\n"
    "from retrainer.io.promotion_journal import PromotionEntry, PromotionJournal\n"
    "PromotionJournal(Path(sys.argv[1])).begin(PromotionEntry(sys.argv[2], '1', '3', 'b1', ('gate passed',)))\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"
)


def _workspace(tmp_path: Path, params):
    """A workspace whose params name this module's registered model and a service URL where nothing listens."""
    from retrainer.io.processes import free_port
    from retrainer.io.project import Workspace

    nowhere = params.canary.model_copy(update={"service_url": f"http://127.0.0.1:{free_port()}"})
    tracking = params.tracking.model_copy(update={"registered_model": MODEL})
    named = params.model_copy(update={"tracking": tracking, "canary": nowhere})
    return Workspace(tmp_path, tmp_path / "home"), named


def test_a_promotion_killed_before_the_alias_moved_is_undone(tracking, tmp_path, params):
    """A real process writes a promotion's intent (v3 over v1) and dies by SIGKILL before moving the alias: the next
    run's recovery undoes it (journal gone, its challenger alias cleared, the champion untouched) and says so."""
    from retrainer.app.promotion import recover_promotion
    from retrainer.io.promotion_journal import PromotionJournal

    workspace, named = _workspace(tmp_path, params)
    _reset_champion("1")
    registry.set_alias(MODEL, registry.CHALLENGER, "3")
    child = subprocess.run([sys.executable, "-c", BEGIN_AND_DIE, str(workspace.promotion_journal), MODEL], timeout=300)
    assert child.returncode == -signal.SIGKILL
    assert PromotionJournal(workspace.promotion_journal).read().to_version == "3"

    line = recover_promotion(named, workspace)
    assert line is not None and "v3 over v1" in line and "undone" in line, line
    assert PromotionJournal(workspace.promotion_journal).read() is None
    assert registry.alias_version(MODEL, registry.CHAMPION) == "1"
    assert registry.alias_version(MODEL, registry.CHALLENGER) is None
    assert recover_promotion(named, workspace) is None, "nothing left to recover"


def test_a_live_runs_promotion_and_challenger_are_left_alone_and_a_dead_runs_challenger_is_cleared(
    tracking, tmp_path, params
):
    """A real second process holds the workspace lock (a cycle at work) and has begun a promotion: recovery touches
    neither its journal nor the challenger alias. Once it is SIGKILLed, the alias it left is cleared."""
    from retrainer.app.promotion import clear_orphan_challenger, recover_interrupted
    from retrainer.io.promotion_journal import PromotionEntry, PromotionJournal

    workspace, named = _workspace(tmp_path, params)
    _reset_champion("1")
    registry.set_alias(MODEL, registry.CHALLENGER, "2")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workspace.workspace_lock), "600"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert clear_orphan_challenger(named, workspace) is None
        assert registry.alias_version(MODEL, registry.CHALLENGER) == "2", "a live run may own it"
        PromotionJournal(workspace.promotion_journal).begin(PromotionEntry(MODEL, "1", "2", "b2", ()))
        assert recover_interrupted(named, workspace) == [], "this process's own promotion is alive"
        PromotionJournal(workspace.promotion_journal).close()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    (line,) = recover_interrupted(named, workspace)
    assert line == "challenger alias on v2 cleared: no live run owns it (the run that set it died)"
    assert registry.alias_version(MODEL, registry.CHALLENGER) is None
    assert registry.alias_version(MODEL, registry.CHAMPION) == "1"


def test_the_champion_is_never_judged_against_itself(tracking, tmp_path, params):
    """The recovery run of the issue: its challenger is already the champion (promoted by a run that died). A retried
    promotion counts as done (promoted, not `rejected ... already the champion`), and the lineage of a cycle that
    did not promote it keeps the champion's verdict and parent instead of tagging it `rejected` against itself."""
    import mlflow

    from retrainer.app.promotion import promote_challenger, record_lineage
    from retrainer.app.results import CycleResult
    from retrainer.outcomes import CycleStatus

    workspace, named = _workspace(tmp_path, params)
    _reset_champion("1")
    assert registry.promote_if_current(MODEL, "2", "1", workspace.registry_lock).promoted
    registry.tag_version(MODEL, "2", {"gate_status": "promoted", "parent_champion": "1"})

    again = promote_challenger(named, workspace, {"challenger_version": "2", "reasons": ["gate passed"]}, "1")
    assert again.status == CycleStatus.PROMOTED, again.reasons
    assert registry.alias_version(MODEL, registry.CHAMPION) == "2"

    run_id = mlflow.MlflowClient().get_model_version(MODEL, "2").run_id
    rerun = CycleResult(
        CycleStatus.REJECTED,
        ["v2 is already the champion"],
        batch_id="b2",
        challenger_version="2",
        compared_champion="2",
        gate={"passed": True},
        registration={"run_id": run_id},
        validation={"warnings": []},
    )
    record_lineage(named, rerun)
    tags = registry.version_tags(MODEL, "2")
    assert (tags["gate_status"], tags["parent_champion"]) == ("promoted", "1"), tags
