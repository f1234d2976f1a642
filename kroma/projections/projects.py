"""Read model of projects and their storage settings, and the queries the API needs."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from kroma.clock import to_seconds
from kroma.domain.projects import DEFAULT_S3_PREFIX
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

STORAGE_COLUMNS = (
    "local_base_dir",
    "local_project_root",
    "s3_enabled",
    "s3_bucket",
    "s3_prefix",
    "s3_region",
    "s3_profile",
    "s3_endpoint_url",
)


class ProjectsProjection:
    name = "projects"
    version = 1
    tables = ("projects", "project_storage")
    handles = frozenset({"project.created", "project.updated", "storage.local_updated", "storage.s3_updated"})
    schema = """
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        slug TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        status TEXT NOT NULL,
        owner_username TEXT NOT NULL,
        owner_display_name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        position INTEGER NOT NULL
    );
    CREATE TABLE project_storage (
        project_id TEXT PRIMARY KEY,
        local_base_dir TEXT NOT NULL,
        local_project_root TEXT,
        s3_enabled INTEGER NOT NULL,
        s3_bucket TEXT,
        s3_prefix TEXT,
        s3_region TEXT,
        s3_profile TEXT,
        s3_endpoint_url TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        if event.type == "project.created":
            db.execute(
                "INSERT INTO projects VALUES (?,?,?,?,'active',?,?,?,?,?)",
                (
                    d["project_id"],
                    d["slug"],
                    d["name"],
                    d["description"],
                    d["owner_username"],
                    d["owner_display_name"],
                    at,
                    at,
                    event.position,
                ),
            )
            s = d["storage"]
            db.execute(
                "INSERT INTO project_storage VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (d["project_id"], *(s[c] for c in STORAGE_COLUMNS), at, at),
            )
        elif event.type == "project.updated":
            db.execute(
                "UPDATE projects SET name=?, description=?, owner_display_name=?, status='active',"
                " updated_at=?, position=? WHERE id=?",
                (d["name"], d["description"], d["owner_display_name"], at, event.position, d["project_id"]),
            )
        else:  # storage.*_updated: the event carries the full new values of its half
            columns = [c for c in STORAGE_COLUMNS if c in d]
            sets = ", ".join(f"{c}=?" for c in columns)
            db.execute(
                f"UPDATE project_storage SET {sets}, updated_at=? WHERE project_id=?",
                (*(d[c] for c in columns), at, d["project_id"]),
            )


def project_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "slug": row["slug"], "name": row["name"]}


def project_detail(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "slug", "name", "description", "status", "created_at", "updated_at")
    return {k: row[k] for k in keys}


def resolve_storage(row: dict[str, Any], slug: str, workspace_root: str) -> dict[str, Any]:
    """The contract's resolved view: project_root is always absolute; S3 prefix has a default."""
    base_dir = row["local_base_dir"] or "var/projects"
    root = row["local_project_root"]
    if root:
        project_root = root if os.path.isabs(root) else os.path.join(workspace_root, root)
    else:
        base = base_dir if os.path.isabs(base_dir) else os.path.join(workspace_root, base_dir)
        project_root = os.path.join(base, slug)
    return {
        "local": {"base_dir": base_dir, "project_root": project_root},
        "s3": {
            "enabled": bool(row["s3_enabled"]),
            "bucket": row["s3_bucket"] or "",
            "prefix": row["s3_prefix"] or DEFAULT_S3_PREFIX,
            "region": row["s3_region"] or "",
            "profile": row["s3_profile"] or "",
            "endpoint_url": row["s3_endpoint_url"] or "",
        },
    }


_WITH_STORAGE = (
    "SELECT p.*, " + ", ".join(f"s.{c}" for c in STORAGE_COLUMNS) + " FROM projects p"
    " JOIN project_storage s ON s.project_id = p.id"
)
_COUNTS = (
    "(SELECT count(*) FROM runs WHERE project_id = p.id) AS count_runs,"
    " (SELECT count(*) FROM run_jobs WHERE project_id = p.id) AS count_jobs,"
    " (SELECT count(*) FROM assets WHERE project_id = p.id) AS count_assets"
)


async def find_project(rm: ReadModels, project_id: str) -> dict[str, Any] | None:
    """The project's row with its storage columns (for `resolve_storage`), in one statement."""
    return await rm.one(f"{_WITH_STORAGE} WHERE p.id = ?", (project_id,))


async def find_project_by_slug(rm: ReadModels, slug: str, counts: bool = False) -> dict[str, Any] | None:
    """`find_project` by (normalised) slug; with `counts`, also `count_runs`, `count_jobs` and
    `count_assets`."""
    select = _WITH_STORAGE.replace("p.*, ", f"p.*, {_COUNTS}, ", 1) if counts else _WITH_STORAGE
    return await rm.one(f"{select} WHERE p.slug = ?", (slug,))


def detail_counts(row: dict[str, Any]) -> dict[str, int]:
    return {"runs": row["count_runs"], "jobs": row["count_jobs"], "assets": row["count_assets"]}


_LIST_ITEM = "id, slug, name, description, status, created_at, updated_at, owner_username AS username"


async def list_projects(rm: ReadModels, username: str | None) -> list[dict[str, Any]]:
    """The API's project list items (`project_list_item` of each row), newest first."""
    where, params = ("WHERE owner_username = ?", (username,)) if username else ("", ())
    return await rm.all(
        f"SELECT {_LIST_ITEM} FROM projects {where} ORDER BY updated_at DESC, created_at DESC, position DESC",
        params,
    )
