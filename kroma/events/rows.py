"""A stored event row as every reader sees it, whichever store holds it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from kroma.events import upcasting
from kroma.events.envelope import Event, Metadata

_meta_decoder = msgspec.json.Decoder(Metadata)


def row_to_event(row: Sequence[Any]) -> Event:
    """(position, event_id, stream_id, stream_version, type, schema_version, data, metadata,
    recorded_at, hash) as an Event: data upcast to its type's newest shape (never rewritten)."""
    pos, eid, sid, sver, typ, schema, data, meta, rec, digest = row
    decoded = msgspec.json.decode(data)
    if typ in upcasting.EVOLVED:
        schema, decoded = upcasting.upcast(typ, schema, decoded)
    return Event(
        position=pos,
        event_id=eid,
        stream_id=sid,
        stream_version=sver,
        type=typ,
        schema_version=schema,
        data=decoded,
        metadata=_meta_decoder.decode(meta),
        recorded_at=rec,
        hash=digest.hex(),
    )
