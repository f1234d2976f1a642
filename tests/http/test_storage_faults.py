"""A full disk or a store that cannot be written: a 503 in the contract's shape (with Retry-After),
nothing half-written, reads still served, and the next write after the fault clears succeeds with no
restart. Simulated in process on the real SQLite connections: `PRAGMA max_page_count` makes SQLite
itself answer SQLITE_FULL ("database or disk is full") when the file would grow, and
`PRAGMA query_only` makes it answer SQLITE_READONLY, exactly as a full or read-only filesystem does;
both are lifted again to show the recovery. The same over a real full filesystem (a tiny tmpfs) is
tests/e2e/test_proof_server.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma import dbthread
from kroma.faults import storage_fault

UNAVAILABLE = {
    "ok": False,
    "error": "Storage is unavailable (disk full or data folder not writable); retry later",
    "error_kind": "infra",
    "error_code": "storage_unavailable",
}


def _on_writer(client: TestClient, sql: str) -> Any:
    services = client.app.state.services
    return client.blocking_portal.call(
        dbthread.run, services.store._writer_conn, lambda db: db.execute(sql).fetchall()
    )


def _style(client: TestClient, slug: str, name: str) -> Any:
    return client.post(
        f"/api/projects/{slug}/style-guides", json={"name": name, "instructions": "ink " * 400}
    )


def _assert_503(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == UNAVAILABLE
    assert response.headers["retry-after"] == "5"


@pytest.mark.parametrize(
    ("fault", "lift"),
    [
        ("PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1073741823"),  # disk full
        ("PRAGMA query_only = ON", "PRAGMA query_only = OFF"),  # read-only store
    ],
    ids=["disk_full", "read_only"],
)
def test_a_store_that_cannot_be_written_answers_503_then_recovers_by_itself(
    client: TestClient, project: dict[str, Any], fault: str, lift: str
) -> None:
    slug = project["slug"]
    assert _style(client, slug, "Before").status_code == 200
    head = client.get("/api/events?limit=1000").json()["next_after"]
    pages = _on_writer(client, "PRAGMA page_count")[0][0]
    _on_writer(client, fault.format(pages=pages))
    try:
        for i in range(3):  # big enough to need new pages; every one refused, whole
            _assert_503(_style(client, slug, f"During {i}"))
        _assert_503(client.post("/api/projects", json={"name": "Another", "description": "x" * 20000}))
        # Reads are still served, and nothing of the refused writes is anywhere.
        listed = client.get(f"/api/projects/{slug}/style-guides").json()
        assert [s["name"] for s in listed["style_guides"]] == ["Before"]
        assert client.get("/api/events?limit=1000").json()["next_after"] == head
    finally:
        _on_writer(client, lift)
    # Space is back: the same request now succeeds, with no restart, and the chain is whole.
    assert _style(client, slug, "During 0").status_code == 200
    names = {s["name"] for s in client.get(f"/api/projects/{slug}/style-guides").json()["style_guides"]}
    assert names == {"Before", "During 0"}
    services = client.app.state.services
    assert client.blocking_portal.call(services.store.verify_chain) == head + 1
    assert _on_writer(client, "PRAGMA integrity_check") == [("ok",)]


def test_a_keyed_retry_after_the_fault_clears_appends_exactly_once(
    client: TestClient, project: dict[str, Any]
) -> None:
    slug = project["slug"]
    _on_writer(client, "PRAGMA query_only = ON")
    try:
        refused = client.post(
            f"/api/projects/{slug}/characters", json={"name": "Ink"}, headers={"Idempotency-Key": "k1"}
        )
        _assert_503(refused)
    finally:
        _on_writer(client, "PRAGMA query_only = OFF")
    for _ in range(2):
        again = client.post(
            f"/api/projects/{slug}/characters", json={"name": "Ink"}, headers={"Idempotency-Key": "k1"}
        )
        assert again.status_code == 200, again.text
    assert client.get(f"/api/projects/{slug}/characters").json()["count"] == 1


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("database or disk is full"),
        sqlite3.OperationalError("attempt to write a readonly database"),
        OSError(28, "No space left on device"),
        OSError(30, "Read-only file system"),
    ],
)
def test_storage_faults_are_recognised_through_the_exception_chain(exc: BaseException) -> None:
    try:
        try:
            raise exc
        except BaseException:
            raise sqlite3.OperationalError("cannot rollback - no transaction is active") from None
    except sqlite3.OperationalError as outer:
        assert storage_fault(outer) is exc


def test_other_errors_are_not_storage_faults(make_client: Callable[..., TestClient]) -> None:
    assert storage_fault(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    assert storage_fault(ValueError("nope")) is None
    assert storage_fault(OSError(2, "No such file or directory")) is None
