"""Records a project owns (style guides, characters, prompt templates, reference sets and their
items, provider accounts): the shared shape of their values, decisions and evolvers.

A `RecordKind` describes one entity: its body fields in the contract's order, which text fields
are required, and the defaults of its non-text fields. From it come

- `create_values` / `update_patch` (checks that need no state, so they run before any lookup),
  `check_patch` (required text must not be blanked; runs after the lookup);
- the decisions for records with a per-project, case-sensitive unique name (`decide_create`,
  `decide_update`, `decide_delete`);
- the evolvers (`register`): `<entity>.created|replaced|updated|deleted` keep
  `state.items(kind.collection)` as a dict key -> field values.

Event data is `{"project_id", <kind.key>, **fields}`; `updated` carries only the changed fields.
Text is stored trimmed, with "" for an absent optional value (the contract never returns null).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from kroma.domain.aggregate import ProjectState, evolves, project_stream
from kroma.domain.errors import NotFound, ValidationError, at_least_one, required
from kroma.events.envelope import Metadata, NewEvent


@dataclass(frozen=True)
class RecordKind:
    entity: str  # event type prefix and response key: "style_guide"
    collection: str  # ProjectState collection and read-model table: "style_guides"
    title: str  # "Style guide" -> "Style guide not found", "Style guide name already exists"
    fields: tuple[str, ...]  # body fields, in the order "Provide at least one of: ..." lists them
    required: frozenset[str] = frozenset()  # text that must be non-empty
    defaults: Mapping[str, Any] = field(default_factory=dict)  # non-text fields -> create default
    scope: tuple[str, ...] = ()  # fixed at creation, not body fields (an item's reference_set_id)
    key: str = ""  # the data key of the record's identity; "<entity>_id" when empty

    @property
    def id_key(self) -> str:
        return self.key or f"{self.entity}_id"

    @property
    def not_found(self) -> str:
        return f"{self.title} not found"

    @property
    def duplicate(self) -> str:
        return f"{self.title} name already exists"

    def event_type(self, verb: str) -> str:
        return f"{self.entity}.{verb}"

    def is_text(self, name: str) -> bool:
        return name not in self.defaults


# -- values (no state needed) ---------------------------------------------------------------------

INT64 = (-(2**63), 2**63 - 1)
# serde_json's recursion limit: the reference cannot parse a body whose arrays/objects nest this many
# levels deep (the body object is level 1), so such a body never reaches its handlers.
MAX_JSON_DEPTH = 128
BODY_NOT_JSON = "Request body is not valid JSON"  # worded like kroma.http.errors


def _is_json_field(name: str) -> bool:
    return name.endswith("_json")


def _nests_too_deep(value: Any, depth: int) -> bool:
    """Whether `value`, at nesting level `depth`, holds an array/object at MAX_JSON_DEPTH. Iterative,
    so any depth the decoder could build is safe to ask about."""
    stack = [(value, depth)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            if level >= MAX_JSON_DEPTH:
                return True
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def check_decodable(kind: RecordKind, cmd: msgspec.Struct) -> None:
    """What the reference's JSON decoder refuses before any handler check: an integer field beyond
    i64, a JSON field nested too deep. Either would also be an event no read model can fold (SQLite
    integers are 64-bit; the projections recurse), so it must never reach the log."""
    for name in kind.fields:
        value = getattr(cmd, name)
        if _is_json_field(name) and _nests_too_deep(value, 2):
            raise ValidationError(BODY_NOT_JSON)
        if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            raise ValidationError(f"Field '{name}' must be a 64-bit integer")


def _clean(kind: RecordKind, name: str, value: Any) -> Any:
    return value.strip() if kind.is_text(name) else value


def create_values(kind: RecordKind, cmd: msgspec.Struct) -> dict[str, Any]:
    """Every field of a new record: trimmed text (required ones non-empty, checked in field
    order), defaults for what is absent (JSON null counts as absent)."""
    check_decodable(kind, cmd)
    values: dict[str, Any] = {}
    for name in kind.fields:
        raw = getattr(cmd, name)
        if not kind.is_text(name):
            values[name] = copy.deepcopy(kind.defaults[name]) if raw is None else raw
            continue
        values[name] = (raw or "").strip()
        if name in kind.required and not values[name]:
            raise required(name)
    return values


def update_patch(kind: RecordKind, cmd: msgspec.Struct) -> dict[str, Any]:
    """The provided fields of a partial update (null counts as absent), text trimmed. Nothing
    provided is the contract's "Provide at least one of" 400, before any lookup."""
    check_decodable(kind, cmd)
    patch = {
        name: _clean(kind, name, getattr(cmd, name)) for name in kind.fields if getattr(cmd, name) is not None
    }
    if not patch:
        raise at_least_one(*kind.fields)
    return patch


