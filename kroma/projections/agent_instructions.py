"""Read model of agent instructions and their event lists, and the API's queries (contract §3.16).

The `*_repeated` events (idempotent confirm/cancel) change nothing here: they are audit entries only.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from kroma.clock import to_seconds
from kroma.domain.agent_instructions import CANCELED, CONFIRMED, CREATED
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

EVENT_TYPES = {CREATED: "created", CONFIRMED: "confirmed", CANCELED: "canceled"}


class AgentInstructionsProjection:
    name = "agent_instructions"
    version = 1
    tables = ("agent_instructions", "agent_instruction_events")
    handles = frozenset(EVENT_TYPES)
    schema = """
    CREATE TABLE agent_instructions (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        instruction_text TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        confirmed_at TEXT,
        canceled_at TEXT,
        position INTEGER NOT NULL
    );
    CREATE INDEX agent_instructions_by_project ON agent_instructions (project_id, updated_at);
    CREATE TABLE agent_instruction_events (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        instruction_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        message TEXT,
        created_at TEXT NOT NULL,
        position INTEGER NOT NULL
    );
    CREATE INDEX agent_instruction_events_by_instruction
        ON agent_instruction_events (instruction_id, position)
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        if event.type == CREATED:
            db.execute(
                "INSERT INTO agent_instructions VALUES (?,?,?,?,?,?,NULL,NULL,?)",
                (
                    d["instruction_id"],
                    d["project_id"],
                    d["instruction_text"],
                    "pending",
                    at,
                    at,
                    event.position,
                ),
            )
        elif event.type == CONFIRMED:
            db.execute(
                "UPDATE agent_instructions SET status = 'confirmed', confirmed_at = ?, canceled_at = NULL,"
                " updated_at = ?, position = ? WHERE id = ?",
                (at, at, event.position, d["instruction_id"]),
            )
        else:
            db.execute(
                "UPDATE agent_instructions SET status = 'canceled', canceled_at = ?, updated_at = ?,"
                " position = ? WHERE id = ?",
                (at, at, event.position, d["instruction_id"]),
            )
        db.execute(
            "INSERT INTO agent_instruction_events VALUES (?,?,?,?,?,?,?)",
            (
                d["entry_id"],
                d["project_id"],
                d["instruction_id"],
                EVENT_TYPES[event.type],
                d.get("message"),
                at,
                event.position,
            ),
        )


INSTRUCTION_FIELDS = ("id", "project_id", "instruction_text", "status", "created_at", "updated_at")
EVENT_FIELDS = ("id", "project_id", "instruction_id", "event_type", "created_at")


def instruction_view(row: dict[str, Any]) -> dict[str, Any]:
    view = {k: row[k] for k in INSTRUCTION_FIELDS}
    view["confirmed_at"] = row["confirmed_at"] or ""
    view["canceled_at"] = row["canceled_at"] or ""
    return view


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row[k] for k in EVENT_FIELDS}, "message": row["message"] or ""}


async def list_instructions(rm: ReadModels, project_id: str) -> list[dict[str, Any]]:
    rows = await rm.all(
        "SELECT * FROM agent_instructions WHERE project_id = ? ORDER BY updated_at DESC, position DESC",
        (project_id,),
    )
    return [instruction_view(r) for r in rows]


async def find_instruction(rm: ReadModels, project_id: str, instruction_id: str) -> dict[str, Any] | None:
    row = await rm.one(
        "SELECT * FROM agent_instructions WHERE id = ? AND project_id = ?", (instruction_id, project_id)
    )
    return instruction_view(row) if row else None


async def list_events(rm: ReadModels, project_id: str, instruction_id: str) -> list[dict[str, Any]]:
    rows = await rm.all(
        "SELECT * FROM agent_instruction_events WHERE project_id = ? AND instruction_id = ? ORDER BY position",
        (project_id, instruction_id),
    )
    return [event_view(r) for r in rows]
