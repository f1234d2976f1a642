"""Schema evolution: events stored in an old shape are upcast on read (version N -> N+1 -> ...), never
rewritten, so the chain still verifies; every projection, the project aggregate and every route
read them as the new shape, and a rebuild gives the same tables."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from kroma.config import Settings
from kroma.domain.aggregate import project_stream
from kroma.events import upcasting
from kroma.events.envelope import Metadata, NewEvent
from kroma.events.sqlite import SQLiteEventStore
from kroma.http.app import create_app
from tests.http.log_seed import append, services_of
from tests.projections.test_cli_rebuild_configuration import _dump

# -- the mechanism, on a type of this test's own ----------------------------------------------------


@pytest.fixture
def evolved_thing() -> Iterator[None]:
    """`thing.made` v1 {colour} -> v2 {color} -> v3 {color, size}."""
    upcasting.upcaster("thing.made", 1)(lambda d: {"color": d["colour"]})
    upcasting.upcaster("thing.made", 2)(lambda d: {**d, "size": d.get("size", "M")})
    yield
    upcasting.unregister("thing.made", 2)
    upcasting.unregister("thing.made", 1)


async def test_old_versions_are_read_as_the_newest_through_every_read_and_stay_stored_as_written(
    evolved_thing: None, tmp_path: Path
) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        await store.append([NewEvent("t", "thing.made", {"colour": "red"}, schema_version=1)])
        await store.append([NewEvent("t", "thing.made", {"color": "blue"}, schema_version=2)])
        await store.append([NewEvent("t", "thing.made", {"color": "green", "size": "S"}, schema_version=3)])
        expected = [
            (3, {"color": "red", "size": "M"}),
            (3, {"color": "blue", "size": "M"}),
            (3, {"color": "green", "size": "S"}),
        ]

        for read in (
            await store.read_all(),
            await store.read_stream("t"),
            await store.read_positions([1, 2, 3]),
            [e for e in [await store.read_event((await store.read_all())[i].event_id) for i in range(3)] if e],
        ):
            assert [(e.schema_version, e.data) for e in read] == expected
        assert upcasting.current_version("thing.made") == 3
        assert await store.verify_chain() == 3

    with closing(sqlite3.connect(tmp_path / "events.db")) as db:
        stored = db.execute("SELECT schema_version, data FROM events ORDER BY position").fetchall()
    assert stored[0] == (1, b'{"colour":"red"}')  # never rewritten


# -- a real evolution: secret.deleted v1 (no path spelling) -> v2 -------------------------------------


def _old_delete(project_id: str, key_id: str) -> NewEvent:
    """`secret.deleted` as Kroma wrote it before v2: the normalised key only."""
    data = {"project_id": project_id, "provider_code": "openai", "secret_name": "api_key", "key_id": key_id}
    return NewEvent(project_stream(project_id), "secret.deleted", data, Metadata(), schema_version=1)


def _world(client: TestClient, old_shape: bool) -> dict[str, Any]:
    """A project whose secret is set, deleted (in the old or the new shape), set again and deleted."""
    project = client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).json()["project"]
    body = {"provider_code": "openai", "secret_name": "api_key", "secret_value": "sk-1"}
    set_event = client.post("/api/projects/demo/secrets", json=body).json()
    assert set_event["ok"], set_event
    if old_shape:
        [event] = client.blocking_portal.call(services_of(client).store.read_all, 0, 100, ["secret.set"])
        result = append(client, _old_delete(project["id"], event.data["key_id"]))
        position = result.last_position
    else:
        assert client.delete("/api/projects/demo/secrets/openai/api_key").status_code == 200
        position = client.get("/api/events?type=secret.deleted").json()["events"][0]["position"]
    return {"project": project, "position": position}


@pytest.fixture
def old(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=str(tmp_path / "old"), workspace_root=str(tmp_path), auth_dev_bypass=True, agent_dispatch=False
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_an_old_shape_secret_delete_is_read_as_v2_by_every_route_projection_and_the_aggregate(
    old: TestClient,
) -> None:
    world = _world(old, old_shape=True)
    position = world["position"]

    shown = old.get(f"/api/events/{position}").json()["event"]
    assert shown["schema_version"] == 2
    assert (shown["data"]["path_provider_code"], shown["data"]["path_secret_name"]) == ("openai", "api_key")
    listed = old.get("/api/projects/demo/events?type=secret.deleted").json()["events"]
    assert [e["schema_version"] for e in listed] == [2]

    [entry] = old.get("/api/audit?type=secret.deleted").json()["audit_events"]  # the audit projection
    assert entry["summary"] == {"provider_code": "openai", "secret_name": "api_key"}
    assert old.get("/api/projects/demo/secrets").json()["secrets"] == []  # the secrets projection
    gone = old.delete("/api/projects/demo/secrets/openai/api_key")  # the aggregate folded it too
    assert gone.status_code == 404

    verdict = old.get("/api/events/verify").json()
    assert verdict["intact"] is True


def test_a_rebuild_over_old_shape_events_gives_the_same_tables_as_over_the_new_shape(
    old: TestClient, make_client: Any
) -> None:
    _world(old, old_shape=True)
    services = services_of(old)
    live = _dump(services.settings.readmodels_db)

    old.blocking_portal.call(services.runner.rebuild)

    assert _dump(services.settings.readmodels_db) == live
    new = make_client()
    _world(new, old_shape=False)  # the same history written in today's shape

    def delete_entry(client: TestClient) -> tuple:
        [entry] = client.get("/api/audit?type=secret.deleted").json()["audit_events"]
        return entry["type"], entry["entity_type"], entry["entity_id"], entry["summary"], entry["event_count"]

    assert delete_entry(new) == delete_entry(old)
    assert new.get("/api/projects/demo/secrets").json() == old.get("/api/projects/demo/secrets").json()
