"""The serving runtime behind the HTTP layer: models, rollout state, routing, scoring and the prediction log."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from retrainer.config import Params, load_params, resolve_params_path
from retrainer.io.project import Workspace, home_dir
from retrainer.serving.features import FeatureBuilder, load_references
from retrainer.serving.log_store import open_prediction_log
from retrainer.serving.models import MANIFEST, LoadedModel, ModelSource, open_source
from retrainer.serving.prediction_log import (
    LOGGER,
    FeedbackOutcome,
    Journal,
    LogUnavailable,
    LogWriter,
    Recovery,
    RequestLog,
    new_request_key,
    prediction_ids,
    replay_journal,
)
from retrainer.serving.replicas import StateWatcher, issued_at, wait_until
from retrainer.serving.routing import CHALLENGER, CHAMPION, RolloutState, routing_key
from retrainer.serving.schema import record_schema
from retrainer.serving.state import load_state, save_state, saved_stamp, state_path

ROOT_ENV = "RETRAINER_ROOT"
TOKEN_ENV = "RETRAINER_ADMIN_TOKEN"
THREADS_ENV = "RETRAINER_SERVING_THREADS"
FEEDBACK_WAIT_SECONDS = 10.0
# Feedback for an id no process of this service has logged yet: poll the shared log this long (another replica's
# writer thread commits within milliseconds), then answer "retry" for an id issued within PENDING_SECONDS (it may be
# in a killed replica's journal until recovery), "unknown" for an older one.
FEEDBACK_POLL_SECONDS = 2.0
PENDING_SECONDS = 120.0


_THREAD_LIMIT = threading.local()


def limit_this_thread(threads: int) -> None:
    """Cap native thread pools for the calling thread, once per thread.

    OpenMP's limit is per thread: a limit set where the runtime is built does not reach the worker threads BentoML
    runs sync APIs in, and HistGradientBoosting's predict then spreads every small request over all cores.
    """
    if getattr(_THREAD_LIMIT, "threads", None) != threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
        _THREAD_LIMIT.threads = threads


class RolloutConflict(RuntimeError):
    """An admin action that does not apply to the current rollout (no challenger, stale champion, ...)."""


class ScoringError(RuntimeError):
    """One arm's model failed on its rows."""

    def __init__(self, arm: str):
        super().__init__(f"the {arm} model failed to score")
        self.arm = arm


class UnknownPrediction(KeyError):
    """Feedback for a prediction id that was never logged."""


class PendingPrediction(UnknownPrediction):
    """Feedback for a recently issued prediction id that the shared log does not hold yet (retry shortly): another
    replica may have answered it and not logged it yet, or its journal waits for `retrainer recover-log`."""


class ConflictingFeedback(ValueError):
    """Feedback whose label differs from the one already recorded for that prediction (the first one stands)."""

    def __init__(self, prediction_id: str, recorded: int, sent: int) -> None:
        super().__init__(
            f"prediction_id {prediction_id} already has the label {recorded}; the first label stands (sent {sent})"
        )
        self.recorded = recorded


@dataclass(frozen=True)
class ServingConfig:
    """Everything the service reads from the environment, once, at start-up."""

    root: Path
    home: Path
    params: Params
    admin_token: str | None
    threads: int = 1

    @classmethod
    def from_env(cls) -> ServingConfig:
        bento = _bento_root()
        root = Path(os.environ.get(ROOT_ENV) or bento or Path.cwd()).resolve()
        return cls(
            root=root,
            home=home_dir(Path.cwd() if bento else root),
            params=load_params(resolve_params_path(root=root)),
            admin_token=os.environ.get(TOKEN_ENV) or None,
            threads=int(os.environ.get(THREADS_ENV) or 1),
        )


def _bento_root() -> Path | None:
    """Inside a built Bento the library sits next to the model manifest: that folder is the project root."""
    folder = Path(__file__).resolve().parents[2]
    return folder if (folder / MANIFEST).is_file() else None


@dataclass
class ArmResult:
    """What one arm did for one request: how many records, how long the model took, whether it failed."""

    records: int = 0
    seconds: float = 0.0
    failed: bool = False


@dataclass
class Scored:
    """One request's answers and what each arm did, with what the prediction log still needs from it (`ticket`)."""

    predictions: list[dict]
    arms: dict[str, ArmResult] = field(default_factory=dict)
    request_log: RequestLog | None = None
    ticket: int = 0


