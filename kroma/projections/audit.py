"""The audit trail: one entry per command, read from the event log.

Every event in the log is a recorded mutation, with its actor (user and token id) in the
metadata. Entries group a command's events by correlation id (every command gets one from
`Commands.execute`; an event appended without one is its own entry):

- the entry is keyed by the command's FIRST event: its position, its event id (= the `audit_id`
  the mutating routes return), its type, entity and summary;
- `event_count` counts the command's events; the entry's project is the first project any of them
  names;
- a command that appends a summary event (`SUMMARY_TYPES`, e.g. `bootstrap.imported`, whose data
  carries the import's change counts) is shown by that event's type, entity and summary instead,
  so a bootstrap import of many events is ONE entry with its counts.

Summaries are built per event type from an allow-list of safe fields (ids, names, codes,
statuses, counters); secret values, ciphertext, key ids and token hashes never appear. All of it
is derived from the events (positions, recorded_at), so a rebuild reproduces the table exactly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

SUMMARY_TYPES = frozenset({"bootstrap.imported"})

# Never in a summary, at any depth.
DENIED = frozenset({"ciphertext", "token_hash", "token", "secret_value", "value", "key_id", "wrapped"})

# Scalar fields safe to show (plus every `*_id` field but key_id).
SAFE = frozenset(
    {
        "slug",
        "name",
        "title",
        "label",
        "provider_code",
        "secret_name",
        "status",
        "role",
        "mode",
        "dry_run",
        "link_type",
        "enabled",
        "updated",
        "format",
        "kind",
        "token_prefix",
        "expires_at",
        "generation",
        "from_key_ref",
        "target_key_ref",
        "key_ref",
        "force",
        "scanned",
        "rotated",
        "skipped_empty",
        "skipped_current_key_ref",
        "plaintext_reencrypted",
        "owner_username",
    }
)

_ENTITY_ALIASES = {
    "project_slug": "project",
    "storage": "project_storage",
    "bootstrap": "project",
    "secrets": "project_secrets",
}
_PROJECT_LEVEL = frozenset({"project", "project_storage", "project_secrets"})
_NOT_ENTITY_IDS = frozenset({"project_id", "user_id", "key_id", "entry_id"})


def _counts_only(value: Any) -> bool:
    """A JSON structure of numbers and booleans only (change counts): safe at any depth.
    Walked with an explicit stack, so no nesting depth in event data can break the fold."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool | int | float):
            continue
        if isinstance(item, Mapping):
            if any(k in DENIED for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            return False
    return True


_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})
_SHOWN_KEYS: dict[str, bool] = {}  # key -> whether a scalar under it is shown (remembered per key)


def _shown(key: str) -> bool:
    shown = key not in DENIED and (key in SAFE or (key.endswith("_id") and key != "key_id"))
    if len(_SHOWN_KEYS) < 10_000:
        _SHOWN_KEYS[key] = shown
    return shown


def _generic_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        kind = type(value)
        if kind in _PLAIN_SCALARS:
            shown = _SHOWN_KEYS.get(key)
            if shown is None:
                shown = _shown(key)
            if shown:
                out[key] = value
        elif key in DENIED:
            continue
        elif kind is dict or kind is list or isinstance(value, Mapping | list):
            if value and _counts_only(value):
                out[key] = value
        elif isinstance(value, str | int | float | bool) and _shown(key):
            out[key] = value
    return out


def _pick(*keys: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda d: {k: d.get(k) for k in keys}


# Event types whose data holds secret material get an explicit summary (never the generic one).
SUMMARIES: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "secret.set": _pick("provider_code", "secret_name", "key_ref"),
    "secret.declared": _pick("provider_code", "secret_name"),
    # The contract's delete payload: the path's own spelling (schema v2; v1 events are upcast).
    "secret.deleted": lambda d: {"provider_code": d["path_provider_code"], "secret_name": d["path_secret_name"]},
    "secrets.rotated": _pick(
        "from_key_ref",
        "force",
        "target_key_ref",
        "scanned",
        "rotated",
        "skipped_empty",
        "skipped_current_key_ref",
        "plaintext_reencrypted",
    ),
    "token.created": _pick("token_prefix", "label", "project_id", "expires_at"),
    "token.revoked": _pick("token_id"),
    "token.bootstrap_reserved": _pick("generation", "token_id"),
}


_ENTITY_RULES: dict[str, tuple[str, str, tuple[str, ...]]] = {}


