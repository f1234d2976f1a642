"""Read model of asset links and the API's queries (contract §3.6)."""

from __future__ import annotations

import sqlite3
from typing import Any

from kroma.clock import to_seconds
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

FIELDS = ("id", "project_id", "parent_asset_id", "child_asset_id", "link_type", "created_at", "updated_at")


class AssetLinksProjection:
    name = "asset_links"
    version = 1
    tables = ("asset_links",)
    handles = frozenset({"asset_link.created", "asset_link.updated", "asset_link.deleted"})
    schema = """
    CREATE TABLE asset_links (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        parent_asset_id TEXT NOT NULL,
        child_asset_id TEXT NOT NULL,
        link_type TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        position INTEGER NOT NULL
    );
    CREATE INDEX asset_links_by_project ON asset_links (project_id, updated_at)
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        if event.type == "asset_link.created":
            db.execute(
                "INSERT INTO asset_links VALUES (?,?,?,?,?,?,?,?)",
                (
                    d["link_id"],
                    d["project_id"],
                    d["parent_asset_id"],
                    d["child_asset_id"],
                    d["link_type"],
                    at,
                    at,
                    event.position,
                ),
            )
        elif event.type == "asset_link.updated":
            db.execute(
                "UPDATE asset_links SET parent_asset_id = ?, child_asset_id = ?, link_type = ?,"
                " updated_at = ?, position = ? WHERE id = ?",
                (d["parent_asset_id"], d["child_asset_id"], d["link_type"], at, event.position, d["link_id"]),
            )
        else:
            db.execute("DELETE FROM asset_links WHERE id = ?", (d["link_id"],))


def link_view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in FIELDS}


async def list_links(
    rm: ReadModels, project_id: str, asset_id: str | None, link_type: str | None
) -> list[dict[str, Any]]:
    sql = "SELECT * FROM asset_links WHERE project_id = ?"
    params: list[Any] = [project_id]
    if asset_id:
        sql += " AND (parent_asset_id = ? OR child_asset_id = ?)"
        params += [asset_id, asset_id]
    if link_type:
        sql += " AND link_type = ?"
        params.append(link_type)
    rows = await rm.all(sql + " ORDER BY updated_at DESC, position DESC", params)
    return [link_view(r) for r in rows]


async def find_link(rm: ReadModels, project_id: str, link_id: str) -> dict[str, Any] | None:
    row = await rm.one("SELECT * FROM asset_links WHERE id = ? AND project_id = ?", (link_id, project_id))
    return link_view(row) if row else None
