"""What the service checks before BentoML parses a request: admin token, media type, body size; its true OpenAPI
document; and 4xx answers logged as one-line warnings instead of tracebacks."""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_MEDIA_TYPE = "application/json"
ADMIN_PREFIX = "/admin/"
DOCS_PATH = "/docs.json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"  # where BentoML logs every failed request with a traceback


def error_response(status: HTTPStatus | int, message: str) -> JSONResponse:
    """An error as the documented error body, {"error": message}."""
    return JSONResponse({"error": message}, status_code=int(status))


class RequestGuard:
    """ASGI middleware that refuses, before any body is read or parsed: admin requests without the token (401/403,
    first of all), bodies that are not `application/json` (415), and bodies over the size limit (413, from the
    Content-Length at once; a body without one is read up to the limit and no further). It also serves the service's
    OpenAPI document, corrected (`openapi_document`).

    `settings` is called per request and returns (token check, max body bytes, OpenAPI source): the service's runtime
    exists only once the worker started, after the middleware was declared.
    """

    def __init__(self, app: ASGIApp, settings: Callable[[], tuple[Callable[[str | None], int], int, Callable]]):
        self.app, self.settings = app, settings
        self._docs: dict | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        check_token, max_bytes, spec = self.settings()
        path, method = scope["path"], scope["method"]
        if path == DOCS_PATH and method == "GET":
            if self._docs is None:
                self._docs = openapi_document(spec(), max_bytes)
            return await JSONResponse(self._docs)(scope, receive, send)
        if method not in BODY_METHODS:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refusal = _refusal(headers, path, check_token, max_bytes)
        if refusal is None and "content-length" not in headers:
            body, refusal = await _read_bounded(receive, max_bytes)
            receive = _replay(body)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


def _refusal(
    headers: Headers, path: str, check_token: Callable[[str | None], int], max_bytes: int
) -> JSONResponse | None:
    if path.startswith(ADMIN_PREFIX) and (status := check_token(headers.get("authorization"))):
        if status == HTTPStatus.FORBIDDEN:
            return error_response(status, "admin is closed: RETRAINER_ADMIN_TOKEN is not set")
        return error_response(status, "a valid bearer token is needed")
    length = headers.get("content-length")
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if (media_type or length not in (None, "0")) and media_type != JSON_MEDIA_TYPE:
        return error_response(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"only {JSON_MEDIA_TYPE} is accepted, not {media_type or 'no type'}"
        )
    if length is None:
        return None
    if not length.isdigit():
        return error_response(HTTPStatus.BAD_REQUEST, "Content-Length is not a number of bytes")
    if int(length) > max_bytes:
        return _too_large(max_bytes)
    return None


def _too_large(max_bytes: int) -> JSONResponse:
    return error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {max_bytes} bytes")


async def _read_bounded(receive: Receive, max_bytes: int) -> tuple[bytes, JSONResponse | None]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), None
        size += len(chunk := message.get("body", b""))
        if size > max_bytes:
            return b"", _too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
    "description": "What went wrong, in one sentence.",
}
_INVALID = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "detail": {
            "type": "array",
            "items": {"type": "object"},
            "description": "One entry per invalid field (pydantic's errors: loc, msg, type).",
        },
    },
    "description": "A body that is not valid JSON or does not match the request schema.",
}
_STATUSES = {
    400: ("Bad Request", "InvalidArgument"),
    401: ("Missing or wrong bearer token", "Error"),
    403: ("Admin is closed: RETRAINER_ADMIN_TOKEN is not set", "Error"),
    404: ("Unknown prediction id", "Error"),
    409: ("Conflicts with what is recorded or with the rollout", "Error"),
    413: ("The body is over serve.max_request_bytes", "Error"),
    415: ("The body is not application/json", "Error"),
    500: ("Internal Server Error", "Error"),
    503: (
        "Not ready: no champion loaded, or the prediction log cannot record predictions; at /feedback: the prediction"
        " was issued moments ago and is not in the shared log yet (another replica's; retry after Retry-After)",
        "Error",
    ),
}
_ROUTE_ERRORS = {
    "/predict": (400, 413, 415, 500, 503),
    "/feedback": (400, 404, 409, 413, 415, 500, 503),
}
_ADMIN_ERRORS = (400, 401, 403, 409, 413, 415, 500)


