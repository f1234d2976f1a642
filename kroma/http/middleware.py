"""The one ASGI layer every routed request passes (`RequestMiddleware`): bearer auth
(`kroma.http.auth`), the request context (actor, request id), the Idempotency-Key contract for
mutating routes, and strict JSON body types, in that order. One layer rather than one per concern:
each layer cost a call, a context switch and a scan of the headers on every request.

A request id is the `X-Request-Id` header, else a fresh one for a request that may change
something; a GET or HEAD (which appends nothing) gets one only from the header.

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
from litestar.utils.scope.state import ScopeState

from kroma.crypto import pepper
from kroma.domain.errors import KromaError
from kroma.domain.handling import RequestContext, current_request
from kroma.http import responses
from kroma.http.auth import actor_for, is_open
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


SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def _wanted(scope: Scope) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(Authorization, X-Request-Id, Idempotency-Key), the first of each, in one pass."""
    authorization = request_id = key = None
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"x-request-id":
            if request_id is None:
                request_id = value
        elif name == b"idempotency-key" and key is None:
            key = value
    return authorization, request_id, key


class RequestMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._types: dict[int, type | None] = {}  # route handler -> the Struct its body decodes
        self._services: Any = None  # the app's, once seen (one app per instance)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services = self._services
        if services is None:
            services = self._services = scope["app"].state.services
        authorization, request_id, key = _wanted(scope)
        if is_open(scope["path"]):
            actor = current_request.get().actor
        else:
            try:
                actor = await actor_for(scope, services, authorization)
            except KromaError as exc:
                body = responses.encode(responses.error_body(exc.message, exc.kind, exc.code))
                await responses.send_json(send, exc.status, body)
                return
        method = scope.get("method", "")
        rid = request_id.decode("latin-1").strip() if request_id is not None else ""
        ctx = RequestContext(
            actor=actor, request_id=rid or (None if method in SAFE else services.clock.new_id())
        )
        idempotency_key = ""
        if key is not None and method in MUTATING and scope["path"] not in NO_REPLAY:
            idempotency_key = key.decode("latin-1").strip()
        token = current_request.set(ctx)
        try:
            if idempotency_key:
                await self._idempotent(scope, receive, send, ctx, idempotency_key, services)
            else:
                await self._strict(scope, receive, send, services)
        finally:
            current_request.reset(token)

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
                await self._strict(scope, replay, capture, services)
            finally:
                current_request.reset(token)
            if status == 200:
                await services.store.save_response(key, b"".join(sent))

    async def _strict(self, scope: Scope, receive: Receive, send: Send, services: Any) -> None:
        """JSON bodies decoded into a Struct get the reference's strict types: `0` is not a boolean
        and `"2"` not an integer (Litestar converts request data leniently). A body whose JSON
        parses but whose types do not match is the contract's 400 naming the field, before the
        handler runs; any other body goes on, byte for byte, to Litestar's own decoding and its
        messages."""
        if scope.get("method", "") not in MUTATING:
            await self.app(scope, receive, send)
            return
        handler = scope.get("route_handler")
        kind = self._types.get(id(handler), ...) if handler is not None else None
        if kind is ...:
            kind = self._types[id(handler)] = _struct_body(handler)
        if kind is None:
            await self.app(scope, receive, send)
            return
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
        # Litestar reads the body from here rather than streaming it again (and parsing every
        # header for the length check, which the read above made).
        ScopeState.from_scope(scope).body = body
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def options_allow(routes: Any, app: ASGIApp) -> ASGIApp:
    """Wraps the application's handler: the `Allow` header of the automatic OPTIONS answer lists
    every method of the path (Litestar builds that answer from the first handler registered on a
    path, so `OPTIONS /api/projects` said "GET, OPTIONS" without POST). Only an OPTIONS request's
    `send` is wrapped (a `before_send` hook would wrap every request's)."""
    allowed: dict[str, bytes] = {}
    for route in routes:
        methods = getattr(route, "methods", None)
        if methods:
            allowed[route.path] = ", ".join(sorted(methods)).encode()

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") != "OPTIONS":
            await app(scope, receive, send)
            return

        async def send_allow(message: Any) -> None:
            if message["type"] == "http.response.start":
                handler = scope.get("route_handler")
                paths = getattr(handler, "paths", ())
                value = next((allowed[p] for p in paths if p in allowed), None)
                if value is not None:
                    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
                    message["headers"] = [*headers, (b"allow", value)]
            await send(message)

        await app(scope, receive, send_allow)

    return handle


def _struct_body(handler: Any) -> type | None:
    """The msgspec Struct a handler's `data` parameter decodes, if any."""
    try:
        annotation = handler.parsed_fn_signature.parameters["data"].annotation
    except (AttributeError, KeyError):
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct) else None
