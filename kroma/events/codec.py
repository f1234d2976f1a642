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
    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"hash chain broken at position {position}: {reason}")
        self.position = position
        self.reason = reason


def verify_rows(
    rows: Iterable[tuple], prev_hash: bytes = GENESIS, prev_position: int = 0
) -> tuple[int, bytes]:
    """Check raw stored rows (position, event_id, stream_id, stream_version, type, schema_version,
    data, metadata, recorded_at, hash) continue the chain; returns the new (position, hash) head.
    Raises ChainBreak at the first gap or mismatch."""
    for row in rows:
        pos, eid, sid, sver, typ, schema, data, meta, rec, stored = row
        if pos != prev_position + 1:
            raise ChainBreak(pos, f"gap after position {prev_position}")
        expected = link(prev_hash, header_bytes(pos, eid, sid, sver, typ, schema, rec), data, meta)
        if expected != stored:
            raise ChainBreak(pos, "hash mismatch")
        prev_hash, prev_position = stored, pos
    return prev_position, prev_hash
