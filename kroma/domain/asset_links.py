"""Asset links (contract §3.6): commands, events and decisions (pure).

Links are project configuration, so they live on the project stream (`asset_link.created`,
`asset_link.updated`, `asset_link.deleted`) and fold into `state.items("asset_links")`; the
uniqueness rule UNIQUE(project, parent, child, link_type) is decided against that one state.
Whether an asset exists in the project is read from the log by the caller
(`kroma.domain.assets.asset_owners`) and passed in.

Validation order, create: parent required, child required, they differ, link_type valid (absent
means derived_from), then (caller) the project lookup, then each asset exists in the project
(parent first; a 400, not a 404), then the duplicate check.
Update: "at least one of" first (caller, before any lookup), then project, link (404), merge with
the link's values (a provided blank id is "required"), differ, link_type, assets, duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from kroma.clock import to_seconds
from kroma.domain.aggregate import ProjectState, evolves, project_stream
from kroma.domain.errors import NotFound, ValidationError, at_least_one, required
from kroma.events.envelope import Metadata, NewEvent

LINK_TYPES = ("derived_from", "variant_of", "mask_for", "reference_of")
DEFAULT_LINK_TYPE = "derived_from"
NOT_FOUND = "Asset link not found"
KIND = "asset_links"


class CreateAssetLink(msgspec.Struct, omit_defaults=True):
    parent_asset_id: str | None = None
    child_asset_id: str | None = None
    link_type: str | None = None


class UpdateAssetLink(msgspec.Struct, omit_defaults=True):
    parent_asset_id: str | None = None
    child_asset_id: str | None = None
    link_type: str | None = None


class LinkTarget(msgspec.Struct, frozen=True):
    parent_asset_id: str
    child_asset_id: str
    link_type: str


def normalize_link_type(raw: str) -> str:
    value = raw.strip().lower()
    if not value:
        raise required("link_type")
    if value not in LINK_TYPES:
        raise ValidationError(f"Field 'link_type' must be one of: {', '.join(LINK_TYPES)}")
    return value


def _identifier(raw: str | None, name: str) -> str:
    value = (raw or "").strip()
    if not value:
        raise required(name)
    return value


def _differ(parent: str, child: str) -> None:
    if parent == child:
        raise ValidationError("parent_asset_id and child_asset_id must differ")


def validate_create(cmd: CreateAssetLink) -> LinkTarget:
    parent = _identifier(cmd.parent_asset_id, "parent_asset_id")
    child = _identifier(cmd.child_asset_id, "child_asset_id")
    _differ(parent, child)
    link_type = normalize_link_type(cmd.link_type if cmd.link_type is not None else DEFAULT_LINK_TYPE)
    return LinkTarget(parent, child, link_type)


def check_update(cmd: UpdateAssetLink) -> None:
    if cmd.parent_asset_id is None and cmd.child_asset_id is None and cmd.link_type is None:
        raise at_least_one("parent_asset_id", "child_asset_id", "link_type")


def existing_link(state: ProjectState, link_id: str) -> dict[str, Any]:
    link = state.items(KIND).get(link_id)
    if link is None:
        raise NotFound(NOT_FOUND)
    return link


def merge_update(state: ProjectState, link_id: str, cmd: UpdateAssetLink) -> LinkTarget:
    link = existing_link(state, link_id)
    parent = link["parent_asset_id"]
    if cmd.parent_asset_id is not None:
        parent = _identifier(cmd.parent_asset_id, "parent_asset_id")
    child = link["child_asset_id"]
    if cmd.child_asset_id is not None:
        child = _identifier(cmd.child_asset_id, "child_asset_id")
    _differ(parent, child)
    link_type = normalize_link_type(cmd.link_type) if cmd.link_type is not None else link["link_type"]
    return LinkTarget(parent, child, link_type)


def _check_assets_and_uniqueness(
    state: ProjectState, target: LinkTarget, owners: Mapping[str, str | None], link_id: str | None
) -> None:
    for asset_id in (target.parent_asset_id, target.child_asset_id):
        if owners.get(asset_id) != state.id:
            raise ValidationError(f"Asset '{asset_id}' was not found in this project")
    key = (target.parent_asset_id, target.child_asset_id, target.link_type)
    for other_id, other in state.items(KIND).items():
        if (
            other_id != link_id
            and (other["parent_asset_id"], other["child_asset_id"], other["link_type"]) == key
        ):
            raise ValidationError("Asset link already exists")


def _data(state: ProjectState, link_id: str, target: LinkTarget) -> dict[str, Any]:
    return {"project_id": state.id, "link_id": link_id, **msgspec.structs.asdict(target)}


def decide_create(
    state: ProjectState, target: LinkTarget, owners: Mapping[str, str | None], link_id: str, meta: Metadata
) -> NewEvent:
    _check_assets_and_uniqueness(state, target, owners, None)
    return NewEvent(project_stream(state.id), "asset_link.created", _data(state, link_id, target), meta)


def decide_update(
    state: ProjectState, link_id: str, target: LinkTarget, owners: Mapping[str, str | None], meta: Metadata
) -> NewEvent:
    existing_link(state, link_id)
    _check_assets_and_uniqueness(state, target, owners, link_id)
    return NewEvent(project_stream(state.id), "asset_link.updated", _data(state, link_id, target), meta)


def decide_delete(state: ProjectState, link_id: str, meta: Metadata) -> NewEvent:
    existing_link(state, link_id)
    data = {"project_id": state.id, "link_id": link_id}
    return NewEvent(project_stream(state.id), "asset_link.deleted", data, meta)


@evolves("asset_link.created", "asset_link.updated")
def _link_written(state: ProjectState, d: dict[str, Any], event: Any) -> None:
    links = state.items(KIND)
    at = to_seconds(event.recorded_at)
    created_at = links.get(d["link_id"], {}).get("created_at", at)
    links[d["link_id"]] = {
        "parent_asset_id": d["parent_asset_id"],
        "child_asset_id": d["child_asset_id"],
        "link_type": d["link_type"],
        "created_at": created_at,
        "updated_at": at,
    }


@evolves("asset_link.deleted")
def _link_deleted(state: ProjectState, d: dict[str, Any], _e: Any) -> None:
    state.items(KIND).pop(d["link_id"], None)
