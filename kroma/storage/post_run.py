"""The post-run S3 sync (pipeline spec §4.9 step 6-7): after a run in mode `run` that asked for
`storage_sync_s3` has completed (`run.completed`, whatever its status; a failed or canceled run has
none), the engine syncs the project and records the outcome on the run's stream:
`run.storage_synced` or `run.storage_sync_failed`, whose `stderr` line (`Rust post-run finalize
skipped: {error}`, the reference's words) the synchronous trigger appends to its stderr. The run's
own outcome never changes.

A sync cut short by a stop is due again on the next start (`due_run_syncs`); the incremental sync
then sends only what is missing, and the outcome is appended once (idempotency key
`run:<id>/storage_sync`).
"""

from __future__ import annotations

import logging
from typing import Any

from kroma.domain import runs as ev
from kroma.domain import storage_sync as dom
from kroma.domain.errors import KromaError
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.projections.storage_sync import due_run_syncs
from kroma.storage.sync import sync_project

log = logging.getLogger("kroma.storage")


def _wants_sync(events: list[Event]) -> Event | None:
    """The run's `run.completed` when the run asked for a post-run sync that has no outcome yet."""
    if not events or events[0].type != ev.RUN_REQUESTED:
        return None
    requested = events[0].data
    if requested.get("mode") != "run" or not requested.get("storage_sync_s3"):
        return None
    completed = next((e for e in events if e.type == ev.RUN_COMPLETED), None)
    if completed is None or any(e.type in dom.RUN_SYNC_OUTCOMES for e in events):
        return None
    return completed


async def sync_after_run(services: Any, run_id: str) -> None:
    """Run the run's post-run sync if it is due, and record its outcome. Never raises (but for a
    cancellation: a stop leaves the sync due)."""
    try:
        events = await services.store.read_stream(ev.run_stream(run_id))
        completed = _wants_sync(events)
        if completed is None:
            return
        project_id = completed.data["project_id"]
        meta = Metadata(correlation_id=run_id, causation_id=completed.event_id)
        data: dict[str, Any] = {"run_id": run_id, "project_id": project_id}
        try:
            result = await sync_project(services, project_id, trigger="run", run_id=run_id, meta=meta)
            kind = dom.RUN_STORAGE_SYNCED
            data.update(
                sync_id=result.sync_id,
                destination=result.destination,
                uploaded=result.uploaded,
                skipped=result.skipped,
                bytes=result.bytes,
            )
        except KromaError as exc:
            kind = dom.RUN_STORAGE_SYNC_FAILED
            sync_id = getattr(getattr(exc, "result", None), "sync_id", None)
            data.update(
                error=exc.message,
                error_code=exc.code,
                error_kind=exc.kind,
                stderr=dom.POST_RUN_PREFIX + exc.message,
                **({"sync_id": sync_id} if sync_id else {}),
            )
        event = NewEvent(ev.run_stream(run_id), kind, data, meta)
        await services.store.append([event], idempotency_key=f"run:{run_id}/storage_sync")
    except Exception:
        log.exception("run %s: the post-run S3 sync failed", run_id)


async def due(services: Any) -> list[str]:
    """Runs whose post-run sync is due (an engine stopped before it was done)."""
    return await due_run_syncs(services.reader)


async def wait_for_outcome(services: Any, run_id: str, end: Event) -> Event | None:
    """The run's post-run sync outcome once it is in the log, when the run asked for one and
    `end` (its final event) is `run.completed`; None otherwise."""
    if end.type != ev.RUN_COMPLETED:
        return None
    stream = ev.run_stream(run_id)
    first = await services.store.read_stream(stream)
    if not first or _wants_sync([*first[:1], end]) is None:
        return None
    after = end.stream_version
    while True:
        head = await services.store.head()
        for event in await services.store.read_stream(stream, after_version=after):
            after = event.stream_version
            if event.type in dom.RUN_SYNC_OUTCOMES:
                return event
        await services.store.wait_for_append(head, 1.0)


def stderr_line(outcome: Event | None) -> str:
    """The line a failed post-run sync adds to the trigger's stderr ("" when none)."""
    if outcome is None or outcome.type != dom.RUN_STORAGE_SYNC_FAILED:
        return ""
    return str(outcome.data.get("stderr") or "")
