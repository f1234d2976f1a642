"""The event store the settings choose: the embedded SQLite file by default, PostgreSQL when
`event_store_url` (env KROMA_EVENT_STORE_URL) names a server."""

from __future__ import annotations

from kroma.clock import Clock
from kroma.config import Settings
from kroma.events.postgres import PostgresEventStore
from kroma.events.sqlite import SQLiteEventStore

#: Either backend; both implement kroma.events.store.EventStore and the same extras the app uses
#: (read_event, submit, wait_for_room).
AnyEventStore = SQLiteEventStore | PostgresEventStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def create_store(settings: Settings, clock: Clock | None = None) -> AnyEventStore:
    """A store (not yet opened) on the log the settings name."""
    url = settings.event_store_url.strip()
    if not url:
        return SQLiteEventStore(settings.events_db, clock)
    if url.startswith(POSTGRES_SCHEMES):
        return PostgresEventStore(url, clock, schema=settings.event_store_schema)
    scheme = url.split("://", 1)[0] + "://" if "://" in url else "(no scheme)"
    raise ValueError(
        f"event_store_url: unsupported store {scheme} (use postgresql://... or leave it empty for SQLite)"
    )
