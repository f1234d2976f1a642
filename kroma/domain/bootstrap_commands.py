"""Bootstrap import as one command (contract §4.2): the plan's operations become the project's events.

`decide_import` plans the import (`bootstrap_import.plan_import`) against a snapshot of the project
and translates every operation into the event types the record routes already emit, so the existing
evolvers and read models fold an import like any other change:

| operation                        | events                                                              |
|----------------------------------|---------------------------------------------------------------------|
| ProjectUpdate / ProjectTouched   | one `project.updated` (name, description; bumps the project's time) |
| Delete                           | `<entity>.deleted`                                                  |
| ReferenceItemsPurged             | `reference_set_item.deleted` for every item, orphans included       |
| ProviderAccountUpsert            | `provider_account.created` / `.replaced` (every field)              |
| Style/Character/Template/Set     | `<entity>.created`, or `<entity>.updated` with every field          |
| ReferenceSetItemsReplaced        | `reference_set_item.deleted` per old item, `.created` per new one   |
| SecretMetadataCreated / Touched  | `secret.declared` (metadata only, never a value)                    |

The purge needs no event type of its own: the aggregate holds every item, orphans included, so it
is spelled as item deletions, and the reference-set-items read model (which owns its table) folds
them; a rebuild of that projection alone stays exact.

Every event is decided by the records modules' own decisions, each against a working copy of the
state that already has the earlier events of the batch folded in, so a batch that would break an
invariant (a duplicate name, a missing record) raises before anything is appended. The batch starts
with one `bootstrap.imported` event carrying the import's mode, `applied` and `changes` counts (no
setting values, never a secret): the import's audit entry, whose id is the response's `audit_id`.

The snapshot the plan reads is `snapshot_of_state`: every record's and secret's content from the
aggregate state the decision is checked against (so the expected-version guard covers exactly what
was read). The records' created_at / updated_at live only in the read models; they are taken from
there and only order rows and fill the response, they never decide an event.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from kroma.domain import (
    characters,
    prompt_templates,
    provider_accounts,
    records,
    reference_sets,
    secrets,
    style_guides,
)
from kroma.domain import projects as project_domain
from kroma.domain.aggregate import ProjectState, fold, project_stream
from kroma.domain.bootstrap_import import (
    CharacterUpsert,
    Delete,
    EntityKind,
    ImportPlan,
    ImportRequest,
    Operation,
    ProjectTouched,
    ProjectUpdate,
    PromptTemplateUpsert,
    ProviderAccountUpsert,
    ReferenceItemsPurged,
    ReferenceSetItemsReplaced,
    ReferenceSetUpsert,
    SecretMetadataCreated,
    SecretMetadataTouched,
    StyleGuideUpsert,
    plan_import,
)
from kroma.domain.records import RecordKind
from kroma.events.envelope import Event, Metadata, NewEvent

IMPORTED: Final = "bootstrap.imported"

KINDS: Final[dict[EntityKind, RecordKind]] = {
    "provider_account": provider_accounts.KIND,
    "style_guide": style_guides.KIND,
    "character": characters.KIND,
    "reference_set": reference_sets.KIND,
    "prompt_template": prompt_templates.KIND,
}

#: snapshot section -> (record kind, the key's name in an API object)
SECTION_KINDS: Final[dict[str, tuple[RecordKind, str]]] = {
    "provider_accounts": (provider_accounts.KIND, "provider_code"),
    "style_guides": (style_guides.KIND, "id"),
    "characters": (characters.KIND, "id"),
    "prompt_templates": (prompt_templates.KIND, "id"),
    "reference_sets": (reference_sets.KIND, "id"),
}
ITEM_KIND: Final = reference_sets.ITEM_KIND


class BootstrapImported(msgspec.Struct, frozen=True):
    """`bootstrap.imported`: an import happened. Counts only; the settings are in the events after it."""

    project_id: str
    mode: str
    applied: dict[str, int]
    changes: dict[str, Any]


# -- the snapshot the plan reads ----------------------------------------------------------------------

Stamps = tuple[str, str]  # (created_at, updated_at)


def _stamps(rows: list[dict[str, Any]], key: str) -> dict[str, Stamps]:
    return {row[key]: (row.get("created_at", ""), row.get("updated_at", "")) for row in rows}


def _row(
    key_name: str, key: str, project_id: str, fields: Mapping[str, Any], stamps: Mapping[str, Stamps]
) -> dict[str, Any]:
    created_at, updated_at = stamps.get(key, ("", ""))
    return {
        key_name: key,
        "project_id": project_id,
        **copy.deepcopy(dict(fields)),
        "created_at": created_at,
        "updated_at": updated_at,
    }


def _secret_row(project_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "provider_code": row["provider_code"],
        "secret_name": row["secret_name"],
        "has_value": secrets.value_state(row["ciphertext"]) != "empty",
        "updated_at": row["updated_at"],
    }


def snapshot_of_state(state: ProjectState, read: Mapping[str, Any]) -> dict[str, Any]:
    """The project's settings in snapshot shape (see `kroma.domain.bootstrap`), content from `state`.

    `read` is the read-model snapshot taken after the read models reached the state's version: it
    gives each record its created_at / updated_at (secrets carry theirs in the state). A row the
    read model does not show (it can only be ahead of `state`, and then the append is refused
    anyway) gets empty timestamps."""
    snapshot: dict[str, Any] = {
        "project": {"id": state.id, "slug": state.slug, "name": state.name, "description": state.description},
        "secrets": [_secret_row(state.id, row) for row in state.items(secrets.COLLECTION).values()],
    }
    for section, (kind, key_name) in SECTION_KINDS.items():
        stamps = _stamps(list(read.get(section) or ()), key_name)
        snapshot[section] = [
            _row(key_name, key, state.id, fields, stamps)
            for key, fields in state.items(kind.collection).items()
        ]
    read_items = [item for row in read.get("reference_sets") or () for item in row.get("items", ())]
    item_stamps = _stamps(read_items, "id")
    items: dict[str, list[dict[str, Any]]] = {row["id"]: [] for row in snapshot["reference_sets"]}
    for item_id, fields in state.items(ITEM_KIND.collection).items():
        if fields["reference_set_id"] in items:  # an orphan (its set deleted) belongs to no set
            items[fields["reference_set_id"]].append(_row("id", item_id, state.id, fields, item_stamps))
    for row in snapshot["reference_sets"]:
        row["items"] = items[row["id"]]
    return snapshot


# -- operations -> events -----------------------------------------------------------------------------


def _fields(kind: RecordKind, op: msgspec.Struct) -> dict[str, Any]:
    return {name: copy.deepcopy(getattr(op, name)) for name in kind.fields}


class _Batch:
    """The import's events, each decided against the state with the earlier ones already folded in."""

    def __init__(self, state: ProjectState, meta: Metadata, recorded_at: str) -> None:
        self.work = copy.deepcopy(state)  # the cached aggregate state is shared: never mutate it
        self.meta = meta
        self.recorded_at = recorded_at
        self.events: list[NewEvent] = []
        self.project_updated = False
        self._names: dict[str, dict[str, str]] = {}  # collection -> name -> key, kept as events fold

    def names(self, kind: RecordKind) -> dict[str, str]:
        """The unique-name index of a collection of the working state (built once, then kept up
        to date by `delete` and `upsert`), so each decision is one lookup: linear imports."""
        index = self._names.get(kind.collection)
        if index is None:
            index = self._names[kind.collection] = records.name_index(kind, self.work)
        return index

    def emit(self, event: NewEvent) -> None:
        pending = Event(
            position=0,
            event_id="",
            stream_id=event.stream_id,
            stream_version=0,
            type=event.type,
            schema_version=event.schema_version,
            data=event.data,
            metadata=event.metadata,
            recorded_at=self.recorded_at,
            hash="",
        )
        fold(self.work, [pending])
        self.events.append(event)

    def project(self, name: str, description: str) -> None:
        work = self.work
        target = project_domain.ProjectTarget(
            name, work.slug, description, work.owner_username, work.owner_display_name
        )
        events, _expected = project_domain.decide_upsert(target, work, work.id, self.meta)
        for event in events:
            self.emit(event)
        self.project_updated = True

    def delete(self, kind: RecordKind, key: str) -> None:
        name = self.work.items(kind.collection).get(key, {}).get("name")
        self.emit(records.decide_delete(kind, self.work, key, self.meta))
        index = self._names.get(kind.collection)
        if index is not None and name is not None and index.get(name) == key:
            del index[name]

    def upsert(self, kind: RecordKind, op: Any) -> None:
        fields = _fields(kind, op)
        names = self.names(kind)
        if op.created:
            self.emit(records.decide_create(kind, self.work, fields, op.id, self.meta, names))
        else:
            old = self.work.items(kind.collection).get(op.id, {}).get("name")
            self.emit(records.decide_update(kind, self.work, op.id, fields, self.meta, names))
            if old is not None and names.get(old) == op.id:
                del names[old]
        names[fields["name"]] = op.id

    def replace_items(self, op: ReferenceSetItemsReplaced) -> None:
        for item_id in op.removed_item_ids:
            self.emit(reference_sets.decide_delete_item(self.work, op.set_id, item_id, self.meta))
        for item in op.items:
            values = _fields(ITEM_KIND, item)
            self.emit(reference_sets.decide_create_item(self.work, op.set_id, values, item.id, self.meta))

    def declare_secret(self, provider_code: str, secret_name: str) -> None:
        """A new secret gets an empty value (has_value false); an existing one keeps its value."""
        self.emit(secrets.decide_declare(self.work, provider_code, secret_name, self.meta))

    def apply(self, op: Operation) -> None:
        if isinstance(op, ProjectUpdate):
            self.project(op.name, op.description)
        elif isinstance(op, ProjectTouched):
            if not self.project_updated:  # one project.updated per import bumps updated_at
                self.project(self.work.name, self.work.description)
        elif isinstance(op, Delete):
            self.delete(KINDS[op.kind], op.key)
        elif isinstance(op, ReferenceItemsPurged):
            for item_id in list(self.work.items(ITEM_KIND.collection)):
                self.delete(ITEM_KIND, item_id)
        elif isinstance(op, ProviderAccountUpsert):
            values = _fields(provider_accounts.KIND, op)
            self.emit(provider_accounts.decide_upsert(self.work, op.provider_code, values, self.meta))
        elif isinstance(op, StyleGuideUpsert | CharacterUpsert | PromptTemplateUpsert | ReferenceSetUpsert):
            self.upsert(_UPSERT_KINDS[type(op)], op)
        elif isinstance(op, ReferenceSetItemsReplaced):
            self.replace_items(op)
        elif isinstance(op, SecretMetadataCreated | SecretMetadataTouched):
            self.declare_secret(op.provider_code, op.secret_name)
        else:  # pragma: no cover - every Operation type is handled above
            raise TypeError(f"unknown bootstrap operation {type(op).__name__}")


_UPSERT_KINDS: Final[dict[type, RecordKind]] = {
    StyleGuideUpsert: style_guides.KIND,
    CharacterUpsert: characters.KIND,
    PromptTemplateUpsert: prompt_templates.KIND,
    ReferenceSetUpsert: reference_sets.KIND,
}


def decide_import(
    state: ProjectState,
    snapshot: Mapping[str, Any],
    request: ImportRequest,
    now: str,
    new_id: Callable[[], str],
    meta: Metadata,
) -> tuple[list[NewEvent], ImportPlan]:
    """A real import's events, all on the project's stream, `bootstrap.imported` first, and its plan.

    `snapshot` must describe `state` (`snapshot_of_state`); `now` is the second-precision time the
    plan stamps new rows with. Raises a KromaError, with nothing decided, when an operation is not
    valid against the state."""
    plan = plan_import(snapshot, request, now, new_id)
    batch = _Batch(state, meta, now)
    for op in plan.operations:
        batch.apply(op)
    summary = BootstrapImported(state.id, request.mode, dict(plan.applied), plan.changes)
    return [NewEvent(project_stream(state.id), IMPORTED, summary, meta), *batch.events], plan
