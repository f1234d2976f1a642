"""The contract's flat envelopes: {ok:true, ...} and {ok:false, error, error_kind, error_code}.

Keys come out alphabetically sorted (as the reference's serde_json did), encoded once by msgspec.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response
from litestar.response.base import ASGIResponse

from kroma.domain.errors import KromaError

_encoder = msgspec.json.Encoder(order="sorted")
JSON = "application/json"
_JSON_BYTES = JSON.encode()


def ok(**payload: Any) -> Response[bytes]:
    """Every success is a 200 (the contract has no 201 or 204)."""
    return Response(_encoder.encode({"ok": True, **payload}), status_code=200, media_type=JSON)


def ok_body(**payload: Any) -> bytes:
    """The body `ok(**payload)` would send, for an answer encoded once and sent many times."""
    return _encoder.encode({"ok": True, **payload})


class Answer(ASGIResponse):
    """A JSON answer as a ready ASGI app. A handler annotated `-> Answer` hands it to Litestar as
    is, skipping the `Response` -> `ASGIResponse` conversion (about 10 us a request on the hot
    routes); it sends exactly the messages `Response(body, media_type=JSON)` sends. (A subclass of
    ASGIResponse so the OpenAPI builder knows it; `kroma.http.docs` documents the real answers.)"""

    __slots__ = ("_answer_body", "_answer_start")

    def __init__(self, body: bytes, status: int = 200) -> None:  # no super(): nothing of it is used
        self._answer_body = body
        self._answer_start = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", _JSON_BYTES), (b"content-length", str(len(body)).encode())],
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(self._answer_start)
        await send({"type": "http.response.body", "body": self._answer_body, "more_body": False})


def ok_encoded(body: bytes) -> Answer:
    """A 200 with a body from `ok_body`."""
    return Answer(body)


def ok_answer(**payload: Any) -> Answer:
    """`ok(**payload)` as an `Answer`, for a handler annotated `-> Answer`."""
    return Answer(_encoder.encode({"ok": True, **payload}))


def ok_status(status: int, **payload: Any) -> Response[bytes]:
    """A success with another status: 202 for a run accepted with `Prefer: respond-async`."""
    return Response(_encoder.encode({"ok": True, **payload}), status_code=status, media_type=JSON)


def error_body(message: str, kind: str, code: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "error_kind": kind, "error_code": code}


def error(exc: KromaError, **extra: Any) -> Response[bytes]:
    """The flat error envelope; `extra` adds keys beside it (a failed run's `run_id`)."""
    body = {**error_body(exc.message, exc.kind, exc.code), **extra}
    return Response(_encoder.encode(body), status_code=exc.status, media_type=JSON)


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


async def send_json(send: Any, status: int, body: bytes) -> None:
    """Answer straight from ASGI middleware (before Litestar's response machinery runs)."""
    start: Any = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
