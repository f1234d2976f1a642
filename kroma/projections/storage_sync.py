"""Read model of S3 sync (pipeline spec §8.3): what each key last received, each sync, and the runs
whose post-run sync is still due; and the queries the sync and the engine need.

- `s3_objects`: one row per (project, endpoint, bucket, key): the last `asset.synced` of that key
  (its sha256 decides whether a later sync sends the file again).
- `s3_syncs`: one row per sync: started, then completed or failed, with its counters.
- `run_s3_syncs`: a run in mode `run` that asked for `storage_sync_s3`: `requested` until the run
  ends, then `due` once `run.completed` is in (a failed or canceled run gets no sync, §4.9), then
  `ok` / `failed` with the run's sync outcome.

Everything comes from the events (data, position, recorded_at), so a rebuild is identical.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from kroma.clock import to_seconds
from kroma.domain import runs as ev
from kroma.domain import storage_sync as sync
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels


class StorageSyncProjection:
    name = "storage_sync"
    version = 1
    tables = ("s3_objects", "s3_syncs", "run_s3_syncs")
    handles = frozenset(
        {
            sync.SYNC_STARTED,
            sync.ASSET_SYNCED,
            *sync.SYNC_ENDS,
            *sync.RUN_SYNC_OUTCOMES,
            ev.RUN_REQUESTED,
            *ev.RUN_ENDS,
        }
    )
    schema = """
    CREATE TABLE s3_objects (
        project_id TEXT NOT NULL,
        endpoint_url TEXT NOT NULL,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        etag TEXT NOT NULL,
        size INTEGER NOT NULL,
        asset_ids TEXT NOT NULL,
        sync_id TEXT NOT NULL,
        synced_at TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (project_id, endpoint_url, bucket, key)
    );
    CREATE TABLE s3_syncs (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        trigger TEXT NOT NULL,
        run_id TEXT,
        status TEXT NOT NULL,
        files INTEGER NOT NULL,
        bytes_planned INTEGER NOT NULL,
        uploaded INTEGER NOT NULL,
        skipped INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        position INTEGER NOT NULL
    );
    CREATE INDEX s3_syncs_by_project ON s3_syncs (project_id, position);
    CREATE TABLE run_s3_syncs (
        run_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        status TEXT NOT NULL,
        position INTEGER NOT NULL
    )
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        if event.type == sync.ASSET_SYNCED:
            db.execute(
                "INSERT OR REPLACE INTO s3_objects VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    d["project_id"],
                    d["endpoint_url"],
                    d["bucket"],
                    d["key"],
                    d["path"],
                    d["sha256"],
                    d["etag"],
                    d["size"],
                    ",".join(d.get("asset_ids") or ()),
                    d["sync_id"],
                    at,
                    event.position,
                ),
            )
            db.execute(
                "UPDATE s3_syncs SET uploaded = uploaded + 1, bytes = bytes + ? WHERE id = ?", (d["size"], d["sync_id"])
            )
        elif event.type == sync.SYNC_STARTED:
            db.execute(
                "INSERT OR IGNORE INTO s3_syncs VALUES (?,?,?,?,?,'running',?,?,0,?,0,NULL,?,NULL,?)",
                (
                    d["sync_id"],
                    d["project_id"],
                    d["destination"],
                    d["trigger"],
                    d.get("run_id"),
                    d["files"],
                    d["bytes"],
                    d["skipped"],
                    at,
                    event.position,
                ),
            )
        elif event.type in sync.SYNC_ENDS:
            db.execute(
                "UPDATE s3_syncs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                (d["status"], d.get("error"), at, d["sync_id"]),
            )
        else:
            self._run(db, event)

    @staticmethod
    def _run(db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        if event.type == ev.RUN_REQUESTED:
            if d.get("mode") == "run" and d.get("storage_sync_s3"):
                db.execute(
                    "INSERT OR IGNORE INTO run_s3_syncs VALUES (?,?,'requested',?)",
                    (d["run_id"], d["project_id"], event.position),
                )
            return
        status = {
            ev.RUN_COMPLETED: "due",
            ev.RUN_FAILED: "skipped",
            ev.RUN_CANCELED: "skipped",
            sync.RUN_STORAGE_SYNCED: "ok",
            sync.RUN_STORAGE_SYNC_FAILED: "failed",
        }[event.type]
        db.execute("UPDATE run_s3_syncs SET status = ? WHERE run_id = ?", (status, d["run_id"]))


# -- queries -------------------------------------------------------------------------------------


async def synced_objects(rm: ReadModels, project_id: str, endpoint_url: str, bucket: str) -> dict[str, str]:
    """key -> sha256 of the last upload of every key of the project at that endpoint and bucket."""
    rows = await rm.all(
        "SELECT key, sha256 FROM s3_objects WHERE project_id = ? AND endpoint_url = ? AND bucket = ?",
        (project_id, endpoint_url, bucket),
    )
    return {r["key"]: r["sha256"] for r in rows}


async def due_run_syncs(rm: ReadModels) -> list[str]:
    """Runs that completed and asked for a post-run sync that has no outcome yet, oldest first."""
    rows = await rm.all("SELECT run_id FROM run_s3_syncs WHERE status = 'due' ORDER BY position", ())
    return [r["run_id"] for r in rows]


def sync_view(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "destination", "trigger", "status", "files", "uploaded", "skipped", "bytes", "started_at")
    view = {k: row[k] for k in keys}
    view.update(run_id=row["run_id"] or "", error=row["error"] or "", finished_at=row["finished_at"] or "")
    return view


async def find_sync(rm: ReadModels, sync_id: str) -> dict[str, Any] | None:
    row = await rm.one("SELECT * FROM s3_syncs WHERE id = ?", (sync_id,))
    return sync_view(row) if row else None


async def list_objects(rm: ReadModels, project_id: str, limit: int) -> list[dict[str, Any]]:
    """The project's synced objects (what each key last received), newest upload first."""
    rows = await rm.all(
        "SELECT * FROM s3_objects WHERE project_id = ? ORDER BY position DESC LIMIT ?", (project_id, limit)
    )
    return [
        {
            "key": r["key"],
            "bucket": r["bucket"],
            "endpoint_url": r["endpoint_url"],
            "path": r["path"],
            "sha256": r["sha256"],
            "etag": r["etag"],
            "size": r["size"],
            "asset_ids": [a for a in r["asset_ids"].split(",") if a],
            "sync_id": r["sync_id"],
            "synced_at": r["synced_at"],
        }
        for r in rows
    ]