class ServingRuntime:
    """Champion/challenger scoring with sticky routing; admin actions persist the rollout state."""

    def __init__(self, config: ServingConfig, source: ModelSource | None = None):
        # Small requests lose more to OpenMP thread start-up than they gain; the server scales by workers instead.
        limit_this_thread(config.threads)
        self.config = config
        params = config.params
        self.features = FeatureBuilder(params, load_references(params, config.root))
        self.schema = record_schema(params)
        self.routing_fields = params.serve.routing_key or params.data.key_columns
        workspace = Workspace(config.root, config.home)
        self.source = source or open_source(config.root, params.tracking.registered_model, workspace.registry_lock)
        self.log = open_prediction_log(workspace.prediction_log, params.features.numeric, params.features.categorical)
        self.state_file = state_path(config.home)
        self._lock = threading.Lock()
        self.workspace = workspace
        self.recovered = self._replay_journal()
        self.log_writer = LogWriter(self.log, workspace.dead_letter, Journal(workspace.prediction_journal))
        self._models: dict[str, LoadedModel] = {}
        self._stamp = saved_stamp(self.state_file)
        self.state = self._start_state()
        # Other processes (workers, replicas) change the saved state too: adopt it within state_refresh_seconds.
        self.watcher = StateWatcher(self.refresh_state, params.serve.state_refresh_seconds).start()

    def _replay_journal(self) -> Recovery:
        """Log what a service that was killed had answered but not logged (its journal segments)."""
        recovery = replay_journal(
            self.log, self.workspace.prediction_journal, self.workspace.dead_letter, self.features.columns
        )
        if recovery.written or recovery.kept:
            LOGGER.warning(
                "journal of an earlier service: %d requests (%d predictions) written to the log, %d left: %s",
                recovery.written,
                recovery.predictions,
                recovery.kept,
                "; ".join(recovery.errors[:3]),
            )
        return recovery

    def _start_state(self) -> RolloutState:
        saved = load_state(self.state_file) or RolloutState()
        state = self._adopt(saved)
        if state != saved:
            save_state(state, self.state_file)
        return state

    def _adopt(self, saved: RolloutState) -> RolloutState:
        """The saved state under the registry's champion, with the models it serves loaded."""
        champion = self.source.champion_version() or saved.champion_version
        if champion is None:
            return saved
        state = saved.with_champion(champion)
        if state.challenger_version == champion:
            state = replace(state, challenger_version=None, challenger_weight=0.0)
        serving = [champion] + ([state.challenger_version] if state.effective_weight > 0 else [])
        for version in serving:
            if version not in self._models:
                self._models[version] = self.source.load(version)
        return state

    def refresh_state(self) -> bool:
        """Adopt the rollout state another process saved since this one last adopted it; True when it changed.

        Cheap when nothing changed (one stat(2), or one indexed read in the team database); a model the new state
        serves is loaded before the lock is taken, so requests are not held up by it (the watcher thread calls this).
        """
        stamp = saved_stamp(self.state_file)
        if stamp == self._stamp:
            return False
        saved = load_state(self.state_file)
        loaded = {v: self.source.load(v) for v in _serving_versions(saved) if v not in self._models} if saved else {}
        with self._lock:
            if saved_stamp(self.state_file) != stamp:  # saved again meanwhile (maybe by this process): next tick
                return False
            self._stamp = stamp
            if saved is None or saved == self.state:
                return False
            self._models.update(loaded)
            self._commit(saved, save=False)
        LOGGER.info("rollout state adopted from another process: %s", saved.to_dict())
        return True

    def reload(self) -> RolloutState:
        """Adopt a champion changed outside the service (`retrainer rollback`, a direct promotion), and saved state."""
        with self._lock:
            return self._commit(self._adopt(load_state(self.state_file) or self.state))

    @property
    def ready(self) -> bool:
        """True when the models are loaded and the last answered request could be recorded."""
        return self.models_ready and self.log_writer.unavailable is None

    @property
    def models_ready(self) -> bool:
        """True when the champion (and a weighted challenger) are loaded."""
        state = self.state
        needed = [state.champion_version] + ([state.challenger_version] if state.effective_weight > 0 else [])
        return state.champion_version is not None and all(v in self._models for v in needed)

    def check_token(self, header: str | None) -> int:
        """0 when the Authorization header carries the admin token, else the HTTP status to refuse with."""
        import hmac

        expected = self.config.admin_token
        if not expected:
            return 403
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            return 401
        return 0

    def predict(self, records: Sequence[dict]) -> Scored:
        """Score raw records and log every prediction before returning."""
        scored = self.score(records)
        self.write_log(scored)
        return scored

    def score(self, records: Sequence[dict]) -> Scored:
        """Route each record by its key and score each arm's rows together; the caller then owes `write_log(scored)`.

        The service answers first and logs through `log_later` (the write overlaps the next request); feedback for
        a prediction that is still owed waits for it.
        """
        started = time.perf_counter()
        limit_this_thread(self.config.threads)
        with self._lock:
            state, models = self.state, dict(self._models)
        versions = {CHAMPION: state.champion_version, CHALLENGER: state.challenger_version}
        if state.effective_weight > 0:
            fields = self.routing_fields
            arms = state.arms_for([routing_key(r, fields) for r in records])
        else:  # no key hashes below a zero weight: everything goes to the champion
            arms = [CHAMPION] * len(records)
        columns = self.features.columns(records)
        result = Scored(predictions=[])
        proba = self._score_arms(arms, {arm: models[v] for arm, v in versions.items() if v in models}, columns, result)
        served = {arm: models[versions[arm]] for arm in result.arms}
        by_arm = {arm: model.version for arm, model in served.items()}
        model_versions, labels = _decide(served, arms, proba)
        probabilities = proba.tolist()
        key = new_request_key()
        answers = (prediction_ids(key, len(records)), arms, model_versions, probabilities, labels)
        result.predictions = [
            {"prediction_id": i, "probability": p, "label": label, "model_version": v, "arm": a}
            for i, a, v, p, label in zip(*answers, strict=True)
        ]
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        result.request_log = RequestLog(key, now, latency_ms, by_arm, arms, probabilities, labels, records, columns)
        result.ticket = self.log_writer.owe()
        return result

    def _score_arms(self, arms: list[str], models: dict[str, LoadedModel], columns: dict, result: Scored) -> np.ndarray:
        """Each arm's rows scored together by its model; what each arm did is counted in `result.arms`."""
        proba = np.empty(len(arms))
        for arm in (CHAMPION, CHALLENGER):
            rows = [i for i, a in enumerate(arms) if a == arm]
            if not rows:
                continue
            outcome = result.arms[arm] = ArmResult(records=len(rows))
            # With one arm serving every record, score the columns themselves rather than a copy of all their rows.
            part = columns if len(rows) == len(arms) else {name: values[rows] for name, values in columns.items()}
            tick = time.perf_counter()
            try:
                proba[rows] = models[arm].score(part, self.features.frame)
            except Exception as exc:
                outcome.failed = True
                raise ScoringError(arm) from exc
            finally:
                outcome.seconds = time.perf_counter() - tick
        return proba

    def write_log(self, scored: Scored) -> None:
        """Log a scored request's predictions and features now, in one transaction (see `LogWriter.write`)."""
        self.log_writer.write(scored.ticket, scored.request_log)

    def log_later(self, scored: Scored) -> None:
        """Journal a scored request, then hand it to the log's writer thread (it commits while the next request is
        scored). Raises LogUnavailable when the journal cannot take it: the request must then not be answered."""
        self.log_writer.hand_over(scored.ticket, scored.request_log)

    @property
    def log_failures(self) -> int:
        """Answered predictions the writer thread could not log (kept in the dead-letter file or the journal)."""
        return self.log_writer.failures

    @property
    def log_refused(self) -> int:
        """Predictions not answered (503) because neither the journal nor the log could record them."""
        return self.log_writer.refused

    def feedback(self, prediction_id: str, label: int) -> FeedbackOutcome:
        """Record the observed label of a logged prediction (one answered a moment ago may still be on its way).

        Returns RECORDED, or REPEATED when this label was recorded before. Raises UnknownPrediction for an id the
        log does not hold, ConflictingFeedback when a different label was recorded first (it stands).
        """
        now = datetime.now(UTC).isoformat(timespec="seconds")
        outcome = self._record_feedback(prediction_id, label, now)
        if outcome is FeedbackOutcome.UNKNOWN:
            self.log_writer.wait_for_owed(timeout=FEEDBACK_WAIT_SECONDS)
            outcome = self._record_when_shared(prediction_id, label, now)
        if outcome is FeedbackOutcome.UNKNOWN:
            raise UnknownPrediction(prediction_id)
        if outcome is FeedbackOutcome.CONFLICT:
            raise ConflictingFeedback(prediction_id, 1 - int(label), int(label))
        return outcome

    def _record_feedback(self, prediction_id: str, label: int, now: str) -> FeedbackOutcome:
        """The log's answer; LogUnavailable, naming the log, when it could not be asked (a database that is down)."""
        try:
            return self.log.record_feedback(prediction_id, label, now)
        except self.log.errors as exc:
            raise LogUnavailable(f"the prediction log {self.log.location} cannot record feedback: {exc}") from exc

    def _record_when_shared(self, prediction_id: str, label: int, now: str) -> FeedbackOutcome:
        """Record feedback for an id this process does not owe: poll the shared log (another replica may log it any
        moment) for up to FEEDBACK_POLL_SECONDS. Raises PendingPrediction when it is still missing and was issued
        within PENDING_SECONDS; UNKNOWN for an older id or text that is not one."""
        issued = issued_at(prediction_id)
        outcome = [self._record_feedback(prediction_id, label, now)]
        if issued is None or outcome[0] is not FeedbackOutcome.UNKNOWN:
            return outcome[0]

        def logged() -> bool:
            outcome[0] = self._record_feedback(prediction_id, label, now)
            return outcome[0] is not FeedbackOutcome.UNKNOWN

        if time.time() - issued <= FEEDBACK_WAIT_SECONDS:
            wait_until(logged, FEEDBACK_POLL_SECONDS)
        if outcome[0] is FeedbackOutcome.UNKNOWN and abs(time.time() - issued) <= PENDING_SECONDS:
            raise PendingPrediction(prediction_id)
        return outcome[0]

    def set_weight(self, weight: float) -> RolloutState:
        """Give the challenger a share of traffic, loading it (from the state, else the alias) first."""
        with self._lock:
            version = self.state.challenger_version or self.source.challenger_version()
            try:
                state = self.state.with_weight(weight, version)
            except ValueError as exc:
                raise RolloutConflict(str(exc)) from None
            if weight > 0 and version not in self._models:
                self._models[version] = self.source.load(version)
            return self._commit(state)

    def promote(self) -> RolloutState:
        """Make the challenger the champion (compare-and-set against the champion it was compared with)."""
        with self._lock:
            state = self.state
            if not state.challenger_version or state.challenger_version not in self._models:
                raise RolloutConflict("there is no loaded challenger to promote")
            promoted, reason = self.source.set_champion(state.challenger_version, state.champion_version)
            if not promoted:
                raise RolloutConflict(reason)
            return self._commit(state.promoted())

    def rollback(self) -> RolloutState:
        """Drop the challenger, or restore the champion the last promotion replaced."""
        with self._lock:
            state = self.state
            try:
                target = state.rolled_back()
            except ValueError as exc:
                raise RolloutConflict(str(exc)) from None
            if target.champion_version != state.champion_version:
                if target.champion_version not in self._models:
                    self._models[target.champion_version] = self.source.load(target.champion_version)
                restored, reason = self.source.set_champion(target.champion_version, state.champion_version)
                if not restored:
                    raise RolloutConflict(reason)
            return self._commit(target)

    def _commit(self, state: RolloutState, save: bool = True) -> RolloutState:
        if save:
            save_state(state, self.state_file)
        self.state = state
        keep = {state.champion_version, state.challenger_version, state.previous_champion_version}
        for version in [v for v in self._models if v not in keep]:
            del self._models[version]
        return state

    def close(self) -> None:
        """Stop following the saved rollout state; write what is still queued for the log, then close it."""
        self.watcher.stop()
        self.log_writer.close()
        self.log.close()


def _serving_versions(state: RolloutState) -> list[str]:
    """The versions a state serves: its champion, and its challenger while it has a share of traffic."""
    champion = [state.champion_version] if state.champion_version else []
    return champion + ([state.challenger_version] if state.effective_weight > 0 else [])


def _decide(served: dict[str, LoadedModel], arms: list[str], proba: np.ndarray) -> tuple[list[str], list[int]]:
    """Each record's model version and label, at the threshold of the arm that scored it."""
    if len(served) == 1:
        (model,) = served.values()
        return [model.version] * len(arms), (proba >= model.threshold).astype(int).tolist()
    thresholds = np.array([served[a].threshold for a in arms])
    return [served[a].version for a in arms], (proba >= thresholds).astype(int).tolist()