def openapi_document(spec: dict, max_bytes: int) -> dict:
    """BentoML's OpenAPI document made valid and true: it declares OpenAPI 3.0.2 but writes JSON Schema 2020-12
    (OpenAPI 3.1's `"type": "null"`, numeric `exclusiveMinimum`), so it is declared 3.1.0; and each route lists the
    errors it answers, with the bodies it answers them with ({"error": ...}; a 400 adds `detail`, a list)."""
    doc = copy.deepcopy(spec)
    doc["openapi"] = "3.1.0"
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("NotFound", "InternalServerError"):
        schemas.pop(name, None)
    schemas["Error"], schemas["InvalidArgument"] = _ERROR, _INVALID
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            if method.upper() not in BODY_METHODS:
                continue
            codes = _ADMIN_ERRORS if path.startswith(ADMIN_PREFIX) else _ROUTE_ERRORS.get(path, (400, 413, 415, 500))
            declared = {str(code): answer for code, answer in operation.get("responses", {}).items()}
            responses = {"200": declared["200"]} if "200" in declared else {}
            for code in codes:
                description, schema = _STATUSES[code]
                if code == 413:
                    description = f"The body is over {max_bytes} bytes (serve.max_request_bytes)"
                content = {JSON_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
                responses[str(code)] = {"description": description, "content": content}
            operation["responses"] = responses
            if path.startswith(ADMIN_PREFIX):
                operation["security"] = [{"bearer": []}]
    if any(path.startswith(ADMIN_PREFIX) for path in doc.get("paths", {})):
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


class ClientErrorsAsWarnings(logging.Filter):
    """Turns BentoML's "Exception on /path [POST]" error-with-traceback for a client's mistake (a 4xx: an invalid
    body, an unknown id) into a one-line warning; server errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        status = _client_status(error)
        if status is not None:
            summary = str(error).splitlines()[0] if str(error) else type(error).__name__
            record.msg = f"{record.getMessage()}: {status} {summary}"
            record.args = ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


def _client_status(error: BaseException | None) -> int | None:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return HTTPStatus.BAD_REQUEST
    if isinstance(error, BentoMLException) and 400 <= error.error_code < 500:
        return int(error.error_code)
    return None


def log_client_errors_as_warnings() -> None:
    """Install ClientErrorsAsWarnings on BentoML's HTTP logger (once)."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, ClientErrorsAsWarnings) for f in logger.filters):
        logger.addFilter(ClientErrorsAsWarnings())


def invalid_response(message: str, errors: list[dict]) -> JSONResponse:
    """A 400 for a body that does not match the request schema: {"error": message, "detail": pydantic's errors}."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    return JSONResponse({"error": message, "detail": detail}, status_code=HTTPStatus.BAD_REQUEST)


def with_record_schema(spec: dict, record: dict, max_records: int) -> dict:
    """BentoML's document with the dataset's record schema (built from params at start-up) as the items of
    `PredictRequest.records` (1 to `max_records` of them), which BentoML can only declare as free-form objects."""
    doc = copy.deepcopy(spec)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Record"] = record
    body = doc.get("paths", {}).get("/predict", {}).get("post", {}).get("requestBody", {})
    inline = body.get("content", {}).get(JSON_MEDIA_TYPE, {}).get("schema", {})
    for request in (inline, schemas.get("PredictRequestIODescriptor", {})):
        if "records" in request.get("properties", {}):
            items = {"items": {"$ref": "#/components/schemas/Record"}, "minItems": 1, "maxItems": max_records}
            request["properties"]["records"].update(items)
    return doc
