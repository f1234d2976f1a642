"""A bound on live event streams (SSE) per token: each open stream holds a slot until it ends.

One more stream than `sse_streams_per_token` is a 429 in the contract's error shape, before the
stream starts. Requests without a token (dev bypass) share one count under their principal.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from litestar import Request
from litestar.background_tasks import BackgroundTask

from kroma.domain.errors import KromaError
from kroma.domain.handling import current_request

T = TypeVar("T")


class TooManyStreams(KromaError):
    status = 429
    kind = "policy"
    code = "too_many_streams"


class StreamLease:
    """One open stream's slot; `release` is idempotent (the stream's end and the response's
    background task both call it, so a stream that never started still gives its slot back)."""

    def __init__(self, slots: StreamSlots, key: str) -> None:
        self._slots, self._key, self._held = slots, key, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release(self._key)

    async def arelease(self) -> None:
        self.release()

    def background(self) -> BackgroundTask:
        return BackgroundTask(self.arelease)

    async def hold(self, feed: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        """`feed`, giving the slot back when the stream ends (done, cancelled or disconnected)."""
        try:
            async for item in feed:
                yield item
        finally:
            self.release()


class StreamSlots:
    def __init__(self, per_token: int) -> None:
        self.per_token = max(1, per_token)
        self._open: dict[str, int] = {}

    def open_count(self, key: str) -> int:
        return self._open.get(key, 0)

    def acquire(self, key: str) -> StreamLease:
        count = self._open.get(key, 0)
        if count >= self.per_token:
            raise TooManyStreams(
                f"Too many live streams for this token (at most {self.per_token} at once); close one and retry"
            )
        self._open[key] = count + 1
        return StreamLease(self, key)

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)


def acquire_stream(request: Request) -> StreamLease:
    """A slot for one more live stream of the calling token (429 past the limit)."""
    actor = current_request.get().actor
    slots: StreamSlots = request.app.state.stream_slots
    return slots.acquire(actor.token_id or actor.principal)
