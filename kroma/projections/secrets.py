"""Read model of project secrets: metadata only (no value, no ciphertext, no key id).

`value_state` (encrypted / plaintext / empty, see `kroma.domain.secrets.value_state`) is derived
from the event's ciphertext when the row is folded, so rotation-status can count without any
ciphertext being stored here; `has_value` is `value_state != 'empty'`.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from kroma.clock import to_seconds
from kroma.crypto.master_key import DEFAULT_KEY_REF
from kroma.domain.secrets import value_state
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels


class SecretsProjection:
    name = "secrets"
    version = 1
    tables = ("project_secrets",)
    handles = frozenset({"secret.set", "secret.declared", "secret.deleted", "secrets.rotated"})
    schema = """
    CREATE TABLE project_secrets (
        project_id    TEXT NOT NULL,
        provider_code TEXT NOT NULL,
        secret_name   TEXT NOT NULL,
        value_state   TEXT NOT NULL,
        key_ref       TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        PRIMARY KEY (project_id, provider_code, secret_name)
    )
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        if event.type == "secret.set":
            db.execute(
                "INSERT INTO project_secrets VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT (project_id, provider_code, secret_name) DO UPDATE SET"
                " value_state = excluded.value_state, key_ref = excluded.key_ref, updated_at = excluded.updated_at",
                (
                    d["project_id"],
                    d["provider_code"],
                    d["secret_name"],
                    value_state(d.get("ciphertext") or ""),
                    d.get("key_ref") or DEFAULT_KEY_REF,
                    at,
                    at,
                ),
            )
        elif event.type == "secret.declared":
            db.execute(
                "INSERT INTO project_secrets VALUES (?,?,?,'empty',?,?,?)"
                " ON CONFLICT (project_id, provider_code, secret_name) DO UPDATE SET updated_at = excluded.updated_at",
                (d["project_id"], d["provider_code"], d["secret_name"], DEFAULT_KEY_REF, at, at),
            )
        elif event.type == "secret.deleted":
            db.execute(
                "DELETE FROM project_secrets WHERE project_id = ? AND provider_code = ? AND secret_name = ?",
                (d["project_id"], d["provider_code"], d["secret_name"]),
            )
        else:  # secrets.rotated
            for entry in d["secrets"]:
                sets = "key_ref = ?, updated_at = ?"
                params: list[Any] = [d["target_key_ref"], at]
                if "ciphertext" in entry:
                    sets += ", value_state = ?"
                    params.append(value_state(entry["ciphertext"]))
                db.execute(
                    f"UPDATE project_secrets SET {sets}"
                    " WHERE project_id = ? AND provider_code = ? AND secret_name = ?",
                    (*params, d["project_id"], entry["provider_code"], entry["secret_name"]),
                )


def secret_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "project_id": row["project_id"],
        "provider_code": row["provider_code"],
        "secret_name": row["secret_name"],
        "has_value": row["value_state"] != "empty",
        "updated_at": row["updated_at"],
    }


async def list_secrets(rm: ReadModels, project_id: str) -> list[dict[str, Any]]:
    rows = await rm.all(
        "SELECT * FROM project_secrets WHERE project_id = ? ORDER BY provider_code, secret_name",
        (project_id,),
    )
    return [secret_view(r) for r in rows]


async def find_secret(rm: ReadModels, project_id: str, code: str, name: str) -> dict[str, Any] | None:
    row = await rm.one(
        "SELECT * FROM project_secrets WHERE project_id = ? AND provider_code = ? AND secret_name = ?",
        (project_id, code, name),
    )
    return None if row is None else secret_view(row)


async def rotation_status(rm: ReadModels, project_id: str) -> dict[str, Any]:
    counts = {"encrypted": 0, "plaintext": 0, "empty": 0}
    for row in await rm.all(
        "SELECT value_state, count(*) AS n FROM project_secrets WHERE project_id = ? GROUP BY value_state",
        (project_id,),
    ):
        counts[row["value_state"]] = row["n"]
    refs = await rm.all(
        "SELECT key_ref, count(*) AS count FROM project_secrets WHERE project_id = ?"
        " GROUP BY key_ref ORDER BY key_ref",
        (project_id,),
    )
    return {"total": sum(counts.values()), **counts, "key_refs": refs}
