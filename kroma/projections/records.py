"""Read models of a project's records (style guides, characters, prompt templates, reference sets
and items, provider accounts): one table per `RecordKind`, and the queries the API needs.

A table's columns are the record's key, `project_id`, its scope and fields, `created_at` /
`updated_at` (second precision, from the events' `recorded_at`) and `position`, the log position of
the last event that changed the row. Lists order newest first by `updated_at`, and rows changed in
the same second by `position`, so the order is deterministic and survives a rebuild. JSON fields
(`*_json`) are stored as JSON text with sorted keys and returned parsed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import msgspec

from kroma.clock import to_seconds
from kroma.domain import characters, prompt_templates, provider_accounts, reference_sets, style_guides
from kroma.domain.records import RecordKind
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

NEWEST_FIRST = "updated_at DESC, position DESC"
_json = msgspec.json.Encoder(order="sorted")


def _is_json(name: str) -> bool:
    return name.endswith("_json")


def parse_json(text: str | None) -> Any:
    """A stored JSON column; missing or unparsable comes back as {} (contract §3.0)."""
    try:
        return msgspec.json.decode(text) if text else {}
    except msgspec.DecodeError:
        return {}


class RecordProjection:
    version = 1

    def __init__(self, kind: RecordKind, order: str, key_column: str = "id") -> None:
        self.kind = kind
        self.name = self.table = kind.collection
        self.tables = (kind.collection,)
        self.order = order
        self.key_column = key_column
        self.handles = frozenset(kind.event_type(v) for v in ("created", "replaced", "updated", "deleted"))
        self.flags = tuple(f for f in kind.fields if isinstance(kind.defaults.get(f), bool))
        self.json_fields = tuple(f for f in kind.fields if _is_json(f))
        self.columns = (key_column, "project_id", *kind.scope, *kind.fields, "created_at", "updated_at")
        self.schema = self._schema()
        self._prepare_statements()

    def _schema(self) -> str:
        def column(name: str) -> str:
            numeric = not self.kind.is_text(name) and not _is_json(name)
            return f"{name} {'INTEGER' if numeric else 'TEXT'} NOT NULL"

        scope = "".join(f", {s}" for s in self.kind.scope)
        columns = ",\n        ".join(column(c) for c in self.columns)
        return f"""
    CREATE TABLE {self.table} (
        {columns},
        position INTEGER NOT NULL,
        PRIMARY KEY (project_id, {self.key_column})
    );
    CREATE INDEX {self.table}_by_scope ON {self.table} (project_id{scope}, updated_at)
    """

    def _stored(self, name: str, value: Any) -> Any:
        if _is_json(name):
            return _json.encode(value).decode()
        if name in self.flags:
            return int(bool(value))
        return value

    def _store_as(self, name: str) -> Callable[[Any], Any]:
        if _is_json(name):
            return lambda value: _json.encode(value).decode()
        if name in self.flags:
            return lambda value: int(bool(value))
        return lambda value: value

    def _prepare_statements(self) -> None:
        kind = self.kind
        self._where = f"project_id = ? AND {self.key_column} = ?"
        marks = ",".join("?" * (len(self.columns) + 1))
        self._insert = f"INSERT INTO {self.table} ({', '.join(self.columns)}, position) VALUES ({marks})"
        self._delete = f"DELETE FROM {self.table} WHERE {self._where}"
        self._updates: dict[tuple[str, ...], str] = {}
        self._convert = {f: self._store_as(f) for f in kind.fields}
        self._created_fields = tuple((f, kind.defaults.get(f, ""), self._convert[f]) for f in kind.fields)
        self._verbs = {kind.event_type(v): v for v in ("created", "replaced", "updated", "deleted")}

    def _created(self, event: Event) -> list[Any]:
        d, at = event.data, to_seconds(event.recorded_at)
        return [
            d[self.kind.id_key],
            d["project_id"],
            *(d[s] for s in self.kind.scope),
            *(convert(d.get(f, default)) for f, default, convert in self._created_fields),
            at,
            at,
            event.position,
        ]

    def apply_many(self, db: sqlite3.Connection, events: list[Event]) -> None:
        """The rows `apply` leaves event by event; a run of creations is one statement."""
        created: list[list[Any]] = []
        verbs = self._verbs
        for event in events:
            if verbs[event.type] == "created":
                created.append(self._created(event))
                continue
            if created:
                db.executemany(self._insert, created)
                created = []
            self.apply(db, event)
        if created:
            db.executemany(self._insert, created)

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d, kind = event.data, self.kind
        verb = self._verbs[event.type]
        at = to_seconds(event.recorded_at)
        if verb == "created":
            db.execute(self._insert, self._created(event))
        elif verb == "deleted":
            db.execute(self._delete, (d["project_id"], d[kind.id_key]))
        else:  # replaced / updated: the event carries the new value of every field it names
            changed = tuple(f for f in kind.fields if f in d)
            sql = self._updates.get(changed)
            if sql is None:
                sets = "".join(f"{f} = ?, " for f in changed)
                sql = self._updates[changed] = (
                    f"UPDATE {self.table} SET {sets}updated_at = ?, position = ? WHERE {self._where}"
                )
            convert = self._convert
            db.execute(
                sql,
                (*(convert[f](d[f]) for f in changed), at, event.position, d["project_id"], d[kind.id_key]),
            )

    # -- queries ----------------------------------------------------------------------------------

    def view(self, row: dict[str, Any]) -> dict[str, Any]:
        """The contract's API object of a row."""
        out = {c: row[c] for c in self.columns}
        for name in self.json_fields:
            out[name] = parse_json(out[name])
        for name in self.flags:
            out[name] = bool(out[name])
        return out

    async def all(self, rm: ReadModels, project_id: str, **scope: str) -> list[dict[str, Any]]:
        where = "".join(f" AND {s} = ?" for s in scope)
        rows = await rm.all(
            f"SELECT * FROM {self.table} WHERE project_id = ?{where} ORDER BY {self.order}",
            (project_id, *scope.values()),
        )
        return [self.view(r) for r in rows]

    async def one(self, rm: ReadModels, project_id: str, key: str, **scope: str) -> dict[str, Any] | None:
        where = "".join(f" AND {s} = ?" for s in scope)
        row = await rm.one(
            f"SELECT * FROM {self.table} WHERE project_id = ? AND {self.key_column} = ?{where}",
            (project_id, key, *scope.values()),
        )
        return None if row is None else self.view(row)


STYLE_GUIDES = RecordProjection(style_guides.KIND, NEWEST_FIRST)
CHARACTERS = RecordProjection(characters.KIND, NEWEST_FIRST)
PROMPT_TEMPLATES = RecordProjection(prompt_templates.KIND, NEWEST_FIRST)
REFERENCE_SETS = RecordProjection(reference_sets.KIND, NEWEST_FIRST)
REFERENCE_SET_ITEMS = RecordProjection(reference_sets.ITEM_KIND, f"sort_order ASC, {NEWEST_FIRST}")
PROVIDER_ACCOUNTS = RecordProjection(provider_accounts.KIND, "provider_code ASC", key_column="provider_code")


def record_projections() -> list[RecordProjection]:
    return [
        STYLE_GUIDES,
        CHARACTERS,
        PROMPT_TEMPLATES,
        REFERENCE_SETS,
        REFERENCE_SET_ITEMS,
        PROVIDER_ACCOUNTS,
    ]
