"""A rebuild folds the audit trail without its unique index on the command (see
`AuditProjection.build_many`), then merges the partial entries of commands whose events span pages:
the entries come out as the live fold leaves them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kroma.events.envelope import Metadata, NewEvent
from kroma.events.sqlite import SQLiteEventStore
from kroma.projections.audit import AuditProjection
from kroma.projections.runner import ProjectionRunner


def entries(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM audit_entries ORDER BY position").fetchall()


def event(command: str | None, type_: str, **data: object) -> NewEvent:
    return NewEvent(f"s:{command}", type_, data, Metadata(actor_user_id="u", correlation_id=command))


async def test_commands_spanning_pages_come_out_of_a_rebuild_as_the_live_fold_left_them(tmp_path: Path) -> None:
    async with SQLiteEventStore(str(tmp_path / "events.db")) as store:
        for e in [
            event("a", "thing.created", thing_id="t1"),  # no project yet: the entry's comes later
            event("b", "thing.created", thing_id="t2", project_id="p2"),
            event("a", "thing.updated", thing_id="t1", project_id="p1"),
            event("a", "bootstrap.imported", project_id="p9", counts={"things": 2}),
            event(None, "thing.deleted", thing_id="t3"),
            event("a", "thing.updated", thing_id="t1", project_id="p3"),
            event("b", "bootstrap.imported", project_id="p2", counts={"things": 1}),
            event("c", "thing.created", thing_id="t4"),
            event("b", "thing.updated", thing_id="t2"),
            event("b", "bootstrap.imported", project_id="p2", counts={"things": 5}),
            event("a", "thing.updated", thing_id="t1"),
        ]:
            await store.append([e])
        runner = ProjectionRunner(store, str(tmp_path / "rm.db"), [AuditProjection()], page=3)
        await runner.open()
        try:
            assert await runner.catch_up() == 11
            live = entries(tmp_path / "rm.db")
            assert [(r[0], r[3], r[4], r[12]) for r in live] == [
                (1, "p1", "bootstrap.imported", 5),
                (2, "p2", "bootstrap.imported", 4),
                (5, None, "thing.deleted", 1),
                (8, None, "thing.created", 1),
            ]
            assert await runner.rebuild() == 11
            assert entries(tmp_path / "rm.db") == live
            await store.append([event("b", "thing.updated", thing_id="t2")])  # the live fold goes on
            assert await runner.catch_up() == 12
            assert entries(tmp_path / "rm.db")[1][12] == 5
        finally:
            await runner.close()
