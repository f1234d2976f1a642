"""The EventStore protocol every backend implements, and its typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

import msgspec

from kroma.events.envelope import Event, NewEvent


class ConcurrencyConflict(Exception):
    """A stream was not at the expected version; nothing of the command was written."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id!r}: expected version {expected}, found {actual}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class IdempotencyMismatch(Exception):
    """An idempotency key was reused for a different command."""

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request")
        self.key = key


class AppendResult(msgspec.Struct, frozen=True):
    """Where a command's events landed. `replayed` is true when an idempotency key matched an
    earlier command: nothing was appended and this is that command's result. `response` is what
    the first caller stored for the key (see `EventStore.save_response`), if anything."""

    first_position: int
    last_position: int
    event_ids: list[str]
    stream_versions: dict[str, int]
    replayed: bool = False
    response: bytes | None = None


class EventStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(
        self,
        events: Sequence[NewEvent],
        expected: Mapping[str, int] | None = None,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> AppendResult:
        """Append one command's events atomically: all are written or none.

        `expected` maps stream ids to an exact version, ExpectedVersion.NO_STREAM or
        ExpectedVersion.ANY (the default for streams not named). A mismatch raises
        ConcurrencyConflict. With an idempotency key, a retry of the same command (same
        fingerprint) returns the first result without appending; another fingerprint raises
        IdempotencyMismatch.
        """
        ...

    def submit(
        self,
        events: Sequence[NewEvent],
        expected: Mapping[str, int] | None = None,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
        recorded_at: str | None = None,
    ) -> asyncio.Future[AppendResult]:
        """`append` without waiting: queue the command now and return the future of its result.

        Commands submitted one after another (with no await between them) are decided in that
        order, in one transaction when the writer has room, so a caller can chain expected
        versions across them. `recorded_at` (default: the store's clock, now) is every event's
        timestamp, for a caller that must know it before the command commits.
        """
        ...

    async def save_response(self, idempotency_key: str, response: bytes) -> None:
        """Remember the response sent for a keyed command, for replays."""
        ...

    async def lookup_idempotency(self, key: str) -> tuple[str, AppendResult] | None:
        """(fingerprint, result) recorded under a key, or None."""
        ...

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[Event]: ...

    async def stream_version(self, stream_id: str) -> int: ...

    async def read_all(
        self, after: int = 0, limit: int = 1000, types: Sequence[str] | None = None
    ) -> list[Event]:
        """Events with position > after, in position order, at most `limit`."""
        ...

    async def read_positions(self, positions: Sequence[int]) -> list[Event]: ...

    async def head(self) -> int:
        """The last committed position (0 for an empty log)."""
        ...

    async def wait_for_append(self, after: int, timeout: float) -> int:
        """Wait until the head passes `after` (or the timeout ends); returns the head."""
        ...

    def follow(self, after: int = 0, page: int = 1000) -> AsyncIterator[list[Event]]:
        """Pages of events after `after`, forever: catches up, then wakes on each commit."""
        ...

    async def verify_chain(self) -> int:
        """Walk the whole log, page by page, checking the hash chain; returns the head."""
        ...
