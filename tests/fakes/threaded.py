"""What every fake HTTP API here shares: a stdlib `ThreadingHTTPServer` on a random free port of
127.0.0.1, served from a background thread, handing each request to the fake's `_handle`.

A subclass sets `thread_name` and implements `_handle(handler)`; `_stopping` is set when the fake
stops, so a scripted "slow" or "hang" answer can end early instead of holding up `stop()`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # stop() joins the handler threads, so no request outlives the fake
    allow_reuse_address = True
    fake: ThreadedFake

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out, hung up or was killed: expected in these tests


class Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def do_PUT(self) -> None:
        self.server.fake._handle(self)

    def do_DELETE(self) -> None:
        self.server.fake._handle(self)


class ThreadedFake:
    thread_name = "fake-api"

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _handle(self, handler: Handler) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        if self._server is None:
            self._stopping.clear()
            server = _Server(("127.0.0.1", 0), Handler)
            server.fake = self
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=self.thread_name,
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes "slow" and "hang" handlers
        server.shutdown()
        server.server_close()  # joins the handler threads
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return int(self._server.server_address[1])
