"""Per-request context (request id) and the Idempotency-Key contract for mutating routes.

A mutating request with an `Idempotency-Key` header is fingerprinted (method, path, body; a keyed
HMAC, since the body may hold a secret). A retry with the same key and fingerprint gets the first
response back and appends nothing; the same key with another request gets a 422. Requests with one key are serialised in this process so a retry
racing the original waits for its stored response. The store records the key atomically with the
command's events, so even a retry that slips past (another process, a crash before the response
was saved) cannot append twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from typing import Any

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from kroma.crypto import pepper
from kroma.domain.handling import current_request
from kroma.http import responses
from kroma.http.errors import describe_decode_error

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Responses that carry a one-time secret (the plaintext API token) are never stored for replay,
# so the key is ignored there.
NO_REPLAY = frozenset({"/auth/token"})
_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _body_limit(scope: Scope, services: Any) -> int:
    """The route's body limit (the app's `request_max_bytes`), or `upload_max_bytes` for a route
    that reads its body itself (uploads)."""
    resolve = getattr(scope.get("route_handler"), "resolve_request_max_body_size", None)
    limit = resolve() if resolve is not None else None
    return int(limit if limit is not None else services.settings.upload_max_bytes)


def _too_large(scope: Scope, services: Any) -> bytes:
    limit = _body_limit(scope, services)
    error = f"Request body exceeds the size limit of {limit} bytes"
    return responses.encode(responses.error_body(error, "validation", "payload_too_large"))


async def _bounded_body(scope: Scope, receive: Receive, services: Any) -> bytes | None:
    """The whole body (it is fingerprinted and replayed), or None once it passes the route's limit:
    a keyed request holds no more memory than an unkeyed one."""
    limit = _body_limit(scope, services)
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        ctx = dataclasses.replace(
            current_request.get(), request_id=_header(scope, b"x-request-id") or services.clock.new_id()
        )
        replayable = scope.get("method", "") in MUTATING and scope["path"] not in NO_REPLAY
        key = _header(scope, b"idempotency-key") if replayable else None
        if not key:
            token = current_request.set(ctx)
            try:
                await self.app(scope, receive, send)
            finally:
                current_request.reset(token)
            return
        await self._idempotent(scope, receive, send, ctx, key, services)

    async def _idempotent(
        self, scope: Scope, receive: Receive, send: Send, ctx: Any, key: str, services: Any
    ) -> None:
        body = await _bounded_body(scope, receive, services)
        if body is None:
            await responses.send_json(send, 413, _too_large(scope, services))
            return
        digest = pepper.fingerprint(
            services.fingerprint_key, str(scope.get("method", "")).encode(), scope["path"].encode(), body
        )
        lock = _locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = await services.store.lookup_idempotency(key)
            if found is not None:
                fingerprint, result = found
                if fingerprint != digest:
                    await responses.send_json(
                        send,
                        422,
                        responses.encode(
                            responses.error_body(
                                "Idempotency-Key was already used with a different request",
                                "validation",
                                "idempotency_key_reused",
                            )
                        ),
                    )
                    return
                if result.response is not None:
                    await responses.send_json(send, 200, result.response)
                    return
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            status = 0
            sent: list[bytes] = []

            async def capture(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif message["type"] == "http.response.body":
                    sent.append(message.get("body", b""))
                await send(message)

            token = current_request.set(dataclasses.replace(ctx, idempotency_key=key, fingerprint=digest))
            try:
                await self.app(scope, replay, capture)
            finally:
                current_request.reset(token)
            if status == 200:
                await services.store.save_response(key, b"".join(sent))


def options_allow(routes: Any) -> Any:
    """A `before_send` hook: the `Allow` header of the automatic OPTIONS answer lists every
    method of the path (Litestar builds that answer from the first handler registered on a path,
    so `OPTIONS /api/projects` said "GET, OPTIONS" without POST)."""
    allowed: dict[str, bytes] = {}
    for route in routes:
        methods = getattr(route, "methods", None)
        if methods:
            allowed[route.path] = ", ".join(sorted(methods)).encode()

    async def before_send(message: Any, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        handler = scope.get("route_handler")
        paths = getattr(handler, "paths", ())
        value = next((allowed[p] for p in paths if p in allowed), None)
        if value is not None:
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
            message["headers"] = [*headers, (b"allow", value)]

    return before_send


def _struct_body(handler: Any) -> type | None:
    """The msgspec Struct a handler's `data` parameter decodes, if any."""
    try:
        annotation = handler.parsed_fn_signature.parameters["data"].annotation
    except (AttributeError, KeyError):
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct) else None


class StrictBodyMiddleware:
    """JSON bodies decoded into a Struct get the reference's strict types: `0` is not a boolean and
    `"2"` not an integer (Litestar converts request data leniently). A body whose JSON parses but
    whose types do not match is the contract's 400 naming the field, before the handler runs; any
    other body goes on, byte for byte, to Litestar's own decoding and its messages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._types: dict[int, type | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        kind = self._types.get(id(handler), ...) if handler is not None else None
        if kind is ...:
            kind = self._types[id(handler)] = _struct_body(handler)
        if scope["type"] != "http" or kind is None or scope.get("method", "") not in MUTATING:
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        body = await _bounded_body(scope, receive, services)
        if body is None:
            await responses.send_json(send, 413, _too_large(scope, services))
            return
        try:
            msgspec.json.decode(body or b"null", type=kind | None)
        except msgspec.ValidationError as exc:
            error = responses.error_body(describe_decode_error(str(exc)), "validation", "validation_error")
            await responses.send_json(send, 400, responses.encode(error))
            return
        except msgspec.DecodeError:
            pass  # not JSON: Litestar's decoding answers with its own (mapped) message
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