def _entity_rule(type_: str) -> tuple[str, str, tuple[str, ...]]:
    """(entity type, how its id is found, the keys to try) for an event type (remembered)."""
    rule = _ENTITY_RULES.get(type_)
    if rule is None:
        prefix = type_.split(".", 1)[0]
        entity = _ENTITY_ALIASES.get(prefix, prefix)
        if prefix == "secret":
            how = "secret"
        elif prefix == "provider_account":
            how = "provider_code"
        elif entity in _PROJECT_LEVEL:
            how = "project_id"
        else:
            how = "keys"
        rule = (entity, how, (f"{prefix}_id", f"{prefix.rsplit('_', 1)[-1]}_id", "id"))
        if len(_ENTITY_RULES) < 10_000:
            _ENTITY_RULES[type_] = rule
    return rule


def _entity_id(d: Mapping[str, Any], how: str, keys: tuple[str, ...]) -> str | None:
    if how == "secret":
        return f"{d.get('provider_code')}/{d.get('secret_name')}"
    if how != "keys":
        return d.get(how)
    for key in keys:
        value = d.get(key)
        if isinstance(value, str):
            return value
    return next(
        (v for k, v in d.items() if k.endswith("_id") and k not in _NOT_ENTITY_IDS and isinstance(v, str)),
        None,
    )


def summarize(event: Event) -> tuple[str, str | None, dict[str, Any]]:
    """(entity_type, entity_id, summary) of one event, from safe fields only."""
    d = event.data
    entity, how, keys = _entity_rule(event.type)
    builder = SUMMARIES.get(event.type)
    summary = builder(d) if builder is not None else _generic_summary(d)
    return entity, _entity_id(d, how, keys), summary


