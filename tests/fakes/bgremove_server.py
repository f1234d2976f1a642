"""A fake remove.bg + PhotoRoom background-removal API on 127.0.0.1: a real HTTP server (stdlib
`ThreadingHTTPServer` on a random free port, in a background thread), like `openai_server.py`.

    with FakeBgRemove(removebg_key="rb-key", photoroom_key="pr-key") as fake:
        fake.enqueue("photoroom", ("status", 402, "no credits"))
        cfg = adapter_config({"bg_remove": {"photoroom": {"endpoint": fake.photoroom_url}, ...}})
        ...
        assert fake.requests[0].service == "photoroom"
        assert fake.requests[0].form == {"format": "png"}

Paths: `POST /v1.0/removebg` (remove.bg; key header `X-Api-Key`) and `POST /v1/segment`
(PhotoRoom; key header `x-api-key`). Header names are case-insensitive in HTTP, so both accept
either spelling; `header_names` records the spelling the client sent. Every request is parsed
(multipart/form-data) and recorded in `.requests` (`BgRequest`) in arrival order.

Checks before the script: unknown path -> 404, method other than POST -> 405, wrong or missing key
-> 403 (remove.bg's `{"errors": [{"title": "Forbidden"}]}`) / 401 (PhotoRoom's `{"detail": ...}`),
no `image_file` file part -> 400. Such requests are recorded but consume no script entry.

The answer is scripted per service: `enqueue(service, *behaviours)` adds to that service's FIFO
queue; an empty queue answers `("ok",)`:

    ("ok",)                     200, the cut-out: the uploaded image through
                                `kroma.imaging.background.remove_background`, in the requested
                                `format` (png when absent), with the matching Content-Type
    ("image", data)             200 with exactly these bytes (Content-Type image/png)
    ("status", code)            `code` with a JSON error body
    ("status", code, body)      ... with this body (str or bytes)
    ("slow", seconds)           wait, then answer ("ok",) (ends early when the server stops)
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from kroma.imaging.background import remove_background
from tests.fakes.openai_server import RecordedFile, parse_multipart
from tests.fakes.threaded import Handler, ThreadedFake

Behaviour = tuple[Any, ...]

REMOVEBG_PATH = "/v1.0/removebg"
PHOTOROOM_PATH = "/v1/segment"
SERVICES = {REMOVEBG_PATH: "removebg", PHOTOROOM_PATH: "photoroom"}
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass
class BgRequest:
    """One request: `service` is `removebg`/`photoroom` (None for an unknown path); `headers`
    keys are lower-cased, `header_names` keep the client's spelling; `fields` are the text parts
    in order; `status` is what the server answered."""

    method: str
    path: str
    service: str | None
    headers: dict[str, str]
    header_names: list[str]
    fields: list[tuple[str, str]] = field(default_factory=list)
    files: list[RecordedFile] = field(default_factory=list)
    behaviour: Behaviour | None = None
    status: int | None = None

    @property
    def form(self) -> dict[str, str]:
        return dict(self.fields)

    @property
    def api_key(self) -> str | None:
        return self.headers.get("x-api-key")


class FakeBgRemove(ThreadedFake):
    """See the module docstring. `removebg_url` / `photoroom_url` are the two endpoints."""

    thread_name = "fake-bgremove"

    def __init__(self, *, removebg_key: str = "rb-test-key", photoroom_key: str = "pr-test-key") -> None:
        self.keys = {"removebg": removebg_key, "photoroom": photoroom_key}
        self.requests: list[BgRequest] = []
        self._queues: dict[str, collections.deque[Behaviour]] = {
            "removebg": collections.deque(),
            "photoroom": collections.deque(),
        }
        self._lock = threading.Lock()
        super().__init__()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def removebg_url(self) -> str:
        return f"{self.base_url}{REMOVEBG_PATH}"

    @property
    def photoroom_url(self) -> str:
        return f"{self.base_url}{PHOTOROOM_PATH}"

    def enqueue(self, service: str, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queues[service].extend(behaviours)

    def served(self, service: str) -> list[BgRequest]:
        """The requests of one service that reached the script."""
        with self._lock:
            return [r for r in self.requests if r.service == service and r.behaviour is not None]

    # serving --------------------------------------------------------------------------------

    def _handle(self, handler: Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        path = handler.path.split("?", 1)[0]
        record = BgRequest(
            method=handler.command,
            path=handler.path,
            service=SERVICES.get(path),
            headers={key.lower(): value for key, value in handler.headers.items()},
            header_names=list(handler.headers.keys()),
        )
        with self._lock:
            self.requests.append(record)
        with contextlib.suppress(OSError):
            self._answer(handler, record, body)

    def _answer(self, handler: Handler, record: BgRequest, body: bytes) -> None:
        service = record.service
        if service is None:
            self._send(handler, record, 404, b'{"error": "not found"}')
            return
        if record.method != "POST":
            self._send(handler, record, 405, b'{"error": "method not allowed"}')
            return
        if record.api_key != self.keys[service]:
            if service == "removebg":
                self._send(handler, record, 403, b'{"errors": [{"title": "Forbidden"}]}')
            else:
                self._send(handler, record, 401, b'{"detail": "Invalid API key"}')
            return
        try:
            parts = parse_multipart(record.headers.get("content-type", ""), body)
        except ValueError as e:
            self._send(handler, record, 400, json.dumps({"error": str(e)}).encode())
            return
        for name, filename, content_type, data in parts:
            if filename is None:
                record.fields.append((name, data.decode("utf-8")))
            else:
                record.files.append(RecordedFile(name, filename, content_type, data))
        if not any(f.name == "image_file" for f in record.files):
            self._send(handler, record, 400, b'{"error": "image_file is required"}')
            return
        with self._lock:
            queue = self._queues[service]
            behaviour = queue.popleft() if queue else ("ok",)
        record.behaviour = behaviour
        self._perform(handler, record, behaviour)

    def _perform(self, handler: Handler, record: BgRequest, behaviour: Behaviour) -> None:
        kind, args = behaviour[0], behaviour[1:]
        if kind == "ok":
            fmt = record.form.get("format", "png")
            source = next(f.data for f in record.files if f.name == "image_file")
            try:
                image = remove_background(source, fmt=fmt)
            except ValueError as e:
                self._send(handler, record, 400, json.dumps({"error": str(e)}).encode())
                return
            self._send(handler, record, 200, image, _CONTENT_TYPES.get(fmt, "image/png"))
        elif kind == "image":
            self._send(handler, record, 200, bytes(args[0]), "image/png")
        elif kind == "status":
            status = int(args[0])
            if len(args) > 1:
                payload = args[1].encode() if isinstance(args[1], str) else bytes(args[1])
            else:
                payload = json.dumps({"errors": [{"title": f"fake error {status}"}]}).encode()
            self._send(handler, record, status, payload)
        elif kind == "slow":
            if not self._stopping.wait(float(args[0])):
                self._perform(handler, record, ("ok",))
        else:
            raise ValueError(f"unknown FakeBgRemove behaviour {behaviour!r}")

    def _send(
        self,
        handler: Handler,
        record: BgRequest,
        status: int,
        body: bytes,
        content_type: str = "application/json",
    ) -> None:
        record.status = status
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
