"""Assets: the files runs produce (contract §3.5). Read-only over HTTP; the run engine records them.

An asset is recorded with one event type, `asset.recorded`, on its own stream `asset:<id>`. The
data is the asset row: `id`, `project_id` and any of the optional fields below. Recording an id
again replaces the row (the ingest's upsert), keeping its place in the log order.

Keeping each asset on its own stream lets commands that need "does this asset exist in this
project" (asset links) ask the log directly and cheaply: `asset_owners` reads those streams. The run
engine must therefore emit asset events on `asset_stream(id)` (it may do so in the same atomic
append as its run events).

Legacy column pairs are kept as they come and coalesced when read (contract §10.17): `kind` and
`asset_kind` fall back on each other; `metadata_json` falls back to `meta_json`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from kroma.events.envelope import Metadata, NewEvent
from kroma.events.store import EventStore

ASSET_RECORDED = "asset.recorded"
ASSET_UPLOADED = "asset.uploaded"  # a client's image stored under <project root>/inputs/
ASSET_TYPES = (ASSET_RECORDED, ASSET_UPLOADED)


def asset_stream(asset_id: str) -> str:
    return f"asset:{asset_id}"


class AssetRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    project_id: str
    kind: str | None = None
    asset_kind: str | None = None
    storage_uri: str | None = None
    rel_path: str | None = None
    storage_backend: str | None = None
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    run_id: str | None = None
    job_id: str | None = None
    candidate_id: str | None = None
    metadata_json: Any = None
    meta_json: Any = None
    created_at: str | None = None  # `YYYY-MM-DDTHH:MM:SSZ`; the event's time when absent


def asset_recorded(record: AssetRecord, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(asset_stream(record.id), ASSET_RECORDED, record, meta or Metadata())


class AssetUploaded(AssetRecord, kw_only=True, omit_defaults=True):
    """An uploaded image: the asset row (kind `upload`) plus what the upload itself was."""

    size_bytes: int = 0
    original_filename: str = ""


def asset_uploaded(record: AssetUploaded, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(asset_stream(record.id), ASSET_UPLOADED, record, meta or Metadata())


async def asset_owners(store: EventStore, asset_ids: Iterable[str]) -> dict[str, str | None]:
    """Which project each asset id belongs to, from the log (None: no such asset).

    A loader for command decisions, like `Commands.load_project`: assets are never removed, so an
    answer can only go from None to a project, never the other way.
    """
    owners: dict[str, str | None] = {}
    for asset_id in asset_ids:
        if asset_id in owners:
            continue
        events = await store.read_stream(asset_stream(asset_id))
        recorded = [e for e in events if e.type in ASSET_TYPES]
        owners[asset_id] = recorded[-1].data.get("project_id") if recorded else None
    return owners