class AuditProjection:
    name = "audit"
    version = 2
    tables = ("audit_entries",)
    handles = None
    schema = """
    CREATE TABLE audit_entries (
        position      INTEGER PRIMARY KEY,
        event_id      TEXT NOT NULL,
        group_id      TEXT NOT NULL,
        project_id    TEXT,
        type          TEXT NOT NULL,
        actor_user_id TEXT,
        token_id      TEXT,
        request_id    TEXT,
        recorded_at   TEXT NOT NULL,
        entity_type   TEXT NOT NULL,
        entity_id     TEXT,
        summary       TEXT NOT NULL,
        event_count   INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX audit_by_group ON audit_entries (group_id);
    CREATE INDEX audit_by_project ON audit_entries (project_id, position);
    CREATE INDEX audit_by_type ON audit_entries (type, position)
    """

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        self.apply_many(db, [event])

    def apply_many(self, db: sqlite3.Connection, events: list[Event]) -> None:
        """Fold a page: the rows folding it event by event would leave (the first event of a command
        inserts its entry, later ones count and may fill the project or set the summary), with one
        upsert per command: no lookup first, which at a million entries costs as much as the write."""
        counted, summarized = _entries(events)
        if counted:
            db.executemany(_UPSERT, counted)
        if summarized:
            db.executemany(_UPSERT_SUMMARY, summarized)

    def build_many(self, db: sqlite3.Connection, events: list[Event], state: dict[str, Any]) -> None:
        """`apply_many` in a rebuild's file before `audit_by_group` exists (see ProjectionRunner._create):
        each page's entries are inserted as they are, so a command whose events span pages has one
        partial row per page, and `finish_build` merges them into the entry `apply_many` leaves.
        Each row's command is also noted by hash in a temporary table (a file of SQLite's, so
        memory stays flat however long the log), to find those commands."""
        counted, summarized = _entries(events)
        rows = counted + summarized
        if not rows:
            return
        db.execute(_GROUPS)  # each time: a savepoint rolled back may have taken it away
        db.executemany(_INSERT, rows)
        db.executemany("INSERT INTO temp.audit_build VALUES (?, ?)", [(r[0], hash(r[2])) for r in rows])
        state.setdefault("summarized", set()).update(r[0] for r in summarized)

    def finish_build(self, db: sqlite3.Connection, state: dict[str, Any]) -> None:
        """Merge the partial rows `build_many` left for one command as the upserts would have: the
        first row stays, counts add up, the project is the first one named, and the last row that
        came from a summary event sets what the entry shows."""
        if db.execute("SELECT 1 FROM temp.sqlite_master WHERE name = 'audit_build'").fetchone() is None:
            return
        candidates = [
            position
            for (position,) in db.execute(
                "SELECT position FROM temp.audit_build WHERE hash IN"
                " (SELECT hash FROM temp.audit_build GROUP BY hash HAVING count(*) > 1)"
            )
        ]
        db.execute("DROP TABLE temp.audit_build")
        summarized: set[int] = state.get("summarized", set())
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for start in range(0, len(candidates), 500):
            chunk = candidates[start : start + 500]
            for row in db.execute(
                "SELECT position, group_id, project_id, type, entity_type, entity_id, summary, event_count"
                f" FROM audit_entries WHERE position IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                groups.setdefault(row[1], []).append(row)
        for rows in groups.values():
            if len(rows) < 2:
                continue  # a hash two commands share
            rows.sort()
            first = rows[0]
            shown = next((r for r in reversed(rows[1:]) if r[0] in summarized), first)
            db.execute(
                "UPDATE audit_entries SET project_id = ?, type = ?, entity_type = ?, entity_id = ?, summary = ?,"
                " event_count = ? WHERE position = ?",
                (
                    next((r[2] for r in rows if r[2] is not None), None),
                    *shown[3:7],
                    sum(r[7] for r in rows),
                    first[0],
                ),
            )
            db.executemany("DELETE FROM audit_entries WHERE position = ?", [(r[0],) for r in rows[1:]])


# A rebuild's note of which command each row belongs to (see build_many); TEMP: never in the file.
_GROUPS = "CREATE TEMP TABLE IF NOT EXISTS audit_build (position INTEGER PRIMARY KEY, hash INTEGER NOT NULL)"


def _entries(events: list[Event]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A page's entries, one row per command: (those shown by their first event, those shown by a
    summary event)."""
    groups: dict[str, list[Any]] = {}  # group -> [first event, count, project id, summary event]
    for event in events:
        group = event.metadata.correlation_id or event.event_id
        project_id = event.data.get("project_id")
        if type(project_id) is not str:
            project_id = project_id if isinstance(project_id, str) else None
        summary_event = event if event.type in SUMMARY_TYPES else None
        entry = groups.get(group)
        if entry is None:
            groups[group] = [event, 1, project_id, summary_event]
            continue
        entry[1] += 1
        if entry[2] is None:
            entry[2] = project_id
        if summary_event is not None:
            entry[3] = summary_event
    counted: list[tuple[Any, ...]] = []
    summarized: list[tuple[Any, ...]] = []
    for group, (first, count, project_id, summary_event) in groups.items():
        shown = summary_event or first
        entity, entity_id, summary = summarize(shown)
        meta = first.metadata
        row = (
            first.position,
            first.event_id,
            group,
            project_id,
            shown.type,
            meta.actor_user_id,
            meta.token_id,
            meta.request_id,
            first.recorded_at,
            entity,
            entity_id,
            _summary_text(summary),
            count,
        )
        (counted if summary_event is None else summarized).append(row)
    return counted, summarized


# A command's first event inserts its entry; the entry of a command seen before (in an earlier page)
# only counts the events and fills the project, and a summary event also sets what it shows.
_INSERT = "INSERT INTO audit_entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
_UPSERT = (
    _INSERT + " ON CONFLICT (group_id) DO UPDATE SET"
    " event_count = event_count + excluded.event_count, project_id = coalesce(project_id, excluded.project_id)"
)
_UPSERT_SUMMARY = (
    _UPSERT + ", type = excluded.type, entity_type = excluded.entity_type, entity_id = excluded.entity_id,"
    " summary = excluded.summary"
)

_summary_json = msgspec.json.Encoder(order="sorted")


def _summary_text(summary: dict[str, Any]) -> str:
    return _summary_json.encode(summary).decode()


def entry_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["event_id"],
        "position": row["position"],
        "type": row["type"],
        "project_id": row["project_id"],
        "actor_user_id": row["actor_user_id"],
        "token_id": row["token_id"],
        "request_id": row["request_id"],
        "created_at": row["recorded_at"][:19] + "Z",
        "recorded_at": row["recorded_at"],
        "entity_type": row["entity_type"],
        "entity_id": row["entity_id"],
        "summary": json.loads(row["summary"]),
        "event_count": row["event_count"],
    }


async def query_entries(
    rm: ReadModels,
    *,
    project_id: str | None,
    after: int,
    limit: int,
    types: list[str] | None,
    actors: list[str] | None,
    since: str | None,
    until: str | None,
) -> list[dict[str, Any]]:
    where = ["position > ?"]
    params: list[Any] = [after]
    if project_id is not None:
        where.append("project_id = ?")
        params.append(project_id)
    if types:
        where.append(f"type IN ({','.join('?' * len(types))})")
        params += types
    if actors:
        marks = ",".join("?" * len(actors))
        where.append(f"(actor_user_id IN ({marks}) OR token_id IN ({marks}))")
        params += actors + actors
    if since is not None:
        where.append("recorded_at >= ?")
        params.append(since)
    if until is not None:
        where.append("recorded_at <= ?")
        params.append(until)
    rows = await rm.all(
        f"SELECT * FROM audit_entries WHERE {' AND '.join(where)} ORDER BY position LIMIT ?", (*params, limit)
    )
    return [entry_view(r) for r in rows]
