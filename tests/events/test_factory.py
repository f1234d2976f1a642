"""The store the settings choose (kroma.events.factory), and the whole app with its log on
PostgreSQL while its read models stay in SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from kroma.config import Settings, load_settings
from kroma.events.factory import create_store
from kroma.events.postgres import PostgresEventStore
from kroma.events.sqlite import SQLiteEventStore
from tests.events.postgres_server import POSTGRES_URL, postgres_schema


def test_without_a_url_the_store_is_the_sqlite_file_in_the_data_folder(tmp_path: Path) -> None:
    store = create_store(Settings(data_dir=str(tmp_path)))
    assert isinstance(store, SQLiteEventStore)
    assert store.path == str(tmp_path / "events.db")


def test_a_postgresql_url_chooses_postgresql_in_the_configured_schema() -> None:
    for url in ("postgresql://u@db:5432/kroma", "postgres://u@db/kroma"):
        store = create_store(Settings(event_store_url=f"  {url} ", event_store_schema="studio_a"))
        assert isinstance(store, PostgresEventStore)
        assert (store.url, store.schema) == (url, "studio_a")


def test_any_other_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="unsupported store mysql://") as info:
        create_store(Settings(event_store_url="mysql://root:s3cret@db/kroma"))
    assert "s3cret" not in str(info.value)


def test_the_url_and_schema_come_from_the_settings_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "kroma.toml"
    path.write_text('[storage]\nevent_store_url = "postgresql://file/db"\nevent_store_schema = "from_file"\n')
    from_file = load_settings(environ={}, config_file=str(path))
    assert (from_file.event_store_url, from_file.event_store_schema) == ("postgresql://file/db", "from_file")
    env = {"KROMA_EVENT_STORE_URL": "postgresql://env/db", "KROMA_EVENT_STORE_SCHEMA": "from_env"}
    from_env = load_settings(environ=env, config_file=str(path))
    assert (from_env.event_store_url, from_env.event_store_schema) == ("postgresql://env/db", "from_env")
    assert load_settings(environ={}).event_store_url == ""  # the shipped config/kroma.toml: SQLite


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of its own on the test server for a synchronous (TestClient) test."""
    loop = asyncio.new_event_loop()
    schema = postgres_schema()
    try:
        yield loop.run_until_complete(schema.__aenter__())
        loop.run_until_complete(schema.__aexit__(None, None, None))
    finally:
        loop.close()


def test_the_app_keeps_its_log_on_postgresql_and_a_fresh_data_folder_refolds_it(
    pg_schema: str, make_client: Callable[..., TestClient]
) -> None:
    on_postgres = {"event_store_url": POSTGRES_URL, "event_store_schema": pg_schema}
    first = make_client(**on_postgres)
    created = first.post("/api/projects", json={"name": "Moon Harbour", "description": "noir"}).json()
    assert created["ok"] is True
    assert first.get("/api/projects/moon_harbour").json()["project"]["name"] == "Moon Harbour"
    events = first.get("/api/events").json()
    assert created["audit_id"] in [e["event_id"] for e in events["events"]]
    assert first.get("/api/events/verify").json()["intact"] is True
    assert not (Path(first.app.state.services.settings.data_path) / "events.db").exists()

    # Another server with an empty data folder (its own read models) on the same log: it folds
    # the log from PostgreSQL and answers the same.
    second = make_client(**on_postgres)
    assert second.get("/api/projects/moon_harbour").json()["project"]["name"] == "Moon Harbour"
