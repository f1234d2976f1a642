"""Canonical bytes of an event and the SHA-256 hash chain over the log."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

GENESIS = bytes(32)

_encoder = msgspec.json.Encoder(order="sorted")
encode = _encoder.encode


def header_bytes(
    position: int,
    event_id: str,
    stream_id: str,
    stream_version: int,
    type_: str,
    schema_version: int,
    recorded_at: str,
) -> bytes:
    return _encoder.encode(
        (position, event_id, stream_id, stream_version, type_, schema_version, recorded_at)
    )


def link(prev_hash: bytes, header: bytes, data: bytes, metadata: bytes) -> bytes:
    """hash_n = SHA-256(hash_{n-1} || header || 0x0a || data || 0x0a || metadata).

    The header carries the position, so editing, dropping or reordering any event breaks every
    later link.
    """
    return hashlib.sha256(b"".join((prev_hash, header, b"\n", data, b"\n", metadata))).digest()


class ChainBreak(Exception):
    """The first place the stored log stops continuing the chain: `position` is the first bad event,
    `reason` what is wrong there, `verified_through` the last position that still checks out."""

    def __init__(self, position: int, reason: str, verified_through: int | None = None) -> None:
        super().__init__(f"hash chain broken at position {position}: {reason}")
        self.position = position
        self.reason = reason
        self.verified_through = position - 1 if verified_through is None else verified_through


def _blob(value: object) -> bytes | None:
    """A stored data/metadata cell as bytes (text that was written over a blob is compared by its
    UTF-8 bytes); None for anything else, which can never match."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return None


def check_link(prev_hash: bytes, prev_position: int, row: tuple) -> bytes:
    """The stored hash of `row` once it is checked to continue the chain after (prev_position,
    prev_hash); raises ChainBreak naming the row's position otherwise. Never raises anything else,
    whatever a tampered row holds."""
    pos, eid, sid, sver, typ, schema, data, meta, rec, stored = row
    if pos != prev_position + 1:
        if isinstance(pos, int) and pos > prev_position:
            raise ChainBreak(pos, f"gap after position {prev_position}", prev_position)
        raise ChainBreak(pos, f"position out of order after position {prev_position}", prev_position)
    data_bytes, meta_bytes = _blob(data), _blob(meta)
    try:
        header = header_bytes(pos, eid, sid, sver, typ, schema, rec)
    except (TypeError, msgspec.EncodeError):  # a cell of a type the writer never stores
        header = None
    if header is None or data_bytes is None or meta_bytes is None or not isinstance(stored, bytes):
        raise ChainBreak(pos, "hash mismatch", prev_position)
    if link(prev_hash, header, data_bytes, meta_bytes) != stored:
        raise ChainBreak(pos, "hash mismatch", prev_position)
    return stored


def verify_rows(
    rows: Iterable[tuple], prev_hash: bytes = GENESIS, prev_position: int = 0
) -> tuple[int, bytes]:
    """Check raw stored rows (position, event_id, stream_id, stream_version, type, schema_version,
    data, metadata, recorded_at, hash) continue the chain; returns the new (position, hash) head.
    Raises ChainBreak at the first gap or mismatch."""
    for row in rows:
        prev_hash = check_link(prev_hash, prev_position, row)
        prev_position = row[0]
    return prev_position, prev_hash
