"""End-to-end fixtures: the real `kroma serve` process on 127.0.0.1, spoken to over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        self._env = {
            **os.environ,
            **env,
            "KROMA_DATA_DIR": str(data_dir),
            "KROMA_BIND": f"127.0.0.1:{self.port}",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kroma.cli", "serve"],
                env=self._env,
                cwd=self.data_dir.parent,  # the app root: project folders land in the test's tmp dir
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to shut down (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(data_dir: Path | None = None, **env: str) -> Server:
        server = Server(data_dir or tmp_path / "data", {"KROMA_API_AUTH_DEV_BYPASS": "1", **env})
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


class WorkerProcess:
    """A `kroma worker` process on a data folder: its log (stderr) goes to a file beside the folder,
    its stdout (the summary line it prints on SIGTERM) is kept."""

    ready = "agent dispatcher"  # what its log says once it works

    def __init__(
        self, data_dir: Path, worker_id: str, *options: str, env: dict[str, str] | None = None
    ) -> None:
        self.log = data_dir.parent / f"worker-{worker_id}.log"
        args = [sys.executable, "-m", "kroma.cli", "worker", "--data-dir", str(data_dir)]
        args += ["--worker-id", worker_id, *options]
        environ = {**os.environ, **(env or {}), "KROMA_LOG_LEVEL": "info"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, env=environ, cwd=data_dir.parent, stdout=subprocess.PIPE, stderr=log
            )

    def wait_started(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ready not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        """SIGTERM: the worker stops and prints its summary."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=15)
        assert self.proc.returncode == 0, self.log.read_text()
        return dict(json.loads(out.decode().strip().splitlines()[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Workers a test started: killed at its end, whatever happened."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()
