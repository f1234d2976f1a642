"""The project's settings as the bootstrap exchange reads them (contract §4): a query over the record
read models, in the snapshot shape `kroma.domain.bootstrap` takes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kroma.projections.reader import ReadModels
from kroma.projections.records import (
    CHARACTERS,
    PROMPT_TEMPLATES,
    PROVIDER_ACCOUNTS,
    REFERENCE_SET_ITEMS,
    REFERENCE_SETS,
    STYLE_GUIDES,
)
from kroma.projections.secrets import list_secrets


async def read_snapshot(rm: ReadModels, project: Mapping[str, Any]) -> dict[str, Any]:
    """Every section of the project's settings as API objects; each reference set carries its
    items (orphan items, whose set is gone, belong to no set and are left out)."""
    project_id = project["id"]
    sets = await REFERENCE_SETS.all(rm, project_id)
    items: dict[str, list[dict[str, Any]]] = {row["id"]: [] for row in sets}
    for item in await REFERENCE_SET_ITEMS.all(rm, project_id):
        items.get(item["reference_set_id"], []).append(item)
    return {
        "project": {key: project[key] for key in ("id", "slug", "name", "description")},
        "provider_accounts": await PROVIDER_ACCOUNTS.all(rm, project_id),
        "style_guides": await STYLE_GUIDES.all(rm, project_id),
        "characters": await CHARACTERS.all(rm, project_id),
        "prompt_templates": await PROMPT_TEMPLATES.all(rm, project_id),
        "reference_sets": [{**row, "items": items[row["id"]]} for row in sets],
        "secrets": await list_secrets(rm, project_id),  # metadata only: has_value, no value
    }
