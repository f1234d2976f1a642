"""Index of the log by project: which positions belong to which project, for per-project reads.

An event belongs to a project when its data carries `project_id` (a naming rule every event
type follows)."""

from __future__ import annotations

import sqlite3

from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels


class EventIndexProjection:
    name = "event_index"
    version = 1
    tables = ("project_events",)
    handles = None
    schema = """
    CREATE TABLE project_events (
        position INTEGER PRIMARY KEY,
        project_id TEXT NOT NULL,
        type TEXT NOT NULL
    );
    CREATE INDEX project_events_by_project ON project_events (project_id, position)
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        self.apply_many(db, [event])

    def apply_many(self, db: sqlite3.Connection, events: list[Event]) -> None:
        """The same rows as `apply` event by event, in one statement."""
        rows = []
        for event in events:
            project_id = event.data.get("project_id")
            if type(project_id) is str:
                rows.append((event.position, project_id, event.type))
        if rows:
            db.executemany("INSERT INTO project_events VALUES (?,?,?)", rows)


async def project_positions(
    rm: ReadModels, project_id: str, after: int, limit: int, types: list[str] | None
) -> list[int]:
    sql = "SELECT position FROM project_events WHERE project_id = ? AND position > ?"
    params: list[object] = [project_id, after]
    if types:
        sql += f" AND type IN ({','.join('?' * len(types))})"
        params += types
    rows = await rm.all(sql + " ORDER BY position LIMIT ?", (*params, limit))
    return [r["position"] for r in rows]
