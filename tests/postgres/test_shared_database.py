"""Several servers on one PostgreSQL database: each folds into the same read-model schema (one at a
time), a write through one is visible through the others once they caught up, and read-your-writes
holds on the one that took the write."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from click.testing import CliRunner
from litestar.testing import TestClient

from kroma.cli import main
from kroma.crypto import encode_key
from kroma.http.deps import services_of
from tests.events.postgres_server import POSTGRES_URL


def _rows(client: TestClient, sql: str) -> list[dict[str, Any]]:
    return client.blocking_portal.call(services_of(client).reader.all, sql)


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the other server never caught up"
        time.sleep(0.02)


def test_a_write_through_one_server_is_read_through_another(pg_client: Callable[..., TestClient]) -> None:
    first, second = pg_client(), pg_client()
    created = first.post("/api/projects", json={"name": "Demo", "slug": "demo"})
    assert created.status_code == 200, created.text
    assert first.get("/api/projects/demo").status_code == 200  # read-your-writes where it was written
    _eventually(lambda: second.get("/api/projects/demo").status_code == 200)

    renamed = second.post("/api/projects", json={"name": "Renamed", "slug": "demo"})  # an upsert
    assert renamed.status_code == 200, renamed.text
    assert second.get("/api/projects/demo").json()["project"]["name"] == "Renamed"
    _eventually(lambda: first.get("/api/projects/demo").json()["project"]["name"] == "Renamed")


def test_servers_writing_at_once_fold_every_event_exactly_once(pg_client: Callable[..., TestClient]) -> None:
    clients = [pg_client(), pg_client(), pg_client()]
    for i in range(12):
        client = clients[i % len(clients)]
        answer = client.post("/api/projects", json={"name": f"P{i}", "slug": f"p{i}"})
        assert answer.status_code == 200, answer.text
        assert client.get(f"/api/projects/p{i}").status_code == 200
    head = clients[0].blocking_portal.call(services_of(clients[0]).store.head)
    for client in clients:
        client.blocking_portal.call(services_of(client).runner.wait_for, head)
        slugs = [r["slug"] for r in _rows(client, "SELECT slug FROM projects ORDER BY slug")]
        assert slugs == sorted(f"p{i}" for i in range(12))
    # A page folded twice would have failed on the primary keys and been recorded here.
    assert _rows(clients[0], "SELECT * FROM projection_failures") == []
    checkpoints = _rows(clients[0], "SELECT DISTINCT position FROM checkpoints")
    assert checkpoints == [{"position": head}]


def test_secrets_data_keys_are_shared_and_stay_out_of_the_log(
    pg_client: Callable[..., TestClient], monkeypatch: Any
) -> None:
    monkeypatch.setenv("KROMA_MASTER_KEY", encode_key(os.urandom(32)))  # every server is given it
    first, second = pg_client(), pg_client()
    assert first.post("/api/projects", json={"name": "Demo", "slug": "demo"}).status_code == 200
    body = {"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-very-secret-value"}
    put = first.post("/api/projects/demo/secrets", json=body)
    assert put.status_code == 200, put.text
    services = services_of(second)
    events = second.blocking_portal.call(services.store.read_all, 0, 1000)
    (event,) = [e for e in events if e.type == "secret.set"]
    assert "sk-very-secret-value" not in repr(events)
    # the other server opens the value with the data key it finds in the shared table
    keys = second.blocking_portal.call(services.vault.keys)
    plain = second.blocking_portal.call(keys.decrypt_secret, event.data["key_id"], event.data["ciphertext"])
    assert plain == "sk-very-secret-value"
    assert second.blocking_portal.call(keys.refs) == {event.data["key_id"]: "local-master"}
    assert not (services.settings.data_path / "keys.db").exists()  # not in a local file
    # a delete through the second server shreds the key for both
    _eventually(lambda: second.get("/api/projects/demo/secrets").status_code == 200)
    gone = second.delete("/api/projects/demo/secrets/openai/api_key")
    assert gone.status_code == 200, gone.text
    first_keys = first.blocking_portal.call(services_of(first).vault.keys)
    assert first.blocking_portal.call(first_keys.refs) == {}


def test_a_rebuild_swaps_the_schema_under_a_live_server(pg_client: Callable[..., TestClient]) -> None:
    rebuilder, live = pg_client(), pg_client()
    for i in range(5):
        assert live.post("/api/projects", json={"name": f"P{i}", "slug": f"p{i}"}).status_code == 200
    before = _rows(live, "SELECT * FROM projects ORDER BY id")
    reached = rebuilder.blocking_portal.call(services_of(rebuilder).runner.rebuild)
    assert reached == live.blocking_portal.call(services_of(live).store.head)
    assert _rows(live, "SELECT * FROM projects ORDER BY id") == before  # the new tables, same rows

    # writes through the live server while a rebuild runs: none lost, none folded twice
    written: list[str] = []

    def write() -> None:
        for i in range(20):
            answer = live.post("/api/projects", json={"name": f"W{i}", "slug": f"w{i}"})
            assert answer.status_code == 200, answer.text
            assert live.get(f"/api/projects/w{i}").status_code == 200
            written.append(f"w{i}")

    writer = threading.Thread(target=write)
    writer.start()
    rebuilder.blocking_portal.call(services_of(rebuilder).runner.rebuild)
    writer.join()
    assert len(written) == 20
    head = live.blocking_portal.call(services_of(live).store.head)
    live.blocking_portal.call(services_of(live).runner.wait_for, head)
    slugs = {r["slug"] for r in _rows(live, "SELECT slug FROM projects")}
    assert slugs == {f"p{i}" for i in range(5)} | set(written)
    # the live server keeps folding into the swapped-in tables, and reads its writes there
    assert live.post("/api/projects", json={"name": "After", "slug": "after"}).status_code == 200
    assert live.get("/api/projects/after").status_code == 200
    _eventually(lambda: rebuilder.get("/api/projects/after").status_code == 200)
    assert _rows(live, "SELECT * FROM projection_failures") == []


def test_the_rebuild_command_rebuilds_on_postgresql(
    pg_client: Callable[..., TestClient], pg_schema: str, monkeypatch: Any, tmp_path: Any
) -> None:
    live = pg_client()
    for i in range(3):
        assert live.post("/api/projects", json={"name": f"P{i}", "slug": f"p{i}"}).status_code == 200
    before = _rows(live, "SELECT * FROM projects ORDER BY id")
    monkeypatch.setenv("KROMA_EVENT_STORE_URL", POSTGRES_URL)
    monkeypatch.setenv("KROMA_EVENT_STORE_SCHEMA", pg_schema)
    for args in (["projections", "rebuild"], ["projections", "rebuild", "projects"]):
        result = CliRunner().invoke(main, [*args, "--data-dir", str(tmp_path / "cli")])
        assert result.exit_code == 0, result.output
        assert "through position 6" in result.output  # each project: its event and its slug's
    assert _rows(live, "SELECT * FROM projects ORDER BY id") == before
    assert live.post("/api/projects", json={"name": "After", "slug": "after"}).status_code == 200
    assert live.get("/api/projects/after").status_code == 200


def test_reads_survive_the_server_dropping_idle_connections(
    pg_client: Callable[..., TestClient], pg_schema: str
) -> None:
    client = pg_client()
    assert client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).status_code == 200
    assert client.get("/api/projects/demo").status_code == 200
    idle = [conn.info.backend_pid for conn in services_of(client).reader._pool]  # type: ignore[attr-defined]
    assert idle
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:  # as a server restart would
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (idle,))
    assert client.get("/api/projects/demo").status_code == 200
