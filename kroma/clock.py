"""One injectable source of time and ids, so tests can be deterministic."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

_RANDOM_CHUNK = 4096  # bytes read from the OS at once: one getrandom call costs ~3 us here, per id
_random_lock = threading.Lock()
_random_buf = b""
_random_at = 0


def random_int(n: int) -> int:
    """An integer of `n` random bytes from the OS's CSPRNG, read a chunk at a time (every id a
    write request chooses took its own system call). A forked child starts a chunk of its own."""
    global _random_buf, _random_at
    with _random_lock:
        at = _random_at
        if at + n > len(_random_buf):
            _random_buf, at = os.urandom(_RANDOM_CHUNK), 0
        _random_at = at + n
        return int.from_bytes(_random_buf[at : at + n], "big")


def _forget_random_after_fork() -> None:
    global _random_buf, _random_at, _random_lock
    _random_buf, _random_at, _random_lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_random_after_fork)


def uuid7() -> str:
    """A time-ordered UUIDv7 string: 48-bit unix ms, version 7, random tail (RFC 9562).

    Formatted by hand: it runs once per appended event, and uuid.UUID's constructor and str()
    cost more than the rest of it."""
    ms = time.time_ns() // 1_000_000
    rand = random_int(10)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 66) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid4() -> str:
    """A random UUIDv4 string (RFC 9562), formatted by hand like `uuid7`: ids are chosen on every
    write request, and `str(uuid.uuid4())` costs about three times as much."""
    value = (random_int(16) & _V4_CLEAR) | _V4_SET
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_V4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)  # the version and variant bits
_V4_SET = (0x4 << 76) | (0b10 << 62)

_second_cache: tuple[int, str] = (-1, "")


def now_iso_fast() -> str:
    """The current UTC time as `recorded_at` text, formatting the date part once per second."""
    global _second_cache
    ns = time.time_ns()
    second, micros = divmod(ns // 1000, 1_000_000)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (second, prefix)
    return f"{prefix}.{micros:06d}Z"


def iso_micro(dt: datetime) -> str:
    """UTC timestamp with microseconds, the envelope's `recorded_at` format."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_seconds(recorded_at: str) -> str:
    """The contract's second-precision form `YYYY-MM-DDTHH:MM:SSZ` of an envelope timestamp."""
    return recorded_at[:19] + "Z"


class Clock:
    """Wall clock and id source. Tests substitute a subclass with fixed values."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def now_iso(self) -> str:
        return now_iso_fast()

    def now_seconds(self) -> str:
        if type(self).now is Clock.now:  # the wall clock: the date part is formatted once a second
            return to_seconds(now_iso_fast())
        return self.now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def new_id(self) -> str:
        """Entity ids: random UUIDv4, as the contract uses."""
        return uuid4()

    def event_id(self) -> str:
        """Event ids: time-ordered, so the unique index appends at its right edge."""
        return uuid7()
