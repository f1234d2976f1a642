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

from litestar.types import ASGIApp, Receive, Scope, Send

from kroma.crypto import pepper
from kroma.domain.handling import current_request
from kroma.http import responses

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
        chunks: list[bytes] = []
        while True:
            message: Any = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
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
