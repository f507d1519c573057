"""The BentoML service: champion/challenger prediction, feedback, health, metrics and admin rollout endpoints.

Start it with `bentoml serve retrainer.serving.service:RetrainerService` (or `retrainer serve`). Configuration is
read from the environment when the service starts, never at import: RETRAINER_ROOT (project folder, default the
working folder), RETRAINER_HOME, RETRAINER_PARAMS, MLFLOW_TRACKING_URI, RETRAINER_PSEUDO_KEY, RETRAINER_ADMIN_TOKEN.
"""

import logging
import sys
from http import HTTPStatus
from typing import Any
from uuid import UUID

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic_core import to_json
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrainer.serving.http_guard import (
    RequestGuard,
    error_response,
    invalid_response,
    log_client_errors_as_warnings,
    with_record_schema,
)
from retrainer.serving.schema import FeedbackRequest, PredictRequest, PredictResponse, WeightsRequest

GIL_SWITCH_SECONDS = 0.0005
RETRY_AFTER_SECONDS = 1
LOGGER = logging.getLogger("bentoml.retrainer")  # under BentoML's logger: the service's log shows it

# bentoml.metrics builds these lazily, inside the server process, in Prometheus multiprocess mode.
REQUESTS = bentoml.metrics.Counter(
    name="retrainer_requests", documentation="Prediction requests that reached an arm", labelnames=["arm"]
)
RECORDS = bentoml.metrics.Counter(
    name="retrainer_records", documentation="Records scored by each arm", labelnames=["arm"]
)
ERRORS = bentoml.metrics.Counter(
    name="retrainer_errors",
    documentation="Prediction requests that failed, by arm (none: before routing)",
    labelnames=["arm"],
)
LATENCY = bentoml.metrics.Histogram(
    name="retrainer_model_latency_seconds",
    documentation="Time one arm's model took to score its records of one request",
    labelnames=["arm"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def _refuse(status: int) -> None:
    message = "admin is closed: RETRAINER_ADMIN_TOKEN is not set" if status == 403 else "a valid bearer token is needed"
    raise BentoMLException(message, error_code=HTTPStatus(status))


async def _rollout(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    return JSONResponse(service.runtime.state.to_dict())


# Mounted at the root: BentoML's passive mount only claims the paths this app routes.
rollout_app = Starlette(routes=[Route("/rollout", _rollout, methods=["GET"])])


@bentoml.asgi_app(rollout_app, path="/")
# http.host: the default host of `bentoml serve`, also for a built Bento (BentoML's own default is 0.0.0.0).
@bentoml.service(name="retrainer", workers=1, traffic={"timeout": 60}, http={"host": "127.0.0.1"})
class RetrainerService:
    """Scores records with the champion, and with the challenger for its share of sticky-routed traffic."""

    def __init__(self) -> None:
        from retrainer.io.monitoring import LATEST_FILE, monitor_dir
        from retrainer.io.processes import die_with_parent
        from retrainer.serving.monitor_gauges import MonitorGauges
        from retrainer.serving.runtime import ServingConfig, ServingRuntime

        # The request threads share the GIL with the prediction log's thread: a shorter switch interval than the
        # default 5 ms lets a request take it back sooner (+9-18 % rows/s in bench/serving_bench.py).
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        if bentoml.server_context.worker_index is not None:  # a server's worker, not an instance made in-process
            die_with_parent()
            log_client_errors_as_warnings()
        self.runtime = ServingRuntime(ServingConfig.from_env())
        self.monitor_gauges = MonitorGauges(monitor_dir(self.runtime.config.home) / LATEST_FILE)

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    def __metrics__(self, content: str) -> str:
        state = self.runtime.state
        champion, challenger = state.champion_version or "", state.challenger_version or ""
        labels = f'champion_version="{champion}",challenger_version="{challenger}"'
        content += self.monitor_gauges.text()  # the latest monitoring pass, re-read only when it changed
        return content + (
            "# HELP retrainer_challenger_weight Share of traffic routed to the challenger\n"
            "# TYPE retrainer_challenger_weight gauge\n"
            f"retrainer_challenger_weight{{{labels}}} {state.effective_weight}\n"
            "# HELP retrainer_prediction_log_failures_total Answered predictions the log could not take "
            "(kept in the dead-letter file, or in the journal when that failed too)\n"
            "# TYPE retrainer_prediction_log_failures_total counter\n"
            f"retrainer_prediction_log_failures_total {self.runtime.log_failures}\n"
            "# HELP retrainer_prediction_log_refused_total Predictions answered 503 because nothing could record them\n"
            "# TYPE retrainer_prediction_log_refused_total counter\n"
            f"retrainer_prediction_log_refused_total {self.runtime.log_refused}\n"
        )

    @bentoml.api(route="/predict", input_spec=PredictRequest, output_spec=PredictResponse)
    def predict(self, records: list[dict[str, Any]]) -> Response:
        """Score each record; the response carries probability, label, model version, arm and a prediction id.

        Each record is checked against the dataset's record schema (built from params at start-up): a 400 names
        every invalid field. The body is the PredictResponse schema, written directly: the runtime builds every
        prediction with the schema's types, and validating thousands of them again would cost more than scoring them.
        The request is journaled before the answer and logged just after it; when nothing can record it, 503.
        """
        from retrainer.serving.schema import InvalidRecords, check_record_count

        try:
            check_record_count(records)
            valid = self.runtime.schema.validate(records)
        except InvalidRecords as exc:
            ERRORS.labels(arm="none").inc()
            LOGGER.warning("POST /predict: 400 %s", exc)  # one line: a client's mistake, not a server error
            return invalid_response(str(exc), exc.errors)
        if not self.runtime.models_ready:
            ERRORS.labels(arm="none").inc()
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, "no champion model is loaded")
        from retrainer.serving.prediction_log import LogUnavailable
        from retrainer.serving.runtime import ScoringError

        try:
            scored = self.runtime.score(valid)
            self.runtime.log_later(scored)  # journaled now, written to the log while the next request is scored
        except LogUnavailable as exc:
            ERRORS.labels(arm="none").inc()
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except ScoringError as exc:
            ERRORS.labels(arm=exc.arm).inc()
            raise
        except Exception:
            ERRORS.labels(arm="none").inc()
            raise
        for arm, outcome in scored.arms.items():
            REQUESTS.labels(arm=arm).inc()
            RECORDS.labels(arm=arm).inc(outcome.records)
            LATENCY.labels(arm=arm).observe(outcome.seconds)
        return Response(to_json({"predictions": scored.predictions}), media_type="application/json")

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    def feedback(self, prediction_id: UUID, label: int) -> dict:
        """Record the observed label (0/1) of an earlier prediction, once: the same label again is a no-op (200,
        `already_recorded`), a different one 409 (the first label stands); 404 for an unknown prediction id; 503 with
        Retry-After for one issued moments ago that no replica has logged yet, 503 when the log cannot be reached."""
        from retrainer.serving.prediction_log import FeedbackOutcome, LogUnavailable
        from retrainer.serving.runtime import ConflictingFeedback, PendingPrediction, UnknownPrediction

        try:
            outcome = self.runtime.feedback(str(prediction_id), label)
        except LogUnavailable as exc:
            return error_response(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except PendingPrediction:  # answered moments ago, maybe by another replica: the client retries
            message = f"prediction_id {prediction_id} is not in the log yet: retry shortly"
            response = error_response(HTTPStatus.SERVICE_UNAVAILABLE, message)
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        except UnknownPrediction:
            return error_response(HTTPStatus.NOT_FOUND, f"prediction_id {prediction_id} is unknown")
        except ConflictingFeedback as exc:
            return error_response(HTTPStatus.CONFLICT, str(exc))
        repeated = outcome is FeedbackOutcome.REPEATED
        return {"prediction_id": str(prediction_id), "label": label, "recorded": True, "already_recorded": repeated}

    @bentoml.api(route="/admin/weights", input_spec=WeightsRequest)
    def admin_weights(self, challenger_weight: float, ctx: bentoml.Context) -> dict:
        """Set the challenger's share of traffic (bearer token required)."""
        self._authorise(ctx)
        return self._admin(lambda: self.runtime.set_weight(challenger_weight), ctx)

    @bentoml.api(route="/admin/promote")
    def admin_promote(self, ctx: bentoml.Context) -> dict:
        """Make the challenger the champion, compare-and-set in the registry (bearer token required)."""
        self._authorise(ctx)
        return self._admin(self.runtime.promote, ctx)

    @bentoml.api(route="/admin/rollback")
    def admin_rollback(self, ctx: bentoml.Context) -> dict:
        """Drop the challenger, or restore the champion the last promotion replaced (bearer token required)."""
        self._authorise(ctx)
        return self._admin(self.runtime.rollback, ctx)

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> dict:
        """Serve the registry's champion and the saved rollout state, after a change made outside the service."""
        self._authorise(ctx)
        return self._admin(self.runtime.reload, ctx)

    def _authorise(self, ctx: bentoml.Context) -> None:
        status = self.runtime.check_token(ctx.request.headers.get("authorization"))
        if status:
            _refuse(status)

    def _admin(self, action, ctx: bentoml.Context) -> dict:
        """The action's new rollout state; a conflict is answered as its own 409 response. (The APIs are annotated
        `dict`, their 200 body, because BentoML builds the response schema from the annotation; it takes the status
        of an API with a context from the context.)"""
        from retrainer.serving.runtime import RolloutConflict

        try:
            return action().to_dict()
        except RolloutConflict as exc:
            ctx.response.status_code = HTTPStatus.CONFLICT
            return error_response(HTTPStatus.CONFLICT, str(exc))

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.runtime.close()


def _guard_settings() -> tuple:
    """What RequestGuard needs from the running service: its token check, the body limit and the OpenAPI source."""
    runtime = bentoml.get_current_service().runtime
    # openapi_spec is a property that builds the document: only build it when the document is asked for.
    return runtime.check_token, runtime.config.params.serve.max_request_bytes, _openapi_spec


def _openapi_spec() -> dict:
    runtime = bentoml.get_current_service().runtime
    from retrainer.serving.schema import MAX_RECORDS

    return with_record_schema(RetrainerService.openapi_spec.asdict(), runtime.schema.json_schema(), MAX_RECORDS)


RetrainerService.add_asgi_middleware(RequestGuard, settings=_guard_settings)
