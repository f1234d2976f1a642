"""A fake agent API on 127.0.0.1 (pipeline spec §7.2): a real HTTP server in a background thread
that accepts the dispatcher's `POST` of an instruction and answers from a script. It serves the
test process and `kroma serve` / `kroma worker` subprocesses alike.

    with FakeAgent(token="agent-token") as fake:
        fake.enqueue(("status", 503), ("ok", {"status": "accepted"}))
        ... dispatch to fake.url ...
        assert [r.status for r in fake.requests] == [503, 200]
        assert fake.requests[0].json["instruction_id"] == instruction_id

Behaviours (one consumed per request, FIFO; `default` answers when the queue is empty):

    ("ok",)                  200 {"status": "done"}
    ("ok", body)             200 with this JSON value
    ("raw", code, bytes)     `code` with exactly this body (e.g. b"" or b"{not json")
    ("status", code)         `code` with {"error": "fake <code>"}
    ("status", code, text)   `code` with this text body
    ("slow", seconds, b)     wait, then behave as `b` (default ("ok",)); a client timeout shorter
                             than `seconds` sees a timeout
    ("hang",)                never answer (until the fake stops): a worker killed mid-dispatch
    ("drop",)                close the connection without answering (a transport error)

With `token`, a request without `Authorization: Bearer <token>` gets 401 before the script (it is
recorded, and consumes no behaviour).
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from tests.fakes.threaded import Handler, ThreadedFake

Behaviour = tuple[Any, ...]
PATH = "/agent/instructions"


@dataclass
class AgentRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased keys
    body: bytes
    arrived: float  # time.monotonic()
    behaviour: Behaviour | None = None
    status: int | None = None  # None: no answer (hung or dropped)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def instruction_id(self) -> str | None:
        try:
            return self.json.get("instruction_id")
        except ValueError:
            return None


class FakeAgent(ThreadedFake):
    thread_name = "fake-agent"

    def __init__(self, token: str | None = None, *, default: Behaviour = ("ok",)) -> None:
        self.token = token
        self.default = default
        self.requests: list[AgentRequest] = []
        self._queue: collections.deque[Behaviour] = collections.deque()
        self._lock = threading.Condition()
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def enqueue(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[AgentRequest]:
        """Block until at least `count` requests arrived; returns them (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"expected {count} agent requests, got {len(self.requests)}"
                self._lock.wait(left)
            return list(self.requests)

    # serving ------------------------------------------------------------------------------------

    def _handle(self, handler: Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        record = AgentRequest(
            method=handler.command,
            path=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
            arrived=time.monotonic(),
        )
        with self._lock:
            self.requests.append(record)
            self._lock.notify_all()
        with contextlib.suppress(OSError):
            if self.token is not None and record.headers.get("authorization") != f"Bearer {self.token}":
                self._send(handler, record, 401, b'{"error": "unauthorized"}')
                return
            with self._lock:
                behaviour = self._queue.popleft() if self._queue else self.default
            record.behaviour = behaviour
            self._perform(handler, record, behaviour)

    def _perform(self, handler: Handler, record: AgentRequest, behaviour: Behaviour) -> None:
        kind, args = behaviour[0], behaviour[1:]
        if kind == "ok":
            self._send(handler, record, 200, json.dumps(args[0] if args else {"status": "done"}).encode())
        elif kind == "raw":
            self._send(handler, record, int(args[0]), bytes(args[1]))
        elif kind == "status":
            code = int(args[0])
            text = args[1].encode() if len(args) > 1 else json.dumps({"error": f"fake {code}"}).encode()
            self._send(handler, record, code, text)
        elif kind == "slow":
            if not self._stopping.wait(float(args[0])):
                self._perform(handler, record, args[1] if len(args) > 1 else ("ok",))
        elif kind == "hang":
            self._stopping.wait()
        elif kind == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
        else:
            raise ValueError(f"unknown FakeAgent behaviour {behaviour!r}")

    @staticmethod
    def _send(handler: Handler, record: AgentRequest, status: int, body: bytes) -> None:
        record.status = status
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
