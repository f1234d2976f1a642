"""Read models of one project as they were right after a past position, folded on demand.

The project's events up to that position (its configuration stream `project:<id>`, and for the
counts of what its runs produced the run and asset events the event index lists for it) are folded
through the live projections' own `apply` into an in-memory database with the same tables. The
API's query functions then run on it unchanged, so an `?as_of=` answer has exactly the shape of the
live one, and nothing is stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, cast

from kroma.domain import runs as run_events
from kroma.domain.aggregate import project_stream
from kroma.domain.assets import ASSET_RECORDED, ASSET_UPLOADED
from kroma.events.envelope import Event
from kroma.events.store import EventStore
from kroma.projections.base import Projection
from kroma.projections.projects import ProjectsProjection
from kroma.projections.reader import ReadModels
from kroma.projections.records import record_projections
from kroma.projections.runs import RunsProjection

# The events that create rows in the tables the project detail counts (runs, jobs, assets): no
# event removes such a row, so folding these alone gives the counts.
COUNTED = (
    run_events.RUN_REQUESTED,
    run_events.RUN_RECORDED,
    run_events.RUN_STARTED,
    run_events.RUN_FINISHED,
    run_events.JOB_PLANNED,
    run_events.JOB_RECORDED,
    ASSET_RECORDED,
    ASSET_UPLOADED,
)
PAGE = 500


class Snapshot:
    """An in-memory read-model file holding what `fold` was given; reads like ReadModels."""

    def __init__(self, projections: Sequence[Projection]) -> None:
        self.projections = list(projections)
        self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        for p in self.projections:
            for statement in p.schema.split(";"):
                if statement.strip():
                    self._db.execute(statement)

    def fold(self, events: Sequence[Event]) -> None:
        """Apply events (in position order) to every projection that handles them."""
        db = self._db
        db.execute("BEGIN")
        for event in events:
            for p in self.projections:
                if p.handles is None or event.type in p.handles:
                    p.apply(db, event)
        db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def read_models(self) -> ReadModels:
        """This snapshot where the query functions expect the live read models (same methods)."""
        return cast(ReadModels, self)

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._db.execute(sql, params)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    async def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.all(sql, params)
        return next(iter(rows[0].values())) if rows else None


async def project_events(
    store: EventStore, live: ReadModels, project_id: str, as_of: int, counted: bool
) -> list[Event]:
    """The project's configuration events with position <= as_of, and with `counted`, the events
    that create its runs, jobs and assets (found through the event index), in position order."""
    events = [e for e in await store.read_stream(project_stream(project_id)) if e.position <= as_of]
    if counted:
        marks = ",".join("?" * len(COUNTED))
        rows = await live.all(
            "SELECT position FROM project_events WHERE project_id = ? AND position <= ?"
            f" AND type IN ({marks}) ORDER BY position",
            (project_id, as_of, *COUNTED),
        )
        positions = [r["position"] for r in rows]
        for start in range(0, len(positions), PAGE):
            events += await store.read_positions(positions[start : start + PAGE])
        events.sort(key=lambda e: e.position)
    return events


def snapshot_projections(counted: bool) -> list[Projection]:
    found: list[Projection] = [ProjectsProjection(), *record_projections()]
    return [*found, RunsProjection()] if counted else found
