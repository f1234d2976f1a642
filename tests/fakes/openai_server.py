"""A fake OpenAI Images API on 127.0.0.1: a real HTTP server (stdlib `ThreadingHTTPServer` on a
random free port, in a background thread) speaking `POST /v1/images/edits`, for unit and
end-to-end tests. It works from sync and async tests alike (the server never touches the test's
event loop) and can serve a `kroma serve` subprocess too (point its base URL at `.base_url`).

    with FakeOpenAI(api_key="sk-test") as fake:
        fake.enqueue(("status", 429, {"Retry-After": "0"}), ("ok",))
        provider = OpenAIProvider("sk-test", base_url=fake.base_url)
        ...
        assert fake.requests[0].status == 429
        assert fake.requests[1].field_names[:6] == ["model", "size", "quality", "prompt", ...]

Every request is parsed (multipart/form-data) and recorded in `.requests` (`RecordedRequest`), in
arrival order, whatever the answer. The answer is chosen by a script: `enqueue(*behaviours)` adds
to a FIFO queue consumed one per `images/edits` request (after the bearer check); when the queue is
empty the `default` behaviour (`("ok",)` unless set) answers. Behaviours are tuples:

    ("ok",)                       200, `data[0].b64_json` = a PNG: the first input image in grayscale
                                  (or an 8x8 gray PNG when it cannot be decoded), `x-request-id`
    ("ok", {"X-Header": "v"})     the same with extra/overriding response headers
    ("image", png_bytes)          200 with exactly these bytes as `data[0].b64_json`
    ("status", code)              `code` with an OpenAI-style JSON error body
    ("status", code, headers)     ... with response headers (e.g. {"Retry-After": "0"})
    ("status", code, headers, body)  ... with this body (str or bytes) instead
    ("no_image",)                 200 `{"created": ..., "data": []}`
    ("bad_json",)                 200 with a body that is not JSON
    ("bad_b64",)                  200 with `data[0].b64_json` that is not base64
    ("slow", seconds)             wait, then answer `("ok",)` (the wait ends early when the server
    ("slow", seconds, behaviour)  stops); a client timeout shorter than `seconds` sees a timeout
    ("drop",)                     close the connection without answering (a transport error)

Checks made before the script: the path must be `/v1/images/edits` (else 404) and the method POST
(else 405), `Authorization` must be `Bearer <api_key>` (else 401 with OpenAI's error JSON; such
requests are recorded but do not consume the queue), and the body must be multipart/form-data
with a `prompt` field and at least one `image[]`/`image` file part (else 400).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import itertools
import json
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from tests.fakes.threaded import Handler, ThreadedFake

Behaviour = tuple[Any, ...]

API_PATH = "/v1/images/edits"


@dataclass(frozen=True)
class RecordedFile:
    """One file part of a multipart request."""

    name: str  # the form field name, e.g. "image[]"
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class RecordedRequest:
    """One request as the server saw it. `headers` keys are lower-cased; `fields` are the text
    parts in order; `field_names` are all part names (text and file) in order; `status` is what
    the server answered (None for a dropped connection) and `behaviour` the script entry used
    (None when a check answered before the script)."""

    method: str
    path: str
    headers: dict[str, str]
    body_size: int
    fields: list[tuple[str, str]] = field(default_factory=list)
    files: list[RecordedFile] = field(default_factory=list)
    field_names: list[str] = field(default_factory=list)
    behaviour: Behaviour | None = None
    status: int | None = None
    request_id: str | None = None

    def field(self, name: str) -> str | None:
        """The first text field called `name`, or None."""
        return next((value for key, value in self.fields if key == name), None)

    @property
    def form(self) -> dict[str, str]:
        """Text fields as a dict (the last value wins for a repeated name)."""
        return dict(self.fields)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str | None, str | None, bytes]]:
    """Split a multipart/form-data body into (name, filename, content type, data) parts, in order.
    Raises ValueError on a body that is not multipart/form-data."""
    media_type, params = _parse_header_value(content_type)
    if media_type != "multipart/form-data" or not params.get("boundary"):
        raise ValueError(f"not multipart/form-data: {content_type!r}")
    delimiter = b"--" + params["boundary"].encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise ValueError("multipart body has no closing boundary")
    parts = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise ValueError("malformed multipart part")
        head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a header block")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition, disposition_params = _parse_header_value(headers.get("content-disposition", ""))
        if disposition != "form-data" or "name" not in disposition_params:
            raise ValueError("multipart part without a form-data name")
        parts.append(
            (
                disposition_params["name"],
                disposition_params.get("filename"),
                headers.get("content-type"),
                data,
            )
        )
    return parts


def _parse_header_value(value: str) -> tuple[str, dict[str, str]]:
    """`type; a="x"; b=y` -> ("type", {"a": "x", "b": "y"}) (quotes may hold `;`)."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    params: dict[str, str] = {}
    for item in items[1:]:
        key, _, raw = item.partition("=")
        params[key.strip().lower()] = raw.strip()
    return items[0].strip().lower(), params