def check_patch(kind: RecordKind, patch: Mapping[str, Any]) -> None:
    """A required text field may be changed but not blanked (checked after the lookups)."""
    for name in kind.fields:
        if name in kind.required and patch.get(name) == "":
            raise required(name)


# -- decisions for records with a unique name ------------------------------------------------------


def find(kind: RecordKind, state: ProjectState, key: str) -> dict[str, Any]:
    record = state.items(kind.collection).get(key)
    if record is None:
        raise NotFound(kind.not_found)
    return record


def _ensure_unique_name(
    kind: RecordKind, state: ProjectState, name: str, own_key: str | None, names: Mapping[str, str] | None
) -> None:
    """Case-sensitive, like the reference. `names` (name -> key of the collection, kept by a
    caller deciding many records at once, such as the bootstrap import) makes it one lookup."""
    if names is not None:
        holder = names.get(name)
        if holder is not None and holder != own_key:
            raise ValidationError(kind.duplicate)
        return
    if any(key != own_key for key in state.named(kind.collection).get(name, ())):
        raise ValidationError(kind.duplicate)


def name_index(kind: RecordKind, state: ProjectState) -> dict[str, str]:
    """name -> key for the records of `kind`: the index `decide_create`/`decide_update` take."""
    return {record["name"]: key for key, record in state.items(kind.collection).items()}


def event(
    kind: RecordKind, verb: str, state: ProjectState, key: str, data: Mapping[str, Any], meta: Metadata
) -> NewEvent:
    """`<entity>.<verb>` on the project's stream, about the record at `key`."""
    return NewEvent(
        project_stream(state.id),
        kind.event_type(verb),
        {"project_id": state.id, kind.id_key: key, **data},
        meta,
    )


def decide_create(
    kind: RecordKind,
    state: ProjectState,
    values: Mapping[str, Any],
    new_id: str,
    meta: Metadata,
    names: Mapping[str, str] | None = None,
) -> NewEvent:
    _ensure_unique_name(kind, state, values["name"], None, names)
    return event(kind, "created", state, new_id, values, meta)


def decide_update(
    kind: RecordKind,
    state: ProjectState,
    key: str,
    patch: Mapping[str, Any],
    meta: Metadata,
    names: Mapping[str, str] | None = None,
) -> NewEvent:
    find(kind, state, key)
    check_patch(kind, patch)
    if "name" in patch:
        _ensure_unique_name(kind, state, patch["name"], key, names)
    return event(kind, "updated", state, key, patch, meta)


def decide_delete(kind: RecordKind, state: ProjectState, key: str, meta: Metadata) -> NewEvent:
    find(kind, state, key)
    return event(kind, "deleted", state, key, {}, meta)


# -- evolvers ----------------------------------------------------------------------------------------


def register(kind: RecordKind) -> RecordKind:
    """Fold the kind's events into `state.items(kind.collection)`. Every evolver is an assignment,
    so folding an already-applied suffix of the stream again leaves the same state."""

    def values(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k not in ("project_id", kind.id_key)}

    def rename(state: ProjectState, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Keep `state.named(...)` in step with a record going from `old` to `new` (None: absent)."""
        before, after = (old or {}).get("name"), (new or {}).get("name")
        if before == after and old is not None:
            return
        names = state.named(kind.collection)
        if before is not None and (holders := names.get(before)) is not None:
            holders.discard(key)
            if not holders:
                del names[before]
        if after is not None:
            names.setdefault(after, set()).add(key)

    @evolves(kind.event_type("created"), kind.event_type("replaced"))
    def _set(state: ProjectState, d: dict[str, Any], _e: Any) -> None:
        rows, key = state.items(kind.collection), d[kind.id_key]
        old, rows[key] = rows.get(key), values(d)
        rename(state, key, old, rows[key])

    @evolves(kind.event_type("updated"))
    def _update(state: ProjectState, d: dict[str, Any], _e: Any) -> None:
        key = d[kind.id_key]
        record = state.items(kind.collection).get(key)
        if record is not None:
            old = {"name": record.get("name")} if "name" in record else None
            record.update(values(d))
            rename(state, key, old, record)

    @evolves(kind.event_type("deleted"))
    def _delete(state: ProjectState, d: dict[str, Any], _e: Any) -> None:
        key = d[kind.id_key]
        rename(state, key, state.items(kind.collection).pop(key, None), None)

    return kind
