"""Every exception becomes the contract's flat error envelope; no stack trace reaches a client."""

from __future__ import annotations

import logging
import re
import traceback

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from kroma.domain.errors import Internal, KromaError, StorageUnavailable, ValidationError
from kroma.events.store import IdempotencyMismatch
from kroma.faults import storage_fault
from kroma.http import responses

log = logging.getLogger("kroma.http")

_TYPE_ERROR = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`(?: - at `\$\.?(?P<path>[^`]*)`)?")


def describe_decode_error(detail: str) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.name`" -> "Field 'name' must be str, not int"."""
    match = _TYPE_ERROR.search(detail)
    if match and match["path"]:
        return f"Field '{match['path']}' must be {match['want']}, not {match['got']}"
    if match:
        return "Request body must be a JSON object"
    if "malformed" in detail.lower() or "json" in detail.lower() or "truncated" in detail.lower():
        return "Request body is not valid JSON"
    return "Request body must be a JSON object"


class PayloadTooLarge(KromaError):
    """413 validation/payload_too_large: a request body over its route's limit."""

    status = 413
    code = "payload_too_large"


def too_large(limit: int | None) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds the size limit of {limit} bytes" if limit else "Request body is too large")


def request_limit(request: Request) -> int | None:
    try:
        return request.route_handler.resolve_request_max_body_size()
    except Exception:  # no route (cannot happen for a body that was read): say it without the number
        return None


def _validation_message(exc: ValidationException) -> str:
    """Litestar reports decode failures as [{message, key, source}]; name the field when it can."""
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message, key = str(item.get("message", "")), item.get("key")
        match = _TYPE_ERROR.search(message)
        if match and key and key != "data":
            return f"Field '{key}' must be {match['want']}, not {match['got']}"
        described = describe_decode_error(message)
        if described != "Request body must be a JSON object":
            return described
    return "Request body must be a JSON object"


def _body_nested_too_deep(exc: Exception) -> bool:
    """The JSON body decoder ran out of stack: a body nested ~1000 levels deep (serde_json refuses
    128), not a server fault."""
    return isinstance(exc, RecursionError) and any(
        frame.f_code.co_name == "decode_json" for frame, _line in traceback.walk_tb(exc.__traceback__)
    )


RETRY_AFTER_SECONDS = "5"


def storage_unavailable(request: Request, exc: BaseException) -> Response[bytes]:
    """503 in the contract's shape, with `Retry-After`; the cause goes to the log only."""
    log.error("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
    response = responses.error(StorageUnavailable())
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def to_response(request: Request, exc: Exception) -> Response[bytes]:
    if isinstance(exc, StorageUnavailable):
        return storage_unavailable(request, exc)
    fault = storage_fault(exc) if not isinstance(exc, KromaError) or exc.status >= 500 else None
    if fault is not None:
        return storage_unavailable(request, fault)
    if isinstance(exc, KromaError):
        if exc.status >= 500:
            log.error("internal error on %s %s: %s", request.method, request.url.path, exc.message)
            return responses.error(Internal())
        return responses.error(exc)
    if isinstance(exc, IdempotencyMismatch):
        return responses.error(
            KromaError(
                "Idempotency-Key was already used with a different request",
                status=422,
                code="idempotency_key_reused",
            )
        )
    if isinstance(exc, ValidationException):
        return responses.error(ValidationError(_validation_message(exc)))
    if isinstance(exc, NotFoundException):
        return responses.error(KromaError("Route not found", status=404, code="not_found"))
    if isinstance(exc, MethodNotAllowedException):
        response = responses.error(KromaError("Method not allowed", status=405, code="method_not_allowed"))
        response.headers.update(exc.headers or {})  # `Allow`: the methods the path has (RFC 9110)
        return response
    if isinstance(exc, RequestEntityTooLarge):
        return responses.error(too_large(request_limit(request)))
    if isinstance(exc, HTTPException) and exc.status_code == 400:
        return responses.error(ValidationError(describe_decode_error(str(exc.detail))))
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        return responses.error(KromaError(str(exc.detail), status=exc.status_code, code="invalid_request"))
    if _body_nested_too_deep(exc):
        return responses.error(ValidationError("Request body is not valid JSON"))
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return responses.error(Internal())