def _read_chunked(stream: Any) -> bytes:
    """A `Transfer-Encoding: chunked` body."""
    body = bytearray()
    while True:
        size = int(stream.readline().split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(body)
        body += stream.read(size)
        stream.readline()


def png_bytes(size: tuple[int, int] = (8, 8), color: int | tuple[int, ...] = 128, mode: str = "L") -> bytes:
    """A small solid PNG (handy for test inputs)."""
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


def grayscale_png(source: bytes) -> bytes:
    """The source image in grayscale as PNG; an 8x8 gray PNG when the source is not an image."""
    try:
        with Image.open(io.BytesIO(source)) as image:
            gray = image.convert("L")
    except Exception:
        return png_bytes()
    out = io.BytesIO()
    gray.save(out, format="PNG")
    return out.getvalue()


def _error_json(message: str, kind: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class FakeOpenAI(ThreadedFake):
    """The fake server; see the module docstring. Start with `with FakeOpenAI() as fake:` (or
    `start()` / `stop()`); `base_url` is `http://127.0.0.1:<port>/v1`."""

    thread_name = "fake-openai"

    def __init__(
        self,
        api_key: str = "sk-test-fake-key",
        *,
        default: Behaviour = ("ok",),
        script: list[Behaviour] | None = None,
    ) -> None:
        self.api_key = api_key
        self.default = default
        self.requests: list[RecordedRequest] = []
        self._queue: collections.deque[Behaviour] = collections.deque(script or [])
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        super().__init__()

    @property
    def base_url(self) -> str:
        """What to give the client as its base URL: `http://127.0.0.1:<port>/v1`."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def edits_url(self) -> str:
        return f"{self.base_url}/images/edits"

    # script ---------------------------------------------------------------------------------

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Append behaviours to the script, consumed one per images/edits request."""
        for behaviour in behaviours:
            if not isinstance(behaviour, tuple) or not behaviour:
                raise ValueError(f"a behaviour is a non-empty tuple, got {behaviour!r}")
        with self._lock:
            self._queue.extend(behaviours)

    def pending(self) -> int:
        """How many scripted behaviours are still queued."""
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Forget recorded requests and the queued script."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()

    @property
    def edit_requests(self) -> list[RecordedRequest]:
        """The recorded requests that reached the script (right path, method and key)."""
        with self._lock:
            return [r for r in self.requests if r.behaviour is not None]

    # serving --------------------------------------------------------------------------------

    def _handle(self, handler: Handler) -> None:
        if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
            body = _read_chunked(handler.rfile)
        else:
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length) if length > 0 else b""
        record = RecordedRequest(
            method=handler.command,
            path=handler.path,
            headers={key.lower(): value for key, value in handler.headers.items()},
            body_size=len(body),
        )
        with self._lock:
            self.requests.append(record)
        with contextlib.suppress(OSError):  # the client went away (timed out and hung up)
            self._answer(handler, record, body)

    def _answer(self, handler: Handler, record: RecordedRequest, body: bytes) -> None:
        if record.path.split("?", 1)[0] != API_PATH:
            self._send(
                handler,
                record,
                404,
                _error_json(f"Invalid URL ({record.method} {record.path})", "invalid_request_error"),
            )
            return
        if record.method != "POST":
            self._send(handler, record, 405, _error_json("Method not allowed", "invalid_request_error"))
            return
        if record.authorization != f"Bearer {self.api_key}":
            self._send(
                handler,
                record,
                401,
                _error_json("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
            )
            return
        try:
            parts = parse_multipart(record.headers.get("content-type", ""), body)
        except ValueError as e:
            self._send(
                handler, record, 400, _error_json(f"Invalid multipart body: {e}", "invalid_request_error")
            )
            return
        for name, filename, content_type, data in parts:
            record.field_names.append(name)
            if filename is None:
                record.fields.append((name, data.decode("utf-8")))
            else:
                record.files.append(RecordedFile(name, filename, content_type, data))
        if not record.field("prompt") or not any(f.name in ("image[]", "image") for f in record.files):
            self._send(
                handler,
                record,
                400,
                _error_json("A prompt and at least one image are required.", "invalid_request_error"),
            )
            return
        with self._lock:
            behaviour = self._queue.popleft() if self._queue else self.default
        record.behaviour = behaviour
        self._perform(handler, record, behaviour)

    def _perform(self, handler: Handler, record: RecordedRequest, behaviour: Behaviour) -> None:
        kind, args = behaviour[0], behaviour[1:]
        if kind == "ok":
            source = record.files[0].data
            extra = dict(args[0]) if args else {}
            self._send_image(handler, record, grayscale_png(source), extra)
        elif kind == "image":
            self._send_image(handler, record, bytes(args[0]), {})
        elif kind == "status":
            status = int(args[0])
            headers: Mapping[str, str] = args[1] if len(args) > 1 and args[1] else {}
            if len(args) > 2:
                payload = args[2].encode() if isinstance(args[2], str) else bytes(args[2])
            else:
                payload = _error_json(
                    f"fake error {status}", "server_error" if status >= 500 else "invalid_request_error"
                )
            self._send(handler, record, status, payload, headers)
        elif kind == "no_image":
            self._send(handler, record, 200, json.dumps({"created": int(time.time()), "data": []}).encode())
        elif kind == "bad_json":
            self._send(handler, record, 200, b"{not json", {"Content-Type": "application/json"})
        elif kind == "bad_b64":
            bad = {"created": int(time.time()), "data": [{"b64_json": "@@not base64@@"}]}
            self._send(handler, record, 200, json.dumps(bad).encode())
        elif kind == "slow":
            if self._stopping.wait(float(args[0])):
                return  # shutting down: hang up
            self._perform(handler, record, args[1] if len(args) > 1 else ("ok",))
        elif kind == "drop":
            record.status = None
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
        else:
            raise ValueError(f"unknown FakeOpenAI behaviour {behaviour!r}")

    def _send_image(
        self, handler: Handler, record: RecordedRequest, image: bytes, headers: Mapping[str, str]
    ) -> None:
        payload = {
            "created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(image).decode("ascii")}],
            "usage": {
                "input_tokens": 50,
                "input_tokens_details": {"image_tokens": 40, "text_tokens": 10},
                "output_tokens": 100,
                "total_tokens": 150,
            },
        }
        self._send(handler, record, 200, json.dumps(payload).encode(), headers)

    def _send(
        self,
        handler: Handler,
        record: RecordedRequest,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        request_id = f"req_fake_{next(self._ids):06d}"
        merged = {"Content-Type": "application/json", "x-request-id": request_id, **(headers or {})}
        record.status = status
        record.request_id = merged.get("x-request-id", request_id)
        handler.send_response(status)
        for key, value in merged.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
