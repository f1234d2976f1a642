"""The contract's flat envelopes: {ok:true, ...} and {ok:false, error, error_kind, error_code}.

Keys come out alphabetically sorted (as the reference's serde_json did), encoded once by msgspec.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response

from kroma.domain.errors import KromaError

_encoder = msgspec.json.Encoder(order="sorted")
JSON = "application/json"


def ok(**payload: Any) -> Response[bytes]:
    """Every success is a 200 (the contract has no 201 or 204)."""
    return Response(_encoder.encode({"ok": True, **payload}), status_code=200, media_type=JSON)


def ok_body(**payload: Any) -> bytes:
    """The body `ok(**payload)` would send, for an answer encoded once and sent many times."""
    return _encoder.encode({"ok": True, **payload})


def ok_encoded(body: bytes) -> Response[bytes]:
    """A 200 with a body from `ok_body`."""
    return Response(body, status_code=200, media_type=JSON)


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
