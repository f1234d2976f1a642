"""Reference sets and their items (contract §3.11).

A set is a named record like a style guide. Its items have no unique name; they belong to a set
only by `reference_set_id`, with no cascade: deleting a set leaves its items in place as orphans,
and since item routes require the set to exist, no endpoint reaches them again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kroma.domain import records
from kroma.domain.aggregate import ProjectState
from kroma.domain.errors import NotFound, at_least_one
from kroma.domain.records import RecordKind, register
from kroma.events.envelope import Metadata, NewEvent

KIND = register(
    RecordKind(
        entity="reference_set",
        collection="reference_sets",
        title="Reference set",
        fields=("name", "description"),
        required=frozenset({"name"}),
    )
)

ITEM_KIND = register(
    RecordKind(
        entity="reference_set_item",
        collection="reference_set_items",
        title="Reference set item",
        fields=("label", "content_uri", "content_text", "sort_order", "metadata_json"),
        required=frozenset({"label"}),
        defaults={"sort_order": 0, "metadata_json": {}},
        scope=("reference_set_id",),
        key="item_id",
    )
)
CONTENT = ("content_uri", "content_text")


class ReferenceSetFields(msgspec.Struct, omit_defaults=True):
    """The create body (name required) and the PUT body (≥1 of)."""

    name: str | None = None
    description: str | None = None


class ReferenceItemFields(msgspec.Struct, omit_defaults=True):
    """The item create body (label and some content required) and the PUT body (≥1 of)."""

    label: str | None = None
    content_uri: str | None = None
    content_text: str | None = None
    sort_order: int | None = None
    metadata_json: Any = None


def _require_content(values: dict[str, Any]) -> None:
    if not any(values.get(name) for name in CONTENT):
        raise at_least_one(*CONTENT)


def item_values(cmd: ReferenceItemFields) -> dict[str, Any]:
    """A new item's fields; label, then content, are checked before any lookup."""
    values = records.create_values(ITEM_KIND, cmd)
    _require_content(values)
    return values


def _find_set(state: ProjectState, set_id: str, not_found: str) -> None:
    if set_id not in state.items(KIND.collection):
        raise NotFound(not_found)


def find_item(state: ProjectState, set_id: str, item_id: str) -> dict[str, Any]:
    """An item of a live set; an orphan (its set deleted) is not found."""
    _find_set(state, set_id, ITEM_KIND.not_found)
    item = records.find(ITEM_KIND, state, item_id)
    if item["reference_set_id"] != set_id:
        raise NotFound(ITEM_KIND.not_found)
    return item


def decide_create_item(
    state: ProjectState, set_id: str, values: dict[str, Any], new_id: str, meta: Metadata
) -> NewEvent:
    _find_set(state, set_id, KIND.not_found)
    return records.event(ITEM_KIND, "created", state, new_id, {"reference_set_id": set_id, **values}, meta)


def decide_update_item(
    state: ProjectState, set_id: str, item_id: str, patch: dict[str, Any], meta: Metadata
) -> NewEvent:
    item = find_item(state, set_id, item_id)
    records.check_patch(ITEM_KIND, patch)
    _require_content({**item, **patch})  # the content rule holds after the merge
    return records.event(ITEM_KIND, "updated", state, item_id, patch, meta)


def decide_delete_item(state: ProjectState, set_id: str, item_id: str, meta: Metadata) -> NewEvent:
    find_item(state, set_id, item_id)
    return records.event(ITEM_KIND, "deleted", state, item_id, {}, meta)
