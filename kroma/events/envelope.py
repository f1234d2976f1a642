"""The event envelope: what is appended (NewEvent) and what is stored and read back (Event)."""

from __future__ import annotations

from typing import Any

import msgspec


class Metadata(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who and what caused an event. Every field is optional; absent fields are not stored."""

    actor_user_id: str | None = None
    token_id: str | None = None
    request_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None


class NewEvent(msgspec.Struct, frozen=True):
    """An event a command wants to append. `data` is any msgspec-encodable value (a Struct or dict)."""

    stream_id: str
    type: str
    data: Any
    metadata: Metadata = Metadata()
    schema_version: int = 1
    event_id: str | None = None


class Event(msgspec.Struct, frozen=True):
    """A stored, immutable event. `hash` is the hex SHA-256 link of the chain ending at this event."""

    position: int
    event_id: str
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: Metadata
    recorded_at: str
    hash: str


class ExpectedVersion:
    """Optimistic-concurrency expectations for a stream in an append.

    An exact expectation is the stream's current version (an int >= 1); NO_STREAM says the stream
    must not exist yet; ANY accepts whatever is there.
    """

    ANY: int = -1
    NO_STREAM: int = 0
