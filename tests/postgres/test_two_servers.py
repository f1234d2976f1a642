"""Two real `kroma serve` processes on one PostgreSQL database (one schema set), over HTTP: a write
through one is read back through it at once (read-your-writes) and through the other once its read
models caught up; secrets written through one open through the other."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from kroma.crypto import encode_key
from tests.e2e.conftest import Server
from tests.events.postgres_server import POSTGRES_URL


@pytest.fixture
def two_servers(pg_schema: str, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    env = {
        "KROMA_API_AUTH_DEV_BYPASS": "1",
        "KROMA_EVENT_STORE_URL": POSTGRES_URL,
        "KROMA_EVENT_STORE_SCHEMA": pg_schema,
        "KROMA_MASTER_KEY": encode_key(os.urandom(32)),  # every process is given the master key
    }
    servers = (Server(tmp_path / "a" / "data", env), Server(tmp_path / "b" / "data", env))
    try:
        for server in servers:
            server.data_dir.mkdir(parents=True)
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the other server never caught up"
        time.sleep(0.02)


def test_two_servers_share_one_database(two_servers: tuple[Server, Server], pg_schema: str) -> None:
    a, b = two_servers
    created = httpx.post(f"{a.url}/api/projects", json={"name": "Demo", "slug": "demo"})
    assert created.status_code == 200, created.text
    assert httpx.get(f"{a.url}/api/projects/demo").status_code == 200  # read-your-writes on a
    _eventually(lambda: httpx.get(f"{b.url}/api/projects/demo").status_code == 200)

    secret = {"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-shared"}
    assert httpx.post(f"{b.url}/api/projects/demo/secrets", json=secret).status_code == 200

    def listed(server: Server) -> list[dict]:
        return httpx.get(f"{server.url}/api/projects/demo/secrets").json()["secrets"]

    _eventually(lambda: len(listed(a)) == 1)

    # both servers take writes at once; every one is read back where it was written
    def create(i: int) -> None:
        server = (a, b)[i % 2]
        answer = httpx.post(f"{server.url}/api/projects", json={"name": f"P{i}", "slug": f"p{i}"})
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{server.url}/api/projects/p{i}").status_code == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(24)))

    def slugs(server: Server) -> set[str]:
        return {p["slug"] for p in httpx.get(f"{server.url}/api/projects").json()["projects"]}

    expected = {"demo"} | {f"p{i}" for i in range(24)}
    _eventually(lambda: slugs(a) == expected and slugs(b) == expected)
    with psycopg.connect(POSTGRES_URL) as db:
        failures = db.execute(f'SELECT count(*) FROM "{pg_schema}_rm".projection_failures').fetchone()
        keys = db.execute(f'SELECT count(*) FROM "{pg_schema}_keys".data_keys').fetchone()
    assert failures == (0,)  # no page folded twice
    assert keys == (1,)
    assert not (a.data_dir / "keys.db").exists() and not (b.data_dir / "keys.db").exists()
